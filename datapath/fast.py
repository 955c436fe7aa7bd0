"""The C fast path (``csrc/ovl_fast.c``, compiled by cffi as ``datapath._ovl_fast``).

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
"""

from __future__ import annotations

import importlib
import os
import socket
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from typing import Any

from datapath.config import Config
from datapath.counters import FDB_FIELDS, REMOTE_FIELDS, STAT_FIELDS, Drop, Snapshot, drop_name
from datapath.ether import ETH_HLEN
from datapath.fdb import DEFAULT_AGEING, DEFAULT_MAX_ENTRIES, FdbEntry, FdbFull, Learn, check_limits, check_vlan
from datapath.io.tap import VNET_HDR_LEN

_ovl_fast: Any
try:
    _ovl_fast = importlib.import_module("datapath._ovl_fast")
except ImportError:  # not built
    _ovl_fast = None

ffi: Any = _ovl_fast.ffi if _ovl_fast is not None else None
lib: Any = _ovl_fast.lib if _ovl_fast is not None else None

_REMOTE_MAX = (1 << 31) - 1
_C_MODES = {"vxlan": 0, "gre": 1} if lib is None else {"vxlan": lib.OVL_MODE_VXLAN, "gre": lib.OVL_MODE_GRE}


def available() -> bool:
    """True if the compiled module could be loaded."""
    return _ovl_fast is not None


def _require() -> None:
    if _ovl_fast is None:
        raise RuntimeError("the C fast path is not built: run `pip install -e .` or `python csrc/build.py`")


def _addr32(addr: bytes) -> int:
    """A 4-byte address as the uint32_t that holds it in network byte order."""
    return int(struct.unpack("=I", addr)[0])


def _make_config(cfg: Config, seed: int, tap_vnet: int = 0, udp_gro: bool = False) -> Any:
    _require()
    c = ffi.new("struct ovl_config *")
    t, encap = cfg.tunnel, cfg.encap
    c.udp_gro = udp_gro and encap.udp
    c.vnet_hdr_len = tap_vnet
    c.rx_coalesce = bool(cfg.offload.coalesce and tap_vnet)
    c.mode = _C_MODES[encap.name]
    c.vni = t.vni or 0
    c.key = t.key or 0
    c.has_key = t.key is not None
    c.dport = encap.port
    c.udp_csum = t.udp_csum
    c.ttl = t.ttl
    c.underlay_mtu = cfg.underlay_mtu
    c.batch = cfg.batch
    c.slot_size = cfg.slot_size
    c.n_remotes = len(cfg.remotes)
    c.fdb_max = cfg.fdb.max_entries
    c.fdb_ageing = cfg.fdb.ageing
    c.fdb_seed = seed
    for i, r in enumerate(cfg.remotes):
        c.remote_addr[i] = _addr32(r.addr_bytes)
        c.remote_local[i] = _addr32(r.local_bytes)
    c.n_vlans = len(t.vlan_map)
    for vlan, tid in t.vlan_map:
        c.vlan_tid[vlan] = tid
        c.vlan_mapped[vlan] = 1
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
    cap = cfg.outer_len + len(buf)
    out = ffi.new("uint8_t[]", cap)
    n = lib.ovl_encap(c, remote, buf, len(buf), out, cap)
    if n < 0:
        raise ValueError(f"cannot encapsulate: {drop_name(-n)}")
    return bytes(ffi.buffer(out, n))


def parse(cfg: Config, packet: bytes | bytearray | memoryview) -> tuple[int, int]:
    """vxlan.parse(packet) / gre.parse(packet) (by cfg.mode): (offset of the inner frame or -Drop, tunnel id)."""
    c = _codec_config(cfg)
    buf = ffi.from_buffer("uint8_t[]", packet)
    tid = ffi.new("uint32_t *")
    off = int(lib.ovl_parse(c, buf, len(buf), tid))
    return off, int(tid[0])


def decap(cfg: Config, packet: bytes | bytearray | memoryview) -> int:
    """vxlan.decap(packet, cfg.vni) / gre.decap(packet, cfg.key): offset of the inner frame or -Drop."""
    c = _codec_config(cfg)
    buf = ffi.from_buffer("uint8_t[]", packet)
    return int(lib.ovl_decap(c, buf, len(buf)))


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
    fbuf = ffi.from_buffer("uint8_t[]", frame)
    # At least one payload byte per segment; headers (Ethernet + 2 tags + IP + TCP) under 160 bytes.
    max_segs = len(fbuf) + 1
    cap = len(fbuf) * min(len(fbuf), 160) + len(fbuf) + 65536
    out = ffi.new("uint8_t[]", max(cap, 1))
    lens = ffi.new("uint32_t[]", max_segs)
    n = int(lib.ovl_offload_frame(vbuf, fbuf, len(fbuf), out, cap, lens, max_segs))
    if n < 0:
        raise ValueError(f"dropped: {drop_name(-n)}")
    segs, at = [], 0
    for i in range(n):
        segs.append(bytes(ffi.buffer(out + at, lens[i])))
        at += lens[i]
    return segs


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
        self._init(ffi.gc(ptr, lib.ovl_fdb_free), ptr, max_entries, ageing, clock)

    def _init(self, owner: Any, ptr: Any, max_entries: int, ageing: float, clock: Callable[[], float]) -> None:
        self._owner = owner  # keeps the memory behind ptr alive
        self._fdb = ptr
        self.max_entries = max_entries
        self.ageing = ageing
        self._clock = clock

    @classmethod
    def _view(cls, owner: Any, ptr: Any, max_entries: int, ageing: float, clock: Callable[[], float]) -> FastFdb:
        view = cls.__new__(cls)
        view._init(owner, ptr, max_entries, ageing, clock)
        return view

    def __len__(self) -> int:
        return int(lib.ovl_fdb_count(self._fdb))

    def lookup(self, mac: bytes, *, vlan: int = 0) -> int | None:
        """Remote index for mac in vlan, or None if unknown (an expired entry is removed here)."""
        r = lib.ovl_fdb_lookup(self._fdb, _mac(mac), check_vlan(vlan), self._clock())
        return None if r < 0 else int(r)

    def learn(self, mac: bytes, remote: int, *, vlan: int = 0) -> Learn:
        """Record that mac was seen in vlan behind remote."""
        return Learn(lib.ovl_fdb_learn(self._fdb, _mac(mac), check_vlan(vlan), _remote(remote), self._clock()))

    def add_static(self, mac: bytes, remote: int, *, vlan: int = 0) -> None:
        """Pin mac in vlan to remote; replaces a learned entry. Raises FdbFull at the cap."""
        if lib.ovl_fdb_add_static(self._fdb, _mac(mac), check_vlan(vlan), _remote(remote)) < 0:
            raise FdbFull(f"FDB full ({self.max_entries} entries)")

    def remove(self, mac: bytes, *, vlan: int = 0) -> bool:
        """Forget mac in vlan (static or learned); True if it was there."""
        return bool(lib.ovl_fdb_remove(self._fdb, _mac(mac), check_vlan(vlan)))

    def expire(self) -> int:
        """Remove every learned entry past its age; returns how many."""
        return int(lib.ovl_fdb_expire(self._fdb, self._clock()))

    def entries(self) -> list[FdbEntry]:
        """All entries (expired ones not yet swept included), unordered."""
        now = self._clock()
        n = len(self)
        rows = ffi.new("struct ovl_fdb_entry[]", max(n, 1))
        n = lib.ovl_fdb_entries(self._fdb, now, rows, n)
        return [
            FdbEntry(bytes(ffi.buffer(e.mac)), int(e.remote), bool(e.is_static), float(e.age), int(e.vlan))
            for e in (rows[i] for i in range(n))
        ]

    def stats(self) -> dict[str, int]:
        """Counters: learns, moves, refused_full, aged; plus the current entry count."""
        st = ffi.new("struct ovl_fdb_stats *")
        lib.ovl_fdb_get_stats(self._fdb, st)
        return {**{f: int(getattr(st, f)) for f in FDB_FIELDS}, "entries": len(self)}


# -- the forwarder ----------------------------------------------------------------------


class FastForwarder:
    """PyForwarder's interface on the C datapath context (struct ovl_dp).

    ``tx`` and ``rx`` point the C rings at copies of the given buffers (the
    batch functions strip and insert VLAN tags in place) and run the same
    batch functions (``ovl_tx_process`` / ``ovl_rx_process``) that
    ``from_tap`` / ``from_tunnel`` run on the buffers they read into.
    """

    def __init__(
        self,
        cfg: Config,
        clock: Callable[[], float] = time.monotonic,
        tap_vnet: int = 0,
        udp_gro: bool = False,
        gso_socks: Sequence[socket.socket] = (),
    ) -> None:
        """tap_vnet: the TAP's virtio header length (10, see datapath.tap), 0 for a plain TAP.

        udp_gro: the receiving socket has UDP_GRO on (VXLAN). gso_socks: UDP sockets
        (underlay.open_gso_sockets) that VXLAN packets leave through with UDP_SEGMENT.
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
        if cfg.encap.udp:
            self._gso_socks = list(gso_socks)  # the fds stay open as long as the C side uses them
            for i, s in enumerate(self._gso_socks):
                self._dp.gso_fd[i] = s.fileno()
            self._dp.n_gso_fd = len(self._gso_socks)
        self.fdb = FastFdb._view(self._dp, self._dp.fdb, cfg.fdb.max_entries, cfg.fdb.ageing, clock)
        for mac, remote, vlan in cfg.static_entries:
            self.fdb.add_static(mac, remote, vlan=vlan)
        self._src = {r.addr: _addr32(r.addr_bytes) for r in cfg.remotes}
        # What rx() passes for a source that is not a remote: any address no remote has.
        self._not_remote = min(set(range(len(cfg.remotes) + 1)) - set(self._src.values()))

    def _chunks(self, items: Iterable[Any]) -> Iterable[Sequence[Any]]:
        items = list(items)
        for i in range(0, len(items), self.cfg.batch):
            yield items[i : i + self.cfg.batch]

    # -- packet logic, no I/O ----------------------------------------------------

    def tx(self, frames: Iterable[bytes]) -> list[tuple[int, bytes]]:
        """Frames from the TAP -> (remote index, outer packet) pairs to send."""
        dp = self._dp
        out: list[tuple[int, bytes]] = []
        for chunk in self._chunks(frames):
            bufs = [ffi.from_buffer("uint8_t[]", bytearray(f)) for f in chunk]  # alive until the results are read
            for i, buf in enumerate(bufs):
                dp.tx_in[i].data = buf
                dp.tx_in[i].len = len(buf)
            k = lib.ovl_tx_process(dp, len(bufs), self._clock())
            sent = [bytes(ffi.buffer(dp.tx_in[i].data, dp.tx_in[i].len)) for i in range(len(bufs))]
            for m in range(k):
                o = dp.tx_out[m]
                out.append((int(o.remote), bytes(ffi.buffer(o.hdr, o.hdr_len)) + sent[o.frame]))
        return out

    def rx(self, packets: Iterable[tuple[bytes, str]]) -> list[tuple[int, bytes]]:
        """(packet, outer source address) -> (remote index, inner frame) pairs for the TAP."""
        dp = self._dp
        out: list[tuple[int, bytes]] = []
        for chunk in self._chunks(packets):
            bufs = [ffi.from_buffer("uint8_t[]", bytearray(pkt)) for pkt, _ in chunk]
            for i, buf in enumerate(bufs):
                e = dp.rx[i]
                e.data = buf
                e.len = len(buf)
                e.src = self._src.get(chunk[i][1], self._not_remote)
                e.truncated = 0
            lib.ovl_rx_process(dp, len(bufs), self._clock())
            for i in range(len(bufs)):
                e = dp.rx[i]
                if e.result >= 0:
                    out.append((int(e.remote), bytes(ffi.buffer(e.data + e.result, e.len - e.result))))
        return out

    # -- one batch of I/O -----------------------------------------------------------

    def _check_io(self) -> None:
        err = self._dp.io_errno
        if err:
            raise OSError(err, os.strerror(err))

    def from_tap(self, tap_fd: int, send_sock: socket.socket) -> int:
        """Drain up to one batch of frames from the TAP and send them; returns frames read.

        A read error other than EAGAIN raises OSError, after the frames read before it were sent.
        """
        n = int(lib.ovl_from_tap(self._dp, tap_fd, send_sock.fileno(), self._clock()))
        self._check_io()
        return n

    def from_tunnel(self, recv_sock: socket.socket, tap_fd: int) -> int:
        """Receive up to one batch from the underlay and write the inner frames to the TAP."""
        n = int(lib.ovl_from_tunnel(self._dp, recv_sock.fileno(), tap_fd, self._clock()))
        self._check_io()
        return n

    # -- observation -------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """A copy of all counters."""
        dp = self._dp
        return Snapshot(
            stats={f: int(getattr(dp.stats, f)) for f in STAT_FIELDS},
            drops={drop_name(d): int(dp.drops[d]) for d in Drop},
            remotes=[
                {"remote": r.addr, **{f: int(getattr(dp.remotes[i], f)) for f in REMOTE_FIELDS}}
                for i, r in enumerate(self.cfg.remotes)
            ],
            fdb=self.fdb.stats(),
        )
