"""Outer IPv4 header (RFC 791) and the Internet checksum (RFC 1071).

The datapath sends on a raw socket with ``IP_HDRINCL`` so that it controls
the outer header (VXLAN's per-flow UDP source port needs that); the kernel
fills the identification field when it is zero.
"""

from __future__ import annotations

import struct

IPV4_HLEN = 20  # no options on the headers we build
IPPROTO_UDP = 17
IPPROTO_GRE = 47
IP_DF = 0x4000
DEFAULT_TTL = 64  # the kernel's ip_default_ttl

_HDR = struct.Struct("!BBHHHBBH4s4s")


def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """One's complement sum of 16-bit words, complemented (RFC 1071)."""
    data = bytes(data)
    if len(data) % 2:
        data += b"\0"
    total = initial + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def pseudo_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Uncomplemented sum of the IPv4 pseudo-header (RFC 768), for UDP checksums."""
    s = sum(struct.unpack("!4H", src + dst)) + proto + length
    return s


def build_header(
    src: bytes, dst: bytes, proto: int, payload_len: int, ttl: int = DEFAULT_TTL, tos: int = 0, df: bool = True
) -> bytes:
    """A 20-byte IPv4 header with DS field tos, DF if df, id 0 and a valid header checksum."""
    hdr = _HDR.pack(0x45, tos, IPV4_HLEN + payload_len, 0, IP_DF if df else 0, ttl, proto, 0, src, dst)
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]


def header_len(packet: bytes | memoryview) -> int:
    """Length of the IPv4 header at the start of packet, or -1 if it is not a sane IPv4 header."""
    if len(packet) < IPV4_HLEN or packet[0] >> 4 != 4:
        return -1
    ihl = (packet[0] & 0x0F) * 4
    if ihl < IPV4_HLEN or len(packet) < ihl:
        return -1
    return ihl
