"""The daemon's side of membership on etcd (issue 12): who we are in the net, and what the net must agree on.

control/membership/ keeps the member key, the lease and the watch; this module builds what it is given:
our member value (address, TAP MAC, host name, machine id, network namespace, version, PID, when we
joined) and the net config our tunnel settings stand for. The daemon then joins before it says "ready".
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from control import metrics
from control.membership.model import NetConfig
from datapath.config import Config, etcd_host_port
from datapath.errors import SetupError
from datapath.ether import format_mac

log = logging.getLogger("ovl-dp")

MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))
NETNS = Path("/proc/self/ns/net")
JOIN_TIMEOUT = 10.0  # seconds for the first connection, net check and claim; etcd away is no error


def machine_id(files: tuple[Path, ...] = MACHINE_ID_FILES) -> str:
    """This machine's id (systemd's /etc/machine-id, or D-Bus's); SetupError if there is none."""
    for path in files:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text:
            return text
    names = " nor ".join(str(p) for p in files)
    raise SetupError(
        f"membership on etcd needs a machine id (it tells our own key from another host's): neither {names} "
        "is readable; create one with systemd-machine-id-setup (or dbus-uuidgen --ensure)"
    )


def netns_inode(path: Path = NETNS) -> int:
    """The inode of our network namespace: lab hosts on one machine share the machine id, not this."""
    return os.stat(path).st_ino


def member_value(cfg: Config, mac: bytes, version: str | None = None) -> dict[str, Any]:
    """Our member key's value (the README's data model): addr, mac, hostname, machine_id, netns, version,
    pid, joined. cfg is the resolved config (membership.address filled in)."""
    addr = cfg.membership.address
    if addr is None:
        raise SetupError("membership: the address to publish is not resolved (give --advertise IP)")
    return {
        "addr": addr,
        "mac": format_mac(mac),
        "hostname": socket.gethostname(),
        "machine_id": machine_id(),
        "netns": netns_inode(),
        "version": version if version is not None else metrics.package_version(),
        "pid": os.getpid(),
        "joined": time.time(),
    }


def net_config(cfg: Config) -> NetConfig:
    """What our settings say the net is: mode, VNI and port (VXLAN) or key (GRE)."""
    t = cfg.tunnel
    if cfg.encap.udp:
        return NetConfig(t.mode, vni=t.vni or 0, port=cfg.encap.port)
    return NetConfig(t.mode, key=t.key)


def ipv6_loopback_works() -> bool:
    """Whether ::1 can be bound here: gRPC opens no IPv6 socket at all without it
    (grpc_ipv6_loopback_available), so an IPv6 etcd endpoint would never answer."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def endpoint_problem(cfg: Config, v6_loopback: bool | None = None) -> tuple[str, bool]:
    """(message, fatal) about etcd endpoints our client cannot reach from this namespace ("" when none):
    IPv6 endpoints without IPv6 on the loopback device; fatal when that is every endpoint."""
    v6 = [u for u in cfg.membership.etcd if ":" in etcd_host_port(u)[0]]
    if not v6 or (ipv6_loopback_works() if v6_loopback is None else v6_loopback):
        return "", False
    message = (
        f"membership: etcd endpoint(s) {', '.join(v6)} are IPv6, but IPv6 is off on the loopback device here "
        "and gRPC opens no IPv6 socket without ::1: enable it (sysctl net.ipv6.conf.lo.disable_ipv6=0)"
    )
    return message, len(v6) == len(cfg.membership.etcd)


def describe(cfg: Config) -> str:
    """The start line: 'net X on etcd URL[,URL], member ADDR, lease TTL 15 s keepalive 5 s'."""
    m = cfg.membership
    return (
        f"net {m.net} on etcd {','.join(m.etcd)}, member {m.address}, "
        f"lease TTL {m.lease_ttl:g} s keepalive {m.keepalive:g} s"
    )
