"""AF_PACKET TX rings: one socket per egress device that the C path fills with whole Ethernet frames.

:func:`open_tx_ring` makes the socket: ``AF_PACKET``/``SOCK_RAW`` with protocol 0 (it never
receives a packet), ``TPACKET_V2``, ``PACKET_QDISC_BYPASS`` (the frames go straight to the
device's driver), ``PACKET_LOSS`` (a frame the kernel refuses is dropped instead of stalling the
ring), ``PACKET_TX_RING`` sized from the device MTU, bound to the device. The C side
(``ovl_dp_set_tx_ring``) maps the ring; the socket must stay open while it is mapped.

What the kernel does not do for these frames: routing, neighbour resolution, netfilter OUTPUT and
POSTROUTING, the qdisc. The control plane resolves the next hop (control/nexthop.py); a host
firewall has to use a netdev egress chain to see them.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

SOL_PACKET = 263  # <linux/socket.h>
PACKET_TX_RING = 13  # <linux/if_packet.h>
PACKET_LOSS = 14
PACKET_VERSION = 10
PACKET_QDISC_BYPASS = 20
TPACKET_V2 = 1
TPACKET2_DATA = 32  # TPACKET2_HDRLEN - sizeof(struct sockaddr_ll): where a frame's data starts in its slot
ETH_HLEN = 14
RING_FRAMES = 512  # slots per ring: room for several batches while the driver sends
BLOCK_MIN = 1 << 16  # bytes per ring block (a multiple of the page size)
SNDBUF = 4 << 20  # skbs in flight count against the socket's send buffer


@dataclass(frozen=True)
class RingGeometry:
    """A TPACKET_V2 TX ring's layout: frames of frame_size bytes, per_block in each of block_nr blocks."""

    block_size: int
    block_nr: int
    frame_size: int
    max_len: int  # largest Ethernet frame the device takes (MTU + 14)

    @property
    def frame_nr(self) -> int:
        """Slots in the ring."""
        return self.block_size // self.frame_size * self.block_nr

    @property
    def bytes(self) -> int:
        """Memory the ring maps."""
        return self.block_size * self.block_nr


def geometry(mtu: int, frames: int = RING_FRAMES, page: int = 4096) -> RingGeometry:
    """The ring for a device of MTU mtu: at least frames slots, each holding an Ethernet frame of mtu + 14 bytes."""
    if mtu < 68 or frames < 1:
        raise ValueError(f"no TX ring for MTU {mtu} / {frames} frames")
    frame_size = (TPACKET2_DATA + ETH_HLEN + mtu + 15) // 16 * 16  # TPACKET_ALIGNMENT
    block_size = max(BLOCK_MIN, (frame_size + page - 1) // page * page)
    per_block = block_size // frame_size
    block_nr = (frames + per_block - 1) // per_block
    return RingGeometry(block_size, block_nr, frame_size, mtu + ETH_HLEN)


@dataclass
class TxRing:
    """An open TX ring socket on device ifindex (name for messages)."""

    sock: socket.socket
    ifindex: int
    name: str
    geometry: RingGeometry

    def close(self) -> None:
        """Close the socket (after the C side unmapped the ring)."""
        self.sock.close()


def open_tx_ring(ifindex: int, mtu: int, frames: int = RING_FRAMES) -> TxRing:
    """A TX ring socket bound to device ifindex of MTU mtu; OSError if the kernel refuses any step."""
    name = socket.if_indextoname(ifindex)
    geo = geometry(mtu, frames)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
    try:
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
        sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
        sock.setsockopt(SOL_PACKET, PACKET_LOSS, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
        req = struct.pack("IIII", geo.block_size, geo.block_nr, geo.frame_size, geo.frame_nr)
        sock.setsockopt(SOL_PACKET, PACKET_TX_RING, req)
        sock.bind((name, 0))  # protocol 0: no receive hook, nothing is ever queued on it
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return TxRing(sock, ifindex, name, geo)
