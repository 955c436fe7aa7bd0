"""What every encapsulation provides: the :class:`Encap` type.

One subclass per protocol (:mod:`datapath.encap.vxlan`, :mod:`datapath.encap.gre`),
as Open vSwitch keeps one set of build/push/pop functions per tunnel type behind
one table (``lib/netdev-native-tnl.c``, ``lib/netdev-vport.c``). Everything that
differs between protocols is here: the overhead, the tunnel id (its name, range
and configuration key), building and parsing the header, the socket that
receives it, and its drop reasons. What they share (FDB, flooding, batching,
counters, the outer IPv4 header) is written once elsewhere.

An instance is bound to one tunnel's settings (tunnel id, port, checksum, TTL).
"""

from __future__ import annotations

import socket
from abc import ABC, abstractmethod
from typing import ClassVar

from datapath.counters import Drop
from datapath.encap import ipv4, ipv6
from datapath.ether import ETH_HLEN


class Encap(ABC):
    """One encapsulation protocol with one tunnel's settings; see the module docstring."""

    name: ClassVar[str]  # the --mode value, "vxlan"
    title: ClassVar[str]  # how people write it, "VXLAN"
    id_name: ClassVar[str]  # what its tunnel id is called, "VNI"
    id_key: ClassVar[str]  # the tunnel configuration key that holds it, "vni"
    id_max: ClassVar[int]
    udp: ClassVar[bool]  # carried in UDP: a port, UDP checksums and UDP offloads apply
    default_port: ClassVar[int] = 0  # UDP destination port when none is configured
    ip_proto: ClassVar[int]  # outer IPv4 protocol
    bad_id: ClassVar[Drop]  # a packet of a tunnel id that is not ours
    drops: ClassVar[tuple[Drop, ...]]  # every reason parse() can give

    def __init__(
        self,
        tunnel_id: int | None,
        *,
        port: int = 0,
        udp_csum: bool = False,
        ttl: int = ipv4.DEFAULT_TTL,
        udp6_zero_csum_tx: bool = False,
        udp6_zero_csum_rx: bool = False,
    ):
        self.tunnel_id = tunnel_id  # None: the protocol's default (GRE: no key field)
        self.port = port
        self.udp_csum = udp_csum  # over IPv4 (over IPv6 UDP always carries one)
        self.ttl = ttl  # IPv4 TTL, IPv6 hop limit
        self.udp6_zero_csum_tx = udp6_zero_csum_tx  # over IPv6: send UDP checksum 0 (RFC 6935)
        self.udp6_zero_csum_rx = udp6_zero_csum_rx  # over IPv6: accept UDP checksum 0 (UDP_NO_CHECK6_RX)

    @property
    def base_id(self) -> int:
        """The tunnel id of untagged and unmapped traffic."""
        return self.tunnel_id or 0

    @abstractmethod
    def header_len(self, mapped: bool = False) -> int:
        """The encapsulation header after the outer IPv4 header; mapped: for a frame of a mapped VLAN."""

    def outer_len(self, mapped: bool = False, family: int = 4) -> int:
        """Bytes in front of the inner frame: outer IPv4 (family 4) or IPv6 header + encapsulation header."""
        return (ipv6.IPV6_HLEN if family == 6 else ipv4.IPV4_HLEN) + self.header_len(mapped)

    def overhead(self, mapped: bool = False, family: int = 4) -> int:
        """Underlay MTU minus this is the TAP MTU: outer headers plus the inner Ethernet header."""
        return self.outer_len(mapped, family) + ETH_HLEN

    @abstractmethod
    def build(self, frame: bytes, src: bytes, dst: bytes, tunnel_id: int | None = None) -> bytes:
        """The whole outer packet carrying frame from src to dst (4-byte addresses: outer IPv4; 16: IPv6).

        tunnel_id: a mapped VLAN's id; None sends in the base id.
        """

    @abstractmethod
    def parse(self, packet: bytes | memoryview, family: int = 4) -> tuple[int, int]:
        """(offset of the inner frame, tunnel id) of a received packet, or (-Drop reason, 0).

        packet is what :meth:`open_recv_socket`'s socket of that family delivers.
        """

    def decap(self, packet: bytes | memoryview, family: int = 4) -> int:
        """Offset of the inner frame of a packet in the base id, or -Drop reason."""
        off, got = self.parse(packet, family)
        if off >= 0 and got != self.base_id:
            return -self.bad_id
        return off

    @abstractmethod
    def open_recv_socket(self, bind: str) -> socket.socket:
        """The non-blocking socket that receives this protocol's packets on address bind (IPv4 or IPv6)."""

    @abstractmethod
    def describe(self) -> str:
        """The tunnel's identity for the start-up log line, e.g. "vni 5001 port 4789"."""
