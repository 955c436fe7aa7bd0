"""The C fast path (``csrc/*.c`` behind the API of ``csrc/ovl.h``, compiled by cffi as ``datapath._ovl_fast``).

Only functions of ``ovl.h`` are called: the configuration, the datapath context and the
MAC table are opaque handles, counters and FDB rows come back as arrays.

Same API and behaviour as the pure-Python references, which tests hold it to:

- :func:`flow_hash`, :func:`checksum`, :func:`encap`, :func:`parse`, :func:`decap` as
  ``ether.flow_hash``, ``ipv4.checksum``, ``vxlan``/``gre`` ``encap``/``parse``/``decap``;
- :class:`FastFdb` as :class:`datapath.fdb.Fdb`;
- :class:`FastForwarder` as :class:`datapath.pypath.PyForwarder`.

Differences, all at the edges of the API: MACs must be 6 bytes and remote
indices 0..2**31-1 (the Python table takes any key and any int); the clock
is read once per batch, not once per FDB operation; a packet longer than a
ring slot is cut by recvmmsg and dropped as truncated (Python reads 64 KiB).

:func:`available` says whether the module is built (``pip install -e .``
or ``python csrc/build.py``).

While a data-path thread runs the C loop on a forwarder's context
(:mod:`datapath.dpthread`), every method of the forwarder and of its FDB view parks that
thread between two batches for the call (:meth:`FastForwarder.paused`), so the C side
needs no locks; without a thread that costs one attribute test.
"""

from __future__ import annotations

import importlib
import os
import socket
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from types import TracebackType
from typing import Any

from datapath import ecn, pmtu
from datapath.config import Config, Remote
from datapath.counters import FDB_FIELDS, INJECT_FIELDS, REMOTE_FIELDS, STAT_FIELDS, Drop, Snapshot, drop_name
from datapath.encap.ipv6 import from16, to16
from datapath.ether import ETH_HLEN
from datapath.fdb import DEFAULT_AGEING, DEFAULT_MAX_ENTRIES, FdbEntry, FdbFull, Learn, check_limits, check_vlan
from datapath.io.ring import TxRing
from datapath.io.tap import VNET_HDR_LEN
from datapath.pypath import RxPacket

_ovl_fast: Any
try:
    _ovl_fast = importlib.import_module("datapath._ovl_fast")
except ImportError:  # not built
    _ovl_fast = None

ffi: Any = _ovl_fast.ffi if _ovl_fast is not None else None
lib: Any = _ovl_fast.lib if _ovl_fast is not None else None

_REMOTE_MAX = (1 << 31) - 1
# The TX ring counters, in the order of enum ovl_ring_stat (csrc/ovl.h).
RING_FIELDS = ("ring_tx", "ring_sends", "ring_full", "ring_fallback", "ring_send_errors")
# Buffers C fills before anything reads them need no zeroing.
_raw_alloc: Any = ffi.new_allocator(should_clear_after_alloc=False) if ffi is not None else None


def available() -> bool:
    """True if the compiled module could be loaded."""
    return _ovl_fast is not None


def _require() -> None:
    if _ovl_fast is None:
        raise RuntimeError("the C fast path is not built: run `pip install -e .` or `python csrc/build.py`")


def encap_id(mode: str) -> int:
    """The C side's id (enum ovl_encap_id) of encapsulation mode: its entry in csrc/encap.c's table.

    KeyError if the C side has no encapsulation of that name.
    """
    return _encap_ids()[mode]


@lru_cache(maxsize=1)
def _encap_ids() -> dict[str, int]:
    _require()
    names = (lib.ovl_encap_name(i) for i in range(lib.OVL_ENCAP_COUNT))
    return {ffi.string(n).decode(): i for i, n in enumerate(names) if n != ffi.NULL}


def _fits(n: int, cap: int) -> int:
    """n, a length the C side reports for a buffer of cap bytes; RuntimeError if it did not fit or failed."""
    if not 0 <= n <= cap:
        raise RuntimeError(f"the C fast path reported {n} bytes for a buffer of {cap}")
    return n


def _check(ret: int) -> None:
    if ret < 0:
        raise ValueError("configuration out of range for the C fast path (remotes, VLAN map)")


def _make_config(cfg: Config, seed: int, tap_vnet: int = 0, udp_gro: bool = False) -> Any:
    """The C configuration (struct ovl_config, opaque) of cfg: the one place that maps it field by field.

    seed: the FDB hash seed; tap_vnet: the TAP's virtio header length (0: plain TAP);
    udp_gro: the receiving socket has UDP_GRO on. ovl_dp_new checks the whole.
    """
    _require()
    encap = cfg.encap
    c = lib.ovl_config_new(encap_id(encap.name))
    if c == ffi.NULL:
        raise MemoryError("cannot allocate a C configuration")
    c = ffi.gc(c, lib.ovl_config_free)
    # keyed: the base id travels in a header field (GRE without a key has none).
    ttl = lib.OVL_TTL_INHERIT if encap.ttl == ecn.INHERIT else int(encap.ttl)
    _check(lib.ovl_config_set_tunnel(c, encap.base_id, encap.tunnel_id is not None, ttl))
    # issue 11, ecn: outer DS field, DF (csrc/ecn.c)
    _check(lib.ovl_config_set_tos(c, lib.OVL_TOS_INHERIT if encap.tos == ecn.INHERIT else int(encap.tos)))
    _check(lib.ovl_config_set_df(c, ecn.DF_POLICIES.index(encap.df)))
    _check(lib.ovl_config_set_udp(c, encap.port, encap.udp_csum))
    _check(lib.ovl_config_set_udp6(c, encap.udp6_zero_csum_tx))
    _check(lib.ovl_config_set_ring(c, cfg.underlay_mtu, cfg.batch, cfg.slot_size))
    _check(lib.ovl_config_set_fdb(c, cfg.fdb.max_entries, cfg.fdb.ageing, seed))
    _check(lib.ovl_config_set_offloads(c, tap_vnet, cfg.offload.coalesce, udp_gro))
    _check(lib.ovl_config_set_clamp_mss(c, cfg.tunnel.clamp_mss_setting))
    for r in cfg.remotes:
        r.local_bytes  # noqa: B018 (ConfigError if not resolved)
        _check(lib.ovl_config_add_remote(c, to16(r.addr), to16(r.local or "")))
    for vlan, tid in cfg.tunnel.vlan_map:
        _check(lib.ovl_config_map_vlan(c, vlan, tid))
    return c


@lru_cache(maxsize=16)
def _codec_config(cfg: Config) -> Any:
    return _make_config(cfg, 0)


# -- pure functions ---------------------------------------------------------------


def flow_hash(frame: bytes | bytearray | memoryview) -> int:
    """ether.flow_hash; ValueError for a frame shorter than an Ethernet header (Python: IndexError)."""
    _require()
    if len(frame) < ETH_HLEN:
        raise ValueError("frame shorter than an Ethernet header")
    buf = ffi.from_buffer("uint8_t[]", frame)
    return int(lib.ovl_flow_hash(buf, len(buf)))


def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """ipv4.checksum."""
    _require()
    buf = ffi.from_buffer("uint8_t[]", data)
    return int(lib.ovl_checksum(buf, len(buf), initial))


def encap(cfg: Config, remote: int, frame: bytes | bytearray | memoryview) -> bytes:
    """The outer packet for frame to cfg.remotes[remote], as vxlan.encap / gre.encap build it."""
    if not 0 <= remote < len(cfg.remotes):
        raise IndexError(f"no remote {remote}")
    c = _codec_config(cfg)
    buf = ffi.from_buffer("uint8_t[]", frame)
    cap = cfg.encap.outer_len(family=cfg.remotes[remote].family) + len(buf)
    out = ffi.new("uint8_t[]", cap)
    n = lib.ovl_encap(c, remote, buf, len(buf), out, cap)
    if n < 0:
        raise ValueError(f"cannot encapsulate: {drop_name(-n)}")
    return bytes(ffi.buffer(out, n))


def ecn_outer(cfg: Config, header: bytes, frame: bytes | bytearray | memoryview) -> bytes:
    """Outer IPv4 header (valid checksum) or IPv6 header with cfg's DS field, TTL and DF for inner frame
    (ovl_ecn_outer, the step every packet takes after its template; ecn.outer_fields). ValueError: too short."""
    c = _codec_config(cfg)
    hdr = ffi.new("uint8_t[]", bytes(header))
    buf = ffi.from_buffer("uint8_t[]", frame)
    if lib.ovl_ecn_outer(c, hdr, len(header), buf, len(buf)) < 0:
        raise ValueError("outer header too short")
    return bytes(ffi.buffer(hdr, len(header)))


def parse(cfg: Config, packet: bytes | bytearray | memoryview, family: int = 4) -> tuple[int, int]:
    """cfg.encap.parse(packet, family): (offset of the inner frame or -Drop, tunnel id)."""
    c = _codec_config(cfg)
    buf = ffi.from_buffer("uint8_t[]", packet)
    tid = ffi.new("uint32_t *")
    off = int(lib.ovl_parse6(c, buf, len(buf), family == 6, tid))
    return off, int(tid[0])


def decap(cfg: Config, packet: bytes | bytearray | memoryview) -> int:
    """cfg.encap.decap(packet): offset of the inner frame in the base id, or -Drop."""
    c = _codec_config(cfg)
    buf = ffi.from_buffer("uint8_t[]", packet)
    return int(lib.ovl_decap(c, buf, len(buf)))


_OFFLOAD_ROOM = 64  # segments per ovl_offload_frame call in offload_frame


def offload_frame(vnet: bytes | bytearray | memoryview, frame: bytes | bytearray | memoryview) -> list[bytes]:
    """What the C path makes of a frame read from a TAP with virtio header vnet (10 bytes, native endian).

    A TCP super-frame (gso_type TCPV4/TCPV6) -> its gso_size segments; NEEDS_CSUM -> the
    frame with its checksum completed; otherwise the frame as it is. ValueError (with the
    drop reason) for what the datapath drops and counts.
    """
    _require()
    if len(vnet) != VNET_HDR_LEN:
        raise ValueError(f"a virtio_net_hdr is {VNET_HDR_LEN} bytes")
    vbuf = ffi.from_buffer("uint8_t[]", vnet)
    data = bytearray(frame)  # a partial checksum is completed in place
    fbuf = ffi.from_buffer("uint8_t[]", data)
    # A slot for any segment: the headers are part of the frame, the payload at most gso_size.
    slot = len(data) + struct.unpack_from("=H", bytes(vnet), 4)[0]
    room = _OFFLOAD_ROOM
    out = _raw_alloc("uint8_t[]", max(slot * room, 1))
    seg = ffi.new("uint32_t *")
    ptrs = ffi.new("uint8_t *[]", room)
    lens = ffi.new("uint32_t[]", room)
    segs: list[bytes] = []
    while True:  # as the TX batch does when its ring fills: go on where the last call stopped
        n = int(lib.ovl_offload_frame(vbuf, fbuf, len(data), seg, out, slot, ptrs, lens, room))
        if n < 0:
            raise ValueError(f"dropped: {drop_name(-n)}")
        segs.extend(bytes(ffi.buffer(ptrs[i], lens[i])) for i in range(n))
        if seg[0] == 0:
            return segs


def mss_clamp(frame: bytes | bytearray | memoryview, limit: int, *, partial: bool) -> tuple[bytes, bool]:
    """mss.clamp on a copy of frame (ovl_mss_clamp): (the frame, whether an MSS option was lowered)."""
    _require()
    if not 0 <= limit <= 0xFFFFFFFF:
        raise ValueError(f"limit {limit} out of range")
    data = bytearray(frame)
    buf = ffi.from_buffer("uint8_t[]", data)
    lowered = bool(lib.ovl_mss_clamp(buf, len(data), limit, bool(partial)))
    return bytes(data), lowered


# -- stop the world (the data-path thread, csrc/loop.c) ---------------------------------------


class Paused:
    """``with fwd.paused():`` -- the data-path thread (if one runs) is parked between two batches
    until the block ends, so the block may read and change the C context (ovl_runner_pause).

    Nests (the C side counts), may be entered from any thread but the data-path thread's, and
    costs one attribute test when no thread runs. The runner is taken when the object is made,
    so a block resumes what it paused even if the thread is stopped inside it.
    """

    __slots__ = ("_runner",)

    def __init__(self, runner: Any) -> None:
        self._runner = runner

    def __enter__(self) -> None:
        if self._runner is not None:
            lib.ovl_runner_pause(self._runner)

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self._runner is not None:
            lib.ovl_runner_resume(self._runner)


_NOT_PAUSED = Paused(None)


def _no_pause() -> Paused:
    return _NOT_PAUSED


# -- the MAC table --------------------------------------------------------------------


def _mac(mac: bytes | bytearray | memoryview) -> bytes:
    b = bytes(mac)
    if len(b) != 6:
        raise ValueError(f"a MAC address is 6 bytes, not {len(b)}")
    return b


def _remote(remote: int) -> int:
    if not 0 <= remote <= _REMOTE_MAX:
        raise ValueError(f"remote index {remote} out of range")
    return remote


class FastFdb:
    """datapath.fdb.Fdb on the C table: a table of its own, or the view of a FastForwarder's."""

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        ageing: float = DEFAULT_AGEING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _require()
        check_limits(max_entries, ageing)
        ptr = lib.ovl_fdb_new(max_entries, ageing, int.from_bytes(os.urandom(8), "little"))
        if ptr == ffi.NULL:
            raise MemoryError(f"cannot allocate an FDB of {max_entries} entries")
        self._init(ffi.gc(ptr, lib.ovl_fdb_free), ptr, max_entries, ageing, clock, _no_pause)

    def _init(
        self,
        owner: Any,
        ptr: Any,
        max_entries: int,
        ageing: float,
        clock: Callable[[], float],
        paused: Callable[[], Paused],
    ) -> None:
        self._owner = owner  # keeps the memory behind ptr alive
        self._fdb = ptr
        self.max_entries = max_entries
        self.ageing = ageing
        self._clock = clock
        self._paused = paused  # a forwarder's table: every call parks its data-path thread

    @classmethod
    def _view(
        cls,
        owner: Any,
        ptr: Any,
        max_entries: int,
        ageing: float,
        clock: Callable[[], float],
        paused: Callable[[], Paused],
    ) -> FastFdb:
        view = cls.__new__(cls)
        view._init(owner, ptr, max_entries, ageing, clock, paused)
        return view

    def __len__(self) -> int:
        with self._paused():
            return int(lib.ovl_fdb_count(self._fdb))

    def lookup(self, mac: bytes, *, vlan: int = 0) -> int | None:
        """Remote index for mac in vlan, or None if unknown (an expired entry is removed here)."""
        with self._paused():
            r = lib.ovl_fdb_lookup(self._fdb, _mac(mac), check_vlan(vlan), self._clock())
        return None if r < 0 else int(r)

    def learn(self, mac: bytes, remote: int, *, vlan: int = 0) -> Learn:
        """Record that mac was seen in vlan behind remote."""
        with self._paused():
            return Learn(lib.ovl_fdb_learn(self._fdb, _mac(mac), check_vlan(vlan), _remote(remote), self._clock()))

    def add_static(self, mac: bytes, remote: int, *, vlan: int = 0) -> None:
        """Pin mac in vlan to remote; replaces a learned entry. Raises FdbFull at the cap."""
        with self._paused():
            r = lib.ovl_fdb_add_static(self._fdb, _mac(mac), check_vlan(vlan), _remote(remote))
        if r < 0:
            raise FdbFull(f"FDB full ({self.max_entries} entries)")

    def restore(self, mac: bytes, remote: int, *, vlan: int = 0, age: float = 0.0) -> bool:
        """A learned entry carried over from another table, last seen age seconds ago (rules in
        datapath.fdb); True if entered, False if left out. Raises FdbFull at the cap."""
        with self._paused():
            r = lib.ovl_fdb_restore(self._fdb, _mac(mac), check_vlan(vlan), _remote(remote), float(age), self._clock())
        if r < 0:
            raise FdbFull(f"FDB full ({self.max_entries} entries)")
        return bool(r)

    def remove(self, mac: bytes, *, vlan: int = 0) -> bool:
        """Forget mac in vlan (static or learned); True if it was there."""
        with self._paused():
            return bool(lib.ovl_fdb_remove(self._fdb, _mac(mac), check_vlan(vlan)))

    def expire(self) -> int:
        """Remove every learned entry past its age; returns how many."""
        with self._paused():
            return int(lib.ovl_fdb_expire(self._fdb, self._clock()))

    def flush(self, remote: int | None = None) -> int:
        """Remove every entry (learned and static) behind remote, or all of them; returns how many."""
        with self._paused():
            return int(lib.ovl_fdb_flush(self._fdb, -1 if remote is None else _remote(remote)))

    def set_limits(self, max_entries: int, ageing: float) -> None:
        """A new size cap and ageing time (rules in datapath.fdb); ValueError out of range (C: cap up to 2**28)."""
        check_limits(max_entries, ageing)
        with self._paused():
            r = lib.ovl_fdb_set_limits(self._fdb, max_entries, ageing)
        if r < 0:
            raise ValueError(f"cannot set the FDB to {max_entries} entries (at most 2**28, or no memory)")
        self.max_entries = max_entries
        self.ageing = ageing

    def entries(self) -> list[FdbEntry]:
        """All entries (expired ones not yet swept included), unordered."""
        with self._paused():  # the count and the rows of one moment
            now = self._clock()
            cap = max(int(lib.ovl_fdb_count(self._fdb)), 1)
            macs = ffi.new("uint8_t[]", 6 * cap)
            vlans = ffi.new("uint16_t[]", cap)
            remotes = ffi.new("int32_t[]", cap)
            statics = ffi.new("uint8_t[]", cap)
            ages = ffi.new("double[]", cap)
            n = lib.ovl_fdb_entries(self._fdb, now, macs, vlans, remotes, statics, ages, cap)
        return [
            FdbEntry(
                bytes(ffi.buffer(macs + 6 * i, 6)), int(remotes[i]), bool(statics[i]), float(ages[i]), int(vlans[i])
            )
            for i in range(n)
        ]

    def stats(self) -> dict[str, int]:
        """Counters: learns, moves, refused_full, aged; plus the current entry count."""
        ctr = ffi.new("uint64_t[]", len(FDB_FIELDS))
        with self._paused():
            lib.ovl_fdb_counters(self._fdb, ctr, len(FDB_FIELDS))
            entries = int(lib.ovl_fdb_count(self._fdb))
        return {**{f: int(ctr[i]) for i, f in enumerate(FDB_FIELDS)}, "entries": entries}


# -- the forwarder ----------------------------------------------------------------------


class FastForwarder:
    """PyForwarder's interface on the C datapath context (an opaque struct ovl_dp).

    ``tx``, ``rx`` and ``rx_plan`` load the C rings with copies of the given buffers (the
    batch functions strip and insert VLAN tags in place) and run the same steps
    (``ovl_tx_process``, ``ovl_rx_process``, ``ovl_rx_plan``) that ``from_tap`` /
    ``from_tunnel`` run on the buffers they read into.
    """

    def __init__(
        self,
        cfg: Config,
        clock: Callable[[], float] = time.monotonic,
        tap_vnet: int = 0,
        udp_gro: bool = False,
        gso_socks: Sequence[socket.socket] = (),
        rx_super: bool = False,
    ) -> None:
        """tap_vnet: the TAP's virtio header length (10, see datapath.io.tap), 0 for a plain TAP.

        udp_gro: the receiving socket has UDP_GRO on (VXLAN). gso_socks: UDP sockets
        (underlay.open_gso_sockets) that VXLAN packets leave through with UDP_SEGMENT.
        rx_super: receive super-packets whole (64 KiB receive slots; csrc/rx_super.c), their
        segments sized for cfg.tap_mtu.
        """
        _require()
        self.cfg = cfg
        self._clock = clock
        self.tap_vnet = tap_vnet
        if len(gso_socks) > lib.OVL_GSO_SOCKETS:
            raise ValueError(f"at most {lib.OVL_GSO_SOCKETS} UDP GSO sockets")
        seed = int.from_bytes(os.urandom(8), "little")
        ptr = lib.ovl_dp_new(_make_config(cfg, seed, tap_vnet, udp_gro))
        if ptr == ffi.NULL:
            raise ValueError("configuration out of range for the C fast path (batch, MTU, FDB size, VLAN map)")
        self._dp = ffi.gc(ptr, lib.ovl_dp_free)
        self._runner: Any = None  # struct ovl_runner, made by the first runner_start
        self._running: Any = None  # the runner while a data-path thread may use the context
        self._rings: dict[int, TxRing] = {}  # TX rings the C side has mapped (their sockets stay open)
        self._send6: socket.socket | None = None  # the raw IPv6 send socket (kept open while C uses it)
        self._recv2 = -1  # the second receiving socket's fd the runner polls (ovl_runner_set_recv2)
        self._gso_socks = list(gso_socks)  # the fds stay open as long as the C side uses them
        fds = ffi.new("int32_t[]", [s.fileno() for s in self._gso_socks] or [-1])
        lib.ovl_dp_set_gso_fds(self._dp, fds, len(self._gso_socks))
        self.rx_super = rx_super
        if rx_super:
            self.set_tap_mtu(cfg.tap_mtu)
        self.fdb = FastFdb._view(
            self._dp, lib.ovl_dp_fdb(self._dp), cfg.fdb.max_entries, cfg.fdb.ageing, clock, self.paused
        )
        self._remote_memo: dict[bytes, Remote] = {}  # remotes(): address + local bytes -> Remote
        for mac, remote, vlan in cfg.static_entries:
            self.fdb.add_static(mac, remote, vlan=vlan)
        # What snapshot() and rx() need of the remotes, kept by add/remove (one change costs O(1): hundreds of
        # etcd members join at once): slot -> address, address -> its 16 bytes, the slots in order (lazily).
        self._slot_addr = {slot: r.addr for slot, r, _ in self.remotes()}
        self._src = {a: to16(a) for a in self._slot_addr.values()}
        self._slot_addrs: list[tuple[int, str]] | None = None
        # What rx() passes for a source that is not a remote: "::", which no remote can be.
        self._not_remote = bytes(lib.OVL_ADDR_LEN)
        # Room for any packet or frame the rings hold (IPv4 total length, a super-frame).
        self._out = _raw_alloc("uint8_t[]", 1 << 17)
        self._vnet = ffi.new("uint8_t[]", 16)
        self._inject = False  # set_inject was called
        if lib.ovl_dp_set_pmtu_rate(self._dp, cfg.tunnel.pmtu_icmp_rate, pmtu.DEFAULT_BURST) < 0:
            raise ValueError("tunnel.pmtu_icmp_rate out of range for the C fast path")

    # -- issue 11, path MTU (csrc/pmtu.c) ---------------------------------------------------

    def set_remote_mtu(self, slot: int, mtu: int) -> None:
        """The path MTU towards the remote in slot (68..65535; 0: the underlay MTU again). KeyError: a free slot."""
        if mtu and not pmtu.MIN_MTU <= mtu <= 0xFFFF:
            raise ValueError(f"path MTU {mtu} out of range {pmtu.MIN_MTU}..65535")
        with self.paused():
            failed = not 0 <= slot < lib.OVL_MAX_REMOTES or lib.ovl_dp_set_remote_mtu(self._dp, slot, mtu) < 0
        if failed:
            raise KeyError(f"no remote in slot {slot}")

    def remote_mtu(self, slot: int) -> int:
        """The path MTU in effect towards the remote in slot (KeyError: a free slot)."""
        mtu = int(lib.ovl_dp_remote_mtu(self._dp, slot)) if 0 <= slot < lib.OVL_MAX_REMOTES else 0
        if not mtu:
            raise KeyError(f"no remote in slot {slot}")
        return mtu

    def pmtu_replies(self) -> list[bytes]:
        """The ICMP replies queued since the last call (virtio header first with one), without the TAP."""
        out: list[bytes] = []
        with self.paused():
            q = 0
            while (n := int(lib.ovl_dp_pmtu_reply(self._dp, q, self._out, len(self._out)))) >= 0:
                out.append(bytes(ffi.buffer(self._out, n))[self.tap_vnet :])
                q += 1
            lib.ovl_dp_pmtu_clear(self._dp)
        return out

    def _fragments(self) -> list[tuple[int, bytes]]:
        """The outer fragments of the copies the last ovl_tx_process queued (inside a pause)."""
        out: list[tuple[int, bytes]] = []
        remote = ffi.new("uint32_t *")
        q = 0
        while True:
            k = 0
            while (n := int(lib.ovl_tx_fragment(self._dp, q, k, remote, self._out, len(self._out)))) > 0:
                out.append((int(remote[0]), bytes(ffi.buffer(self._out, n))))
                k += 1
            if n < 0 and k == 0:
                return out
            q += 1

    # -- VXLAN TX through the injection TAP (csrc/inject.c) -----------------------------

    def set_inject(self, fd: int, mac: bytes, udp_tunnel_csum: bool) -> None:
        """Send TCP super-frames to remotes through the injection TAP fd (MAC mac), the kernel segmenting.

        fd -1: headers are built (inject_header) but nothing is written. udp_tunnel_csum: the TAP
        has TUN_F_UDP_TUNNEL_GSO_CSUM (outer UDP checksums). ValueError if the C side cannot
        (not VXLAN, no virtio header on the bridge TAP).
        """
        with self.paused():  # dp->inj may be made here: never under a running batch
            failed = lib.ovl_dp_set_inject(self._dp, fd, _mac(mac), bool(udp_tunnel_csum)) < 0
        if failed:
            raise ValueError("the injection TAP needs VXLAN and a bridge TAP with a virtio header")
        self._inject = True

    def set_inject6(self, on: bool) -> None:
        """Issue 11: super-frames to IPv6 remotes through the injection TAP too (the host forwards IPv6
        from it); off again after every set_inject. ValueError before set_inject."""
        with self.paused():
            failed = lib.ovl_dp_set_inject6(self._dp, bool(on)) < 0
        if failed:
            raise ValueError("set_inject6 before set_inject")

    def injecting(self) -> bool:
        """True while super-frames go through the injection TAP (set, and not refused by the kernel)."""
        with self.paused():
            return bool(lib.ovl_dp_injecting(self._dp))

    def inject_errno(self) -> int:
        """The errno of the injection write the kernel refused (the path is off since), or 0."""
        with self.paused():  # the refusal's errno and the off switch, of one moment
            return int(lib.ovl_dp_inject_errno(self._dp))

    def inject_drain(self) -> int:
        """Read and drop (count as drained) what the kernel queued on the injection TAP; returns how many.

        OSError when a read fails otherwise than EAGAIN (EBADFD: the device was deleted)."""
        with self.paused():
            n = int(lib.ovl_inject_drain(self._dp))
            err = ffi.errno
        if n < 0:
            raise OSError(err, f"reading the injection TAP: {os.strerror(err)}")
        return n

    def inject_header(self, remote: int, vnet: bytes, frame: bytes) -> bytes:
        """What the injection writes for super-frame (its virtio header vnet, 10 bytes) to remote slot remote:
        24-byte virtio header + outer Ethernet + IPv4 or IPv6/UDP/VXLAN + the inner frame. ValueError with the
        fallback reason (an INJECT_FIELDS name) when the frame would be segmented by us instead."""
        if len(vnet) != VNET_HDR_LEN:
            raise ValueError(f"a virtio_net_hdr is {VNET_HDR_LEN} bytes")
        cap = len(frame) + 128
        out = _raw_alloc("uint8_t[]", cap)
        with self.paused():  # it builds in the buffer the batch writes its headers from
            n = int(lib.ovl_inject_header(self._dp, remote, bytes(vnet), bytes(frame), len(frame), out, cap))
        if n < 0:
            raise ValueError(f"not injected: {INJECT_FIELDS[-n]}")
        return bytes(ffi.buffer(out, n))

    def coalescing(self) -> bool:
        """True if received TCP segments (and super-packets) go to the TAP as super-frames (rx_coalesce)."""
        return bool(lib.ovl_dp_coalescing(self._dp))

    def set_tap_mtu(self, mtu: int) -> None:
        """The TAP's MTU changed: super-packets are cut / labelled for it (no-op without rx_super)."""
        if not self.rx_super:
            return
        with self.paused():
            failed = lib.ovl_dp_set_rx_super(self._dp, mtu) < 0
        if failed:
            raise ValueError(f"TAP MTU {mtu} out of range for receiving super-packets (or no memory)")

    def mss_limit(self, remote: int | None, v6: bool, keyed: bool, l2_len: int) -> int:
        """PyForwarder.mss_limit (ovl_dp_mss_limit): the MSS a SYN gets towards remote (None: a flood)."""
        r = -1 if remote is None else _remote(remote)
        with self.paused():
            return int(lib.ovl_dp_mss_limit(self._dp, r, bool(v6), bool(keyed), l2_len))

    # -- the remotes (slots; see datapath.pypath) ------------------------------------

    def add_remote(self, remote: Remote) -> int:
        """Add a resolved remote in the lowest free slot; returns the slot.

        ValueError for an address already there or a full table (OVL_MAX_REMOTES).
        """
        remote.local_bytes  # noqa: B018 (ConfigError if not resolved)
        local = to16(remote.local or "")
        with self.paused():
            slot = int(lib.ovl_dp_add_remote(self._dp, to16(remote.addr), local))
        if slot == lib.OVL_ADD_DUPLICATE:
            raise ValueError(f"remote {remote.addr} is already there")
        if slot == lib.OVL_ADD_FULL:
            raise ValueError(f"at most {lib.OVL_MAX_REMOTES} remotes are supported")
        if slot < 0:
            raise MemoryError(f"cannot grow the TX rings for remote {remote.addr}")
        self._slot_addr[slot] = remote.addr
        self._src[remote.addr] = to16(remote.addr)
        self._slot_addrs = None
        return slot

    def remove_remote(self, slot: int) -> int:
        """Remove the remote in slot and the FDB entries behind it; returns how many entries went.

        KeyError for a free slot.
        """
        with self.paused():
            n = int(lib.ovl_dp_remove_remote(self._dp, slot)) if 0 <= slot < lib.OVL_MAX_REMOTES else -1
        if n < 0:
            raise KeyError(f"no remote in slot {slot}")
        self._src.pop(self._slot_addr.pop(slot), None)
        self._slot_addrs = None
        return n

    def set_send6(self, sock: socket.socket | None) -> None:
        """The raw IPv6 socket packets to IPv6 remotes leave through (from_tap's send_sock is the IPv4 one)."""
        with self.paused():
            self._send6 = sock
            lib.ovl_dp_set_send6_fd(self._dp, sock.fileno() if sock is not None else -1)

    def remote_outer_len(self, slot: int, keyed: bool) -> int:
        """Outer bytes in front of a frame to the remote in slot (0 for a free slot): IPv6 adds 20."""
        with self.paused():
            return int(lib.ovl_dp_remote_outer_len(self._dp, slot, keyed)) if 0 <= slot < lib.OVL_MAX_REMOTES else 0

    def set_remote_local(self, slot: int, local: str) -> None:
        """Send to the remote in slot from local from now on; FDB entries and counters stay (KeyError: a free slot
        or an address of another family)."""
        if not 0 <= slot < lib.OVL_MAX_REMOTES:
            raise KeyError(f"no remote in slot {slot}")
        with self.paused():
            r = lib.ovl_dp_set_remote_local(self._dp, slot, to16(local))
        if r != 0:
            raise KeyError(f"no remote in slot {slot}")

    def remotes(self) -> list[tuple[int, Remote, float | None]]:
        """The remotes in use, in slot order: (slot, remote, clock at its last delivered packet or None)."""
        cap = lib.OVL_MAX_REMOTES
        slots = ffi.new("uint32_t[]", cap)
        w = lib.OVL_ADDR_LEN
        addrs = ffi.new("uint8_t[]", w * cap)
        locals_ = ffi.new("uint8_t[]", w * cap)
        last = ffi.new("double[]", cap)
        seen = ffi.new("uint8_t[]", cap)
        with self.paused():
            n = lib.ovl_dp_remotes(self._dp, slots, addrs, locals_, last, seen, cap)
        raw_addrs, raw_locals = ffi.buffer(addrs, w * n)[:], ffi.buffer(locals_, w * n)[:]
        # Remote objects by their 32 address bytes: building one validates both addresses (ipaddress),
        # about 40 µs, which with 1,000 remotes made every call (remote add, show, a metrics scrape)
        # cost 40 ms on the loop's thread. Only the remotes of this call are kept.
        memo, self._remote_memo = self._remote_memo, {}
        out = []
        for i in range(n):
            a, lo = raw_addrs[w * i : w * (i + 1)], raw_locals[w * i : w * (i + 1)]
            r = memo.get(a + lo) or Remote(from16(a), from16(lo))
            self._remote_memo[a + lo] = r
            out.append((int(slots[i]), r, float(last[i]) if seen[i] else None))
        return out

    def _slots_in_order(self) -> list[tuple[int, str]]:
        """(slot, address) of the remotes in slot order, sorted once per change of them."""
        if self._slot_addrs is None:
            self._slot_addrs = sorted(self._slot_addr.items())
        return self._slot_addrs

    def _chunks(self, items: Iterable[Any]) -> Iterable[Sequence[Any]]:
        items = list(items)
        for i in range(0, len(items), self.cfg.batch):
            yield items[i : i + self.cfg.batch]

    # -- packet logic, no I/O ----------------------------------------------------

    def tx(self, frames: Iterable[bytes]) -> list[tuple[int, bytes]]:
        """Frames from the TAP -> (remote index, outer packet) pairs to send."""
        dp = self._dp
        out: list[tuple[int, bytes]] = []
        frags: list[tuple[int, bytes]] = []  # after the packets, as PyForwarder.tx
        remote = ffi.new("uint32_t *")
        for chunk in self._chunks(frames):
            bufs = [ffi.from_buffer("uint8_t[]", bytearray(f)) for f in chunk]  # alive until the results are read
            with self.paused():
                for i, buf in enumerate(bufs):
                    lib.ovl_tx_load(dp, i, buf, len(buf))
                k = lib.ovl_tx_process(dp, len(bufs), self._clock())
                for m in range(k):
                    n = _fits(lib.ovl_tx_packet(dp, m, remote, self._out, len(self._out)), len(self._out))
                    out.append((int(remote[0]), bytes(ffi.buffer(self._out, n))))
                frags.extend(self._fragments())
        return out + frags

    def _rx_load(self, chunk: Sequence[RxPacket]) -> list[Any]:
        bufs = [ffi.from_buffer("uint8_t[]", bytearray(p[0])) for p in chunk]  # alive until the results are read
        for i, buf in enumerate(bufs):
            lib.ovl_rx_load(self._dp, i, buf, len(buf), self._src.get(chunk[i][1], self._not_remote), 0)
            if len(chunk[i]) > 2:  # the outer DS field (ecn); ovl_rx_load sets 0
                lib.ovl_rx_set_tos(self._dp, i, chunk[i][2])  # type: ignore[misc]
            if len(chunk[i]) > 3:  # the outer destination (IPv6 GRE: IPV6_PKTINFO)
                lib.ovl_rx_load_dst(self._dp, i, to16(chunk[i][3]))  # type: ignore[misc]
        lib.ovl_rx_process(self._dp, len(bufs), self._clock())
        return bufs

    def rx(self, packets: Iterable[RxPacket]) -> list[tuple[int, bytes]]:
        """(packet, outer source address[, outer DS field[, outer destination]]) -> (remote index, inner
        frame) pairs for the TAP."""
        out: list[tuple[int, bytes]] = []
        remote = ffi.new("int32_t *")
        for chunk in self._chunks(packets):
            with self.paused():
                bufs = self._rx_load(chunk)
                for i, buf in enumerate(bufs):
                    off = lib.ovl_rx_result(self._dp, i, remote)
                    if off >= 0:
                        out.append((int(remote[0]), bytes(ffi.buffer(buf)[off:])))
        return out

    def rx_plan(self, packets: Iterable[RxPacket]) -> list[tuple[bytes, bytes, int]]:
        """What from_tunnel writes to the TAP for these packets: (virtio header, frame, remote index) per write.

        The same steps as from_tunnel (ovl_rx_process, then ovl_rx_plan: with rx_coalesce and
        a virtio header, a TCP flow's segments of one batch become one super-frame), without a
        socket or a TAP. Counted are rx_process's drops, not the TAP writes (tap_tx, rx_packets).
        """
        out: list[tuple[bytes, bytes, int]] = []
        remote = ffi.new("int32_t *")
        for chunk in self._chunks(packets):
            with self.paused():
                bufs = self._rx_load(chunk)
                for w in range(lib.ovl_rx_plan(self._dp, len(bufs))):
                    n = _fits(
                        lib.ovl_rx_plan_write(self._dp, w, self._vnet, self._out, len(self._out), remote),
                        len(self._out),
                    )
                    vnet = bytes(ffi.buffer(self._vnet, self.tap_vnet))
                    out.append((vnet, bytes(ffi.buffer(self._out, n)), int(remote[0])))
        return out

    # -- one batch of I/O -----------------------------------------------------------

    def _check_io(self) -> None:
        err = lib.ovl_dp_io_errno(self._dp)
        if err:
            raise OSError(err, os.strerror(err))

    def from_tap(self, tap_fd: int, send_sock: socket.socket) -> int:
        """Drain up to one batch of frames from the TAP and send them; returns frames read.

        A read error other than EAGAIN raises OSError, after the frames read before it were sent.
        """
        with self.paused():
            n = int(lib.ovl_from_tap(self._dp, tap_fd, send_sock.fileno(), self._clock()))
            self._check_io()
        return n

    def from_tunnel(self, recv_sock: socket.socket, tap_fd: int) -> int:
        """Receive up to one batch from the underlay and write the inner frames to the TAP."""
        with self.paused():
            n = int(lib.ovl_from_tunnel(self._dp, recv_sock.fileno(), tap_fd, self._clock()))
            self._check_io()
        return n

    # -- the data-path thread (csrc/loop.c; datapath/dpthread.py runs it) ----------------------

    def paused(self) -> Paused:
        """A context manager that parks the data-path thread, if one runs, for the block (see Paused)."""
        return Paused(self._running)

    def runner_start(self) -> None:
        """Before a data-path thread starts: make the runner (once) and clear an old stop; from here
        on every call of this object goes through a pause. MemoryError/OSError if it cannot be made."""
        if self._runner is None:
            r = lib.ovl_runner_new()
            if r == ffi.NULL:
                raise OSError(ffi.errno, f"cannot make the data-path runner (eventfd): {os.strerror(ffi.errno)}")
            self._runner = ffi.gc(r, lib.ovl_runner_free)
        if lib.ovl_runner_rearm(self._runner) != 0:
            raise RuntimeError("a data-path thread still runs on this forwarder")
        self._running = self._runner

    def runner_set_recv2(self, fd: int) -> None:
        """A second receiving socket the data-path loop polls (the IPv6 one beside an IPv4 one); -1: none.
        After runner_start, before run."""
        self._recv2 = fd
        if self._runner is not None:
            lib.ovl_runner_set_recv2(self._runner, fd)

    def run(self, tap_fd: int, recv_fd: int, send_fd: int) -> tuple[int, int]:
        """The blocking loop (ovl_runner_run; the GIL is released): (enum ovl_run_result, errno).

        Only from the one data-path thread, between runner_start and runner_end; tap_fd < 0: the TAP
        is not read (only written to).
        """
        err = ffi.new("int32_t *")
        rc = int(lib.ovl_runner_run(self._running, self._dp, tap_fd, recv_fd, send_fd, err))
        return rc, int(err[0])

    def runner_stop(self) -> None:
        """Ask the loop to return after its current batch (also while paused); a no-op without a runner."""
        if self._running is not None:
            lib.ovl_runner_stop(self._running)

    def runner_end(self) -> None:
        """After the data-path thread has been joined: calls no longer pause."""
        self._running = None

    def runner_state(self) -> int:
        """enum ovl_runner_bits of the runner now (0 before the first runner_start)."""
        return 0 if self._runner is None else int(lib.ovl_runner_state(self._runner))

    # -- AF_PACKET TX rings (csrc/ring.c) -------------------------------------------------

    def enable_tx_rings(self) -> None:
        """Ring mode: packets to remotes without a next hop are counted as ring_fallback from now on."""
        with self.paused():
            err = lib.ovl_dp_enable_tx_rings(self._dp)
        if err < 0:
            raise MemoryError("cannot allocate the TX ring table")

    def set_tx_ring(self, index: int, ring: TxRing) -> None:
        """Map ring (datapath.io.ring.open_tx_ring) as TX ring index; OSError if the kernel refuses the mmap.

        ring's socket must stay open until :meth:`clear_tx_ring`.
        """
        g = ring.geometry
        with self.paused():
            err = lib.ovl_dp_set_tx_ring(
                self._dp, index, ring.sock.fileno(), g.block_size, g.block_nr, g.frame_size, g.max_len
            )
        if err < 0:
            raise OSError(-err, f"TX ring {index} on {ring.name}: {os.strerror(-err)}")
        self._rings[index] = ring  # alive as long as the C side has it mapped

    def clear_tx_ring(self, index: int) -> TxRing | None:
        """Unmap TX ring index (its remotes go the raw way); returns its TxRing (to close), or None."""
        with self.paused():
            lib.ovl_dp_clear_tx_ring(self._dp, index)
        return self._rings.pop(index, None)

    def set_nexthop(self, slot: int, ring: int | None, dst: bytes = b"", src: bytes = b"") -> None:
        """Send to the remote in slot through TX ring ring in frames from MAC src to MAC dst; ring None: raw socket.

        KeyError for a free slot or a ring not set.
        """
        macs = (ffi.NULL, ffi.NULL) if ring is None else (_mac(dst), _mac(src))
        with self.paused():
            ok = lib.ovl_dp_set_nexthop(self._dp, slot, -1 if ring is None else ring, *macs) == 0
        if not ok:
            raise KeyError(f"no remote in slot {slot} or no TX ring {ring}")

    def ring_counters(self) -> dict[str, int]:
        """The TX ring counters (RING_FIELDS)."""
        buf = ffi.new("uint64_t[]", len(RING_FIELDS))
        with self.paused():
            lib.ovl_dp_ring_counters(self._dp, buf, len(RING_FIELDS))
        return {name: int(buf[i]) for i, name in enumerate(RING_FIELDS)}

    def tx_ring_frames(self, frames: Iterable[bytes]) -> list[tuple[int, bytes | None]]:
        """Frames from the TAP -> (remote index, Ethernet frame as its TX ring slot would hold it), as tx();
        None for a packet that would go the raw way (no next hop, or too big for the ring's device). (A packet
        without DF gets an IP id in its slot too, csrc/ring.c ip4_ident; here it keeps the raw packet's 0.)"""
        dp = self._dp
        out: list[tuple[int, bytes | None]] = []
        remote = ffi.new("uint32_t *")
        for chunk in self._chunks(frames):
            bufs = [ffi.from_buffer("uint8_t[]", bytearray(f)) for f in chunk]
            with self.paused():
                for i, buf in enumerate(bufs):
                    lib.ovl_tx_load(dp, i, buf, len(buf))
                k = lib.ovl_tx_process(dp, len(bufs), self._clock())
                for m in range(k):
                    n = _fits(lib.ovl_tx_ring_frame(dp, m, remote, self._out, len(self._out)), len(self._out))
                    out.append((int(remote[0]), bytes(ffi.buffer(self._out, n)) if n else None))
        return out

    # -- observation -------------------------------------------------------------------

    def _counters(self, kind: int, n: int) -> list[int]:
        buf = ffi.new("uint64_t[]", max(n, 1))
        with self.paused():
            got = lib.ovl_dp_counters(self._dp, kind, buf, n)
        return [int(buf[i]) for i in range(got)]

    def snapshot(self) -> Snapshot:
        """A copy of all counters, of one moment (one pause)."""
        width = len(REMOTE_FIELDS)
        with self.paused():
            stats = self._counters(lib.OVL_COUNTERS_STATS, len(STAT_FIELDS))
            drops = self._counters(lib.OVL_COUNTERS_DROPS, lib.OVL_DROP_COUNT)
            per_remote = self._counters(lib.OVL_COUNTERS_REMOTES, lib.OVL_MAX_REMOTES * width)
            fdb = self.fdb.stats()
        return Snapshot(
            stats=dict(zip(STAT_FIELDS, stats, strict=True)),
            drops={drop_name(d): drops[d] for d in Drop},
            remotes=[
                {"remote": addr, **dict(zip(REMOTE_FIELDS, per_remote[i * width : (i + 1) * width], strict=True))}
                for i, addr in self._slots_in_order()
            ],
            fdb=fdb,
            inject=dict(zip(INJECT_FIELDS, self._counters_inject(), strict=True)) if self._inject else None,
        )

    def _counters_inject(self) -> list[int]:
        buf = ffi.new("uint64_t[]", len(INJECT_FIELDS))
        got = lib.ovl_dp_inject_counters(self._dp, buf, len(INJECT_FIELDS))
        return [int(buf[i]) for i in range(got)]
