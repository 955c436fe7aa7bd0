"""The datapath's configuration: what the control plane hands to the engine.

Validation of user input happens in ``control``; this object is already
valid. Addresses are dotted-quad IPv4 strings.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from datapath import gre, vxlan
from datapath.fdb import DEFAULT_AGEING, DEFAULT_MAX_ENTRIES
from datapath.ipv4 import DEFAULT_TTL

MODES = ("vxlan", "gre")
MAX_REMOTES = 64  # OVL_MAX_REMOTES in C
DEFAULT_BATCH = 64
VLAN_HLEN = 4


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
    statics: tuple[tuple[bytes, int], ...] = field(default_factory=tuple)
    batch: int = DEFAULT_BATCH

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if not 1 <= len(self.remotes) <= MAX_REMOTES:
            raise ValueError(f"between 1 and {MAX_REMOTES} remotes are supported")
        if len({r.addr for r in self.remotes}) != len(self.remotes):
            raise ValueError("remote addresses must be distinct")
        if any(not 0 <= remote < len(self.remotes) for _, remote in self.statics):
            raise ValueError("a static entry names a remote index that does not exist")

    @property
    def outer_len(self) -> int:
        """Bytes in front of the inner frame: outer IPv4 + UDP + VXLAN, or outer IPv4 + GRE."""
        return overhead(self.mode, self.key) - 14

    @property
    def slot_size(self) -> int:
        """Buffer size for one packet: the largest inner frame (tagged) plus outer headers."""
        need = max(self.underlay_mtu, self.tap_mtu + 14 + VLAN_HLEN + self.outer_len)
        return max(2048, (need + 64 + 63) // 64 * 64)


def overhead(mode: str, key: int | None = None) -> int:
    """Underlay MTU minus this is the TAP MTU (VXLAN 50, GRE 38 or 42 with a key)."""
    return vxlan.VXLAN_OVERHEAD if mode == "vxlan" else gre.overhead(key)
