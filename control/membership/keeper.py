"""Membership of a net on etcd: our member key on our lease, the others turned into remotes.

The life of a :class:`Membership`:

- **join** (once, before the daemon says "ready"): check the net's config (create it from ours
  when absent; a disagreement is a SetupError naming the fields and both values), grant a lease
  (``lease_ttl``), claim our member key in one transaction (absent: created; held by us, i.e. the
  same machine id and network namespace, as after a restart or a takeover: replaced under the new
  lease; held by another host: SetupError naming it), list the net at revision R and hand each
  other member to the sink, then watch from R+1. etcd unreachable at start is not an error: join
  returns, the daemon forwards with its static remotes, and the keeper keeps trying.
- **follow**: a keepalive every ``keepalive`` seconds and the watch run side by side; whichever
  fails ends the session, and the keeper starts a new one:

  ========================= ====================================================================
  what happened             what the next session does
  ========================= ====================================================================
  lease gone (TTL <= 0,     grant a new lease at once, claim our key again, list, apply the
  "lease not found")        difference (members added and removed meanwhile), watch from R+1
  our key deleted           keep the lease if it still lives, claim again, list, diff, watch
  the net's config deleted  create it again from ours (if we agreed with it), list, diff, watch
  watch compacted           list again, diff, watch from the new R+1 (lease and key kept)
  etcd unreachable          nothing is removed: the last membership keeps forwarding; problem()
                            says "degraded: ..."; retry with backoff 0.5 s doubling to 10 s
                            (jitter; at most the keepalive interval, so that our lease, which
                            etcd back gives its full TTL again, is kept alive in time), each
                            try on the next endpoint; on success keepalive the
                            old lease if it lives (else a new one), claim, list, diff, watch
  our address taken by      on_fatal(message): the daemon exits (two hosts must not share an
  another host              address)
  anything unexpected       logged in one line, retried with backoff: the keeper never dies
  ========================= ====================================================================

- **leave** (SIGTERM): the tasks stop, the lease is revoked (bounded 2 s) so peers drop us at
  once. **stop** (takeover handover): the tasks stop, nothing is revoked: the new daemon replaces
  our key under its own lease, and the old lease expires alone.

A member's key deleted (its lease expired or was revoked) removes it from the sink at once. A
value that does not parse, or that the sink refuses (ValueError: e.g. the wrong address family, no route),
is refused: counted, logged once per key and reason, listed by report() with its reason; what the sink
refused is offered again at each keepalive (no route yet, a full table: reasons that pass).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from control.membership import etcd
from control.membership.model import Member, ModelError, NetConfig, NetKeys, check_net, parse_static
from control.membership.store import Compacted, Kv, LeaseGone, Store, StoreError, Unavailable, cancel_requested
from datapath.errors import SetupError
from datapath.ether import format_mac

log = logging.getLogger("ovl-dp")

BACKOFF_MIN = 0.5
BACKOFF_MAX = 10.0
LEAVE_TIMEOUT = 2.0
REQUEST_TIMEOUT = 2.0  # seconds per etcd request and endpoint
BURST_HOLD = 0.005  # seconds one sink.changes() may span a burst of events (the data path waits meanwhile)
STILL_DOWN_EVERY = 60.0  # seconds between "still unreachable" log lines


class MemberSink(Protocol):
    """What the keeper changes (control/service.py implements it)."""

    def member_added(self, addr: str) -> None:
        """addr joined: make it a remote. ValueError(reason): refused (wrong family, ...)."""
        ...

    def member_removed(self, addr: str) -> None:
        """addr left (its key is gone): it is not a remote any more (unless static)."""
        ...

    def static_changed(self, mac: bytes, vlan: int, remote: str | None) -> None:
        """A static FDB entry set (remote) or removed (None). ValueError(reason): refused."""
        ...

    def changes(self) -> contextlib.AbstractContextManager[None]:
        """The calls made inside apply as one change (the service: the data-path thread parked once)."""
        ...


class Settings(Protocol):
    """The `membership` config group (datapath.config.MembershipConfig)."""

    @property
    def etcd(self) -> tuple[str, ...]: ...

    @property
    def net(self) -> str | None: ...

    @property
    def lease_ttl(self) -> float: ...

    @property
    def keepalive(self) -> float: ...


Connect = Callable[[Sequence[str], float], Store]


class _Conflict(Exception):
    """Our address is held by another host."""


class _Reclaim(Exception):
    """Our key was deleted under us: claim it again."""


class _ConfigGone(Exception):
    """The net's config key was deleted under us (we agreed with it): create it again from ours."""


@dataclass
class _Entry:
    """A key under members/ as the keeper knows it (name: the address as the key writes it)."""

    name: str
    member: Member | None = None
    lease: int = 0
    mod_revision: int = 0
    since: float | None = None  # when the sink took it
    added: bool = False  # the sink took it
    refused: str = ""


class _Burst:
    """Sink calls that come together go inside one sink.changes(): the events a watch response brought,
    or a listing, reach the keeper without the event loop turning in between, and 500 members joining
    at once must not park the data path 500 times. Opened by the first call; closed when the loop
    turns (call_soon), or by a call BURST_HOLD after it opened (which opens the next): the data path is
    never held longer than that plus one call."""

    def __init__(self, sink: MemberSink, clock: Callable[[], float] = time.monotonic) -> None:
        self._sink, self._clock = sink, clock
        self._open: contextlib.AbstractContextManager[None] | None = None
        self._since = 0.0

    def enter(self) -> None:
        """Before a sink call: make sure a change is open (and not older than BURST_HOLD)."""
        if self._open is not None and self._clock() - self._since > BURST_HOLD:
            self.close()
        if self._open is None:
            cm = self._sink.changes()
            cm.__enter__()
            self._open, self._since = cm, self._clock()
            asyncio.get_running_loop().call_soon(self.close)

    def close(self) -> None:
        """End the open change, if one is (idempotent: the call_soon of a change closed early finds none)."""
        cm, self._open = self._open, None
        if cm is not None:
            cm.__exit__(None, None, None)


class Backoff:
    """0.5 s doubling to 10 s, each delay scaled by a random factor 0.8..1.2 (at most 10 s)."""

    def __init__(self, lo: float = BACKOFF_MIN, hi: float = BACKOFF_MAX, rand: Callable[[], float] = random.random):
        self.lo, self.hi, self._rand = lo, hi, rand
        self.failures = 0

    def next(self) -> float:
        """The delay before the next try."""
        base = min(self.hi, self.lo * (2**self.failures))
        self.failures += 1
        return min(self.hi, base * (0.8 + 0.4 * self._rand()))

    def reset(self) -> None:
        """A try succeeded."""
        self.failures = 0


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Membership:
    """Our membership of a net, kept on etcd (see the module's docstring)."""

    def __init__(
        self,
        settings: Settings,
        me: dict[str, Any],
        ours: NetConfig,
        sink: MemberSink,
        connect: Connect = etcd.connect,
        on_fatal: Callable[[str], None] | None = None,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        """settings: the membership group; me: our member value (as the contract's JSON); ours: our
        net config; sink: where members go; connect(urls, timeout) -> Store; on_fatal(message): a
        conflict found after join (the daemon exits). Nothing is checked or connected here: join()."""
        self.settings = settings
        self.sink = sink
        self.ours = ours
        self.on_fatal = on_fatal
        self._me_raw = dict(me)
        self._connect = connect
        self._timeout = request_timeout
        self._me: Member | None = None
        self._keys: NetKeys | None = None
        self._store: Store | None = None
        self._task: asyncio.Task[None] | None = None
        self._burst = _Burst(sink)
        self._stopping = False
        self._lease: int | None = None
        self._lease_ttl: int | None = None
        self._last_keepalive: float | None = None
        self._revision = 0
        self._members: dict[str, _Entry] = {}
        self._static: dict[tuple[int, bytes], str] = {}
        self._logged: set[tuple[str, str]] = set()  # (key, reason) refused and logged
        self._state = "connecting"
        self._down_since: float | None = None
        self._down_error = ""
        self._down_logged = 0.0
        self._config_problem = ""
        self._endpoint: str | None = None
        self._established = 0  # sessions set up
        self._counters = dict.fromkeys(
            (
                "joins",
                "leaves",
                "refused",
                "reconnects",
                "lease_regrants",
                "relists",
                "keepalives",
                "keepalive_failures",
                "watch_events",
            ),
            0,
        )

    # -- the API ---------------------------------------------------------------------------------

    @property
    def addr(self) -> str:
        """Our address (canonical), as in our member key."""
        return self._me.addr if self._me is not None else str(self._me_raw.get("addr", ""))

    @property
    def net(self) -> str:
        """The net's name."""
        return self.settings.net or ""

    async def join(self, timeout: float) -> None:
        """Join the net (see the module's docstring); the keeper's task runs from here on.

        SetupError: invalid settings, the net's config disagrees with ours, our address held by
        another host. etcd unreachable (or too slow for timeout): not an error, the keeper runs
        degraded and keeps trying.
        """
        self._check_settings()
        if self._task is not None:
            raise SetupError("membership: join() called twice")
        try:
            self._store = self._connect(tuple(self.settings.etcd), self._timeout)
        except ValueError as exc:
            raise SetupError(f"membership: {exc}") from None
        established = False
        try:
            await asyncio.wait_for(self._establish(first=True), timeout)
            established = True
        except SetupError:
            await self._close_store()
            raise
        except _Conflict as exc:
            await self._close_store()
            raise SetupError(str(exc)) from None
        except (StoreError, TimeoutError) as exc:
            self._degraded(exc)
        except Exception as exc:  # a bug must not end the daemon's start: one line, and the keeper tries again
            log.error("net %s: membership: joining failed (%s: %s); trying again", self.net, type(exc).__name__,
                      exc, extra={"event": "membership_error", "net": self.net})  # fmt: skip
        self._task = asyncio.get_running_loop().create_task(self._run(established), name="membership")

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make sure the keeper's task runs (join() starts it; without a join, it joins in the background
        and a conflict goes to on_fatal)."""
        if self._task is None and not self._stopping:
            self._check_settings()
            self._store = self._connect(tuple(self.settings.etcd), self._timeout)
            self._task = loop.create_task(self._run(False), name="membership")

    async def leave(self) -> None:
        """Stop the tasks and revoke our lease (bounded 2 s; a failure is only logged: peers drop us
        within the TTL)."""
        await self._stop_task()
        lease, self._lease = self._lease, None
        if lease is not None and self._store is not None:
            try:
                await asyncio.wait_for(self._store.revoke(lease), LEAVE_TIMEOUT)
            except LeaseGone:
                pass
            except (StoreError, TimeoutError) as exc:
                log.warning(
                    "net %s: leaving without revoking our lease (%s): peers drop us within %d s",
                    self.net, _why(exc), math.ceil(self.settings.lease_ttl),
                    extra={"event": "membership_leave_failed", "net": self.net},
                )  # fmt: skip
            else:
                log.info("net %s: left (lease revoked)", self.net, extra={"event": "membership_left", "net": self.net})
        await self._close_store()

    async def stop(self) -> None:
        """Stop the tasks without revoking (takeover: the new daemon replaces our key)."""
        await self._stop_task()
        await self._close_store()

    def counters(self) -> dict[str, int]:
        """joins, leaves, refused, reconnects, lease_regrants, relists, keepalives, keepalive_failures,
        watch_events."""
        return dict(self._counters)

    @property
    def state(self) -> str:
        """ "connecting" (no session yet), "connected", "degraded" (etcd unreachable)."""
        return self._state

    def member_count(self) -> int:
        """Members of the net the sink took (ourselves not counted)."""
        return sum(1 for e in self._members.values() if e.added)

    def problem(self) -> str:
        """ "" or what is wrong: etcd unreachable (degraded), the net's config changed under us."""
        parts = []
        if self._down_since is not None:
            parts.append(
                f"degraded: etcd unreachable since {_iso(self._down_since)} ({self._down_error}); "
                f"forwarding with the last known {self.member_count()} members"
            )
        if self._config_problem:
            parts.append(self._config_problem)
        return "; ".join(parts)

    def report(self) -> dict[str, Any]:
        """The "members" report (the contract's shape). Per member, "remote" is whether the sink took it;
        "static", "rx_packets" and "last_rx_age" are the service's to fill in (False, None, None here)."""
        members = []
        for name in sorted(self._members):
            e = self._members[name]
            m = e.member
            members.append(
                {
                    "addr": name,
                    "self": name == self.addr,
                    "hostname": m.hostname if m else "",
                    "mac": m.mac if m else "",
                    "machine_id": m.machine_id if m else "",
                    "version": m.version if m else "",
                    "joined": m.joined if m else None,
                    "since": e.since,
                    "remote": e.added,
                    "static": False,
                    "refused": e.refused,
                    "rx_packets": None,
                    "last_rx_age": None,
                }
            )
        return {
            "net": self.net,
            "endpoints": list(self.settings.etcd),
            "endpoint": self._endpoint if self._state == "connected" else None,
            "state": self._state,
            "problem": self.problem(),
            "self": self.addr,
            "lease": {"id": self._lease, "ttl": self._lease_ttl, "last_keepalive": self._last_keepalive},
            "revision": self._revision,
            "counters": self.counters(),
            "members": members,
        }

    # -- settings --------------------------------------------------------------------------------

    def _check_settings(self) -> None:
        s = self.settings
        try:
            check_net(s.net)
        except ModelError as exc:
            raise SetupError(f"membership: {exc}") from None
        if not s.etcd:
            raise SetupError("membership: no etcd endpoint")
        if not 2 <= s.lease_ttl <= 3600:
            raise SetupError(f"membership: lease TTL {s.lease_ttl} s is not in 2..3600")
        if not 0.5 <= s.keepalive <= s.lease_ttl / 2:
            raise SetupError(f"membership: keepalive {s.keepalive} s is not in 0.5..{s.lease_ttl / 2:g} (TTL / 2)")
        me = dict(self._me_raw)
        me.setdefault("joined", time.time())
        try:
            self._me = Member.from_dict(me)
        except ModelError as exc:
            raise SetupError(f"membership: our own member value: {exc}") from None
        try:
            self._keys = NetKeys(check_net(s.net))
        except ModelError as exc:
            raise SetupError(f"membership: {exc}") from None

    # -- the session -----------------------------------------------------------------------------

    async def _run(self, established: bool) -> None:
        """The keeper's task: _sessions, started again should it ever end by an error (one log line)."""
        while not self._stopping:
            try:
                await self._sessions(established)
                return
            except asyncio.CancelledError:
                if cancel_requested() or self._stopping:
                    raise
                why = "CancelledError: a cancellation not meant for the keeper"
            except Exception as exc:
                why = f"{type(exc).__name__}: {exc}"
            log.error("net %s: membership: the session loop failed (%s); starting it again", self.net, why,
                      extra={"event": "membership_error", "net": self.net})  # fmt: skip
            established = False
            await asyncio.sleep(BACKOFF_MAX)

    async def _sessions(self, established: bool) -> None:
        """Follow a session until it fails, set up the next one; returns only when stopped or fatal."""
        # At most a keepalive between tries: etcd, back, gives every lease its full TTL again; a longer wait
        # (the backoff's 10 s against a short TTL) lets our lease run out, and the peers drop us.
        backoff = Backoff(hi=min(BACKOFF_MAX, self.settings.keepalive))
        while not self._stopping:
            delay = 0.0
            try:
                if not established:
                    bound = self._timeout * len(self.settings.etcd) * 8 + 1.0
                    await asyncio.wait_for(self._establish(first=False), bound)
                established = False
                backoff.reset()
                await self._follow()
                raise Unavailable("the session ended")  # (_follow only returns by raising)
            except asyncio.CancelledError:
                if cancel_requested() or self._stopping:
                    raise
                self._degraded(Unavailable("a call was cancelled under us (its channel closed)"))
                delay = backoff.next()
            except LeaseGone as exc:
                log.warning("net %s: our lease is gone (%s): granting a new one and registering again",
                            self.net, _why(exc), extra={"event": "membership_lease_lost", "net": self.net})  # fmt: skip
                self._lease = None
                delay = self._again(backoff)
            except Compacted as exc:
                log.info("net %s: watch compacted (%s): listing again", self.net, _why(exc),
                         extra={"event": "membership_compacted", "net": self.net})  # fmt: skip
                delay = self._again(backoff)
            except _Reclaim:
                log.warning("net %s: our member key was deleted: registering again", self.net,
                            extra={"event": "membership_key_lost", "net": self.net})  # fmt: skip
                delay = self._again(backoff)
            except _ConfigGone:
                log.warning("net %s: its config key was deleted: creating it again from ours", self.net,
                            extra={"event": "net_config_deleted", "net": self.net})  # fmt: skip
                delay = self._again(backoff)
            except _Conflict as exc:
                self._fatal(str(exc))
                return
            except (StoreError, TimeoutError) as exc:
                self._degraded(exc)
                delay = backoff.next()
            except Exception as exc:  # a bug must not end the keeper: one line, and try again
                log.error("net %s: membership: unexpected %s: %s; trying again", self.net, type(exc).__name__,
                          exc, extra={"event": "membership_error", "net": self.net})  # fmt: skip
                delay = backoff.next()
            if self._stopping:
                return
            await asyncio.sleep(delay)

    @staticmethod
    def _again(backoff: Backoff) -> float:
        """The delay after a lease lost, a compaction or our key deleted: none the first time after a
        session that was set up, the backoff if it happens again before the next one is."""
        quick = backoff.failures == 0
        delay = backoff.next()
        return 0.0 if quick else delay

    async def _establish(self, first: bool) -> None:
        """Config check, lease, claim, list + diff. SetupError (first) / _Conflict; StoreError."""
        store, keys, me = self._need()
        await self._check_config(store, keys, first)
        if self._lease is not None:
            try:
                self._lease_ttl = await store.keepalive(self._lease)
                self._last_keepalive = time.time()
                self._counters["keepalives"] += 1
            except LeaseGone:
                self._counters["keepalive_failures"] += 1
                log.info("net %s: lease %x expired meanwhile", self.net, self._lease,
                         extra={"event": "membership_lease_expired", "net": self.net})  # fmt: skip
                self._lease = None
        if self._lease is None:
            ttl = math.ceil(self.settings.lease_ttl)
            self._lease = await store.grant(ttl)
            self._lease_ttl = ttl
            self._last_keepalive = time.time()
            if self._established:
                self._counters["lease_regrants"] += 1
        try:
            await self._claim(store, keys, me, self._lease)
        except LeaseGone:
            self._lease = None
            raise
        revision, kvs = await store.list(keys.prefix)
        if self._established:
            self._counters["relists"] += 1
        self._resync(keys, revision, kvs)
        self._endpoint = store.endpoint
        was_down = self._down_since
        if was_down is not None:
            self._counters["reconnects"] += 1
            log.info(
                "net %s: etcd reachable again at %s after %.1f s; %d members",
                self.net, self._endpoint, time.time() - was_down, self.member_count(),
                extra={"event": "etcd_reconnected", "net": self.net, "endpoint": self._endpoint},
            )  # fmt: skip
        elif not self._established:
            log.info(
                "net %s: joined as %s via %s (lease %x, TTL %d s); %d other members",
                self.net, me.addr, self._endpoint, self._lease, self._lease_ttl or 0, self.member_count(),
                extra={"event": "membership_joined", "net": self.net, "endpoint": self._endpoint,
                       "members": self.member_count()},
            )  # fmt: skip
        self._down_since = None
        self._down_error = ""
        self._state = "connected"
        self._established += 1

    def _need(self) -> tuple[Store, NetKeys, Member]:
        assert self._store is not None and self._keys is not None and self._me is not None
        return self._store, self._keys, self._me

    async def _check_config(self, store: Store, keys: NetKeys, first: bool) -> None:
        created, current = await store.create(keys.config, self.ours.to_json())
        if created:
            log.info("net %s created (%s)", self.net, self.ours.describe(),
                     extra={"event": "net_created", "net": self.net})  # fmt: skip
            self._set_config_problem("")
            return
        assert current is not None
        self._config_value(current.value, first)

    def _config_value(self, raw: bytes, first: bool) -> None:
        """Compare the net's config (raw) with ours: SetupError at join, problem() later."""
        try:
            theirs = NetConfig.parse(raw)
        except ModelError as exc:
            message = f"net {self.net}: the config in etcd ({self._need()[1].config}) is unusable: {exc}"
        else:
            diff = self.ours.differences(theirs)
            if not diff:
                self._set_config_problem("")
                return
            message = f"net {self.net}: config disagrees with ours: {'; '.join(diff)}"
        if first:
            raise SetupError(message)
        self._set_config_problem(f"net config changed ({message}); restart needed")

    def _set_config_problem(self, problem: str) -> None:
        if problem and problem != self._config_problem:
            log.error("%s; forwarding on with ours", problem, extra={"event": "net_config_changed", "net": self.net})
        elif not problem and self._config_problem:
            log.info("net %s: config agrees with ours again", self.net,
                     extra={"event": "net_config_ok", "net": self.net})  # fmt: skip
        self._config_problem = problem

    async def _claim(self, store: Store, keys: NetKeys, me: Member, lease: int) -> None:
        """Our member key on lease, in one transaction per decision (see the module's docstring)."""
        key = keys.member(me.addr)
        value = me.to_json()
        for _ in range(5):
            created, current = await store.create(key, value, lease)
            if created:
                return
            if current is None:
                continue  # deleted in between: create again
            try:
                holder = Member.parse(current.value)
            except ModelError as exc:
                raise _Conflict(
                    f"net {self.net}: address {me.addr} is held by a key we cannot read ({exc}); "
                    f"delete {key} if no host uses it"
                ) from None
            if not holder.same_owner(me):
                raise _Conflict(
                    f"net {self.net}: address {me.addr} is held by another {holder.describe_owner()}; "
                    f"we are {me.describe_owner()}"
                )
            if current.lease == lease and current.value == value:
                return
            replaced, _ = await store.replace(key, value, lease, current.mod_revision)
            if replaced:
                if current.lease != lease:
                    log.info("net %s: our key %s taken over from lease %x (pid %d)", self.net, key, current.lease,
                             holder.pid, extra={"event": "membership_reclaimed", "net": self.net})  # fmt: skip
                return
        raise Unavailable(f"{key} keeps changing under us")

    async def _follow(self) -> None:
        """The keepalive and the watch side by side until one of them raises."""
        tasks = [
            asyncio.create_task(self._keepalive_loop(), name="membership-keepalive"),
            asyncio.create_task(self._watch_loop(), name="membership-watch"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:  # (a subtask cancelled from below, by gRPC, is an Unavailable like the others)
                exc = None if t.cancelled() else t.exception()
                if exc is not None:
                    raise exc
            raise Unavailable("the session ended (a call was cancelled under us)")
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(BaseException):
                    await t

    async def _keepalive_loop(self) -> None:
        store, keys, _ = self._need()
        while True:
            await asyncio.sleep(self.settings.keepalive)
            lease = self._lease
            if lease is None:
                raise LeaseGone("no lease")
            try:
                self._lease_ttl = await store.keepalive(lease)
            except StoreError:
                self._counters["keepalive_failures"] += 1
                raise
            self._last_keepalive = time.time()
            self._counters["keepalives"] += 1
            self._offer_refused(keys)

    async def _watch_loop(self) -> None:
        store, keys, _ = self._need()
        events = store.watch(keys.prefix, self._revision + 1)
        try:
            async for ev in events:
                self._counters["watch_events"] += 1
                self._revision = max(self._revision, ev.revision)
                if ev.kind == "put":
                    self._put(keys, ev.kv)
                else:
                    self._delete(keys, ev.kv.key)
        finally:
            await events.aclose()
        raise Unavailable("the watch ended")

    # -- applying keys ---------------------------------------------------------------------------

    def _resync(self, keys: NetKeys, revision: int, kvs: list[Kv]) -> None:
        """The net listed at revision: apply the difference with what we know."""
        present = {kv.key for kv in kvs}
        mine = keys.member(self.addr)
        if mine not in present:
            raise _Reclaim()
        for name in list(self._members):
            if keys.members + name not in present:
                self._delete(keys, keys.members + name)
        for vlan, mac in list(self._static):
            if keys.static(vlan, mac) not in present:
                self._static_set(vlan, mac, None)
        for kv in kvs:
            self._put(keys, kv)
        self._revision = revision

    def _put(self, keys: NetKeys, kv: Kv) -> None:
        key = kv.key
        if key == keys.config:  # (changed since _check_config compared it: a problem, not a refusal)
            self._config_value(kv.value, first=False)
            return
        if key.startswith(keys.members):
            self._member_put(keys, key[len(keys.members) :], kv)
        elif key.startswith(keys.statics):
            try:
                kind = keys.classify(key)
                remote = parse_static(kv.value)
            except ModelError as exc:
                self._refuse_static(keys, key, str(exc))
                return
            self._static_set(kind.vlan, kind.mac, remote, key)

    def _delete(self, keys: NetKeys, key: str) -> None:
        if key == keys.config:
            if not self._config_problem:  # (absent, the next daemon would create the net with its own settings)
                raise _ConfigGone()
            log.warning("net %s: its config key was deleted; forwarding on with ours", self.net,
                        extra={"event": "net_config_deleted", "net": self.net})  # fmt: skip
            return
        self._forget(key)
        if key.startswith(keys.members):
            name = key[len(keys.members) :]
            if name == self.addr:
                raise _Reclaim()
            entry = self._members.pop(name, None)
            if entry is not None and entry.added:
                self._removed(entry)
        elif key.startswith(keys.statics):
            try:
                kind = keys.classify(key)
            except ModelError:
                return
            self._static_set(kind.vlan, kind.mac, None)

    def _member_put(self, keys: NetKeys, name: str, kv: Kv) -> None:
        entry = self._members.get(name)
        if entry is None:
            entry = self._members[name] = _Entry(name)
        elif entry.mod_revision == kv.mod_revision and (entry.added or entry.refused):
            return  # (a listing repeats what we know)
        entry.lease, entry.mod_revision = kv.lease, kv.mod_revision
        try:
            keys.classify(kv.key)
            member = Member.parse(kv.value)
            if member.addr != name:
                raise ModelError(f"its value says addr {member.addr}")
        except ModelError as exc:
            entry.member = None
            self._refuse(entry, kv.key, str(exc))
            return
        entry.member = member
        if name == self.addr:
            me = self._need()[2]
            if not member.same_owner(me):
                raise _Conflict(
                    f"net {self.net}: our address {name} was taken by {member.describe_owner()}; "
                    f"we are {me.describe_owner()}"
                )
            entry.since = entry.since or time.time()
            return
        if entry.added:
            entry.refused = ""
            return
        self._offer(entry, kv.key, member)

    def _offer(self, entry: _Entry, key: str, member: Member) -> None:
        """Hand a parsed member to the sink: added, or refused with the sink's reason."""
        name = entry.name
        self._burst.enter()
        try:
            self.sink.member_added(name)
        except ValueError as exc:
            self._refuse(entry, key, str(exc))
            return
        except Exception as exc:  # the sink's bug: refused with the reason, the keeper goes on
            self._refuse(entry, key, f"{type(exc).__name__}: {exc}")
            return
        entry.added, entry.refused, entry.since = True, "", time.time()
        self._forget(key)
        self._counters["joins"] += 1
        log.info("net %s: member %s joined (host %s, mac %s)", self.net, name, member.hostname, member.mac,
                 extra={"event": "member_joined", "net": self.net, "remote": name,
                        "hostname": member.hostname})  # fmt: skip

    def _offer_refused(self, keys: NetKeys) -> None:
        """Members the sink refused are offered again (its reasons can pass: no route yet, a full remote
        table); a value that does not parse waits for its key to change. Logged again only for a new reason."""
        for entry in list(self._members.values()):
            if entry.refused and entry.member is not None and not entry.added and entry.name != self.addr:
                self._offer(entry, keys.members + entry.name, entry.member)

    def _removed(self, entry: _Entry) -> None:
        entry.added = False
        self._counters["leaves"] += 1
        self._burst.enter()
        try:
            self.sink.member_removed(entry.name)
        except Exception as exc:
            log.error("net %s: removing member %s failed: %s: %s", self.net, entry.name, type(exc).__name__, exc,
                      extra={"event": "membership_error", "net": self.net})  # fmt: skip
        log.info("net %s: member %s left", self.net, entry.name,
                 extra={"event": "member_left", "net": self.net, "remote": entry.name})  # fmt: skip

    def _refuse(self, entry: _Entry, key: str, reason: str) -> None:
        if entry.added:  # it was a member: not any more
            self._removed(entry)
        entry.refused = reason
        self._refused_once(key, reason)

    def _refuse_static(self, keys: NetKeys, key: str, reason: str) -> None:
        try:
            kind = keys.classify(key)
        except ModelError:
            pass
        else:
            self._static_set(kind.vlan, kind.mac, None)
        self._refused_once(key, reason)

    def _refused_once(self, key: str, reason: str) -> None:
        if (key, reason) in self._logged:
            return
        self._logged.add((key, reason))
        self._counters["refused"] += 1
        log.warning("net %s: %s refused: %s", self.net, key, reason,
                    extra={"event": "member_refused", "net": self.net, "key": key, "reason": reason})  # fmt: skip

    def _forget(self, key: str) -> None:
        """key changed or went: its next refusal is logged again."""
        self._logged = {k for k in self._logged if k[0] != key}

    def _static_set(self, vlan: int, mac: bytes, remote: str | None, key: str = "") -> None:
        have = self._static.get((vlan, mac))
        if have == remote:
            return
        self._burst.enter()
        try:
            self.sink.static_changed(mac, vlan, remote)
        except ValueError as exc:
            if remote is not None:
                self._refuse_static_value(vlan, mac, key, str(exc))
                return
        except Exception as exc:
            log.error("net %s: static entry %s vlan %d: %s: %s", self.net, format_mac(mac), vlan,
                      type(exc).__name__, exc, extra={"event": "membership_error", "net": self.net})  # fmt: skip
            if remote is not None:
                self._static.pop((vlan, mac), None)
                return
        if remote is None:
            self._static.pop((vlan, mac), None)
        else:
            self._static[(vlan, mac)] = remote
        log.info("net %s: static entry %s vlan %d %s", self.net, format_mac(mac), vlan,
                 f"-> {remote}" if remote else "removed",
                 extra={"event": "static_changed", "net": self.net, "mac": format_mac(mac), "vlan": vlan,
                        "remote": remote})  # fmt: skip

    def _refuse_static_value(self, vlan: int, mac: bytes, key: str, reason: str) -> None:
        if (vlan, mac) in self._static:  # the old entry stays in the sink? no: take it away
            self._static.pop((vlan, mac))
            with contextlib.suppress(Exception):
                self.sink.static_changed(mac, vlan, None)
        self._refused_once(key, reason)

    # -- trouble ---------------------------------------------------------------------------------

    def _degraded(self, exc: BaseException) -> None:
        why = _why(exc)
        now = time.time()
        if self._down_since is None:
            self._down_since = now
            self._down_logged = now
            self._state = "degraded"
            self._down_error = why
            log.warning(
                "net %s: etcd unreachable (%s); forwarding with the last known %d members; retrying",
                self.net, why, self.member_count(),
                extra={"event": "etcd_unreachable", "net": self.net, "error": why},
            )  # fmt: skip
            return
        self._down_error = why
        if now - self._down_logged >= STILL_DOWN_EVERY:
            self._down_logged = now
            log.warning("net %s: etcd still unreachable since %s (%s)", self.net, _iso(self._down_since), why,
                        extra={"event": "etcd_unreachable", "net": self.net, "error": why})  # fmt: skip

    def _fatal(self, message: str) -> None:
        self._stopping = True
        self._state = "degraded"
        self._config_problem = self._config_problem or message
        if self.on_fatal is not None:
            self.on_fatal(message)
        else:
            log.error("%s; membership stopped", message, extra={"event": "fatal"})

    async def _stop_task(self) -> None:
        self._stopping = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        self._burst.close()

    async def _close_store(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(store.close(), LEAVE_TIMEOUT)


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
