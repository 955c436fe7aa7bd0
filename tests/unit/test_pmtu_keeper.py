"""control.pmtu: underlay "too big" messages parsed (scapy builds them), and the per-remote path MTU kept."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from scapy.all import GRE, ICMP, IP, UDP, ICMPv6PacketTooBig, IPv6, Raw

from control.pmtu import EXPIRES, MIN_PMTU, PmtuKeeper, TooBig, parse_too_big
from datapath.config import Remote


def frag_needed(mtu: int, inner: Any) -> bytes:
    return bytes(IP(src="10.9.9.9", dst="192.0.2.1") / ICMP(type=3, code=4, nexthopmtu=mtu) / inner)


OURS = IP(src="192.0.2.1", dst="192.0.2.2", flags="DF")


def test_parse_ipv4_vxlan_and_gre() -> None:
    vx = frag_needed(1400, OURS / UDP(sport=40000, dport=4789) / Raw(bytes(8)))
    assert parse_too_big(vx, socket.AF_INET, 17, 4789) == TooBig("192.0.2.2", "192.0.2.1", 1400)
    assert parse_too_big(vx, socket.AF_INET, 17, 8472) is None  # not our port
    assert parse_too_big(vx, socket.AF_INET, 47, None) is None  # not our protocol
    gre = frag_needed(1300, OURS / GRE(proto=0x6558))
    assert parse_too_big(gre, socket.AF_INET, 47, None) == TooBig("192.0.2.2", "192.0.2.1", 1300)
    assert parse_too_big(frag_needed(0, OURS / GRE()), socket.AF_INET, 47, None) is None  # pre-RFC 1191
    other = bytes(IP(src="10.9.9.9", dst="192.0.2.1") / ICMP(type=3, code=1) / OURS / GRE())
    assert parse_too_big(other, socket.AF_INET, 47, None) is None
    assert parse_too_big(vx[:30], socket.AF_INET, 17, 4789) is None


def test_parse_icmpv6_packet_too_big() -> None:
    inner = IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=40000, dport=4789) / Raw(bytes(8))
    msg = bytes(ICMPv6PacketTooBig(mtu=1400) / inner)
    assert parse_too_big(msg, socket.AF_INET6, 17, 4789) == TooBig("fd00::2", "fd00::1", 1400)
    assert parse_too_big(msg, socket.AF_INET6, 17, 1) is None


class FakeEngine:
    def __init__(self, mode: str = "vxlan") -> None:
        from tests.configs import datapath_config

        self.cfg = datapath_config(
            mode=mode, remotes=(Remote("192.0.2.2", "192.0.2.1"),), underlay_mtu=1500, tap_mtu=1450
        )
        self.mtu: dict[str, int] = {"192.0.2.2": 0}
        self.calls: list[tuple[str, int]] = []

    def remotes(self) -> tuple[Remote, ...]:
        return tuple(Remote(a, "192.0.2.1") for a in self.mtu)

    def remote_mtu(self, addr: str) -> int:
        return self.mtu[addr] or 1500

    def set_remote_mtu(self, addr: str, mtu: int) -> int:
        old = self.remote_mtu(addr)
        self.mtu[addr] = mtu
        self.calls.append((addr, mtu))
        return old


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def keeper(route: dict[str, int] | None = None) -> tuple[PmtuKeeper, FakeEngine, Clock]:
    eng, clock = FakeEngine(), Clock()
    routes = route if route is not None else {"192.0.2.2": 1500}
    k = PmtuKeeper(eng, clock, route_to=lambda a: ("192.0.2.1", routes[a]))  # type: ignore[arg-type]
    return k, eng, clock


def test_icmp_lowers_then_expires(caplog: pytest.LogCaptureFixture) -> None:
    k, eng, clock = keeper()
    assert k.too_big(TooBig("192.0.2.2", "192.0.2.1", 1400))
    assert eng.remote_mtu("192.0.2.2") == 1400
    assert "path MTU towards remote 192.0.2.2 is now 1400 (was 1500)" in caplog.text
    assert not k.too_big(TooBig("192.0.2.9", "192.0.2.1", 1200))  # not a remote
    assert not k.too_big(TooBig("192.0.2.2", "192.0.2.77", 1200))  # not from our address
    k.too_big(TooBig("192.0.2.2", "192.0.2.1", 100))  # never below min_pmtu
    assert eng.remote_mtu("192.0.2.2") == MIN_PMTU
    clock.now += EXPIRES - 1
    k.tick()
    assert eng.remote_mtu("192.0.2.2") == MIN_PMTU
    clock.now += 2
    k.tick()
    assert eng.remote_mtu("192.0.2.2") == 1500 and eng.calls[-1] == ("192.0.2.2", 0)
    assert k.counters() == {"path_mtu_changes": 3, "underlay_too_big": 2}


def test_route_followed_down_and_up_capped_at_the_start_mtu() -> None:
    routes = {"192.0.2.2": 1500}
    k, eng, _ = keeper(routes)
    k.route_mtu("192.0.2.2", 1400)
    assert eng.remote_mtu("192.0.2.2") == 1400
    k.too_big(TooBig("192.0.2.2", "192.0.2.1", 1300))
    assert eng.remote_mtu("192.0.2.2") == 1300
    k.route_mtu("192.0.2.2", 1400)  # unchanged route: what ICMP taught stays
    assert eng.remote_mtu("192.0.2.2") == 1300
    routes["192.0.2.2"] = 9000  # the route replaced (poll): followed, up to the MTU the daemon started with
    k.tick()
    assert eng.remote_mtu("192.0.2.2") == 1500 and eng.mtu["192.0.2.2"] == 0
