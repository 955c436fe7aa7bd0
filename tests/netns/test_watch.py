"""control/watch.py's Watcher on real rtnetlink events, in a namespace of the test's own.

Events arrive without polling (the socket is read only when the loop says it is
readable), and a burst larger than the socket buffer (ENOBUFS: the kernel
dropped events) becomes one RESYNC for the handlers, after which events flow again.
"""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from control.watch import AddrEvent, Event, LinkEvent, Resync, RouteEvent, Watcher
from tests.isolated import run_isolated
from tests.netns.netutil import ip

pytestmark = pytest.mark.netns

WAIT = 20.0  # an upper bound for an event to arrive, never a speed requirement


def test_link_address_and_route_events_on_the_loop() -> None:
    def body() -> None:
        async def run() -> list[Event]:
            seen: list[Event] = []
            arrived = asyncio.Event()

            def handler(ev: Event) -> None:
                seen.append(ev)
                if isinstance(ev, LinkEvent) and ev.op == "del" and ev.name == "br7":
                    arrived.set()

            w = Watcher()
            w.add(handler)
            w.start(asyncio.get_running_loop())
            try:
                for cmd in (
                    "link add w0 type veth peer name w1", "link add br7 type bridge", "link set w0 master br7",
                    "link set w0 up", "addr add 10.7.0.1/24 dev w0", "route add 10.8.0.0/16 via 10.7.0.2",
                    "link set w0 nomaster", "link del br7",
                ):  # fmt: skip
                    await asyncio.to_thread(ip, *cmd.split())
                await asyncio.wait_for(arrived.wait(), WAIT)
            finally:
                w.close()
            return seen

        seen = uvloop.run(run())
        links = [e for e in seen if isinstance(e, LinkEvent)]
        br = next(e.index for e in links if e.name == "br7")
        assert any(e.name == "w0" and e.master == br for e in links)  # attached
        assert any(e.name == "w0" and e.master == 0 and e.op == "new" for e in links[-4:])  # nomaster
        assert not any(e.name == "w0" and e.op == "del" for e in links)  # a port leaving is not a deletion
        assert any(isinstance(e, AddrEvent) and e.address == "10.7.0.1" and e.op == "new" for e in seen)
        assert any(isinstance(e, RouteEvent) and (e.dst, e.prefixlen, e.gateway) == ("10.8.0.0", 16, "10.7.0.2")
                   for e in seen)  # fmt: skip
        assert links[-1] == LinkEvent("del", br, "br7", mtu=1500, kind="bridge")

    run_isolated(body)


def test_lost_events_become_one_resync_then_events_flow_again() -> None:
    def body() -> None:
        w = Watcher(rcvbuf=4096)  # the kernel doubles it; still far below what 100 links announce
        seen: list[Event] = []
        w.add(seen.append)
        try:
            for i in range(50):  # nobody reads meanwhile: the socket overflows
                ip("link", "add", f"f{i}", "type", "veth", "peer", "name", f"g{i}")
            while True:  # what a loop's readiness callbacks would do, until the socket is drained
                before = len(seen)
                w.on_readable()
                if len(seen) == before:
                    break
            assert w.resyncs >= 1 and any(isinstance(e, Resync) for e in seen)
            seen.clear()
            ip("link", "add", "late0", "type", "veth", "peer", "name", "late1")
            w.on_readable()
            assert any(isinstance(e, LinkEvent) and e.name == "late0" for e in seen), seen
        finally:
            w.close()

    run_isolated(body)


def test_a_datagram_longer_than_the_read_is_a_resync() -> None:
    def body() -> None:
        w = Watcher(recv_size=64)  # an RTM_NEWLINK of a veth is several hundred bytes
        seen: list[Event] = []
        w.add(seen.append)
        try:
            ip("link", "add", "t0", "type", "veth", "peer", "name", "t1")
            w.on_readable()
            assert seen and all(isinstance(e, Resync) for e in seen), seen
            assert w.resyncs == len(seen)
        finally:
            w.close()

    run_isolated(body)
