"""control.bridge: resolve() and attach() against real interfaces, each test inside a namespace of its own.

Every body runs through tests.isolated.run_isolated: a forked child unshares a new
network namespace first, so the bridges, veths and TAPs made here exist only there
and vanish with the child, also when the body fails or hangs; the root namespace is
never touched. OVS_RUNDIR points at a directory that does not exist, so that the
Open vSwitch branch of resolve() never reaches a system-wide OVS database.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess

import pytest

from control.bridge import Bridge, resolve
from datapath.errors import SetupError
from tests.isolated import run_isolated

pytestmark = pytest.mark.netns

NO_OVS_RUNDIR = "/nonexistent/ovl-dp-test-ovs"


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def master_of(dev: str) -> str | None:
    link = json.loads(ip("-j", "link", "show", dev).stdout)[0]
    master: str | None = link.get("master")
    return master


def no_system_ovs() -> None:
    os.environ["OVS_RUNDIR"] = NO_OVS_RUNDIR  # the child's environment only


def test_none_takes_any_name_and_attaches_nothing() -> None:
    def body() -> None:
        br = resolve("no-such-bridge", "none")
        assert br == Bridge("no-such-bridge", "none")
        ip("tuntap", "add", "tap0", "mode", "tap")
        br.attach("tap0")
        br.detach("tap0")
        assert master_of("tap0") is None

    run_isolated(body)


def test_missing_bridge() -> None:
    def body() -> None:
        no_system_ovs()
        for bridge_type in ("auto", "linux"):
            with pytest.raises(SetupError, match=r"^bridge br-nope does not exist \(create it: ip link add br-nope"):
                resolve("br-nope", bridge_type)
        with pytest.raises(SetupError, match="Open vSwitch"):  # not installed, or its database unreachable
            resolve("br-nope", "ovs", ovsdb=f"unix:{NO_OVS_RUNDIR}/db.sock")

    run_isolated(body)


def test_an_interface_that_is_not_a_bridge() -> None:
    def body() -> None:
        no_system_ovs()
        ip("link", "add", "v0", "type", "veth", "peer", "name", "v1")  # no dummy module on these kernels
        ip("tuntap", "add", "tap0", "mode", "tap")
        for bridge_type in ("auto", "linux"):
            with pytest.raises(SetupError, match=r"^v0 is not a Linux bridge \(kind veth\)"):
                resolve("v0", bridge_type)
            with pytest.raises(SetupError, match=r"^tap0 is not a Linux bridge \(kind tun\)"):
                resolve("tap0", bridge_type)

    run_isolated(body)


def test_linux_bridge_found() -> None:
    def body() -> None:
        ip("link", "add", "br0", "type", "bridge")
        assert resolve("br0", "auto") == Bridge("br0", "linux")
        assert resolve("br0", "linux") == Bridge("br0", "linux")
        with pytest.raises(SetupError, match="--tag is for Open vSwitch bridges"):
            resolve("br0", "auto", tag=20)

    run_isolated(body)


def test_attach_to_a_real_linux_bridge() -> None:
    def body() -> None:
        ip("link", "add", "br0", "type", "bridge")
        ip("tuntap", "add", "tap0", "mode", "tap")
        br = resolve("br0", "auto")
        br.attach("tap0")
        assert master_of("tap0") == "br0"
        br.detach("tap0")  # nothing to do for a Linux bridge: closing the TAP removes the port
        assert master_of("tap0") == "br0"
        asyncio.run(asyncio.wait_for(br.keep_attached("tap0"), 1))  # no watcher for a Linux bridge: returns

    run_isolated(body)


def test_attach_when_the_bridge_has_gone() -> None:
    def body() -> None:
        ip("link", "add", "br0", "type", "bridge")
        ip("tuntap", "add", "tap0", "mode", "tap")
        br = resolve("br0", "linux")
        ip("link", "del", "br0")
        with pytest.raises(SetupError, match="bridge br0 disappeared before the TAP could be attached"):
            br.attach("tap0")
        assert master_of("tap0") is None

    run_isolated(body)
