"""From validated command-line values to a DatapathConfig (route lookups, MTU, TAP identity)."""

from __future__ import annotations

import hashlib
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

from datapath import underlay
from datapath.config import DatapathConfig, Remote, overhead
from datapath.errors import SetupError

MIN_TAP_MTU = 68  # the IPv4 minimum (RFC 791)
MACHINE_ID = Path("/etc/machine-id")


@dataclass(frozen=True)
class RunOptions:
    """What `ovl-dp run` was asked to do, already syntax-checked by the CLI."""

    mode: str
    remotes: tuple[str, ...]
    local: str | None
    vni: int
    key: int | None
    port: int
    bridge: str
    bridge_type: str
    tap: str | None
    mtu: int | None  # None = auto
    fdb_ageing: float
    fdb_max: int
    statics: tuple[tuple[bytes, str, int], ...]  # (MAC, remote address, VLAN)
    udp_csum: bool
    fast_path: bool
    ovsdb: str | None = None
    tag: int | None = None
    vlan_map: tuple[tuple[int, int], ...] = ()
    offload: str = "auto"  # auto | on | off
    udp_gso: bool = False


def default_tap_name(mode: str) -> str:
    """ovl-vxlan / ovl-gre: give --tap to run several instances on one host."""
    return f"ovl-{mode}"


def tap_mac(local: str, mode: str, tunnel_id: int, tap: str) -> bytes:
    """A locally administered unicast MAC that stays the same across restarts.

    Derived from the host (machine id and underlay address) and the tunnel
    (mode, VNI or key, TAP name), so that bridges and peers keep their tables.
    """
    try:
        host = MACHINE_ID.read_text().strip()
    except OSError:
        host = socket.gethostname()
    digest = hashlib.sha256(f"{host}|{local}|{mode}|{tunnel_id}|{tap}".encode()).digest()
    return bytes([(digest[0] & 0xFE) | 0x02]) + digest[1:6]


def local_addresses() -> set[str]:
    """IPv4 addresses of this network namespace's interfaces."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=socket.AF_INET)}


def offload_flags(offload: str, bridge_kind: str) -> tuple[bool, bool]:
    """(tap_offloads, rx_coalesce) for --offload and the kind of bridge the TAP is on.

    auto: the TAP takes TSO super-frames and partial checksums everywhere (that only
    changes what ovl-dp reads), and received TCP segments are coalesced into
    super-frames only towards a Linux bridge: Open vSwitch's userspace datapath, and
    whatever a user plugs an unattached TAP into, may not cope with 64 KiB frames.
    """
    if offload == "off":
        return False, False
    if offload == "on":
        return True, True
    return True, bridge_kind == "linux"


def build(opts: RunOptions, bridge_kind: str = "none") -> DatapathConfig:
    """Resolve routes and MTU and derive the TAP identity; SetupError on anything wrong."""
    own = local_addresses()
    if opts.local is not None and opts.local not in own:
        raise SetupError(f"--local {opts.local} is not an address of this host")
    remotes = []
    path_mtus = []
    for addr in opts.remotes:
        if addr in own or ipaddress.IPv4Address(addr).is_loopback:
            raise SetupError(f"remote {addr} is an address of this host: a tunnel needs another host")
        local, mtu = underlay.route_to(addr)
        remotes.append(Remote(addr, opts.local or local))
        path_mtus.append(mtu)
    underlay_mtu = min(path_mtus)
    # GRE frames of a mapped VLAN always carry a key field, even without a base --key.
    key_for_mtu = 0 if opts.mode == "gre" and opts.vlan_map else opts.key
    tap_mtu = opts.mtu if opts.mtu is not None else underlay_mtu - overhead(opts.mode, key_for_mtu)
    if tap_mtu < MIN_TAP_MTU:
        raise SetupError(f"TAP MTU {tap_mtu} is below {MIN_TAP_MTU} (underlay MTU {underlay_mtu})")
    index = {r.addr: i for i, r in enumerate(remotes)}
    statics = []
    for mac, remote, vlan in opts.statics:
        if remote not in index:
            raise SetupError(f"--static {remote}: not one of the --remote addresses")
        statics.append((mac, index[remote], vlan))
    tap = opts.tap or default_tap_name(opts.mode)
    tunnel_id = opts.vni if opts.mode == "vxlan" else (opts.key or 0)
    tap_offloads, rx_coalesce = offload_flags(opts.offload, bridge_kind)
    return DatapathConfig(
        mode=opts.mode,
        remotes=tuple(remotes),
        underlay_mtu=underlay_mtu,
        tap_mtu=tap_mtu,
        tap_name=tap,
        tap_mac=tap_mac(remotes[0].local, opts.mode, tunnel_id, tap),
        vni=opts.vni,
        key=opts.key,
        port=opts.port,
        udp_csum=opts.udp_csum,
        bind=opts.local or "0.0.0.0",
        fdb_max=opts.fdb_max,
        fdb_ageing=opts.fdb_ageing,
        statics=tuple(statics),
        vlan_map=opts.vlan_map,
        tap_offloads=tap_offloads,
        rx_coalesce=rx_coalesce,
        udp_gro=opts.offload != "off",
        udp_gso=opts.udp_gso,
    )
