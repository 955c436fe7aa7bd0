"""control/config.py on a host of the test's own: local_addresses and resolve."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from control.config import (
    is_local_address,
    local_addresses,
    local_table_addresses,
    resolve,
    resolve_membership,
    tap_mac,
)
from datapath.config import Config, ConfigError, MembershipConfig, OffloadConfig, Remote, TapConfig, TunnelConfig
from datapath.errors import SetupError
from tests.isolated import run_isolated
from tests.netns.netutil import ip, veth

pytestmark = pytest.mark.netns


def user_cfg(mode: str = "vxlan", remotes: tuple[str, ...] = ("10.1.0.2",), **tunnel: object) -> Config:
    return Config(tunnel=TunnelConfig(mode, **tunnel), remotes=tuple(Remote(a) for a in remotes))  # type: ignore[arg-type]


def host() -> None:
    """u0 10.1.0.1/24 (MTU 1500), and 10.2.0.0/24 behind it with a route MTU of 1400."""
    veth("10.1.0.1/24")
    ip("route", "add", "10.2.0.0/24", "dev", "u0", "mtu", "1400")


def test_local_addresses() -> None:
    def body() -> None:
        assert local_addresses() == {"127.0.0.1"}
        host()
        ip("addr", "add", "10.5.0.1/32", "dev", "u1")
        assert local_addresses() == {"127.0.0.1", "10.1.0.1", "10.5.0.1"}

    run_isolated(body)


def test_is_local_address_knows_secondary_addresses() -> None:
    """A secondary address's local route has the primary as source (a connected socket says 10.1.0.1):
    the local table still names it ours (reload and `remote add` refuse our own addresses by this)."""

    def body() -> None:
        host()
        ip("addr", "add", "10.1.0.11/24", "dev", "u0")  # secondary
        assert local_table_addresses() >= {"127.0.0.1", "10.1.0.1", "10.1.0.11"}
        assert is_local_address("10.1.0.1") and is_local_address("10.1.0.11") and is_local_address("127.0.0.5")
        assert not is_local_address("10.1.0.2") and not is_local_address("10.1.0.12")
        assert not is_local_address("10.9.9.9")  # no route at all

    run_isolated(body)


def test_local_table_addresses_without_the_file(tmp_path: Path) -> None:
    assert local_table_addresses(str(tmp_path / "absent")) == set()


@pytest.mark.parametrize(("mode", "overhead"), [("vxlan", 50), ("gre", 38)])
def test_resolve_fills_in_routes_mtus_and_identity(mode: str, overhead: int) -> None:
    def body() -> None:
        host()
        cfg = resolve(user_cfg(mode))
        assert cfg.is_resolved()
        assert cfg.remotes == (Remote("10.1.0.2", "10.1.0.1"),)
        assert cfg.underlay_mtu == 1500 and cfg.tap_mtu == 1500 - overhead
        assert cfg.tap.mac == tap_mac("10.1.0.1", mode, 0, f"ovl-{mode}")
        assert cfg.offload.rx_coalesce is False
        assert cfg.tunnel.local is None  # still "from the route"; each remote knows its own

    run_isolated(body)


def test_resolve_takes_the_smallest_path_mtu_and_keeps_what_the_user_set() -> None:
    def body() -> None:
        host()
        cfg = resolve(user_cfg("gre", ("10.1.0.2", "10.2.0.2"), key=7))
        assert cfg.underlay_mtu == 1400 and cfg.tap_mtu == 1400 - 42
        assert [r.local for r in cfg.remotes] == ["10.1.0.1", "10.1.0.1"]
        mine = dataclasses.replace(
            user_cfg("vxlan", underlay_mtu=1300, local="10.1.0.1"),
            tap=TapConfig(name="t0", mtu=1000, mac=b"\x02\x00\x00\x00\x00\x09"),
            offload=OffloadConfig(rx_coalesce=True),
        )
        cfg = resolve(mine, "ovs")
        assert (cfg.underlay_mtu, cfg.tap_mtu, cfg.tap.mac) == (1300, 1000, b"\x02\x00\x00\x00\x00\x09")
        assert cfg.remotes[0].local == "10.1.0.1" and cfg.offload.rx_coalesce is True

    run_isolated(body)


@pytest.mark.parametrize(("policy", "kind", "coalesce"), [("auto", "linux", True), ("auto", "ovs", False),
                                                          ("on", "none", True), ("off", "linux", False)])  # fmt: skip
def test_resolve_coalescing_follows_the_bridge(policy: str, kind: str, coalesce: bool) -> None:
    def body() -> None:
        host()
        cfg = resolve(dataclasses.replace(user_cfg(), offload=OffloadConfig(policy=policy)), kind)
        assert cfg.offload.rx_coalesce is coalesce

    run_isolated(body)


def test_resolve_the_local_address_is_used_for_every_remote() -> None:
    def body() -> None:
        host()
        ip("addr", "add", "10.1.0.5/24", "dev", "u0")
        cfg = resolve(user_cfg(remotes=("10.1.0.2", "10.2.0.3"), local="10.1.0.5"))
        assert [r.local for r in cfg.remotes] == ["10.1.0.5", "10.1.0.5"]
        assert cfg.tap.mac == tap_mac("10.1.0.5", "vxlan", 0, "ovl-vxlan")

    run_isolated(body)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (user_cfg(local="10.1.0.9"), "tunnel.local 10.1.0.9 is not an address of this host"),
        (user_cfg(remotes=("10.1.0.1",)), "remotes 10.1.0.1 is an address of this host: a tunnel needs another host"),
        (user_cfg(remotes=("127.0.0.5",)), "remotes 127.0.0.5 is an address of this host"),
        (user_cfg(remotes=("10.9.0.1",)), "no route to remote 10.9.0.1: Network is unreachable"),
        (user_cfg(underlay_mtu=100), "tap.mtu: TAP MTU 50 is below 68 (underlay MTU 100)"),
    ],
)
def test_resolve_refuses(cfg: Config, message: str) -> None:
    def body() -> None:
        host()
        with pytest.raises((SetupError, ConfigError)) as info:  # the host's problem, or the configuration's
            resolve(cfg)
        assert str(info.value).startswith(message), str(info.value)

    run_isolated(body)


def _members_cfg(etcd: str, address: str | None = None, local: str | None = None) -> Config:
    return dataclasses.replace(
        user_cfg(local=local), membership=MembershipConfig(etcd=(etcd,), net="n1", address=address)
    )


def test_resolve_membership_publishes_the_source_address_towards_etcd() -> None:
    """No membership.address: the source of the route to the first endpoint, or tunnel.local of its family;
    a given one must be ours; no route, or etcd on loopback, is an error that says what to give."""

    def body() -> None:
        host()
        own = local_addresses()
        assert resolve_membership(_members_cfg("http://10.2.0.7:2379"), own).address == "10.1.0.1"
        ip("addr", "add", "10.1.0.5/24", "dev", "u0")
        got = resolve_membership(_members_cfg("http://10.2.0.7:2379", local="10.1.0.5"), local_addresses())
        assert got.address == "10.1.0.5"
        assert resolve_membership(_members_cfg("http://10.2.0.7:2379", address="10.1.0.5"), own | {"10.1.0.5"})
        refusals = [
            (_members_cfg("http://10.9.0.7:2379"),
             "membership.etcd http://10.9.0.7:2379: no route to etcd endpoint 10.9.0.7: Network is unreachable; "
             "give membership.address"),
            (_members_cfg("http://127.0.0.1:2379"),
             "membership.etcd http://127.0.0.1:2379 is reached over loopback: give the underlay address to "
             "publish (membership.address)"),
            (_members_cfg("http://10.2.0.7:2379", address="10.1.0.9"),
             "membership.address 10.1.0.9 is not an address of this host"),
        ]  # fmt: skip
        for cfg, message in refusals:
            with pytest.raises(ConfigError) as info:
                resolve_membership(cfg, own)
            assert str(info.value) == message  # (str() names a key as the file does)

    run_isolated(body)


def test_resolve_tap_mtu_below_the_minimum_from_the_route() -> None:
    def body() -> None:
        host()
        ip("route", "add", "10.3.0.0/24", "dev", "u0", "mtu", "110")
        with pytest.raises(ConfigError, match=r"TAP MTU 60 is below 68 \(underlay MTU 110\)"):
            resolve(user_cfg(remotes=("10.3.0.1",)))

    run_isolated(body)
