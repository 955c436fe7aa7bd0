"""The C source itself: compiles warning-free, and its constants and layouts match the Python side."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from datapath import config, fast
from datapath.counters import FDB_FIELDS, REMOTE_FIELDS, STAT_FIELDS, Drop
from datapath.encap import MODES, lookup
from datapath.ether import VLAN_ID_MAX
from datapath.fdb import Learn

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"

needs_module = pytest.mark.skipif(not fast.available(), reason="C fast path not built")


def load_build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ovl_build", CSRC / "build.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc")
@pytest.mark.parametrize("std", ["c11", "gnu11"])
def test_compiles_without_warnings(std: str) -> None:
    res = subprocess.run(
        ["gcc", f"-std={std}", "-Wall", "-Wextra", "-Werror", "-O2", "-fsyntax-only", str(CSRC / "ovl_fast.c")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr


def test_cdef_section_is_the_header() -> None:
    """build.py hands cffi exactly the marked section of ovl_fast.h, and cffi can parse it on its own."""
    from cffi import FFI

    build = load_build()
    header = (CSRC / "ovl_fast.h").read_text()
    section = build.cdef_source()
    assert section in header and "ovl_from_tunnel" in section and "#include" not in section
    FFI().cdef(section)


@needs_module
def test_every_declared_function_is_in_the_module() -> None:
    names = re.findall(r"\b(ovl_\w+)\(", load_build().cdef_source())
    assert len(names) > 15
    for name in names:
        assert callable(getattr(fast.lib, name)), name


@needs_module
def test_drop_enum_matches_python() -> None:
    for d in Drop:
        assert getattr(fast.lib, f"OVL_DROP_{d.name}") == d.value, d
    c_names = {k for k in dir(fast.lib) if k.startswith("OVL_DROP_")} - {"OVL_DROP_COUNT"}
    assert c_names == {f"OVL_DROP_{d.name}" for d in Drop}
    assert max(Drop) + 1 == fast.lib.OVL_DROP_COUNT
    assert dict(fast.ffi.typeof("struct ovl_dp").fields)["drops"].type.length == max(Drop) + 1


@needs_module
def test_learn_enum_matches_python() -> None:
    for v in Learn:
        assert getattr(fast.lib, f"OVL_LEARN_{v.name}") == v.value


@needs_module
@pytest.mark.parametrize(
    ("struct", "fields"),
    [("struct ovl_remote_ctr", REMOTE_FIELDS), ("struct ovl_stats", STAT_FIELDS), ("struct ovl_fdb_stats", FDB_FIELDS)],
)
def test_counter_structs_in_python_order(struct: str, fields: tuple[str, ...]) -> None:
    got = fast.ffi.typeof(struct).fields
    assert tuple(name for name, _ in got) == fields
    assert all(f.type.cname == "uint64_t" for _, f in got)


@needs_module
def test_limits_match_config() -> None:
    assert fast.lib.OVL_MAX_REMOTES == config.MAX_REMOTES
    assert max(lookup(m)(1).outer_len(mapped=True) for m in MODES) <= fast.lib.OVL_MAX_OUTER
    assert fast.lib.OVL_VLAN_COUNT == VLAN_ID_MAX + 1
    assert len(fast.ffi.new("struct ovl_config *").vlan_tid) == VLAN_ID_MAX + 1
    assert fast.ffi.typeof("struct ovl_fdb_entry").fields[1][0] == "vlan"


def test_builds_from_scratch(tmp_path: Path) -> None:
    """The cffi builder compiles the module (in a scratch directory, leaving the installed one alone)."""
    build = load_build()
    out = build.make_builder(relative=False).compile(tmpdir=str(tmp_path))
    assert Path(out).is_file() and Path(out).name.startswith("_ovl_fast")
