"""Resolving a validated Config on this host: route lookups, path MTU, TAP MTU and identity.

:class:`datapath.config.Config` holds what the user asked for; what depends on
the host (our address towards each remote, the path MTU, the automatic TAP MTU,
a stable TAP MAC, whether to coalesce towards this kind of bridge) is filled in
here, and :func:`resolve` returns the config the datapath runs with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import socket
from pathlib import Path

from datapath.config import MIN_MTU, Config, ConfigError, Remote
from datapath.io import underlay

MACHINE_ID = Path("/etc/machine-id")


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


def offload_flags(policy: str, bridge_kind: str) -> tuple[bool, bool]:
    """(TAP offloads, RX coalescing) for an offload policy and the kind of bridge the TAP is on.

    auto: the TAP takes TSO super-frames and partial checksums everywhere (that only
    changes what ovl-dp reads), and received TCP segments are coalesced into
    super-frames only towards a Linux bridge: Open vSwitch's userspace datapath, and
    whatever a user plugs an unattached TAP into, may not cope with 64 KiB frames.
    """
    if policy == "off":
        return False, False
    if policy == "on":
        return True, True
    return True, bridge_kind == "linux"


def resolve(cfg: Config, bridge_kind: str = "none") -> Config:
    """cfg with routes, MTUs and the TAP identity filled in; SetupError on anything wrong with the host."""
    own = local_addresses()
    local = cfg.tunnel.local
    if local is not None and local not in own:
        raise ConfigError(f"{{tunnel.local}} {local} is not an address of this host")
    remotes = []
    path_mtus = []
    for r in cfg.remotes:
        if r.addr in own or ipaddress.IPv4Address(r.addr).is_loopback:
            raise ConfigError(f"{{remotes}} {r.addr} is an address of this host: a tunnel needs another host")
        src, mtu = underlay.route_to(r.addr)
        remotes.append(Remote(r.addr, local or src))
        path_mtus.append(mtu)
    underlay_mtu = cfg.tunnel.underlay_mtu or min(path_mtus)
    tap_mtu = cfg.tap.mtu if cfg.tap.mtu is not None else underlay_mtu - cfg.overhead
    if tap_mtu < MIN_MTU:
        raise ConfigError(f"{{tap.mtu}}: TAP MTU {tap_mtu} is below {MIN_MTU} (underlay MTU {underlay_mtu})")
    assert cfg.tap.name is not None  # Config names the TAP
    mac = cfg.tap.mac or tap_mac(remotes[0].local or "", cfg.tunnel.mode, cfg.base_id, cfg.tap.name)
    _, coalesce = offload_flags(cfg.offload.policy, bridge_kind)
    return dataclasses.replace(
        cfg,
        tunnel=dataclasses.replace(cfg.tunnel, underlay_mtu=underlay_mtu),
        remotes=tuple(remotes),
        tap=dataclasses.replace(cfg.tap, mtu=tap_mtu, mac=mac),
        offload=dataclasses.replace(
            cfg.offload, rx_coalesce=cfg.offload.rx_coalesce if cfg.offload.rx_coalesce is not None else coalesce
        ),
    )
