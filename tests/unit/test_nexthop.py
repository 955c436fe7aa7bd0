"""control.nexthop.NextHopKeeper against a fake rtnetlink and an engine that keeps next hops by slot.

The engine forgets a remote's next hop with its slot (ovl_dp_remove_remote); the keeper must set it
again for a remote re-added with the same address, whose route and neighbour did not change.
"""

from __future__ import annotations

import contextlib
from typing import Any

from control import nexthop
from datapath.config import Remote

MAC = "02:aa:bb:cc:dd:ee"
OURS = "02:11:22:33:44:55"


class FakeRtnl:
    """Every remote on device 2 (eth0, MTU 1500), connected, its neighbour REACHABLE."""

    def route(self, dst: str, src: str | None) -> tuple[int, str]:
        return 2, dst

    def link(self, ifindex: int) -> tuple[str, int, int, str]:
        return "eth0", nexthop.ARPHRD_ETHER, 1500, OURS

    def neighbour(self, ifindex: int, addr: str) -> tuple[str, int]:
        return MAC, nexthop.NUD_REACHABLE

    def use(self, ifindex: int, addr: str) -> None:
        pass

    def close(self) -> None:
        pass


class FakeEngine:
    """Remotes in slots; a next hop belongs to a slot and goes with it, as in Engine / ring.c."""

    def __init__(self, addrs: list[str]) -> None:
        self.slots: dict[int, Remote] = {}
        self.on_ring: set[int] = set()
        self.pauses = 0
        for a in addrs:
            self.add(a)

    def add(self, addr: str) -> None:
        slot = min(set(range(len(self.slots) + 1)) - set(self.slots))
        self.slots[slot] = Remote(addr, "10.0.0.1")

    def remove(self, addr: str) -> None:
        slot = self._slot(addr)
        del self.slots[slot]
        self.on_ring.discard(slot)

    def _slot(self, addr: str) -> int:
        return next(s for s, r in self.slots.items() if r.addr == addr)

    def remotes(self) -> tuple[Remote, ...]:
        return tuple(self.slots[s] for s in sorted(self.slots))

    def set_nexthop(self, addr: str, ifindex: int, mtu: int, dst: bytes, src: bytes) -> bool:
        self.on_ring.add(self._slot(addr))
        return True

    def clear_nexthop(self, addr: str) -> None:
        self.on_ring.discard(self._slot(addr))

    def ring_remotes(self) -> frozenset[str]:
        return frozenset(self.slots[s].addr for s in self.on_ring)

    def paused(self) -> contextlib.AbstractContextManager[None]:
        self.pauses += 1
        return contextlib.nullcontext()


def keeper(engine: FakeEngine) -> nexthop.NextHopKeeper:
    return nexthop.NextHopKeeper(engine, rtnl=FakeRtnl())  # type: ignore[arg-type]


def test_remote_re_added_with_the_same_address_gets_its_next_hop_again() -> None:
    e = FakeEngine(["10.0.0.2", "10.0.0.3"])
    k = keeper(e)
    k.resolve()
    assert e.ring_remotes() == {"10.0.0.2", "10.0.0.3"}
    e.remove("10.0.0.2")  # removed and added again between two resolves: same slot, same next hop
    e.add("10.0.0.2")
    assert e.ring_remotes() == {"10.0.0.3"}
    k.resolve()
    assert e.ring_remotes() == {"10.0.0.2", "10.0.0.3"}


def test_tick_notices_a_next_hop_the_engine_lost() -> None:
    e = FakeEngine(["10.0.0.2"])
    k = keeper(e)
    k.resolve()
    scheduled: list[Any] = []

    def planned(only: object = None) -> None:
        scheduled.append(1)

    k.schedule = planned  # type: ignore[method-assign]
    k._loop = type("Loop", (), {"call_later": lambda self, t, f: None})()
    e.remove("10.0.0.2")
    e.add("10.0.0.2")  # the list of addresses is what it was
    k._tick()
    assert scheduled


class CountingRtnl(FakeRtnl):
    """Each remote its own neighbour (connected); counts the route lookups."""

    def __init__(self) -> None:
        self.routes: list[str] = []

    def route(self, dst: str, src: str | None) -> tuple[int, str]:
        self.routes.append(dst)
        return 2, dst


class StepLoop:
    """call_later keeps the callbacks; run() calls them."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def call_later(self, delay: float, fn: Any) -> Any:
        self.calls.append(fn)
        return type("Handle", (), {"cancel": lambda self: None})()

    def run(self) -> None:
        calls, self.calls = self.calls, []
        for fn in calls:
            fn()


def test_a_neighbour_event_resolves_only_the_remotes_behind_that_neighbour() -> None:
    """With many remotes, each neighbour's STALE / REACHABLE cycle (every 15-45 s) re-resolved all of
    them: O(remotes) rtnetlink requests per event, O(remotes^2) on the loop."""
    addrs = [f"10.0.0.{i}" for i in range(2, 12)]
    e = FakeEngine(addrs)
    rtnl = CountingRtnl()
    k = nexthop.NextHopKeeper(e, rtnl=rtnl)  # type: ignore[arg-type]
    loop = StepLoop()
    k._loop = loop  # type: ignore[assignment]
    k.schedule()
    loop.run()
    assert sorted(rtnl.routes) == sorted(addrs) and e.ring_remotes() == set(addrs)
    rtnl.routes.clear()
    k.on_event(nexthop.NeighEvent("new", 2, "10.0.0.5", MAC, nexthop.NUD_REACHABLE))
    k.on_event(nexthop.NeighEvent("new", 2, "10.0.0.7", MAC, nexthop.NUD_REACHABLE))
    loop.run()
    assert sorted(rtnl.routes) == ["10.0.0.5", "10.0.0.7"]
    assert set().union(*k.waiting.values()) == set(addrs)  # still waiting for news of every next hop
    rtnl.routes.clear()
    k.on_event(nexthop.LinkEvent("new", 2, "eth0"))  # anything else: every remote
    loop.run()
    assert sorted(rtnl.routes) == sorted(addrs)


def test_remotes_joining_and_leaving_resolve_only_those_remotes() -> None:
    """Hundreds of etcd members joining at once: each tick re-resolved every remote (4.1 s of a daemon's
    11.5 s CPU while 297 members joined); only the new ones are looked up, the gone ones forgotten."""
    addrs = [f"10.0.0.{i}" for i in range(2, 12)]
    e = FakeEngine(addrs)
    rtnl = CountingRtnl()
    k = nexthop.NextHopKeeper(e, rtnl=rtnl)  # type: ignore[arg-type]
    loop = StepLoop()
    k._loop = loop  # type: ignore[assignment]
    k.schedule()
    loop.run()
    rtnl.routes.clear()
    e.add("10.0.1.1")
    e.add("10.0.1.2")
    e.remove("10.0.0.3")
    k._tick()  # the clock has not reached a refresh: only the difference
    loop.run()
    assert sorted(rtnl.routes) == ["10.0.1.1", "10.0.1.2"]
    assert "10.0.0.3" not in k.hops and "10.0.0.3" not in set().union(*k.waiting.values())
    assert e.ring_remotes() == (set(addrs) - {"10.0.0.3"}) | {"10.0.1.1", "10.0.1.2"}
    rtnl.routes.clear()
    k._tick()  # nothing changed: nothing looked up
    loop.run()
    assert rtnl.routes == []


class PermanentRtnl(CountingRtnl):
    """10.0.0.2's neighbour is a PERMANENT entry the host's administrator made; counts NTF_USE requests."""

    def __init__(self) -> None:
        super().__init__()
        self.used: list[str] = []

    def neighbour(self, ifindex: int, addr: str) -> tuple[str, int]:
        return MAC, nexthop.NUD_PERMANENT if addr == "10.0.0.2" else nexthop.NUD_REACHABLE

    def use(self, ifindex: int, addr: str) -> None:
        self.used.append(addr)


def test_a_permanent_neighbour_is_never_asked_for() -> None:
    """NTF_USE on a PERMANENT entry makes it INCOMPLETE, then FAILED (Linux 6.18): the host's static
    neighbours were clobbered at every refresh."""
    e = FakeEngine(["10.0.0.2", "10.0.0.3"])
    rtnl = PermanentRtnl()
    now = [0.0]
    k = nexthop.NextHopKeeper(e, rtnl=rtnl, clock=lambda: now[0])  # type: ignore[arg-type]
    loop = StepLoop()
    k._loop = loop  # type: ignore[assignment]
    k.resolve()
    assert e.ring_remotes() == {"10.0.0.2", "10.0.0.3"} and k.hops["10.0.0.2"].static
    now[0] += nexthop.REFRESH
    k._tick()
    assert rtnl.used == ["10.0.0.3"]


class GatewayRtnl(FakeRtnl):
    """Every remote behind gateway 10.0.0.1 on device 2; counts each kind of request."""

    def __init__(self, neighbour_state: int) -> None:
        self.asked: dict[str, int] = {"route": 0, "link": 0, "neighbour": 0, "use": 0}
        self.state = neighbour_state

    def route(self, dst: str, src: str | None) -> tuple[int, str]:
        self.asked["route"] += 1
        return 2, "10.0.0.1"

    def link(self, ifindex: int) -> tuple[str, int, int, str]:
        self.asked["link"] += 1
        return super().link(ifindex)

    def neighbour(self, ifindex: int, addr: str) -> tuple[str, int]:
        self.asked["neighbour"] += 1
        return (MAC if self.state & nexthop.NUD_USABLE else ""), self.state

    def use(self, ifindex: int, addr: str) -> None:
        self.asked["use"] += 1


def test_remotes_behind_one_gateway_ask_for_its_link_and_neighbour_once() -> None:
    addrs = [f"198.18.0.{i}" for i in range(1, 51)]
    for state, used in ((nexthop.NUD_REACHABLE, 0), (nexthop.NUD_FAILED, 1)):
        rtnl = GatewayRtnl(state)
        e = FakeEngine(addrs)
        k = nexthop.NextHopKeeper(e, rtnl=rtnl)  # type: ignore[arg-type]
        k.resolve()
        assert rtnl.asked == {"route": 50, "link": 1, "neighbour": 1, "use": used}
        assert e.pauses == 1  # the data path parked once for the 50 changes, after the lookups
        assert e.ring_remotes() == (set(addrs) if used == 0 else set())
        assert used == 0 or k.waiting == {(2, "10.0.0.1"): set(addrs)}
