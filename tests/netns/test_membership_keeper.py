"""control/membership/keeper.py against a real etcd (control/lab/etcd.py on 127.0.0.1, free ports).

The sink is a recorder (control plane only: no datapath here). Each test runs its keepers on a
uvloop loop; etcd and etcdctl, which block, run in a worker thread so that the keepers go on
meanwhile. Waits are "until X, at most a generous T", never timed asserts.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import time
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import uvloop

from control.lab import etcd as lab
from control.membership import etcd
from control.membership.keeper import Membership
from control.membership.model import Member, NetConfig, NetKeys, family, static_json
from control.membership.store import Event, Unavailable
from datapath.errors import SetupError
from tests.sinks import ChangeRecorder

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not lab.available(), reason="etcd and etcdctl are not installed"),
    pytest.mark.usefixtures("no_leftovers"),
]

NET = "t1"
KEYS = NetKeys(NET)
VXLAN42 = NetConfig("vxlan", vni=42, port=4789)
WAIT = 30.0  # generous: two noisy cores shared by several test runs


@dataclass(frozen=True)
class Settings:
    etcd: tuple[str, ...]
    net: str | None = NET
    lease_ttl: float = 6.0
    keepalive: float = 1.0


class Rec(ChangeRecorder):
    """A recording MemberSink; family: refuse members of the other address family (as the service does)."""

    def __init__(self, family_: int | None = None, boom: str = "") -> None:
        super().__init__()
        self.boom = boom  # member_added(boom) raises RuntimeError: a bug in the sink
        self.calls: list[tuple[Any, ...]] = []
        self.members: set[str] = set()
        self.static: dict[tuple[int, bytes], str] = {}
        self.family = family_
        self.no_route: set[str] = set()  # member_added refuses these (until the test takes them out)
        self.outside = 0  # sink calls made outside any changes()

    def _call(self) -> None:
        if not self.depth:
            self.outside += 1

    def member_added(self, addr: str) -> None:
        self._call()
        if self.family is not None and family(addr) != self.family:
            raise ValueError(f"an IPv{family(addr)} member, our underlay is IPv{self.family}")
        if addr in self.no_route:
            raise ValueError(f"no route to remote {addr}: Network is unreachable")
        if addr == self.boom:
            raise RuntimeError("the sink's bug")
        assert addr not in self.members, f"{addr} added twice"
        self.calls.append(("added", addr))
        self.members.add(addr)

    def member_removed(self, addr: str) -> None:
        self._call()
        assert addr in self.members, f"{addr} removed but never added"
        self.calls.append(("removed", addr))
        self.members.discard(addr)

    def static_changed(self, mac: bytes, vlan: int, remote: str | None) -> None:
        self._call()
        self.calls.append(("static", mac, vlan, remote))
        if remote is None:
            self.static.pop((vlan, mac), None)
        else:
            self.static[(vlan, mac)] = remote

    def removed(self) -> list[str]:
        return [c[1] for c in self.calls if c[0] == "removed"]


def me(addr: str, netns: int, machine_id: str = "m-test", hostname: str = "") -> dict[str, Any]:
    return {
        "addr": addr,
        "mac": "02:00:00:00:00:01",
        "hostname": hostname or f"host-{addr}",
        "machine_id": machine_id,
        "netns": netns,
        "version": "test",
        "pid": 4242,
        "joined": time.time(),
    }


def run(coro: Coroutine[Any, Any, None]) -> None:
    uvloop.run(coro)


async def ctl(server: lab.EtcdServer | str, *args: str) -> str:
    """etcdctl in a worker thread (the keepers keep running)."""
    url = server if isinstance(server, str) else server.url
    return await asyncio.to_thread(lab.etcdctl, url, *args)


async def until(what: str, probe: Callable[[], object], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.05)


async def lease_grant(url: str, ttl: int) -> str:
    out = await ctl(url, "lease", "grant", str(ttl))
    return out.split()[1]  # "lease 694d... granted with TTL(60s)"


async def put_member(url: str, at: str, /, netns: int = 99, lease: str | None = None, **fields: Any) -> None:
    """A member key for address at, as another host would write it (fields override the value's)."""
    value = json.dumps({**me(at, netns, machine_id="m-other"), **fields})
    await ctl(url, "put", KEYS.member(at), value, *([f"--lease={lease}"] if lease else []))


async def key_info(url: str, key: str) -> tuple[bytes, int] | None:
    """(value, lease) of key, None if absent."""
    out = json.loads(await ctl(url, "get", key, "-w", "json"))
    kvs = out.get("kvs") or []
    if not kvs:
        return None
    return base64.b64decode(kvs[0]["value"]), int(kvs[0].get("lease", 0))


async def revision(url: str) -> int:
    out = json.loads(await ctl(url, "get", "/ovl-dp/", "--prefix", "--keys-only", "-w", "json"))
    return int(out["header"]["revision"])


@pytest.fixture
def server() -> Iterator[lab.EtcdServer]:
    with lab.EtcdServer() as s:
        yield s


async def joined(
    urls: str | list[str],
    addr: str,
    netns: int,
    sink: Rec | None = None,
    connect: Callable[..., Any] = etcd.connect,
    **kw: Any,
) -> Membership:
    urls_t = tuple(urls.split(",")) if isinstance(urls, str) else tuple(urls)
    m = Membership(Settings(urls_t, **kw), me(addr, netns), VXLAN42, sink or Rec(), connect=connect)
    await m.join(10)
    return m


async def closing(*ms: Membership) -> None:
    for m in ms:
        await asyncio.wait_for(m.stop(), 10)


# -- join, leave, watch --------------------------------------------------------------------------


def test_join_list_watch_leave(server: lab.EtcdServer) -> None:
    async def main() -> None:
        url = server.url
        await put_member(url, "10.0.0.9")  # already there (no lease: an operator's or a test's)
        a_sink, b_sink = Rec(), Rec()
        a = await joined(url, "10.0.0.1", 1, a_sink)
        b = None
        try:
            assert a_sink.members == {"10.0.0.9"}, "listed at join, before join() returned; never ourselves"
            assert a.state == "connected" and a.problem() == ""
            config = await key_info(url, KEYS.config)
            assert config is not None and NetConfig.parse(config[0]) == VXLAN42, "the first daemon creates the net"
            mine = await key_info(url, KEYS.member("10.0.0.1"))
            assert mine is not None and mine[1] == a.report()["lease"]["id"]
            assert Member.parse(mine[0]).netns == 1

            b = await joined(url, "10.0.0.2", 2, b_sink)
            assert b_sink.members == {"10.0.0.1", "10.0.0.9"}
            await until("A sees B", lambda: "10.0.0.2" in a_sink.members)

            await ctl(url, "put", KEYS.static(20, bytes.fromhex("02aabbccddee")), static_json("10.0.0.2"))
            await until("the static entry", lambda: a_sink.static == {(20, bytes.fromhex("02aabbccddee")): "10.0.0.2"})
            await ctl(url, "del", KEYS.static(20, bytes.fromhex("02aabbccddee")))
            await until("the static entry removed", lambda: not a_sink.static)

            rep = a.report()
            assert rep["net"] == NET and rep["self"] == "10.0.0.1" and rep["state"] == "connected"
            assert rep["endpoint"] == url and rep["endpoints"] == [url]
            assert rep["revision"] >= await revision(url) - 1
            byaddr = {m["addr"]: m for m in rep["members"]}
            assert set(byaddr) == {"10.0.0.1", "10.0.0.2", "10.0.0.9"}
            assert byaddr["10.0.0.1"]["self"] and not byaddr["10.0.0.1"]["remote"]
            assert byaddr["10.0.0.2"]["remote"] and byaddr["10.0.0.2"]["hostname"] == "host-10.0.0.2"
            assert byaddr["10.0.0.2"]["since"] is not None and byaddr["10.0.0.2"]["refused"] == ""
            assert rep["counters"]["joins"] == 2 and rep["counters"]["watch_events"] >= 1

            await b.leave()  # revoke: A drops B at once, not after the TTL
            b = None
            await until("A drops B", lambda: "10.0.0.2" not in a_sink.members)
            assert await key_info(url, KEYS.member("10.0.0.2")) is None
            assert a.counters()["leaves"] == 1

            lease = await lease_grant(url, 60)  # a member on a lease of the test's: revoked -> removed
            await put_member(url, "10.0.0.7", lease=lease)
            await until("A sees .7", lambda: "10.0.0.7" in a_sink.members)
            await ctl(url, "lease", "revoke", lease)
            await until("A drops .7", lambda: "10.0.0.7" not in a_sink.members)
            assert a_sink.removed() == ["10.0.0.2", "10.0.0.7"]
        finally:
            await closing(a, *([b] if b else []))
        assert await key_info(url, KEYS.member("10.0.0.1")) is not None, "stop() does not revoke (handover)"

    run(main())


async def txn(url: str, ops: list[str]) -> None:
    """One etcd transaction of ops ("put KEY VALUE", "del KEY"): one revision, so one watch response."""
    import subprocess

    def run_txn() -> None:
        env = {**os.environ, "ETCDCTL_API": "3"}
        lines = "\n".join(ops)
        res = subprocess.run([lab.ETCDCTL, f"--endpoints={url}", "txn"], input=f"\n{lines}\n\n\n",
                             capture_output=True, text=True, timeout=15, env=env, check=False)  # fmt: skip
        assert res.returncode == 0 and res.stdout.startswith("SUCCESS"), res.stdout + res.stderr

    await asyncio.to_thread(run_txn)


def test_a_burst_of_members_is_applied_in_few_changes(server: lab.EtcdServer) -> None:
    """120 members put (and then deleted) in one transaction: every sink call inside a sink.changes(), and
    far fewer changes than calls (the service parks the data path once per change, not once per member)."""
    n = 120  # (etcd's default --max-txn-ops is 128)

    async def main() -> None:
        url = server.url
        sink = Rec()
        a = await joined(url, "10.0.0.1", 1, sink)
        try:
            addrs = [f"10.1.{i // 200}.{i % 200 + 1}" for i in range(n)]
            values = {x: json.dumps(me(x, 99, machine_id="m-other")) for x in addrs}
            quoted = {x: '"' + v.replace('"', '\\"') + '"' for x, v in values.items()}  # (etcdctl txn's quoting)
            await txn(url, [f"put {KEYS.member(x)} {quoted[x]}" for x in addrs])
            await until("the burst joined", lambda: len(sink.members) == n)
            assert sink.outside == 0 and sink.depth == 0
            joins = sink.opened
            assert 1 <= joins < n / 2, f"{joins} changes for {n} members"
            await txn(url, [f"del {KEYS.member(x)}" for x in addrs])
            await until("the burst left", lambda: not sink.members)
            assert sink.outside == 0 and sink.depth == 0
            assert 1 <= sink.opened - joins < n / 2, f"{sink.opened - joins} changes for {n} leaves"
        finally:
            await closing(a)

    run(main())


def test_refused_values(server: lab.EtcdServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ovl-dp")

    async def main() -> None:
        url = server.url
        sink = Rec(family_=4, boom="10.0.0.13")
        a = await joined(url, "10.0.0.1", 1, sink)
        try:
            await ctl(url, "put", KEYS.member("10.0.0.5"), "{not json")
            await put_member(url, "2001:db8::5")  # the wrong family for us: the sink refuses it
            await put_member(url, "10.0.0.6", addr="10.0.0.66")  # key and value disagree
            await ctl(url, "put", KEYS.members + "2001:DB8::7", "{}")  # not the canonical form
            await ctl(url, "put", KEYS.statics + "1/02:00:00:00:00:01", '{"remote": "nope"}')
            await put_member(url, "10.0.0.13")  # the sink fails: refused, the keeper goes on
            await put_member(url, "10.0.0.8")  # a good one after them: all were applied
            await until("the good one", lambda: "10.0.0.8" in sink.members)
            rep = {m["addr"]: m for m in a.report()["members"]}
            assert "not JSON" in rep["10.0.0.5"]["refused"]
            assert "our underlay is IPv4" in rep["2001:db8::5"]["refused"]
            assert "its value says addr 10.0.0.66" in rep["10.0.0.6"]["refused"]
            assert "must be written 2001:db8::7" in rep["2001:DB8::7"]["refused"]
            assert not any(rep[k]["remote"] for k in ("10.0.0.5", "2001:db8::5", "10.0.0.6", "2001:DB8::7"))
            assert rep["10.0.0.13"]["refused"] == "RuntimeError: the sink's bug"
            assert sink.members == {"10.0.0.8"} and not sink.static
            assert a.counters()["refused"] == 6

            await ctl(url, "del", KEYS.member("10.0.0.1"))  # our key deleted: claimed and listed again
            await until("listed again", lambda: a.counters()["relists"] == 1)
            assert a.counters()["refused"] == 6, "refused once per key and reason, not per listing"
            lines = [r for r in caplog.records if getattr(r, "event", "") == "member_refused"]
            assert len(lines) == 6, [r.getMessage() for r in lines]

            await put_member(url, "10.0.0.5")  # fixed: accepted
            await until("the fixed one", lambda: "10.0.0.5" in sink.members)
            assert {m["addr"]: m for m in a.report()["members"]}["10.0.0.5"]["refused"] == ""
        finally:
            await closing(a)
        assert not [r for r in caplog.records if r.exc_info], "no traceback in the log"

    run(main())


def test_member_refused_by_the_sink_is_offered_again(server: lab.EtcdServer) -> None:
    """A refusal of the sink can be transient (no route to the member yet, a full remote table): the member
    is offered again while its key stays, without waiting for the key to change; a malformed value is not."""

    async def main() -> None:
        url = server.url
        sink = Rec()
        sink.no_route.add("10.0.0.5")
        a = await joined(url, "10.0.0.1", 1, sink)
        try:
            await put_member(url, "10.0.0.5")
            await ctl(url, "put", KEYS.member("10.0.0.6"), "{not json")
            await until("refused", lambda: "no route" in {m["addr"]: m for m in a.report()["members"]}
                        .get("10.0.0.5", {}).get("refused", ""))  # fmt: skip
            keepalives = a.counters()["keepalives"]
            await until("a few keepalives", lambda: a.counters()["keepalives"] >= keepalives + 2)
            assert sink.members == set() and a.counters()["refused"] == 2, "refused once, logged once"
            sink.no_route.clear()  # the route is there now; the member's key has not changed
            await until("accepted", lambda: sink.members == {"10.0.0.5"})
            rep = {m["addr"]: m for m in a.report()["members"]}
            assert rep["10.0.0.5"]["remote"] and rep["10.0.0.5"]["refused"] == ""
            assert "not JSON" in rep["10.0.0.6"]["refused"] and a.counters()["joins"] == 1
            await ctl(url, "del", KEYS.member("10.0.0.5"))
            await until("removed", lambda: sink.members == set())
        finally:
            await closing(a)

    run(main())


# -- lease, key and watch trouble ----------------------------------------------------------------


def test_lease_revoked_from_outside(server: lab.EtcdServer) -> None:
    async def main() -> None:
        url = server.url
        a_sink, b_sink = Rec(), Rec()
        a = await joined(url, "10.0.0.1", 1, a_sink)
        b = await joined(url, "10.0.0.2", 2, b_sink)
        try:
            old = a.report()["lease"]["id"]
            await ctl(url, "lease", "revoke", f"{old:x}")
            await until("A's key back under a new lease", lambda: a.report()["lease"]["id"] not in (None, old))
            info = await key_info(url, KEYS.member("10.0.0.1"))
            assert info is not None and info[1] == a.report()["lease"]["id"]
            assert a.counters()["lease_regrants"] == 1
            assert a_sink.members == {"10.0.0.2"} and a_sink.removed() == [], "A keeps B throughout"
            await until("B has A again", lambda: b_sink.members == {"10.0.0.1"})
            assert a.state == "connected" and a.problem() == ""

            await ctl(url, "del", KEYS.member("10.0.0.1"))  # our key deleted, the lease alive: put back
            lease = a.report()["lease"]["id"]
            await until("A's key back", lambda: a.counters()["relists"] >= 2)
            info = await key_info(url, KEYS.member("10.0.0.1"))
            assert info is not None and info[1] == lease and a.counters()["lease_regrants"] == 1
        finally:
            await closing(a, b)

    run(main())


class GatedStore:
    """An EtcdStore whose watches wait for a gate to open (to compact etcd between list and watch)."""

    def __init__(self, inner: etcd.EtcdStore) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.watch_starts: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def watch(self, prefix: str, start_revision: int) -> AsyncGenerator[Event, None]:
        self.watch_starts.append(start_revision)
        await self.gate.wait()
        events = self.inner.watch(prefix, start_revision)
        try:
            async for ev in events:
                yield ev
        finally:
            await events.aclose()


def test_compacted_watch_relists_and_diffs(server: lab.EtcdServer) -> None:
    async def main() -> None:
        url = server.url
        stores: list[GatedStore] = []

        def connect(urls: Any, timeout: float) -> GatedStore:
            stores.append(GatedStore(etcd.connect(urls, timeout)))
            return stores[-1]

        await put_member(url, "10.0.0.8")
        await put_member(url, "10.0.0.9")
        sink = Rec()
        a = await joined(url, "10.0.0.1", 1, sink, connect=connect)
        try:
            assert sink.members == {"10.0.0.8", "10.0.0.9"}
            await until("the watch waiting at the gate", lambda: len(stores[0].watch_starts) == 1)
            await ctl(url, "del", KEYS.member("10.0.0.8"))
            await put_member(url, "10.0.0.7")
            await ctl(url, "put", KEYS.static(0, bytes.fromhex("020000000077")), static_json("10.0.0.7"))
            await put_member(url, "10.0.0.9", hostname="renamed")
            rev = await revision(url)
            await ctl(url, "compact", str(rev))  # past the revision the watch asks for
            stores[0].gate.set()
            await until("the difference applied", lambda: sink.members == {"10.0.0.7", "10.0.0.9"})
            assert sink.static == {(0, bytes.fromhex("020000000077")): "10.0.0.7"}
            assert a.counters()["relists"] == 1
            starts = stores[0].watch_starts
            assert len(starts) == 2 and starts[1] > rev >= starts[0], starts
            assert {m["addr"]: m for m in a.report()["members"]}["10.0.0.9"]["hostname"] == "renamed"
            assert sink.removed() == ["10.0.0.8"]
            await put_member(url, "10.0.0.6")  # and the new watch carries on
            await until("a later member", lambda: "10.0.0.6" in sink.members)
            assert a.problem() == ""
        finally:
            await closing(a)

    run(main())


# -- etcd down -----------------------------------------------------------------------------------


def test_etcd_killed_and_restarted(server: lab.EtcdServer) -> None:
    async def main() -> None:
        url = server.url
        a_sink, b_sink = Rec(), Rec()
        a = await joined(url, "10.0.0.1", 1, a_sink, lease_ttl=10.0, keepalive=1.0)
        b = await joined(url, "10.0.0.2", 2, b_sink, lease_ttl=10.0, keepalive=1.0)
        await put_member(url, "10.0.0.9")
        try:
            await until("A sees both", lambda: a_sink.members == {"10.0.0.2", "10.0.0.9"})
            lease = a.report()["lease"]["id"]
            await asyncio.to_thread(server.kill)
            await until("A degraded", lambda: a.state == "degraded")
            problem = a.problem()
            assert problem.startswith("degraded: etcd unreachable since "), problem
            assert problem.endswith("; forwarding with the last known 2 members"), problem
            assert a.report()["endpoint"] is None
            await asyncio.sleep(3 * 1.0)  # several keepalive periods and retries while down
            assert a_sink.removed() == [] and a_sink.members == {"10.0.0.2", "10.0.0.9"}, "nothing removed"
            await asyncio.to_thread(server.start)
            await ctl(url, "del", KEYS.member("10.0.0.9"))  # members changed meanwhile
            await put_member(url, "10.0.0.7")
            await until("A connected again", lambda: a.state == "connected" and a.problem() == "")
            await until("the changes applied", lambda: a_sink.members == {"10.0.0.2", "10.0.0.7"})
            assert a.counters()["reconnects"] >= 1
            assert a.report()["lease"]["id"] == lease, "the old lease lived through the restart: kept"
            assert a_sink.removed() == ["10.0.0.9"]
            await until("B too", lambda: b_sink.members == {"10.0.0.1", "10.0.0.7"})
        finally:
            await closing(a, b)

    run(main())


def test_etcd_away_longer_than_a_short_ttl_keeps_the_leases(server: lab.EtcdServer) -> None:
    """etcd gives every lease its full TTL again when it comes back; a keeper whose backoff grew past the TTL
    (10 s against 8 s here) came back after the lease ran out: every member of the net was dropped and added
    again everywhere after each etcd restart. The retries are at most a keepalive apart (jitter aside).

    (Timing: after etcd is back, a try comes within 1.2 x keepalive = 2.4 s, plus a failed connection's
    2 s; the TTL, 8 s, leaves a margin of 3.6 s.)"""

    async def main() -> None:
        url = server.url
        a_sink, b_sink = Rec(), Rec()
        a = await joined(url, "10.0.0.1", 1, a_sink, lease_ttl=8.0, keepalive=2.0)
        b = await joined(url, "10.0.0.2", 2, b_sink, lease_ttl=8.0, keepalive=2.0)
        try:
            await until("both", lambda: a_sink.members == {"10.0.0.2"} and b_sink.members == {"10.0.0.1"})
            leases = (a.report()["lease"]["id"], b.report()["lease"]["id"])
            await asyncio.to_thread(server.kill)
            await until("A degraded", lambda: a.state == "degraded")
            await asyncio.sleep(20)  # long enough for a 0.5 s doubling backoff to pass 8 s
            await asyncio.to_thread(server.start)
            await until("both back", lambda: a.state == b.state == "connected")
            assert (a.report()["lease"]["id"], b.report()["lease"]["id"]) == leases, "the leases lived on"
            assert a.counters()["lease_regrants"] == b.counters()["lease_regrants"] == 0
            assert a_sink.removed() == [] and b_sink.removed() == [], "no member dropped"
        finally:
            await closing(a, b)

    run(main())


def test_etcd_frozen_every_call_bounded(server: lab.EtcdServer) -> None:
    """etcd stopped (SIGSTOP): connections stay open, nothing answers; the keeper must not hang."""

    async def main() -> None:
        url = server.url
        await put_member(url, "10.0.0.9")
        sink = Rec()
        a = await joined(url, "10.0.0.1", 1, sink, lease_ttl=30.0, keepalive=1.0)
        pid = server.pid
        assert pid is not None
        try:
            lease = a.report()["lease"]["id"]
            os.kill(pid, signal.SIGSTOP)
            await until("A degraded", lambda: a.state == "degraded")
            assert "timed out" in a.problem() or "deadline" in a.problem().lower(), a.problem()
            assert sink.members == {"10.0.0.9"} and sink.removed() == []
            os.kill(pid, signal.SIGCONT)
            await until("A connected again", lambda: a.state == "connected")
            assert a.report()["lease"]["id"] == lease and sink.removed() == []
            await put_member(url, "10.0.0.8")
            await until("A follows", lambda: "10.0.0.8" in sink.members)
        finally:
            os.kill(pid, signal.SIGCONT)
            await closing(a)

    run(main())


def test_store_call_whose_channel_is_closed_under_it(server: lab.EtcdServer) -> None:
    """gRPC raises CancelledError in a call whose channel another task closes: the store turns it into
    Unavailable, so that the caller's task is not ended by a cancellation nobody asked for."""

    async def main() -> None:
        store = etcd.connect(server.url, 5.0)
        await store.put("/ovl-dp/x", b"1")
        pid = server.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # the call stays in flight
        try:
            call = asyncio.create_task(store.get("/ovl-dp/x"))
            await asyncio.sleep(0.5)
            await store.close()
            with pytest.raises(Unavailable, match="cancelled under us"):
                await call
            assert not call.cancelled()
        finally:
            os.kill(pid, signal.SIGCONT)
        assert await store.get("/ovl-dp/x") is not None, "and the next call gets a new channel"
        await store.close()

    run(main())


def test_unreachable_at_start_joins_later() -> None:
    port = lab.free_port()

    async def main() -> None:
        sink = Rec()
        url = f"http://127.0.0.1:{port}"
        a = await joined(url, "10.0.0.1", 1, sink)  # not an error: degraded, trying
        try:
            assert a.state == "degraded" and a.problem().startswith("degraded: etcd unreachable since ")
            assert a.report()["lease"]["id"] is None
            with lab.EtcdServer(client_port=port) as s:
                await asyncio.to_thread(lambda: None)
                await put_member(s.url, "10.0.0.9")
                await until("joined", lambda: a.state == "connected" and "10.0.0.9" in sink.members)
                assert await key_info(s.url, KEYS.member("10.0.0.1")) is not None
                await asyncio.wait_for(a.leave(), 10)
                assert await key_info(s.url, KEYS.member("10.0.0.1")) is None
        finally:
            await closing(a)

    run(main())


def test_leave_with_etcd_down_is_bounded(server: lab.EtcdServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ovl-dp")

    async def main() -> None:
        a = await joined(server.url, "10.0.0.1", 1)
        await asyncio.to_thread(server.kill)
        await asyncio.wait_for(a.leave(), 10)  # bounded at 2 s by the keeper; 10 s is the test's patience
        assert [r for r in caplog.records if getattr(r, "event", "") == "membership_leave_failed"]

    run(main())


def test_cluster_failover_and_diff_on_reconnect() -> None:
    async def main(cluster: lab.EtcdCluster) -> None:
        e0, _e1, e2 = cluster.members
        a_sink, b_sink = Rec(), Rec()
        a = await joined(cluster.urls, "10.0.0.1", 1, a_sink)  # all three endpoints
        b = await joined(e2.url, "10.0.0.2", 2, b_sink, lease_ttl=20.0)  # e2 only: down for B while the cluster lives
        await put_member(e0.url, "10.0.0.9")
        try:
            await until("A sees all", lambda: a_sink.members == {"10.0.0.2", "10.0.0.9"})
            await until("B sees all", lambda: b_sink.members == {"10.0.0.1", "10.0.0.9"})

            # B's only endpoint killed: B degraded, keeps everything; the net changes meanwhile.
            await asyncio.to_thread(e2.kill)
            await until("B degraded", lambda: b.state == "degraded")
            await asyncio.to_thread(e0.wait_healthy)
            await ctl(e0.url, "del", KEYS.member("10.0.0.9"))
            await put_member(e0.url, "10.0.0.6")
            await until("A sees the changes", lambda: a_sink.members == {"10.0.0.2", "10.0.0.6"})
            await asyncio.sleep(1.0)
            assert b_sink.members == {"10.0.0.1", "10.0.0.9"} and b_sink.removed() == [], "nothing removed while down"
            await asyncio.to_thread(e2.start)  # same data dir: it catches up with the cluster
            await until("B back", lambda: b.state == "connected" and b.problem() == "")
            await until("B diffed", lambda: b_sink.members == {"10.0.0.1", "10.0.0.6"})
            assert b_sink.removed() == ["10.0.0.9"] and b.counters()["reconnects"] == 1
            assert b.counters()["relists"] >= 1

            # The endpoint A uses killed: A fails over to another one, its lease and members kept.
            lease = a.report()["lease"]["id"]
            used = a.report()["endpoint"]
            victim = next(m for m in cluster.members if m.url == used)
            others = [m for m in cluster.members if m is not victim]
            await asyncio.to_thread(victim.kill)
            await until(
                "A on another endpoint",
                lambda: a.state == "connected" and a.report()["endpoint"] not in (None, used),
            )
            assert a.report()["lease"]["id"] == lease
            assert a_sink.removed() == ["10.0.0.9"], "the failover removed nothing"
            await asyncio.to_thread(others[0].wait_healthy)
            await put_member(others[0].url, "10.0.0.7")
            await until("A follows on the new endpoint", lambda: "10.0.0.7" in a_sink.members)
        finally:
            await closing(a, b)

    with lab.EtcdCluster(3) as cluster:
        run(main(cluster))


def test_lease_expired_while_away_is_granted_again() -> None:
    """B cut off (its only endpoint killed) for longer than its TTL: the cluster expires B's key, A drops
    B; B, back, finds its lease gone, grants a new one, claims its key again; A has B again."""

    async def main(cluster: lab.EtcdCluster) -> None:
        e0, _e1, e2 = cluster.members
        a_sink, b_sink = Rec(), Rec()
        a = await joined(e0.url, "10.0.0.1", 1, a_sink)
        b = await joined(e2.url, "10.0.0.2", 2, b_sink, lease_ttl=3.0, keepalive=1.0)
        try:
            await until("A sees B", lambda: a_sink.members == {"10.0.0.2"})
            old = b.report()["lease"]["id"]
            await asyncio.to_thread(e2.kill)
            await until("B degraded", lambda: b.state == "degraded")
            await until("A drops B (its lease ran out)", lambda: a_sink.members == set())
            assert b_sink.members == {"10.0.0.1"}, "B keeps A meanwhile"
            await asyncio.to_thread(e2.start)
            await until("B back", lambda: b.state == "connected" and b.report()["lease"]["id"] not in (None, old))
            assert b.counters()["lease_regrants"] == 1 and b.counters()["reconnects"] == 1
            await until("A has B again", lambda: a_sink.members == {"10.0.0.2"})
            assert b_sink.removed() == [] and b_sink.members == {"10.0.0.1"}
        finally:
            await closing(a, b)

    with lab.EtcdCluster(3) as cluster:
        run(main(cluster))


# -- refusals at join ----------------------------------------------------------------------------


def test_address_held_by_another_host(server: lab.EtcdServer) -> None:
    async def main() -> None:
        url = server.url
        a = await joined(url, "10.0.0.1", 1)
        try:
            other = Membership(
                Settings((url,)), me("10.0.0.1", 1, machine_id="m-elsewhere", hostname="box2"), VXLAN42, Rec()
            )
            with pytest.raises(SetupError) as err:
                await other.join(10)
            text = str(err.value)
            assert "address 10.0.0.1 is held by another host host-10.0.0.1 (machine id m-test, netns 1" in text
            assert "we are host box2 (machine id m-elsewhere" in text
            same_machine = Membership(Settings((url,)), me("10.0.0.1", 5), VXLAN42, Rec())  # another netns
            with pytest.raises(SetupError, match="netns 1"):
                await same_machine.join(10)
            info = await key_info(url, KEYS.member("10.0.0.1"))
            assert info is not None and info[1] == a.report()["lease"]["id"], "the holder keeps its key"

            # Ours (same machine id and netns): a restart or a takeover replaces it under its own lease.
            heir = Membership(Settings((url,)), me("10.0.0.1", 1), VXLAN42, Rec())
            await heir.join(10)
            info = await key_info(url, KEYS.member("10.0.0.1"))
            assert info is not None and info[1] == heir.report()["lease"]["id"] != a.report()["lease"]["id"]
            await a.stop()  # the old one hands over: no revoke
            await heir.leave()
            assert await key_info(url, KEYS.member("10.0.0.1")) is None
        finally:
            await closing(a)

    run(main())


def test_address_taken_while_running_is_fatal(server: lab.EtcdServer) -> None:
    async def main() -> None:
        url = server.url
        fatal: list[str] = []
        a = Membership(Settings((url,)), me("10.0.0.1", 1), VXLAN42, Rec(), on_fatal=fatal.append)
        await a.join(10)
        try:
            await put_member(url, "10.0.0.1", netns=7, hostname="intruder")
            await until("on_fatal", lambda: fatal)
            assert "our address 10.0.0.1 was taken by host intruder (machine id m-other, netns 7" in fatal[0]
        finally:
            await closing(a)

    run(main())


def test_address_taken_while_away_is_fatal_on_reconnect() -> None:
    async def main(cluster: lab.EtcdCluster) -> None:
        e0, _e1, e2 = cluster.members
        fatal: list[str] = []
        a = Membership(Settings((e2.url,)), me("10.0.0.1", 1), VXLAN42, Rec(), on_fatal=fatal.append)
        await a.join(10)
        try:
            lease = a.report()["lease"]["id"]
            await asyncio.to_thread(e2.kill)
            await until("A degraded", lambda: a.state == "degraded")
            await asyncio.to_thread(e0.wait_healthy)
            await ctl(e0.url, "lease", "revoke", f"{lease:x}")  # A's key gone, and another host takes the address
            await put_member(e0.url, "10.0.0.1", netns=7, hostname="usurper")
            await asyncio.to_thread(e2.start)
            await until("on_fatal", lambda: fatal)
            assert "address 10.0.0.1 is held by another host usurper (machine id m-other, netns 7" in fatal[0]
            assert a.counters()["lease_regrants"] == 1
        finally:
            await closing(a)
        info = await key_info(e0.url, KEYS.member("10.0.0.1"))
        assert info is not None and Member.parse(info[0]).hostname == "usurper", "the holder keeps its key"

    with lab.EtcdCluster(3) as cluster:
        run(main(cluster))


def test_net_config_mismatch(server: lab.EtcdServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ovl-dp")

    async def main() -> None:
        url = server.url
        await ctl(url, "put", KEYS.config, json.dumps({"mode": "vxlan", "vni": 7, "port": 4790, "note": "x"}))
        m = Membership(Settings((url,)), me("10.0.0.1", 1), VXLAN42, Rec())
        with pytest.raises(SetupError) as err:
            await m.join(10)
        assert (
            str(err.value)
            == "net t1: config disagrees with ours: vni: etcd has 7, we have 42; port: etcd has 4790, we have 4789"
        )
        assert await key_info(url, KEYS.member("10.0.0.1")) is None, "nothing claimed"
        gre = Membership(Settings((url,)), me("10.0.0.1", 1), NetConfig("gre", key=1), Rec())
        with pytest.raises(SetupError, match="mode: etcd has vxlan, we have gre"):
            await gre.join(10)
        await ctl(url, "put", KEYS.config, "{broken")
        with pytest.raises(
            SetupError, match=r"the config in etcd \(/ovl-dp/v1/nets/t1/config\) is unusable: net config: not JSON"
        ):
            await Membership(Settings((url,)), me("10.0.0.1", 1), VXLAN42, Rec()).join(10)

        await ctl(url, "put", KEYS.config, VXLAN42.to_json().decode())  # agreeing: joins; then changed under it
        sink = Rec()
        a = await joined(url, "10.0.0.1", 1, sink)
        try:
            await put_member(url, "10.0.0.2")
            await until("a member", lambda: sink.members == {"10.0.0.2"})
            await ctl(url, "put", KEYS.config, json.dumps({"mode": "vxlan", "vni": 43, "port": 4789}))
            await until("the problem", lambda: "restart needed" in a.problem())
            assert (
                "net config changed (net t1: config disagrees with ours: vni: etcd has 43, we have 42)" in a.problem()
            )
            assert a.state == "connected" and sink.members == {"10.0.0.2"}, "it keeps forwarding"
            assert [r for r in caplog.records if getattr(r, "event", "") == "net_config_changed"]
            await ctl(url, "put", KEYS.config, VXLAN42.to_json().decode())
            await until("the problem gone", lambda: a.problem() == "")
        finally:
            await closing(a)

    run(main())


def test_net_config_deleted_while_running_is_created_again(server: lab.EtcdServer) -> None:
    """The operator deletes the net's config under running members: they put it back from theirs, so that
    a daemon with other settings is refused at join instead of creating the net anew (a split mesh)."""

    async def main() -> None:
        url = server.url
        sink = Rec()
        a = await joined(url, "10.0.0.1", 1, sink)
        try:
            await put_member(url, "10.0.0.9")
            await until("a member", lambda: sink.members == {"10.0.0.9"})
            await ctl(url, "del", KEYS.config)
            await until("the config back", lambda: a.counters()["relists"] >= 1)
            config = await key_info(url, KEYS.config)
            assert config is not None and NetConfig.parse(config[0]) == VXLAN42 and config[1] == 0, "no lease"
            other = Membership(Settings((url,)), me("10.0.0.2", 2), NetConfig("vxlan", vni=99, port=4789), Rec())
            with pytest.raises(SetupError, match="vni: etcd has 42, we have 99"):
                await other.join(10)
            assert a.state == "connected" and a.problem() == "" and sink.removed() == []
        finally:
            await closing(a)

    run(main())


def test_invalid_settings() -> None:
    async def main() -> None:
        cases: list[tuple[Settings, dict[str, Any], str]] = [
            (Settings(("http://127.0.0.1:1",), net="Bad"), me("10.0.0.1", 1), "bad net name"),
            (Settings(("http://127.0.0.1:1",), net=None), me("10.0.0.1", 1), "bad net name"),
            (Settings(("https://127.0.0.1:1",)), me("10.0.0.1", 1), "https is not supported; run etcd's grpc-proxy"),
            (Settings(("http://127.0.0.1",)), me("10.0.0.1", 1), "the port is missing"),
            (Settings(("http://127.0.0.1:1",), lease_ttl=1), me("10.0.0.1", 1), "lease TTL 1 s is not in 2..3600"),
            (Settings(("http://127.0.0.1:1",), keepalive=4), me("10.0.0.1", 1), "keepalive 4 s is not in 0.5..3"),
            (Settings(("http://127.0.0.1:1",)), me("10.0.0.300", 1), "our own member value: member: 'addr'"),
        ]
        for settings, value, message in cases:
            with pytest.raises(SetupError, match=message):
                await Membership(settings, value, VXLAN42, Rec()).join(5)

    run(main())
