"""The underlay paths towards the remotes, followed at run time from the same rtnetlink events.

What :func:`control.config.resolve` worked out at start, our local address
towards each remote and the path MTU, depends on addresses, routes and link
MTUs that change under a running daemon. On any IPv4 address or route event, a
link event of another device than the TAP, or lost events, the
:class:`PathKeeper` resolves the paths again (soon after, once for a burst: an
address brings three route events) and updates the engine:

- a remote's local address (when ``tunnel.local`` was not given): the engine
  sends from the new one (:meth:`Engine.set_remote_local`; FDB entries stay);
- the underlay MTU (when ``tunnel.underlay_mtu`` was not given) and with it the
  TAP MTU, when that was automatic: lowered, or raised again, but never above the
  MTU the daemon started with (its buffers are sized for it; a restart uses more);
- what cannot be repaired is reported (log, ``ovl-dp show``, /healthz): no route
  to a remote, a given ``tunnel.local`` no longer ours, a TAP MTU set by hand that
  no longer fits the underlay, a path MTU below a given ``tunnel.underlay_mtu``.

Resolving uses a connected UDP socket per remote (:func:`datapath.io.underlay.route_to`),
which is safe on the loop (pyroute2's IPRoute is not).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from control.config import is_local_address
from control.watch import AddrEvent, Event, LinkEvent, Resync, RouteEvent
from datapath.config import MIN_MTU, Config
from datapath.engine import Engine
from datapath.errors import SetupError
from datapath.io import underlay

log = logging.getLogger("ovl-dp")

SETTLE = 0.05  # seconds after the first event of a burst before resolving once for all of it


class PathKeeper:
    """Local addresses and MTUs towards the remotes; a handler of a control.watch.Watcher."""

    def __init__(
        self,
        engine: Engine,
        user_cfg: Config,
        route_to: Callable[[str], tuple[str, int]] = underlay.route_to,
        is_local: Callable[[str], bool] = is_local_address,
    ) -> None:
        """user_cfg: the configuration as given (what was automatic is None there)."""
        self.engine = engine
        self._route_to = route_to
        self._is_local = is_local
        self.fixed_locals = user_cfg.tunnel.locals  # () = from the routes
        self._fixed_tunnel = user_cfg.tunnel
        self.fixed_underlay_mtu = user_cfg.tunnel.underlay_mtu
        self.auto_tap_mtu = user_cfg.tap.mtu is None
        self.underlay_mtu = engine.cfg.underlay_mtu  # what the TAP MTU follows now
        self.local_changes = 0  # remotes whose local address was changed
        self.mtu_changes = 0  # times the TAP MTU was changed
        self.problem = ""  # what is wrong with the paths now ("" = nothing)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Follow events on loop (and resolve once: what changed before the watcher listened)."""
        self._loop = loop
        self.schedule()

    def stop(self) -> None:
        """No more resolving."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        self._loop = None

    def counters(self) -> dict[str, int]:
        """local_changes, mtu_changes."""
        return {"local_changes": self.local_changes, "mtu_changes": self.mtu_changes}

    def on_event(self, ev: Event) -> None:
        """The watcher's handler: addresses, routes, other links' changes and lost events call for a resolve."""
        tap_only = isinstance(ev, LinkEvent) and ev.name == self.engine.tap.name
        if isinstance(ev, AddrEvent | RouteEvent | Resync | LinkEvent) and not tap_only:
            self.schedule()

    def schedule(self) -> None:
        """Resolve SETTLE seconds from now, unless that is already planned."""
        if self._loop is not None and self._pending is None:
            self._pending = self._loop.call_later(SETTLE, self._run)

    def _run(self) -> None:
        self._pending = None
        try:
            self.resolve()
        except Exception as exc:  # the next event tries again; never a traceback
            log.error("re-resolving the underlay failed: %s: %s", type(exc).__name__, exc)

    def resolve(self) -> None:
        """Resolve every remote's path again and apply or report what changed."""
        e = self.engine
        problems: list[str] = []
        mtus: list[int] = []
        for fixed in self.fixed_locals:
            if not self._is_local(fixed):
                problems.append(f"tunnel.local {fixed} is no longer an address of this host")
        for r in e.remotes():
            try:
                src, mtu = self._route_to(r.addr)
            except SetupError as exc:
                problems.append(str(exc))
                continue
            mtus.append(mtu)
            if self.fixed_underlay_mtu is not None and mtu < self.fixed_underlay_mtu:
                problems.append(
                    f"the path MTU towards {r.addr} is {mtu}, below tunnel.underlay_mtu {self.fixed_underlay_mtu}"
                )
            local = self._fixed_tunnel.local_for(r.family) or src
            if local != r.local:
                e.set_remote_local(r.addr, local)
                self.local_changes += 1
                log.warning(
                    "underlay: remote %s is now reached from %s (was %s)", r.addr, local, r.local,
                    extra={"event": "local_changed", "remote": r.addr, "local": local, "was": r.local},
                )  # fmt: skip
        if mtus and self.fixed_underlay_mtu is None and min(mtus) != self.underlay_mtu:
            log.warning(
                "underlay MTU towards the remotes is now %d (was %d)", min(mtus), self.underlay_mtu,
                extra={"event": "underlay_mtu_changed", "mtu": min(mtus), "was": self.underlay_mtu},
            )  # fmt: skip
            self.underlay_mtu = min(mtus)
        problems.extend(self._fit_tap_mtu())
        self._report("; ".join(problems))

    def _fit_tap_mtu(self) -> list[str]:
        """Make an automatic TAP MTU follow the underlay; what does not fit, as problems."""
        e = self.engine
        fits = self.underlay_mtu - e.cfg.overhead
        current = e.tap.mtu
        if not self.auto_tap_mtu:
            if current > fits:
                return [
                    f"TAP MTU {current} (set by hand) does not fit the underlay MTU {self.underlay_mtu}: "
                    f"at most {fits}; larger frames are dropped (tx_too_big / tx_error)"
                ]
            return []
        if fits < MIN_MTU:
            return [f"the underlay MTU {self.underlay_mtu} leaves less than a {MIN_MTU}-byte TAP MTU"]
        target = min(fits, e.cfg.tap_mtu)
        if target != current:
            try:
                e.set_tap_mtu(target)
            except SetupError as exc:  # reported like any other problem (once, show, /healthz); tried at the next event
                return [f"{exc} (the underlay MTU is now {self.underlay_mtu})"]
            self.mtu_changes += 1
            more = f" (the underlay allows {fits}: a restart uses it)" if fits > target else ""
            log.warning(
                "TAP %s MTU now %d (was %d), from the underlay MTU %d%s", e.tap.name, target, current,
                self.underlay_mtu, more,
                extra={"event": "tap_mtu_changed", "mtu": target, "was": current},
            )  # fmt: skip
        return []

    def _report(self, problem: str) -> None:
        if problem == self.problem:
            return
        if problem:
            log.warning("underlay: %s", problem, extra={"event": "underlay_problem"})
        else:
            log.info("underlay: the paths to the remotes are fine again", extra={"event": "underlay_ok"})
        self.problem = problem
