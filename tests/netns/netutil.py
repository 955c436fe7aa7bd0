"""Helpers for the namespace tests; they run inside tests.isolated.run_isolated's fresh namespace."""

from __future__ import annotations

import json
import subprocess
from typing import Any


def ip(*args: str) -> str:
    """Run `ip ARGS` in the current (the test's own) namespace; raise with its stderr on failure."""
    res = subprocess.run(["ip", *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {res.stderr.strip()}")
    return res.stdout


def veth(addr: str, name: str = "u0", peer: str = "u1") -> None:
    """An up veth pair with addr (CIDR) on name: an underlay interface with an on-link subnet."""
    ip("link", "add", name, "type", "veth", "peer", "name", peer)
    ip("link", "set", peer, "up")
    ip("link", "set", name, "up")
    ip("addr", "add", addr, "dev", name)


def link(name: str) -> dict[str, Any] | None:
    """`ip -j link show NAME` of this namespace (not /sys/class/net, which shows the namespace /sys was mounted in)."""
    res = subprocess.run(["ip", "-j", "link", "show", "dev", name], capture_output=True, text=True)
    if res.returncode != 0:
        return None
    rows: list[dict[str, Any]] = json.loads(res.stdout)
    return rows[0] if rows else None


def exists(name: str) -> bool:
    return link(name) is not None


def _attr(name: str, key: str) -> Any:
    row = link(name)
    if row is None:
        raise AssertionError(f"no interface {name} in this namespace")
    return row[key]


def mac_of(name: str) -> bytes:
    return bytes.fromhex(str(_attr(name, "address")).replace(":", ""))


def mtu_of(name: str) -> int:
    return int(_attr(name, "mtu"))


def is_up(name: str) -> bool:
    return "UP" in _attr(name, "flags")
