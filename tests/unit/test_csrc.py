"""The C source itself: compiles warning-free, and its constants and layouts match the Python side."""

from __future__ import annotations

import errno
import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from datapath import config, fast
from datapath.config import Remote
from datapath.counters import FDB_FIELDS, REMOTE_FIELDS, STAT_FIELDS, Drop
from datapath.encap import MODES, lookup
from datapath.encap.ipv6 import V4_MAPPED_PREFIX
from datapath.ether import VLAN_ID_MAX
from datapath.fdb import Learn
from tests.configs import datapath_config

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"

needs_module = pytest.mark.skipif(not fast.available(), reason="C fast path not built")


def load_build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ovl_build", CSRC / "build.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def units() -> list[Path]:
    return sorted(CSRC.glob("*.c"))


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc")
@pytest.mark.parametrize("std", ["c11", "gnu11"])
def test_compiles_without_warnings(std: str) -> None:
    assert len(units()) >= 10
    for unit in units():
        res = subprocess.run(
            ["gcc", f"-std={std}", "-Wall", "-Wextra", "-Werror", "-O2", "-fsyntax-only", str(unit)],
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, f"{unit.name}: {res.stderr}"


def test_builder_lists_every_unit() -> None:
    """Every .c file is compiled, by the in-place build and by setup.py's relative-path builder alike."""
    build = load_build()
    assert sorted(build.UNITS) == [p.name for p in units()]
    assert [Path(p) for p in build.sources(relative=False)] == [CSRC / u for u in build.UNITS]
    assert [ROOT / p for p in build.sources(relative=True)] == [CSRC / u for u in build.UNITS]
    for relative in (False, True):
        kwds = build.make_builder(relative=relative)._assigned_source[3]
        assert kwds["sources"] == build.sources(relative=relative)
        assert {"-O2", "-Wall", "-Wextra"} <= set(kwds["extra_compile_args"])


def test_units_are_small() -> None:
    for path in [*units(), *CSRC.glob("*.h")]:
        assert len(path.read_text().splitlines()) <= 500, path.name


def test_the_protocol_is_chosen_in_one_place() -> None:
    """Only encap.c's table names the encapsulations; every other unit goes through their function table."""
    for unit in units():
        text = unit.read_text()
        named = set(re.findall(r"\b(OVL_ENCAP_(?:VXLAN|GRE)|encap_vxlan|encap_gre)\b", text))
        if unit.name == "encap.c":
            assert named == {"OVL_ENCAP_VXLAN", "OVL_ENCAP_GRE", "encap_vxlan", "encap_gre"}
        elif unit.name.startswith("encap_"):
            assert named == {unit.stem}, unit.name
        else:
            assert not named and "mode ==" not in text, unit.name


def test_cdef_section_is_the_header() -> None:
    """build.py hands cffi exactly the marked section of ovl.h, and cffi can parse it on its own."""
    from cffi import FFI

    build = load_build()
    header = (CSRC / "ovl.h").read_text()
    section = build.cdef_source()
    assert section in header and "ovl_from_tunnel" in section and "#include" not in section
    FFI().cdef(section)


def test_cdef_shows_no_struct_internals() -> None:
    """The public API declares its types opaque: no struct or union body anywhere in the cdef."""
    section = load_build().cdef_source()
    assert not re.search(r"\b(struct|union)\s+\w*\s*\{", section)
    assert set(re.findall(r"\bstruct\s+(\w+)\s*;", section)) == {"ovl_dp", "ovl_fdb", "ovl_config", "ovl_runner"}


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
    fwd = fast.FastForwarder(cfg())
    out = fast.ffi.new("uint64_t[]", 64)
    assert fast.lib.ovl_dp_counters(fwd._dp, fast.lib.OVL_COUNTERS_DROPS, out, 64) == max(Drop) + 1


@needs_module
def test_learn_enum_matches_python() -> None:
    for v in Learn:
        assert getattr(fast.lib, f"OVL_LEARN_{v.name}") == v.value


@needs_module
@pytest.mark.parametrize(
    ("prefix", "fields"), [("OVL_REMOTE_", REMOTE_FIELDS), ("OVL_STAT_", STAT_FIELDS), ("OVL_FDB_", FDB_FIELDS)]
)
def test_counter_enums_in_python_order(prefix: str, fields: tuple[str, ...]) -> None:
    """Counter arrays leave C indexed by these enums: the same names, in the order of counters.py."""
    for i, name in enumerate(fields):
        assert getattr(fast.lib, prefix + name.upper()) == i, name
    assert getattr(fast.lib, prefix + "COUNT") == len(fields)
    c_names = {k for k in dir(fast.lib) if k.startswith(prefix)} - {prefix + "COUNT"}
    assert c_names == {prefix + f.upper() for f in fields}


@needs_module
def test_counters_copy_what_is_asked() -> None:
    fwd = fast.FastForwarder(cfg(remotes=(Remote("10.0.0.2", "10.0.0.1"), Remote("10.0.1.2", "10.0.1.1"))))
    out = fast.ffi.new("uint64_t[]", 64)
    lib = fast.lib
    assert lib.ovl_dp_counters(fwd._dp, lib.OVL_COUNTERS_STATS, out, 64) == len(STAT_FIELDS)
    assert lib.ovl_dp_counters(fwd._dp, lib.OVL_COUNTERS_REMOTES, out, 64) == 2 * len(REMOTE_FIELDS)
    assert lib.ovl_dp_counters(fwd._dp, lib.OVL_COUNTERS_FDB, out, 64) == len(FDB_FIELDS)
    assert lib.ovl_dp_counters(fwd._dp, lib.OVL_COUNTERS_STATS, out, 3) == 3
    assert lib.ovl_dp_counters(fwd._dp, 99, out, 64) == 0


@needs_module
def test_limits_match_config() -> None:
    assert fast.lib.OVL_MAX_REMOTES == config.MAX_REMOTES
    assert max(lookup(m)(1).outer_len(mapped=True) for m in MODES) <= fast.lib.OVL_MAX_OUTER
    assert fast.lib.OVL_VLAN_COUNT == VLAN_ID_MAX + 1
    # The map holds every 12-bit VID (ovl_dp_new then refuses 0 and 4095), no more.
    c = fast._make_config(cfg(), 1)
    assert fast.lib.ovl_config_map_vlan(c, VLAN_ID_MAX, 5) == 0
    assert fast.lib.ovl_config_map_vlan(c, VLAN_ID_MAX + 1, 5) == -1
    # FDB rows carry the VLAN.
    fdb = fast.FastFdb()
    fdb.add_static(b"\x02\0\0\0\0\1", 3, vlan=7)
    assert [(e.vlan, e.remote, e.static) for e in fdb.entries()] == [(7, 3, True)]


@needs_module
def test_encapsulation_ids_and_names() -> None:
    """fast's one mode -> id lookup and the C table agree; an unknown id gets no configuration."""
    lib, ffi = fast.lib, fast.ffi
    assert len(MODES) == lib.OVL_ENCAP_COUNT
    assert sorted(fast.encap_id(m) for m in MODES) == list(range(len(MODES)))
    for mode in MODES:
        assert ffi.string(lib.ovl_encap_name(fast.encap_id(mode))).decode() == mode
    assert lib.ovl_encap_name(lib.OVL_ENCAP_COUNT) == ffi.NULL
    assert lib.ovl_config_new(lib.OVL_ENCAP_COUNT) == ffi.NULL


@needs_module
def test_config_setters() -> None:
    lib, ffi = fast.lib, fast.ffi
    c = ffi.gc(lib.ovl_config_new(lib.OVL_ENCAP_VXLAN), lib.ovl_config_free)
    assert lib.ovl_config_set_tunnel(c, 5, 0, 64) == 0
    assert lib.ovl_config_set_udp(c, 4789, 1) == 0
    assert lib.ovl_config_set_ring(c, 1500, 64, 2048) == 0
    assert lib.ovl_config_set_fdb(c, 100, 300.0, 1) == 0
    assert lib.ovl_config_set_offloads(c, 10, 1, 1) == 0
    assert lib.ovl_outer_len(c) == 36
    assert _accepts(c)  # no remote yet: a context that floods to no one (remotes come at run time)
    twice = ffi.gc(lib.ovl_config_new(lib.OVL_ENCAP_VXLAN), lib.ovl_config_free)
    lib.ovl_config_set_ring(twice, 1500, 64, 2048)
    for _ in range(2):
        lib.ovl_config_add_remote(twice, m4(b"\x0a\0\0\2"), m4(b"\x0a\0\0\1"))
    assert not _accepts(twice)  # a remote given twice
    for i in range(config.MAX_REMOTES):
        assert lib.ovl_config_add_remote(c, m4(bytes([10, i >> 8, i & 0xFF, 2])), m4(bytes([10, 0, 0, 1]))) == i
    assert lib.ovl_config_add_remote(c, m4(b"\1\1\1\1"), m4(b"\2\2\2\2")) == -1
    assert _accepts(c)
    for bad in (
        (2100, 64, 2048),
        (1500, 64, 1400),
        (1 << 16, 64, 65600),
        (1500, 0, 2048),
        (1500, 2000, 2048),
    ):  # MTU, batch, slot
        assert lib.ovl_config_set_ring(c, *bad) == 0 and not _accepts(c), bad
    lib.ovl_config_set_ring(c, 1500, 64, 2048)
    for ttl, port, vnet, vni in ((256, 4789, 10, 5), (64, 1 << 16, 10, 5), (64, 4789, 11, 5), (64, 4789, 10, 1 << 24)):
        lib.ovl_config_set_tunnel(c, vni, 0, ttl)
        lib.ovl_config_set_udp(c, port, 1)
        lib.ovl_config_set_offloads(c, vnet, 1, 1)
        assert not _accepts(c), (ttl, port, vnet, vni)
    g = ffi.gc(lib.ovl_config_new(lib.OVL_ENCAP_GRE), lib.ovl_config_free)
    lib.ovl_config_set_tunnel(g, 0, 0, 64)
    assert lib.ovl_outer_len(g) == 24
    lib.ovl_config_set_tunnel(g, 7, 1, 64)
    assert lib.ovl_outer_len(g) == 28


@needs_module
def test_context_accessors() -> None:
    """The calls through which Python reaches the context refuse indices beyond the rings."""
    lib, ffi = fast.lib, fast.ffi
    fwd = fast.FastForwarder(cfg(batch=4), tap_vnet=10)
    dp = fwd._dp
    buf = ffi.new("uint8_t[]", 64)
    remote_u = ffi.new("uint32_t *")
    remote_i = ffi.new("int32_t *")
    assert lib.ovl_tx_load(dp, 4, buf, 64) == -1 and lib.ovl_tx_load(dp, 3, buf, 64) == 0
    assert lib.ovl_tx_packet(dp, 0, remote_u, buf, 64) == -1  # nothing processed yet
    assert lib.ovl_rx_load(dp, 4, buf, 64, bytes(16), 0) == -1
    assert lib.ovl_rx_plan(dp, 4) == 0  # nothing processed: nothing to write
    assert lib.ovl_rx_plan_write(dp, 0, buf, buf, 64, remote_i) == -1
    assert lib.ovl_dp_io_errno(dp) == 0
    assert lib.ovl_dp_coalescing(dp) == 0
    assert lib.ovl_dp_coalescing(fast.FastForwarder(cfg(rx_coalesce=True), tap_vnet=10)._dp) == 1
    assert lib.ovl_dp_fdb(dp) != ffi.NULL
    # A packet that does not fit the caller's buffer: its length, nothing written.
    frame = bytearray(b"\xff" * 6 + b"\x02" + bytes(5) + b"\x08\x06" + bytes(46))
    fbuf = ffi.from_buffer("uint8_t[]", frame)
    lib.ovl_tx_load(dp, 0, fbuf, len(frame))
    assert lib.ovl_tx_process(dp, 1, 0.0) == 1
    small = ffi.new("uint8_t[]", 8)
    assert lib.ovl_tx_packet(dp, 0, remote_u, small, 8) == 36 + len(frame) and bytes(small) == bytes(8)
    assert remote_u[0] == 0


@needs_module
def test_remote_slot_calls() -> None:
    """ovl_dp_add_remote / ovl_dp_remove_remote / ovl_dp_remotes at their edges, and the counters of a slot table
    with holes (up to the highest slot in use)."""
    lib, ffi = fast.lib, fast.ffi
    assert (lib.OVL_ADD_FULL, lib.OVL_ADD_DUPLICATE, lib.OVL_ADD_NOMEM) == (-1, -2, -3)
    dp = fast.FastForwarder(cfg())._dp  # one remote, 10.0.0.2, in slot 0
    assert lib.ovl_dp_add_remote(dp, m4(b"\x0a\0\0\2"), m4(b"\x0a\0\0\1")) == lib.OVL_ADD_DUPLICATE
    assert [lib.ovl_dp_add_remote(dp, m4(bytes([10, 0, i, 2])), m4(b"\x0a\0\0\1")) for i in (1, 2, 3)] == [1, 2, 3]
    for bad in (4, lib.OVL_MAX_REMOTES, 0xFFFFFFFF):
        assert lib.ovl_dp_remove_remote(dp, bad) == -1
    assert lib.ovl_dp_remove_remote(dp, 1) == 0 and lib.ovl_dp_remove_remote(dp, 1) == -1
    for bad in (1, 4, lib.OVL_MAX_REMOTES, 0xFFFFFFFF):  # a free slot, beyond the table, beyond any table
        assert lib.ovl_dp_set_remote_local(dp, bad, m4(b"\x0a\0\0\x07")) == -1
    assert lib.ovl_dp_set_remote_local(dp, 2, m4(b"\x0a\0\0\x07")) == 0
    out = ffi.new("uint64_t[]", 64)
    assert lib.ovl_dp_counters(dp, lib.OVL_COUNTERS_REMOTES, out, 64) == 4 * len(REMOTE_FIELDS)
    assert lib.ovl_dp_remove_remote(dp, 3) == 0  # the highest: the table shrinks to the next in use
    assert lib.ovl_dp_counters(dp, lib.OVL_COUNTERS_REMOTES, out, 64) == 3 * len(REMOTE_FIELDS)
    slots = ffi.new("uint32_t[]", 4)
    addrs, locals_ = ffi.new("uint8_t[]", 64), ffi.new("uint8_t[]", 64)
    last, seen = ffi.new("double[]", 4), ffi.new("uint8_t[]", 4)
    assert lib.ovl_dp_remotes(dp, slots, addrs, locals_, last, seen, 1) == 1  # at most cap
    assert lib.ovl_dp_remotes(dp, slots, addrs, locals_, last, seen, 4) == 2
    assert list(slots)[:2] == [0, 2] and bytes(ffi.buffer(addrs, 32)) == m4(b"\x0a\0\0\2") + m4(b"\x0a\0\2\2")
    assert bytes(ffi.buffer(locals_, 32)) == m4(b"\x0a\0\0\1") + m4(b"\x0a\0\0\x07")  # slot 2's local changed
    assert list(seen)[:2] == [0, 0]
    assert lib.ovl_dp_add_remote(dp, m4(b"\x0a\0\x09\2"), m4(b"\x0a\0\0\1")) == 1  # the lowest free slot
    # A context made with no remote at all: floods to no one, and takes remotes later.
    empty = fast.FastForwarder(cfg(remotes=(Remote("10.0.0.2", "10.0.0.1"),)))
    empty.remove_remote(0)
    assert empty.tx([b"\xff" * 6 + b"\x02" + bytes(5) + b"\x08\x06" + bytes(46)]) == []
    assert lib.ovl_dp_counters(empty._dp, lib.OVL_COUNTERS_REMOTES, out, 64) == 0
    assert empty.add_remote(Remote("10.0.3.2", "10.0.3.1")) == 0


@needs_module
def test_fdb_flush_and_limits_calls() -> None:
    lib = fast.lib
    fdb = fast.FastFdb(4, 10.0)
    for i in range(4):
        fdb.learn(bytes([2, 0, 0, 0, 0, i]), i % 2)
    assert lib.ovl_fdb_flush(fdb._fdb, 7) == 0 and lib.ovl_fdb_flush(fdb._fdb, 1) == 2
    assert lib.ovl_fdb_flush(fdb._fdb, -1) == 2 and lib.ovl_fdb_count(fdb._fdb) == 0
    assert lib.ovl_fdb_set_limits(fdb._fdb, 0, 1.0) == -1
    assert lib.ovl_fdb_set_limits(fdb._fdb, (1 << 28) + 1, 1.0) == -1
    assert lib.ovl_fdb_set_limits(fdb._fdb, 5, -1.0) == -1
    assert lib.ovl_fdb_set_limits(fdb._fdb, 1000, 0.0) == 0


@needs_module
def test_gso_sockets_only_for_udp_encapsulations() -> None:
    lib, ffi = fast.lib, fast.ffi
    fds = ffi.new("int32_t[]", [5, 6, 7])
    assert lib.ovl_dp_set_gso_fds(fast.FastForwarder(cfg())._dp, fds, 3) == 3
    assert lib.ovl_dp_set_gso_fds(fast.FastForwarder(cfg(mode="gre"))._dp, fds, 3) == 0
    assert lib.ovl_dp_set_gso_fds(fast.FastForwarder(cfg())._dp, fds, lib.OVL_GSO_SOCKETS + 1) == -1


@needs_module
def test_io_errno_of_a_failed_read() -> None:
    fwd = fast.FastForwarder(cfg())
    assert fast.lib.ovl_from_tap(fwd._dp, -1, -1, 0.0) == 0
    assert fast.lib.ovl_dp_io_errno(fwd._dp) == errno.EBADF
    assert fast.lib.ovl_from_tunnel(fwd._dp, -1, -1, 0.0) == 0
    assert fast.lib.ovl_dp_io_errno(fwd._dp) == errno.EBADF


def m4(addr: bytes) -> bytes:
    """An IPv4 address as the C side stores it: mapped (::ffff:a.b.c.d)."""
    return V4_MAPPED_PREFIX + addr


def cfg(**kw: object) -> config.Config:
    fields: dict[str, object] = {"mode": "vxlan", "remotes": (Remote("10.0.0.2", "10.0.0.1"),), "underlay_mtu": 1500,
                                 "tap_mtu": 1450, **kw}  # fmt: skip
    return datapath_config(**fields)  # type: ignore[arg-type]


def _accepts(c: object) -> bool:
    dp = fast.lib.ovl_dp_new(c)
    fast.lib.ovl_dp_free(dp)
    return bool(dp != fast.ffi.NULL)


def test_builds_from_scratch(tmp_path: Path) -> None:
    """The cffi builder compiles the module (in a scratch directory, leaving the installed one alone)."""
    build = load_build()
    out = build.make_builder(relative=False).compile(tmpdir=str(tmp_path))
    assert Path(out).is_file() and Path(out).name.startswith("_ovl_fast")


def test_ipv6_remote_without_an_ipv6_send_socket_is_a_tx_error() -> None:
    """(issue 11, v6) ovl_dp_set_send6_fd(-1) / set_send6(None): packets to an IPv6 remote are dropped as
    tx_error, in C as in Python (the IPv4 socket is never used for them)."""
    import socket

    from datapath.pypath import PyForwarder

    c6 = cfg(remotes=(Remote("fd00::2", "fd00::1"),), tap_mtu=1430)
    frame = b"\xff" * 6 + b"\x02" + bytes(5) + b"\x08\x06" + bytes(46)
    for fwd in (fast.FastForwarder(c6), PyForwarder(c6)):
        tap, feed = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        with tap, feed, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as v4:
            tap.setblocking(False)
            fwd.set_send6(None)
            feed.send(frame)
            assert fwd.from_tap(tap.fileno(), v4) == 1
            snap = fwd.snapshot()
            assert snap.drops["tx_error"] == 1 and snap.stats["tx_flooded"] == 1, (type(fwd), snap)
            assert snap.remotes[0]["tx_packets"] == 0
