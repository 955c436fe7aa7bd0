"""VXLAN (RFC 7348): the :class:`Vxlan` encapsulation, and its pure-Python codec.

``encap`` builds the whole outer packet (IPv4 + UDP + VXLAN + inner frame),
because the datapath sends on a raw socket to pick a per-flow UDP source
port as the kernel and Open vSwitch do. ``parse``/``decap`` take a UDP
payload, as the receiving UDP socket delivers it.
"""

from __future__ import annotations

import socket
import struct

from datapath.counters import Drop
from datapath.encap import ipv4, ipv6
from datapath.encap.base import Encap
from datapath.ether import ETH_HLEN, flow_hash
from datapath.io import underlay
from datapath.io.underlay import SRC_PORT_MAX, SRC_PORT_MIN

VXLAN_PORT = 4789  # IANA-assigned (RFC 7348 §5)
VXLAN_HLEN = 8
VXLAN_FLAG_I = 0x08  # "VNI valid"
VNI_MAX = (1 << 24) - 1
UDP_HLEN = 8
# Outer IPv4 + UDP + VXLAN; plus the inner Ethernet header that the TAP MTU excludes.
VXLAN_OUTER_LEN = ipv4.IPV4_HLEN + UDP_HLEN + VXLAN_HLEN
VXLAN_OVERHEAD = VXLAN_OUTER_LEN + ETH_HLEN  # 50, as the kernel's vxlan over IPv4
VXLAN6_OUTER_LEN = ipv6.IPV6_HLEN + UDP_HLEN + VXLAN_HLEN
VXLAN6_OVERHEAD = VXLAN6_OUTER_LEN + ETH_HLEN  # 70, as the kernel's vxlan over IPv6

_UDP = struct.Struct("!HHHH")


def src_port(frame: bytes | memoryview, lo: int = SRC_PORT_MIN, hi: int = SRC_PORT_MAX) -> int:
    """UDP source port for frame: its flow hash scaled into [lo, hi), like udp_flow_src_port()."""
    return lo + ((flow_hash(frame) * (hi - lo)) >> 32)


def header(vni: int) -> bytes:
    """The 8-byte VXLAN header: flags with the I bit, 24-bit VNI, reserved bytes zero."""
    return struct.pack("!B3xI", VXLAN_FLAG_I, vni << 8)


def encap(
    frame: bytes,
    *,
    vni: int,
    src: bytes,
    dst: bytes,
    dport: int = VXLAN_PORT,
    udp_csum: bool = False,
    ttl: int = ipv4.DEFAULT_TTL,
) -> bytes:
    """Outer IPv4/UDP/VXLAN packet carrying frame from src to dst (4-byte addresses).

    The UDP checksum is 0 ("not computed", allowed over IPv4) unless udp_csum.
    """
    payload = header(vni) + bytes(frame)
    udp_len = UDP_HLEN + len(payload)
    udp = _UDP.pack(src_port(frame), dport, udp_len, 0)
    if udp_csum:
        csum = ipv4.checksum(udp + payload, ipv4.pseudo_sum(src, dst, ipv4.IPPROTO_UDP, udp_len))
        udp = udp[:6] + struct.pack("!H", csum or 0xFFFF)
    return ipv4.build_header(src, dst, ipv4.IPPROTO_UDP, udp_len, ttl) + udp + payload


def encap6(
    frame: bytes,
    *,
    vni: int,
    src: bytes,
    dst: bytes,
    dport: int = VXLAN_PORT,
    zero_csum: bool = False,
    hop_limit: int = ipv4.DEFAULT_TTL,
) -> bytes:
    """Outer IPv6/UDP/VXLAN packet carrying frame from src to dst (16-byte addresses).

    The UDP checksum over the IPv6 pseudo-header is always computed (RFC 8200 §8.1, RFC 7348 §5)
    unless zero_csum (RFC 6935's exception for tunnels: the kernel's udp6zerocsumtx).
    """
    payload = header(vni) + bytes(frame)
    udp_len = UDP_HLEN + len(payload)
    udp = _UDP.pack(src_port(frame), dport, udp_len, 0)
    if not zero_csum:
        csum = ipv4.checksum(udp + payload, ipv6.pseudo_sum(src, dst, ipv6.NEXTHDR_UDP, udp_len))
        udp = udp[:6] + struct.pack("!H", csum or 0xFFFF)
    return ipv6.build_header(src, dst, ipv6.NEXTHDR_UDP, udp_len, hop_limit) + udp + payload


def parse(payload: bytes | memoryview) -> tuple[int, int]:
    """(offset of the inner frame, VNI) of a VXLAN UDP payload, or (-Drop reason, 0).

    Reserved bits are ignored on receipt (RFC 7348 §5); the I flag must be
    set. Which VNIs are accepted is the caller's business (see decap).
    """
    if len(payload) < VXLAN_HLEN + ETH_HLEN:
        return -Drop.RX_TRUNCATED, 0
    if not payload[0] & VXLAN_FLAG_I:
        return -Drop.RX_BAD_FLAGS, 0
    return VXLAN_HLEN, (payload[4] << 16) | (payload[5] << 8) | payload[6]


def decap(payload: bytes | memoryview, vni: int) -> int:
    """Offset of the inner frame in a VXLAN UDP payload carrying vni, or -Drop reason."""
    off, got = parse(payload)
    if off >= 0 and got != vni:
        return -Drop.RX_BAD_VNI
    return off


class Vxlan(Encap):
    """VXLAN over UDP/IPv4 or UDP/IPv6: a 24-bit VNI, outer UDP destination port ``port``."""

    name = "vxlan"
    title = "VXLAN"
    id_name = "VNI"
    id_key = "vni"
    id_max = VNI_MAX
    udp = True
    default_port = VXLAN_PORT
    ip_proto = ipv4.IPPROTO_UDP
    bad_id = Drop.RX_BAD_VNI
    drops = (Drop.RX_TRUNCATED, Drop.RX_BAD_FLAGS)

    def header_len(self, mapped: bool = False) -> int:
        """UDP + VXLAN, whatever the VNI."""
        return UDP_HLEN + VXLAN_HLEN

    def build(self, frame: bytes, src: bytes, dst: bytes, tunnel_id: int | None = None) -> bytes:
        """vxlan.encap with this tunnel's VNI (or tunnel_id), port, checksum and TTL."""
        vni = self.base_id if tunnel_id is None else tunnel_id
        if len(src) == 16:
            zero = self.udp6_zero_csum_tx
            return encap6(frame, vni=vni, src=src, dst=dst, dport=self.port, zero_csum=zero, hop_limit=self.ttl)
        return encap(frame, vni=vni, src=src, dst=dst, dport=self.port, udp_csum=self.udp_csum, ttl=self.ttl)

    def parse(self, packet: bytes | memoryview, family: int = 4) -> tuple[int, int]:
        """vxlan.parse of a UDP payload (the same over IPv4 and IPv6)."""
        return parse(packet)

    def open_recv_socket(self, bind: str) -> socket.socket:
        """A UDP socket bound to the VXLAN port (IPv6: IPV6_V6ONLY)."""
        return underlay.open_udp_socket(bind, self.port, zero_csum_rx=self.udp6_zero_csum_rx)

    def describe(self) -> str:
        """ "vni N port P"."""
        return f"vni {self.base_id} port {self.port}"
