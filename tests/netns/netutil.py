"""Helpers for the namespace tests; they run inside tests.isolated.run_isolated's fresh namespace."""

from __future__ import annotations

import subprocess
from pathlib import Path

IFF_UP = 0x1
SYS_NET = Path("/sys/class/net")


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


def exists(name: str) -> bool:
    return (SYS_NET / name).exists()


def mac_of(name: str) -> bytes:
    return bytes.fromhex((SYS_NET / name / "address").read_text().strip().replace(":", ""))


def mtu_of(name: str) -> int:
    return int((SYS_NET / name / "mtu").read_text())


def is_up(name: str) -> bool:
    return bool(int((SYS_NET / name / "flags").read_text(), 16) & IFF_UP)
