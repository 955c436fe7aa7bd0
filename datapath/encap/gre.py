"""GRE (RFC 2784, key and sequence from RFC 2890) carrying Ethernet: the :class:`Gre`
encapsulation, and its pure-Python codec.

Sent as a whole IPv4 or IPv6 packet on a raw socket; received on a raw IPPROTO_GRE
socket, which delivers the outer IPv4 header too, and over IPv6 (RFC 7676: next header
47, the same GRE header) only the GRE header on: the source is the socket address.
"""

from __future__ import annotations

import socket
import struct

from datapath.counters import Drop
from datapath.encap import ipv4, ipv6
from datapath.encap.base import Encap
from datapath.ether import ETH_HLEN
from datapath.io import underlay

ETH_P_TEB = 0x6558  # transparent Ethernet bridging
GRE_CSUM = 0x8000
GRE_ROUTING = 0x4000
GRE_KEY = 0x2000
GRE_SEQ = 0x1000
GRE_VERSION = 0x0007
GRE_HLEN = 4
GRE_OPT_LEN = 4  # each of checksum(+reserved), key, sequence
KEY_MAX = (1 << 32) - 1


def header_len(key: int | None) -> int:
    """Length of the GRE header we send: 4, plus 4 with a key."""
    return GRE_HLEN + (GRE_OPT_LEN if key is not None else 0)


def overhead(key: int | None) -> int:
    """Bytes added to an inner L3 packet: outer IPv4 + GRE + inner Ethernet (38, or 42 with a key)."""
    return ipv4.IPV4_HLEN + header_len(key) + ETH_HLEN


def header(key: int | None) -> bytes:
    """The GRE header we send: no checksum, no sequence, key only if configured."""
    if key is None:
        return struct.pack("!HH", 0, ETH_P_TEB)
    return struct.pack("!HHI", GRE_KEY, ETH_P_TEB, key)


def encap(frame: bytes, *, key: int | None, src: bytes, dst: bytes, ttl: int = ipv4.DEFAULT_TTL) -> bytes:
    """Outer IPv4/GRE packet carrying frame from src to dst (4-byte addresses)."""
    gre = header(key)
    return ipv4.build_header(src, dst, ipv4.IPPROTO_GRE, len(gre) + len(frame), ttl) + gre + bytes(frame)


def encap6(frame: bytes, *, key: int | None, src: bytes, dst: bytes, hop_limit: int = ipv4.DEFAULT_TTL) -> bytes:
    """Outer IPv6/GRE packet carrying frame from src to dst (16-byte addresses; RFC 7676)."""
    gre = header(key)
    return ipv6.build_header(src, dst, ipv6.NEXTHDR_GRE, len(gre) + len(frame), hop_limit) + gre + bytes(frame)


def parse(packet: bytes | memoryview, family: int = 4) -> tuple[int, int]:
    """(offset of the inner frame, key) of an IPv4/GRE packet, or of a GRE packet without its
    IPv6 header (family 6, as an IPv6 raw socket delivers it), or (-Drop reason, 0).

    Like the kernel (gre_parse_header) a packet with a nonzero version or the
    routing bit is refused; a present checksum must verify. A packet without
    the K bit has key 0. Which keys are accepted is the caller's business (see decap).
    """
    ihl = 0 if family == 6 else ipv4.header_len(packet)
    if ihl < 0:
        return -Drop.RX_TRUNCATED, 0
    n = len(packet)
    if n < ihl + GRE_HLEN:
        return -Drop.RX_TRUNCATED, 0
    flags = (packet[ihl] << 8) | packet[ihl + 1]
    if flags & GRE_VERSION:
        return -Drop.RX_BAD_VERSION, 0
    if flags & GRE_ROUTING:
        return -Drop.RX_BAD_FLAGS, 0
    if (packet[ihl + 2] << 8) | packet[ihl + 3] != ETH_P_TEB:
        return -Drop.RX_BAD_PROTO, 0
    off = ihl + GRE_HLEN
    csum_present = bool(flags & GRE_CSUM)
    if csum_present:
        off += GRE_OPT_LEN
    got_key = 0
    if flags & GRE_KEY:
        if n < off + GRE_OPT_LEN:
            return -Drop.RX_TRUNCATED, 0
        got_key = struct.unpack_from("!I", packet, off)[0]
        off += GRE_OPT_LEN
    if flags & GRE_SEQ:
        off += GRE_OPT_LEN  # sequence numbers are parsed, not enforced (as the kernel without ordering)
    if n < off + ETH_HLEN:
        return -Drop.RX_TRUNCATED, 0
    if csum_present and ipv4.checksum(packet[ihl:]) != 0:
        return -Drop.RX_BAD_CSUM, 0
    return off, got_key


def decap(packet: bytes | memoryview, key: int | None, family: int = 4) -> int:
    """Offset of the inner frame in an IPv4/GRE packet carrying key, or -Drop reason.

    key None ("no key configured") accepts both key 0 and no key field, as an
    Open vSwitch port without options:key does.
    """
    off, got = parse(packet, family)
    if off >= 0 and got != (key or 0):
        return -Drop.RX_BAD_KEY
    return off


class Gre(Encap):
    """GRE over IPv4 or IPv6 carrying Ethernet (0x6558), with an optional 32-bit key.

    Without a configured key the header has no key field and a received key 0
    is accepted, as an Open vSwitch port without options:key does; frames of a
    mapped VLAN always carry their key.
    """

    name = "gre"
    title = "GRE"
    id_name = "GRE key"
    id_key = "key"
    id_max = KEY_MAX
    udp = False
    ip_proto = ipv4.IPPROTO_GRE
    bad_id = Drop.RX_BAD_KEY
    drops = (Drop.RX_TRUNCATED, Drop.RX_BAD_VERSION, Drop.RX_BAD_FLAGS, Drop.RX_BAD_PROTO, Drop.RX_BAD_CSUM)

    def header_len(self, mapped: bool = False) -> int:
        """4, plus 4 for a key (always present for a mapped VLAN)."""
        return header_len(0 if mapped else self.tunnel_id)

    def build(self, frame: bytes, src: bytes, dst: bytes, tunnel_id: int | None = None) -> bytes:
        """gre.encap (gre.encap6 for 16-byte addresses) with this tunnel's key (or tunnel_id) and TTL."""
        key = self.tunnel_id if tunnel_id is None else tunnel_id
        if len(src) == 16:
            return encap6(frame, key=key, src=src, dst=dst, hop_limit=self.ttl)
        return encap(frame, key=key, src=src, dst=dst, ttl=self.ttl)

    def parse(self, packet: bytes | memoryview, family: int = 4) -> tuple[int, int]:
        """gre.parse of a whole IPv4 packet, or of the GRE header on (family 6)."""
        return parse(packet, family)

    def open_recv_socket(self, bind: str) -> socket.socket:
        """A raw IPPROTO_GRE socket of bind's family (IPv6: with IPV6_RECVPKTINFO)."""
        return underlay.open_raw_socket(bind, ipv4.IPPROTO_GRE, "GRE")

    def describe(self) -> str:
        """ "key N" or "key none"."""
        return f"key {self.tunnel_id if self.tunnel_id is not None else 'none'}"
