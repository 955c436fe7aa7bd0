"""Plugging the TAP into a bridge: a Linux bridge through rtnetlink (pyroute2).

Open vSwitch attachment comes with the OVS issue; until then ``--bridge-type
ovs`` (or ``auto`` finding an OVS bridge) says so clearly. Detaching needs no
code: closing the TAP deletes it, and the kernel removes the bridge port.
"""

from __future__ import annotations

import shutil
import subprocess

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from datapath.errors import SetupError

BRIDGE_TYPES = ("auto", "linux", "ovs", "none")


def _link_kind(ipr: IPRoute, name: str) -> str | None:
    """The rtnetlink kind of interface name ('bridge', 'tun', ...), '' if it has none, None if it does not exist."""
    idx = ipr.link_lookup(ifname=name)
    if not idx:
        return None
    link = ipr.get_links(idx[0])[0]
    info = link.get_attr("IFLA_LINKINFO")
    return (info.get_attr("IFLA_INFO_KIND") if info else None) or ""


def _is_ovs_bridge(name: str) -> bool:
    vsctl = shutil.which("ovs-vsctl")
    if vsctl is None:
        return False
    res = subprocess.run([vsctl, "--timeout=2", "br-exists", name], capture_output=True, check=False)
    return res.returncode == 0


def resolve(bridge: str, bridge_type: str) -> str:
    """Check that bridge exists and is of the asked type; returns 'linux' or 'none'."""
    if bridge_type == "none":
        return "none"
    with IPRoute() as ipr:
        kind = _link_kind(ipr, bridge)
    if bridge_type in ("auto", "linux") and kind == "bridge":
        return "linux"
    if bridge_type == "ovs" or (bridge_type == "auto" and _is_ovs_bridge(bridge)):
        raise SetupError(
            f"attaching to the Open vSwitch bridge {bridge} is not implemented yet; "
            f"run with --bridge-type none and add the port yourself (ovs-vsctl add-port {bridge} TAP)"
        )
    if kind is None:
        raise SetupError(
            f"bridge {bridge} does not exist (create it: ip link add {bridge} type bridge; "
            "or run with --bridge-type none)"
        )
    raise SetupError(f"{bridge} is not a Linux bridge (kind {kind or 'unknown'}); choose another --bridge")


def attach(bridge: str, kind: str, tap: str) -> None:
    """Make tap a port of bridge (kind as returned by resolve)."""
    if kind == "none":
        return
    with IPRoute() as ipr:
        try:
            br = ipr.link_lookup(ifname=bridge)
            port = ipr.link_lookup(ifname=tap)
            if not br:
                raise SetupError(f"bridge {bridge} disappeared before the TAP could be attached")
            ipr.link("set", index=port[0], master=br[0])
        except NetlinkError as exc:
            raise SetupError(f"cannot attach {tap} to bridge {bridge}: {exc}") from None
