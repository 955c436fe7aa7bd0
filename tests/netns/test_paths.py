"""control/paths.py's PathKeeper on a real engine, in a namespace of the test's own: the underlay's address,
route and MTU change under it, and it re-resolves (called directly here; the daemon calls it on rtnetlink
events, tests/netns/test_faults.py)."""

from __future__ import annotations

import pytest

from control import config as host
from control.paths import PathKeeper
from datapath.config import Config, OffloadConfig, Remote, TapConfig, TunnelConfig
from datapath.engine import Engine
from tests.isolated import run_isolated
from tests.netns.netutil import ip, mtu_of, veth

pytestmark = pytest.mark.netns

REMOTE = "10.9.0.2"
TAP = "ovlp0"


def user_cfg(mode: str, tap_mtu: int | None = None, local: str | None = None) -> Config:
    return Config(
        tunnel=TunnelConfig(mode, vni=7 if mode == "vxlan" else None, local=local),
        remotes=(Remote(REMOTE),),
        tap=TapConfig(name=TAP, mtu=tap_mtu),
        offload=OffloadConfig(fast_path=False),
    )


@pytest.mark.parametrize("mode", ["vxlan", "gre"])
def test_address_route_and_mtu_changes_are_followed(mode: str) -> None:
    def body() -> None:
        veth("10.9.0.1/24")
        given = user_cfg(mode)
        engine = Engine(host.resolve(given))
        paths = PathKeeper(engine, given)
        overhead = engine.cfg.overhead
        try:
            assert engine.tap.mtu == 1500 - overhead
            paths.resolve()
            assert paths.problem == "" and paths.counters() == {"local_changes": 0, "mtu_changes": 0}
            # The address goes: no route to the remote (reported), the old local kept meanwhile.
            ip("addr", "del", "10.9.0.1/24", "dev", "u0")
            paths.resolve()
            assert paths.problem == f"no route to remote {REMOTE}: Network is unreachable"
            # Another address on the same link: the remote is reached from it, nothing else changes.
            ip("addr", "add", "10.9.0.5/24", "dev", "u0")
            paths.resolve()
            assert paths.problem == ""
            assert engine.remotes() == (Remote(REMOTE, "10.9.0.5"),) and paths.local_changes == 1
            # The underlay MTU drops: the automatic TAP MTU follows; it rises: back, not above the start MTU.
            ip("link", "set", "u0", "mtu", "1400")
            paths.resolve()
            assert mtu_of(TAP) == engine.tap.mtu == 1400 - overhead and paths.underlay_mtu == 1400
            ip("link", "set", "u0", "mtu", "9000")
            paths.resolve()
            assert mtu_of(TAP) == 1500 - overhead and paths.mtu_changes == 2 and paths.problem == ""
            # A route of its own towards the remote, with a smaller MTU: followed too.
            ip("route", "add", f"{REMOTE}/32", "dev", "u0", "mtu", "1300")
            paths.resolve()
            assert mtu_of(TAP) == 1300 - overhead
            # The route changed to another source address: the remote is reached from it.
            ip("addr", "add", "10.9.0.9/24", "dev", "u0")
            ip("route", "replace", f"{REMOTE}/32", "dev", "u0", "src", "10.9.0.9", "mtu", "1300")
            paths.resolve()
            assert engine.remotes() == (Remote(REMOTE, "10.9.0.9"),) and paths.local_changes == 2
            assert paths.problem == ""
        finally:
            engine.close()

    run_isolated(body)


def test_hand_set_tap_mtu_and_local_are_reported_not_changed() -> None:
    def body() -> None:
        veth("10.9.0.1/24")
        given = user_cfg("vxlan", tap_mtu=1450, local="10.9.0.1")
        engine = Engine(host.resolve(given))
        paths = PathKeeper(engine, given)
        try:
            ip("link", "set", "u0", "mtu", "1400")
            paths.resolve()
            assert mtu_of(TAP) == 1450  # set by hand: left alone, and reported
            assert paths.problem == (
                "TAP MTU 1450 (set by hand) does not fit the underlay MTU 1400: at most 1350; "
                "larger frames are dropped (tx_too_big / tx_error)"
            )
            ip("link", "set", "u0", "mtu", "1500")
            ip("addr", "del", "10.9.0.1/24", "dev", "u0")  # the given tunnel.local goes; another comes
            ip("addr", "add", "10.9.0.7/24", "dev", "u0")
            paths.resolve()
            assert paths.problem == "tunnel.local 10.9.0.1 is no longer an address of this host"
            assert engine.remotes() == (Remote(REMOTE, "10.9.0.1"),)  # not changed: the user chose it
            ip("addr", "del", "10.9.0.7/24", "dev", "u0")
            ip("addr", "add", "10.9.0.1/24", "dev", "u0")
            paths.resolve()
            assert paths.problem == ""
        finally:
            engine.close()

    run_isolated(body)


def test_a_tap_mtu_the_kernel_refuses_is_reported_not_raised() -> None:
    def body() -> None:
        veth("10.9.0.1/24")
        given = user_cfg("gre")
        engine = Engine(host.resolve(given))
        paths = PathKeeper(engine, given)
        try:
            ip("link", "del", TAP)  # the device is gone (the keeper would re-create it): SIOCSIFMTU fails
            ip("link", "set", "u0", "mtu", "1400")
            paths.resolve()
            assert paths.problem.startswith(f"cannot set the MTU of TAP {TAP} to {1400 - engine.cfg.overhead}"), (
                paths.problem
            )
            assert paths.mtu_changes == 0 and paths.underlay_mtu == 1400
        finally:
            engine.close()

    run_isolated(body)
