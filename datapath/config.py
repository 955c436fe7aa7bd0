"""The datapath's configuration: what the control plane hands to the engine.

Validation of user input happens in ``control``; this object is already
valid. Addresses are dotted-quad IPv4 strings.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from datapath import gre, vxlan
from datapath.ether import ETH_ALEN, ETH_HLEN, VLAN_HLEN, VLAN_ID_MAX
from datapath.fdb import DEFAULT_AGEING, DEFAULT_MAX_ENTRIES
from datapath.ipv4 import DEFAULT_TTL

MODES = ("vxlan", "gre")
MAX_REMOTES = 64  # OVL_MAX_REMOTES in C
DEFAULT_BATCH = 64
# VLANs that vlan_map can map to a tunnel id: 1..4094 (0 and 4095 are reserved by 802.1Q).
MAP_VLAN_MIN = 1
MAP_VLAN_MAX = 4094
MAX_VLAN_MAP = MAP_VLAN_MAX - MAP_VLAN_MIN + 1

# A static FDB entry: (MAC, remote index) in VLAN 0, or (MAC, remote index, VLAN).
Static = tuple[bytes, int] | tuple[bytes, int, int]


@dataclass(frozen=True)
class Remote:
    """A peer host: its underlay address and the local address we send to it from."""

    addr: str
    local: str

    @property
    def addr_bytes(self) -> bytes:
        return socket.inet_aton(self.addr)

    @property
    def local_bytes(self) -> bytes:
        return socket.inet_aton(self.local)


@dataclass(frozen=True)
class DatapathConfig:
    """Everything the forwarding plane needs; remote indices are positions in ``remotes``."""

    mode: str
    remotes: tuple[Remote, ...]
    underlay_mtu: int
    tap_mtu: int
    tap_name: str = "ovl0"
    tap_mac: bytes = b"\x02\x00\x00\x00\x00\x01"
    vni: int = 0
    key: int | None = None
    port: int = vxlan.VXLAN_PORT
    udp_csum: bool = False
    bind: str = "0.0.0.0"  # address the receiving socket binds to
    ttl: int = DEFAULT_TTL
    fdb_max: int = DEFAULT_MAX_ENTRIES
    fdb_ageing: float = DEFAULT_AGEING
    statics: tuple[Static, ...] = field(default_factory=tuple)
    batch: int = DEFAULT_BATCH
    # (VLAN 1..4094, tunnel id): frames of a mapped VLAN leave untagged in their own
    # VNI (VXLAN) or GRE key, and come back tagged; everything else uses vni / key.
    vlan_map: tuple[tuple[int, int], ...] = ()
    # C fast path only (the pure-Python path always uses a plain TAP): open the TAP with
    # IFF_VNET_HDR and let the kernel hand over TCP super-frames (TSO) and partial
    # checksums, which the datapath segments / completes. Probed; falls back quietly.
    # Safe on Linux bridges and on Open vSwitch ports alike (it only affects reads).
    tap_offloads: bool = True
    # With tap_offloads: inner TCP segments of one flow received in one batch are written to
    # the TAP as one super-frame (GSO virtio header). Only for a TAP whose other end is the
    # kernel (a Linux bridge): Open vSwitch's userspace datapath reads the TAP with AF_PACKET
    # and would see 64 KiB frames, so this must stay off for an OVS port.
    rx_coalesce: bool = False
    # VXLAN, C fast path: send through a pool of UDP sockets with UDP_SEGMENT (GSO), many
    # datagrams per sendmsg, instead of the raw socket. Opt-in: the kernel only does UDP
    # GSO with outer UDP checksums, which a veth hands on unfilled (offload) and Open
    # vSwitch's userspace datapath then drops; and the UDP source port comes from a pool
    # of UDP_GSO_SOCKETS bound ports (picked by flow hash) instead of one per flow.
    udp_gso: bool = False
    # VXLAN, C fast path: UDP_GRO on the receiving socket (coalesced datagrams, split again
    # in C). Safe with any peer; it only pays off when the sender or the NIC coalesces.
    udp_gro: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if not 1 <= len(self.remotes) <= MAX_REMOTES:
            raise ValueError(f"between 1 and {MAX_REMOTES} remotes are supported")
        if len({r.addr for r in self.remotes}) != len(self.remotes):
            raise ValueError("remote addresses must be distinct")
        for static in self.statics:
            if len(static) not in (2, 3) or len(static[0]) != ETH_ALEN:
                raise ValueError("a static entry is (6-byte MAC, remote index) or (MAC, remote index, VLAN)")
            if not 0 <= static[1] < len(self.remotes):
                raise ValueError("a static entry names a remote index that does not exist")
            if not 0 <= (static[2] if len(static) == 3 else 0) <= VLAN_ID_MAX:
                raise ValueError(f"a static entry's VLAN must be 0..{VLAN_ID_MAX} (0 = untagged)")
        self._check_vlan_map()

    def _check_vlan_map(self) -> None:
        kind = "VNI" if self.mode == "vxlan" else "GRE key"
        id_max = vxlan.VNI_MAX if self.mode == "vxlan" else gre.KEY_MAX
        if len(self.vlan_map) > MAX_VLAN_MAP:
            raise ValueError(f"at most {MAX_VLAN_MAP} VLAN mappings")
        for vlan, tid in self.vlan_map:
            if not MAP_VLAN_MIN <= vlan <= MAP_VLAN_MAX:
                raise ValueError(f"mapped VLAN {vlan} out of range {MAP_VLAN_MIN}..{MAP_VLAN_MAX}")
            if not 0 <= tid <= id_max:
                raise ValueError(f"mapped {kind} {tid} out of range 0..{id_max}")
        if len({v for v, _ in self.vlan_map}) != len(self.vlan_map):
            raise ValueError("a VLAN is mapped twice")
        if len({t for _, t in self.vlan_map}) != len(self.vlan_map):
            raise ValueError(f"two VLANs are mapped to the same {kind}")
        if any(t == self.base_id for _, t in self.vlan_map):
            raise ValueError(f"a VLAN is mapped to the base {kind} {self.base_id} (untagged traffic uses it)")

    @property
    def static_entries(self) -> tuple[tuple[bytes, int, int], ...]:
        """statics as (MAC, remote index, VLAN) triples."""
        return tuple((s[0], s[1], s[2] if len(s) == 3 else 0) for s in self.statics)

    @property
    def base_id(self) -> int:
        """The tunnel id of unmapped traffic: the VNI, or the GRE key (0 without a key, which also accepts key 0)."""
        return self.vni if self.mode == "vxlan" else (self.key or 0)

    @property
    def mapped_outer_len(self) -> int:
        """outer_len for a frame of a mapped VLAN: a GRE header then always carries a key."""
        return self.outer_len if self.mode == "vxlan" else overhead("gre", 0) - ETH_HLEN

    @property
    def outer_len(self) -> int:
        """Bytes in front of the inner frame: outer IPv4 + UDP + VXLAN, or outer IPv4 + GRE (base id)."""
        return overhead(self.mode, self.key) - ETH_HLEN

    @property
    def slot_size(self) -> int:
        """Buffer size for one packet: the largest inner frame (tagged) plus outer headers.

        The VLAN room is for tagged frames read from the TAP (trunk); a tag the
        datapath inserts on receive goes into the outer header's place, not here.
        """
        need = max(self.underlay_mtu, self.tap_mtu + 14 + VLAN_HLEN + max(self.outer_len, self.mapped_outer_len))
        return max(2048, (need + 64 + 63) // 64 * 64)


def overhead(mode: str, key: int | None = None) -> int:
    """Underlay MTU minus this is the TAP MTU (VXLAN 50, GRE 38 or 42 with a key)."""
    return vxlan.VXLAN_OVERHEAD if mode == "vxlan" else gre.overhead(key)
