"""control.pmtu.PmtuKeeper's underlay listener on real raw sockets, in a namespace of the test's own:
an ICMPv6 "packet too big" about a packet to an IPv6 remote lowers that remote's path MTU."""

from __future__ import annotations

import asyncio
import socket

import pytest
from scapy.all import UDP, ICMPv6PacketTooBig, IPv6, Raw

from control.pmtu import PmtuKeeper
from datapath.config import Remote
from tests.isolated import run_isolated

pytestmark = pytest.mark.netns


class Engine6:
    """What PmtuKeeper reads of an engine whose one remote is IPv6 (and which has IPv4 sockets too)."""

    families = frozenset({4, 6})

    def __init__(self) -> None:
        from tests.configs import datapath_config

        self.cfg = datapath_config(
            mode="vxlan", remotes=(Remote("fd00::2", "fd00::1"),), underlay_mtu=1500, tap_mtu=1430
        )
        self.mtu = 0

    def remotes(self) -> tuple[Remote, ...]:
        return (Remote("fd00::2", "fd00::1"),)

    def remote_mtu(self, addr: str) -> int:
        return self.mtu or 1500

    def set_remote_mtu(self, addr: str, mtu: int) -> int:
        old, self.mtu = self.remote_mtu(addr), mtu
        return old


def test_icmpv6_packet_too_big_from_the_underlay_lowers_an_ipv6_remotes_path_mtu() -> None:
    def body() -> None:
        with open("/proc/sys/net/ipv6/conf/lo/disable_ipv6", "w") as f:  # (run_isolated turned it off)
            f.write("0")
        eng = Engine6()
        loop = asyncio.new_event_loop()
        k = PmtuKeeper(eng, route_to=lambda a: ("fd00::1", 1500))  # type: ignore[arg-type]
        k.start(loop)
        try:
            ours = IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=40000, dport=4789) / Raw(bytes(1400))
            msg = bytes(ICMPv6PacketTooBig(mtu=1400) / bytes(ours)[:1232])
            with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as tx:
                tx.sendto(msg, ("::1", 0))  # (the kernel fills in the ICMPv6 checksum)
            for _ in range(100):  # until the listener read it (or 5 s)
                loop.run_until_complete(asyncio.sleep(0.05))
                if k.icmp_seen:
                    break
            assert k.icmp_seen == 1 and eng.remote_mtu("fd00::2") == 1400, k.counters()
        finally:
            k.stop()
            loop.close()

    run_isolated(body)
