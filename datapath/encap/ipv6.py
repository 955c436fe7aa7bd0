"""Outer IPv6 header (RFC 8200) and the IPv6 pseudo-header of upper-layer checksums (RFC 8200 §8.1).

Over IPv6 the datapath sends on a raw ``AF_INET6`` socket of protocol ``IPPROTO_RAW``,
which implies ``IPV6_HDRINCL``: it writes the whole outer header (the VXLAN source port
varies per inner flow, as over IPv4). Traffic class 0, flow label 0 (the kernel's vxlan
sets a flow label only with ``flowlabel auto`` / a fixed one; its default is 0), hop
limit = the tunnel's TTL. There is no DF bit and no header checksum: IPv6 routers never
fragment, and UDP over IPv6 must carry a checksum (RFC 8200 §8.1) unless both ends agree
on the zero-checksum exception for tunnels (RFC 6935, RFC 6936: ``udp6_zero_csum_tx`` /
``udp6_zero_csum_rx``).

An IPv6 raw socket never hands over the IPv6 header on receive (RFC 3542 §3): GRE over
IPv6 is parsed from the GRE header on, with the source from the socket address.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

IPV6_HLEN = 40  # no extension headers on the packets we build
IPV6_VERSION = 6
NEXTHDR_UDP = 17
NEXTHDR_GRE = 47
# ::ffff:0:0/96 (RFC 4291 §2.5.5.2): how the C path stores an IPv4 address in 16 bytes.
V4_MAPPED_PREFIX = b"\0" * 10 + b"\xff\xff"

_HDR = struct.Struct("!IHBB16s16s")


def build_header(
    src: bytes, dst: bytes, next_header: int, payload_len: int, hop_limit: int, flow_label: int = 0
) -> bytes:
    """A 40-byte IPv6 header: version 6, traffic class 0, flow_label, payload_len, next_header, hop_limit."""
    if len(src) != 16 or len(dst) != 16:
        raise ValueError("IPv6 addresses are 16 bytes")
    word = IPV6_VERSION << 28 | (flow_label & 0xFFFFF)
    return _HDR.pack(word, payload_len, next_header, hop_limit, src, dst)


def pseudo_sum(src: bytes, dst: bytes, next_header: int, length: int) -> int:
    """Uncomplemented sum of the IPv6 pseudo-header (RFC 8200 §8.1): addresses, length, next header."""
    return sum(struct.unpack("!16H", src + dst)) + (length >> 16) + (length & 0xFFFF) + next_header


def family_of(addr: str) -> int:
    """4 or 6: the IP version of an address in text form."""
    return ipaddress.ip_address(addr).version


def packed(addr: str) -> bytes:
    """An address as its own family packs it: 4 or 16 bytes."""
    return socket.inet_pton(socket.AF_INET6 if ":" in addr else socket.AF_INET, addr)


def to16(addr: str) -> bytes:
    """An address in the 16 bytes the C path stores: IPv6 as it is, IPv4 mapped (::ffff:a.b.c.d)."""
    b = packed(addr)
    return b if len(b) == 16 else V4_MAPPED_PREFIX + b


def from16(b: bytes) -> str:
    """to16 reversed: the text form of a 16-byte stored address (a mapped one as IPv4)."""
    if b[:12] == V4_MAPPED_PREFIX:
        return socket.inet_ntop(socket.AF_INET, b[12:])
    return socket.inet_ntop(socket.AF_INET6, b)
