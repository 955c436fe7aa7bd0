"""The pure-Python forwarder: the reference for the C fast path, and ``--no-fast-path``.

It has the same interface as :class:`datapath.fast.FastForwarder`:

- ``tx(frames)`` and ``rx(packets)`` are the packet logic without I/O
  (classify, encapsulate, flood / validate, learn, decapsulate);
- ``from_tap`` and ``from_tunnel`` do one batch of I/O around them;
- ``snapshot()`` copies the counters, ``fdb`` is the MAC table;
- ``add_remote``, ``remove_remote`` and ``remotes`` change and show the remotes
  while traffic flows.

Remotes are slots: ``cfg.remotes`` fill slots 0, 1, ... at the start; a remote
added later takes the lowest free slot (with zeroed counters), a removed one
frees its slot and takes the FDB entries behind it along (learned and static),
and every other remote keeps its slot, so the indices the FDB holds stay
valid. Floods go to the remotes in use, in slot order; with none at all a
flooded frame is counted (``tx_flooded``) and sent nowhere, and every tunnel
packet is dropped as ``rx_not_remote``.

VLANs (``cfg.tunnel.vlan_map``): a frame from the TAP whose 802.1Q VID is mapped
loses its tag and travels in the mapped VNI / GRE key; any other frame
travels as it is in the base id (``cfg.base_id``; a trunk). On receive the
base id delivers the frame as it is, a mapped id inserts the VLAN's tag, any
other id is dropped. The FDB is keyed by the VLAN as seen on the bridge side.

IPv6 underlay: a remote's family is its address's; its packets get an outer IPv6 header
(``Encap.build`` with 16-byte addresses) and leave through the IPv6 send socket
(:meth:`PyForwarder.set_send6`); received packets carry their family in the source
address (an IPv6 GRE packet starts at its GRE header). A frame too big for every
family in use is dropped once as ``tx_too_big``; one that fits IPv4 but not a remote's
outer IPv6 header is dropped as ``tx_too_big`` for that remote's copy.

A differential test feeds both forwarders the same frames and compares
packets, counters and FDB.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable, Iterable

from datapath import ecn, mss, pmtu
from datapath.config import MAX_REMOTES, Config, Remote, address_family
from datapath.counters import FDB_FIELDS, REMOTE_FIELDS, STAT_FIELDS, Drop, Snapshot, drop_name
from datapath.encap.ipv4 import IPV4_HLEN
from datapath.encap.ipv6 import IPV6_HLEN
from datapath.ether import ETH_HLEN, VLAN_HLEN, insert_vlan, is_multicast, is_valid_source, strip_vlan, vlan_id
from datapath.fdb import Fdb
from datapath.io.underlay import received_tos

V6_EXTRA = IPV6_HLEN - IPV4_HLEN  # an outer IPv6 header's bytes beyond an IPv4 one's


IN6_PKTINFO_LEN = 20  # struct in6_pktinfo: the address, then the interface index
# What rx() takes: (packet, outer source[, outer DS field[, outer destination]]).
RxPacket = tuple[bytes, str] | tuple[bytes, str, int] | tuple[bytes, str, int, str]


def pktinfo_destination(ancillary: list[tuple[int, int, bytes]]) -> str | None:
    """The destination address of an IPV6_PKTINFO control message among ancillary, or None."""
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= IN6_PKTINFO_LEN:
            return socket.inet_ntop(socket.AF_INET6, data[:16])
    return None


def canonical_source(addr: str) -> str:
    """A socket's source address as the remotes hold it: an IPv6 one without a %scope, canonical."""
    if ":" not in addr:
        return addr
    return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, addr.partition("%")[0]))


# Bigger than any frame a TAP hands over without offloads.
_READ_SIZE = 65536
# The outer TOS (IP_TOS, IPV6_TCLASS) and IPV6_PKTINFO.
_CMSG_SIZE = socket.CMSG_SPACE(4) + socket.CMSG_SPACE(IN6_PKTINFO_LEN)
# As csrc/pmtu.c: ICMP replies per TAP batch, copies queued for fragmentation per batch.
_REPLY_QUEUE = 16
_FRAG_QUEUE = 256


class PyForwarder:
    """Forwarding logic in Python; see the module docstring."""

    def __init__(self, cfg: Config, clock: Callable[[], float] = time.monotonic) -> None:
        if not cfg.is_resolved():
            raise ValueError("the datapath needs a resolved configuration (control.config.resolve)")
        self.cfg = cfg
        self.fdb = Fdb(cfg.fdb.max_entries, cfg.fdb.ageing, clock)
        self._clock = clock
        self._stats = dict.fromkeys(STAT_FIELDS, 0)
        self._drops = [0] * (max(Drop) + 1)
        # Per remote slot (None: a free slot): the remote, its counters, (local, remote) address
        # bytes, the clock at its last delivered packet (None: none yet).
        self._slots: list[Remote | None] = []
        self._remote_ctr: list[dict[str, int]] = []
        self._ends: list[tuple[bytes, bytes]] = []
        self._last_rx: list[float | None] = []
        self._mtu: list[int] = []  # per slot: its path MTU, 0 = the underlay MTU (datapath.pmtu)
        self._by_addr: dict[str, int] = {}
        self._send6: socket.socket | None = None  # the IPv6 raw send socket (set_send6)
        # issue 11, pmtu: the replies' rate limit, replies for the TAP, copies to fragment, our IP id.
        self._bucket = pmtu.TokenBucket(cfg.tunnel.pmtu_icmp_rate, pmtu.DEFAULT_BURST)
        self._replies: list[bytes] = []
        self._frags: list[tuple[int, list[bytes], int]] = []
        self._ip_id = 1
        for r in cfg.remotes:
            self.add_remote(r)
        # VLAN <-> tunnel id for mapped VLANs; everything else is the base id.
        self._id_of_vlan = dict(cfg.tunnel.vlan_map)
        self._vlan_of_id = {tid: vlan for vlan, tid in cfg.tunnel.vlan_map}
        self._encap = cfg.encap
        self._clamp = cfg.tunnel.clamp_mss_setting
        for mac, remote, vlan in cfg.static_entries:
            self.fdb.add_static(mac, remote, vlan=vlan)

    # -- the remotes ----------------------------------------------------------

    def add_remote(self, remote: Remote) -> int:
        """Add a resolved remote in the lowest free slot; returns the slot.

        ValueError for an address already there or a full table (MAX_REMOTES).
        """
        ends = (remote.local_bytes, remote.addr_bytes)  # ConfigError if not resolved
        if remote.addr in self._by_addr:
            raise ValueError(f"remote {remote.addr} is already there")
        slot = next((i for i, r in enumerate(self._slots) if r is None), len(self._slots))
        if slot >= MAX_REMOTES:
            raise ValueError(f"at most {MAX_REMOTES} remotes are supported")
        if slot == len(self._slots):
            self._slots.append(None)
            self._remote_ctr.append({})
            self._ends.append(ends)
            self._last_rx.append(None)
            self._mtu.append(0)
        self._slots[slot] = remote
        self._remote_ctr[slot] = dict.fromkeys(REMOTE_FIELDS, 0)
        self._ends[slot] = ends
        self._last_rx[slot] = None
        self._mtu[slot] = 0
        self._by_addr[remote.addr] = slot
        return slot

    def remove_remote(self, slot: int) -> int:
        """Remove the remote in slot and the FDB entries behind it; returns how many entries went.

        KeyError for a free slot.
        """
        remote = self._slots[slot] if 0 <= slot < len(self._slots) else None
        if remote is None:
            raise KeyError(f"no remote in slot {slot}")
        self._slots[slot] = None
        del self._by_addr[remote.addr]
        return self.fdb.flush(slot)

    def set_remote_local(self, slot: int, local: str) -> None:
        """Send to the remote in slot from local from now on; FDB entries and counters stay (KeyError: a free slot
        or an address of another family, as the C path)."""
        remote = self._slots[slot] if 0 <= slot < len(self._slots) else None
        if remote is None:
            raise KeyError(f"no remote in slot {slot}")
        if address_family(local) != remote.family:
            raise KeyError(f"remote {remote.addr} in slot {slot} is IPv{remote.family}: no local address {local}")
        moved = Remote(remote.addr, local)
        self._slots[slot] = moved
        self._ends[slot] = (moved.local_bytes, moved.addr_bytes)

    def set_remote_mtu(self, slot: int, mtu: int) -> None:
        """The path MTU towards the remote in slot (68..65535; 0: the underlay MTU again). KeyError: a free slot."""
        if not self._in_use(slot):
            raise KeyError(f"no remote in slot {slot}")
        if mtu and not pmtu.MIN_MTU <= mtu <= 0xFFFF:
            raise ValueError(f"path MTU {mtu} out of range {pmtu.MIN_MTU}..65535")
        self._mtu[slot] = mtu

    def remote_mtu(self, slot: int) -> int:
        """The path MTU in effect towards the remote in slot (KeyError: a free slot)."""
        if not self._in_use(slot):
            raise KeyError(f"no remote in slot {slot}")
        return self._mtu[slot] or self.cfg.underlay_mtu

    def pmtu_replies(self) -> list[bytes]:
        """The ICMP replies built since the last call (from_tap writes them to the TAP itself)."""
        out, self._replies = self._replies, []
        return out

    def remotes(self) -> list[tuple[int, Remote, float | None]]:
        """The remotes in use, in slot order: (slot, remote, clock at its last delivered packet or None)."""
        return [(i, r, self._last_rx[i]) for i, r in enumerate(self._slots) if r is not None]

    def set_send6(self, sock: socket.socket | None) -> None:
        """The raw IPv6 socket packets to IPv6 remotes leave through (from_tap's send_sock is the IPv4 one)."""
        self._send6 = sock

    def _in_use(self, slot: int) -> bool:
        return 0 <= slot < len(self._slots) and self._slots[slot] is not None

    def _build(self, frame: bytes, remote: int, tid: int | None) -> bytes:
        src, dst = self._ends[remote]
        return self._encap.build(frame, src, dst, tid)

    def _drop(self, reason: Drop) -> None:
        self._drops[reason] += 1

    # -- packet logic, no I/O ------------------------------------------------

    def tx(self, frames: Iterable[bytes]) -> list[tuple[int, bytes]]:
        """Frames from the TAP -> (remote index, outer packet) pairs to send; then the outer fragments of
        the copies too big for their path (inner IPv4 without DF, --df unset / inherit), copy by copy."""
        out = [(remote, pkt) for remote, pkt, _ in self._tx(frames)]
        return out + [(remote, f) for remote, frags, _ in self._frags for f in frags]

    def _copy(self, send: bytes, slot: int, tid: int | None, outer_len: int) -> tuple[int, int]:
        """A copy of send to slot: (1 it fits, 2 queued in fragments, 0 it does not; the largest inner frame
        that slot's path takes) (csrc/pmtu.c tx_copy)."""
        mtu = self._mtu[slot] or self.cfg.underlay_mtu
        v6 = len(self._ends[slot][1]) == 16
        if v6:  # an outer IPv6 header is 20 bytes longer (and IPv6 has no DF: never fragmented here)
            outer_len += V6_EXTRA
        if outer_len + len(send) <= mtu:
            return 1, mtu - outer_len
        if (
            not v6
            and pmtu.may_fragment(send, self._encap.df)
            and outer_len + len(send) <= 0xFFFF
            and len(self._frags) < _FRAG_QUEUE
            and mtu >= pmtu.FRAG_MIN_MTU
        ):
            self._frags.append((slot, pmtu.fragment(self._build(send, slot, tid), mtu, self._ip_id), len(send)))
            self._ip_id = self._ip_id + 1 if self._ip_id < 0xFFFF else 1
            self._stats["tx_fragmented"] += 1
            return 2, mtu - outer_len
        return 0, max(mtu - outer_len, 0)

    def _too_big(self, send: bytes, tci: int | None, room: int) -> None:
        """send did not fit (room: the largest inner frame that would have): dropped, answered when due."""
        self._drop(Drop.TX_TOO_BIG)
        l3, _ = pmtu.l3_offset(send)
        if not l3 or room <= l3:
            return
        icmp = pmtu.reply(send, tci, room - l3)
        if icmp is None:
            return
        if len(self._replies) >= _REPLY_QUEUE or not self._bucket.allow(self._clock()):
            self._stats["tx_pmtu_limited"] += 1
            return
        self._replies.append(icmp)
        self._stats["tx_pmtu_icmp"] += 1

    def _tx(self, frames: Iterable[bytes]) -> list[tuple[int, bytes, int]]:
        """tx(), with the length of the inner frame of each packet (after a tag was stripped).

        Every copy is held against its remote's path MTU; copies that do not fit and may be
        fragmented go to self._frags, the others are dropped and answered (self._replies).
        """
        out: list[tuple[int, bytes, int]] = []
        self._frags = []
        for frame in frames:
            self._stats["tap_rx"] += 1
            if len(frame) < ETH_HLEN:
                self._drop(Drop.TX_RUNT)
                continue
            vlan = vlan_id(frame)
            tid = self._id_of_vlan.get(vlan)
            tci: int | None = None
            if tid is None:  # untagged, or a VLAN that is not mapped: as it is, in the base id
                send, outer_len = bytes(frame), self.cfg.outer_len
            else:  # a mapped VLAN: untagged, in its own id
                send, outer_len = strip_vlan(frame), self.cfg.mapped_outer_len
                tci = int.from_bytes(frame[14:16], "big")
            remote = None if is_multicast(frame) else self.fdb.lookup(frame[:6], vlan=vlan)
            if self._clamp:
                send = self._clamp_tx(send, remote, tid is not None or self._encap.tunnel_id is not None)
            room = 1 << 32
            if remote is not None and self._in_use(remote):
                fit, r_room = self._copy(send, remote, tid, outer_len)
                if not fit:
                    self._too_big(send, tci, min(room, r_room))
                    continue
                self._stats["tx_unicast"] += 1
                if fit == 1:
                    out.append((remote, self._build(send, remote, tid), len(send)))
                continue
            # Broadcast, multicast, unknown unicast: head-end replication to every remote, each copy
            # held against its own path.
            used = sent = 0
            for i, r in enumerate(self._slots):
                if r is None:
                    continue
                used += 1
                fit, r_room = self._copy(send, i, tid, outer_len)
                if not fit:
                    room = min(room, r_room)
                    continue
                sent += 1
                self._remote_ctr[i]["tx_flood"] += 1
                if fit == 1:
                    out.append((i, self._build(send, i, tid), len(send)))
            if (sent == 0) if used else outer_len + len(send) > self.cfg.underlay_mtu:
                if not used:
                    room = max(self.cfg.underlay_mtu - outer_len, 0)
                self._too_big(send, tci, room)
                continue
            self._stats["tx_flooded"] += 1
            if sent < used:
                self._too_big(send, tci, room)
        return out

    def rx(self, packets: Iterable[RxPacket]) -> list[tuple[int, bytes]]:
        """(packet, outer source address[, outer DS field[, outer destination]]) -> (remote index, inner
        frame) pairs for the TAP.

        An IPv6 source (canonical text form) means the packet came from an IPv6 socket. The DS field
        (traffic class) is 0 when not given (ECN decapsulation, datapath/ecn.py). The destination
        (IPV6_PKTINFO) matters for GRE over IPv6 only, whose socket gives no outer header: it must be
        the local address of the remote it came from (else rx_bad_dst).
        """
        out: list[tuple[int, bytes]] = []
        for entry in packets:
            pkt, src = entry[0], entry[1]
            dst = entry[3:]
            remote = self._by_addr.get(src)
            if remote is None:
                self._drop(Drop.RX_NOT_REMOTE)
                continue
            v6 = ":" in src
            off, tid = self._encap.parse(pkt, 6 if v6 else 4)
            if off < 0:
                self._drop(Drop(-off))
                continue
            if v6 and not self._encap.udp and dst and dst[0] != self._local_of(remote):
                self._drop(Drop.RX_BAD_DST)
                continue
            frame = bytes(pkt[off:])
            if tid == self.cfg.base_id:
                vlan = vlan_id(frame)  # as it came: untagged, or the sender's own tag (trunk)
            elif tid in self._vlan_of_id:
                vlan = self._vlan_of_id[tid]
                frame = insert_vlan(frame, vlan)
            else:
                self._drop(self._encap.bad_id)
                continue
            if not is_valid_source(frame[6:12]):
                self._drop(Drop.RX_BAD_SRC_MAC)
                continue
            ecn_result, frame = ecn.decap(frame, entry[2] if len(entry) > 2 else 0)
            if ecn_result < 0:
                self._drop(Drop(-ecn_result))
                continue
            self._stats["rx_ecn_ce"] += ecn_result == ecn.CE_SET
            if self._clamp:
                frame = self._clamp_rx(frame, remote, tid != self.cfg.base_id)
            self.fdb.learn(frame[6:12], remote, vlan=vlan)
            self._last_rx[remote] = self._clock()
            out.append((remote, frame))
        return out

    # -- TCP MSS clamping (datapath.mss) --------------------------------------------

    def mss_limit(self, remote: int | None, v6: bool, keyed: bool, l2_len: int) -> int:
        """ovl_dp_mss_limit: the MSS a SYN gets towards remote (None or a free slot: the smallest of the
        remotes in use), in a tunnel id with a key field or not, its L2 header l2_len bytes as it travels."""
        setting = self._clamp
        if setting != mss.CLAMP_AUTO:
            return setting
        # A remote's figure: its path MTU (pmtu) less its outer length (an IPv6 header is 20 bytes longer).
        outer = self._encap.outer_len(mapped=True) if keyed else self._encap.outer_len()

        def own(slot: int) -> int:
            extra = V6_EXTRA if len(self._ends[slot][1]) == 16 else 0
            return self.remote_mtu(slot) - outer - extra - l2_len

        if remote is not None and self._in_use(remote):
            return mss.auto_limit([own(remote)], v6)
        base = self.cfg.underlay_mtu - outer - l2_len
        return mss.auto_limit([base] + [own(i) for i, r in enumerate(self._slots) if r is not None], v6)

    def _clamp_tx(self, frame: bytes, remote: int | None, keyed: bool) -> bytes:
        found = mss.syn_l2(frame)
        if found is None:
            return frame
        out = bytearray(frame)
        if not mss.clamp(out, self.mss_limit(remote, found[1], keyed, found[0]), partial=False):
            return frame
        self._stats["mss_clamped"] += 1
        return bytes(out)

    def _clamp_rx(self, frame: bytes, remote: int, tagged: bool) -> bytes:
        found = mss.syn_l2(frame)
        if found is None:
            return frame
        # The answering segments leave in the id this frame came in: a mapped VLAN's keyed, untagged.
        keyed = tagged or self._encap.tunnel_id is not None
        l2_len = found[0] - VLAN_HLEN if tagged else found[0]
        out = bytearray(frame)
        if not mss.clamp(out, self.mss_limit(remote, found[1], keyed, l2_len), partial=True):
            return frame
        self._stats["mss_clamped"] += 1
        return bytes(out)

    # -- one batch of I/O ------------------------------------------------------

    def from_tap(self, tap_fd: int, send_sock: socket.socket) -> int:
        """Drain up to one batch of frames from the TAP and send them; returns frames read."""
        frames: list[bytes] = []
        error: OSError | None = None
        for _ in range(self.cfg.batch):
            try:
                frames.append(os.read(tap_fd, _READ_SIZE))
            except BlockingIOError:
                break
            except OSError as exc:  # as the C path: send what was read, then report
                error = exc
                break
        packets = self._tx(frames)
        self._send_frags(send_sock)
        self._send(packets, send_sock)
        for icmp in self.pmtu_replies():  # the ICMP replies to the inner senders, into the bridge
            try:
                os.write(tap_fd, icmp)
            except OSError:
                self._drop(Drop.RX_TAP_ERROR)
        if error is not None:
            raise error
        return len(frames)

    def _send_frags(self, send_sock: socket.socket) -> None:
        # As the C path (pmtu_send_frags): each copy's fragments, first to last; a failure drops the copy.
        for remote, frags, inner_len in self._frags:
            try:
                for f in frags:
                    send_sock.sendto(f, socket.MSG_DONTWAIT, (self._addr_of(remote), 0))
            except OSError as exc:
                full = isinstance(exc, BlockingIOError) or exc.errno == errno.ENOBUFS
                self._drop(Drop.TX_FULL if full else Drop.TX_ERROR)
                continue
            ctr = self._remote_ctr[remote]
            ctr["tx_packets"] += 1
            ctr["tx_bytes"] += inner_len
        self._frags = []

    def _send(self, packets: list[tuple[int, bytes, int]], send_sock: socket.socket) -> None:
        # As the C path: never wait for the underlay. A full send buffer is the socket's, so
        # the rest of the batch goes with the packet that found it full; ENOBUFS (a full
        # device queue) drops that packet only.
        for i, (remote, pkt, inner_len) in enumerate(packets):
            addr = self._addr_of(remote)
            sock = send_sock
            if ":" in addr:
                if self._send6 is None:  # no IPv6 send socket: the engine opens one for IPv6 remotes
                    self._drop(Drop.TX_ERROR)
                    continue
                sock = self._send6
            try:
                sock.sendto(pkt, socket.MSG_DONTWAIT, (addr, 0))
            except BlockingIOError:
                for _ in packets[i:]:
                    self._drop(Drop.TX_FULL)
                return
            except OSError as exc:
                self._drop(Drop.TX_FULL if exc.errno == errno.ENOBUFS else Drop.TX_ERROR)
                continue
            ctr = self._remote_ctr[remote]
            ctr["tx_packets"] += 1
            ctr["tx_bytes"] += inner_len

    def _local_of(self, slot: int) -> str | None:
        remote = self._slots[slot]
        return remote.local if remote is not None else None

    def _addr_of(self, slot: int) -> str:
        remote = self._slots[slot]
        assert remote is not None  # packets of a batch go to remotes in use
        return remote.addr

    def from_tunnel(self, recv_sock: socket.socket, tap_fd: int) -> int:
        """Receive up to one batch from the underlay and write the inner frames to the TAP."""
        packets: list[RxPacket] = []
        pktinfo = recv_sock.family == socket.AF_INET6 and recv_sock.type == socket.SOCK_RAW
        raw_ipv4 = not self._encap.udp and recv_sock.family == socket.AF_INET
        for _ in range(self.cfg.batch):
            try:
                data, anc, _flags, addr = recv_sock.recvmsg(_READ_SIZE, _CMSG_SIZE)
            except BlockingIOError:
                break
            tos = received_tos(anc, data, raw_ipv4)
            dst = pktinfo_destination(anc) if pktinfo else None  # GRE over IPv6: the destination, IPV6_PKTINFO
            src = canonical_source(addr[0])
            packets.append((data, src, tos, dst) if dst else (data, src, tos))
        for remote, frame in self.rx(packets):
            try:
                os.write(tap_fd, frame)
            except OSError:
                self._drop(Drop.RX_TAP_ERROR)
                continue
            self._stats["tap_tx"] += 1
            ctr = self._remote_ctr[remote]
            ctr["rx_packets"] += 1
            ctr["rx_bytes"] += len(frame)
        return len(packets)

    # -- observation ---------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """A copy of all counters."""
        fdb = self.fdb.stats()
        return Snapshot(
            stats=dict(self._stats),
            drops={drop_name(d): self._drops[d] for d in Drop},
            remotes=[{"remote": r.addr, **self._remote_ctr[i]} for i, r, _ in self.remotes()],
            fdb={k: fdb[k] for k in (*FDB_FIELDS, "entries")},
        )
