"""cffi builder (API mode, out-of-line) for the C fast path ``datapath._ovl_fast``.

The cdef is the section of ``ovl.h`` (the public API) between ``/* BEGIN CDEF */``
and ``/* END CDEF */``: one copy of the declarations, checked by the C compiler
when the generated module includes the header. The module is every unit in
:data:`UNITS` (see ``internal.h`` for what each holds).

Used by ``setup.py`` (``cffi_modules``) for ``pip install .`` / ``pip install -e .``,
and runnable directly to build the module in place::

    python csrc/build.py        # writes datapath/_ovl_fast.<abi>.so

With ``OVL_SANITIZE=1`` in the environment the units are built with AddressSanitizer
and UndefinedBehaviorSanitizer (a test build: load it with
``LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0``).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import sysconfig

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HEADER = os.path.join(HERE, "ovl.h")
UNITS = (
    "csum.c",
    "flow.c",
    "fdb.c",
    "vlan.c",
    "encap.c",
    "encap_vxlan.c",
    "encap_gre.c",
    "offload.c",
    "batch.c",
    "io.c",
    "dp.c",
    "remotes.c",
    "inject.c",
    "loop.c",
    "rx_super.c",
    "ring.c",
    "ipv6.c",  # issue 11, v6
)
CFLAGS = ["-O2", "-Wall", "-Wextra"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]


def cdef_source(header: str = HEADER) -> str:
    """The declarations cffi reads: the CDEF section of the header."""
    with open(header) as f:
        text = f.read()
    m = re.search(r"/\* BEGIN CDEF \*/\n(.*?)/\* END CDEF \*/", text, re.S)
    if m is None:
        raise RuntimeError(f"{header}: no BEGIN CDEF / END CDEF section")
    return m.group(1)


def sources(relative: bool) -> list[str]:
    """Paths of the units; relative to the project root for setuptools (setup.py)."""
    csrc = os.path.relpath(HERE, ROOT) if relative else HERE
    return [os.path.join(csrc, unit) for unit in UNITS]


def make_builder(relative: bool) -> FFI:
    """The builder; setuptools (setup.py, run from the project root) gets paths relative to it."""
    csrc = os.path.relpath(HERE, ROOT) if relative else HERE
    sanitize = SANITIZE if os.environ.get("OVL_SANITIZE") else []
    ffi = FFI()
    ffi.cdef(cdef_source())
    ffi.set_source(
        "datapath._ovl_fast",
        '#include "ovl.h"',
        sources=sources(relative),
        include_dirs=[csrc],
        extra_compile_args=CFLAGS + sanitize,
        extra_link_args=sanitize,
    )
    return ffi


ffibuilder = make_builder(relative=os.getcwd() == ROOT)


def build_in_place() -> str:
    """Compile under build/cffi and copy the module next to datapath/*.py; returns its path."""
    tmp = os.path.join(ROOT, "build", "cffi")
    os.makedirs(tmp, exist_ok=True)
    built = make_builder(relative=False).compile(tmpdir=tmp, verbose=False)
    pkg = os.path.join(ROOT, "datapath")
    dest = os.path.join(pkg, "_ovl_fast" + sysconfig.get_config_var("EXT_SUFFIX"))
    # pip install -e . leaves _ovl_fast.abi3.so: remove other builds so the import cannot pick a stale one.
    for name in os.listdir(pkg):
        if name.startswith("_ovl_fast.") and name.endswith(".so") and os.path.join(pkg, name) != dest:
            os.remove(os.path.join(pkg, name))
    # A new file renamed over the old one: a process that has the old module
    # mapped keeps its copy intact (copying onto it in place could crash it).
    shutil.copyfile(built, dest + ".new")
    os.replace(dest + ".new", dest)
    return dest


if __name__ == "__main__":
    os.chdir(ROOT)
    print(build_in_place(), file=sys.stderr)
