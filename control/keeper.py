"""Keeping the TAP alive and on its bridge while the daemon runs, driven by rtnetlink events.

Faults, and what the :class:`Keeper` does about each:

- The TAP deleted (``ip link del``; seen as RTM_DELLINK of its ifindex, or as
  EBADFD/ENODEV/EIO on a read of its fd): the engine opens it again with the
  same name, MAC, MTU, virtio header and offloads (:meth:`Engine.replace_tap`),
  and it is plugged back into its bridge (on Open vSwitch the port is replaced,
  see :meth:`control.bridge.Bridge.replace_port`). Counted (``tap_recreated``),
  logged once. If it cannot be re-created, the daemon is ended with a message
  (``fatal``), so that a supervisor restarts it: never a live process that
  forwards nothing.
- The TAP taken off its Linux bridge (``ip link set TAP nomaster``): plugged
  back in (``tap_reattached``, logged).
- The Linux bridge deleted: logged once, reported by :attr:`Keeper.problem`
  (``ovl-dp show``, /healthz); created again: the TAP is attached to it.

A repair that fails (the Open vSwitch database unreachable while the port is
replaced, an attachment refused) is reported and tried again every
RETRY_INTERVAL seconds until it succeeds: no event announces that the database
answers again, and until then the TAP carries nothing.

Events only trigger a reconciliation: the state is read again (in a worker
thread, pyroute2's IPRoute cannot run on the daemon's loop) and whatever differs
from what it should be is repaired; so lost events (ENOBUFS, the watcher's
RESYNC) and events in any order end in the same place. One reconciliation runs at
a time; events meanwhile make it run once more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable

from control import bridge
from control.watch import Event, LinkEvent, Resync
from datapath.engine import Engine
from datapath.errors import SetupError

log = logging.getLogger("ovl-dp")

RETRY_INTERVAL = 1.0  # seconds between tries of a repair that failed


def _ifindex(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return 0


class Keeper:
    """The TAP's existence and its place on the bridge; handler of a control.watch.Watcher."""

    def __init__(self, engine: Engine, br: bridge.Bridge, fatal: Callable[[str], None]) -> None:
        """fatal(message): end the daemon with an error (the TAP cannot be had back)."""
        self.engine = engine
        self.bridge = br
        self._fatal = fatal
        self.tap_recreated = 0  # TAP opened again after its device went away
        self.tap_reattached = 0  # TAP plugged back into its Linux bridge (taken off it, or the bridge re-created)
        self.bridge_lost = 0  # times the Linux bridge disappeared
        self.problem = ""  # what is wrong now, for show and /healthz ("" = nothing)
        self.last_recovery: float | None = None  # seconds from noticing a lost TAP to having it back
        self.tap_index = _ifindex(engine.tap.name)
        self._bridge_index = 0
        self._tap_gone = ""  # why the TAP must be re-created ("" = it is fine)
        self._gone_at = 0.0
        self._bridge_missing = False
        self._ovs_stale = False  # our OVS port row still points at a deleted TAP: replace it
        self._failed = ""  # the last failed repair, logged once until it changes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._again = False
        self._dead = False
        engine.on_tap_lost = self._fd_lost

    @property
    def tap(self) -> str:
        """The TAP's name."""
        return self.engine.tap.name

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Begin with one reconciliation (what changed before the watcher listened)."""
        self._loop = loop
        self.kick()

    def counters(self) -> dict[str, int]:
        """tap_recreated, tap_reattached, bridge_lost."""
        return {
            "tap_recreated": self.tap_recreated,
            "tap_reattached": self.tap_reattached,
            "bridge_lost": self.bridge_lost,
        }

    # -- events ----------------------------------------------------------------------------------

    def on_event(self, ev: Event) -> None:
        """The watcher's handler: decide whether ev concerns the TAP or its bridge."""
        if isinstance(ev, Resync):
            self.kick()
            return
        if not isinstance(ev, LinkEvent):
            return
        if ev.index == self.tap_index and self.tap_index:
            if ev.op == "del":
                self._lost("deleted")
            elif self.bridge.kind == "linux" and ev.master != self._bridge_index:
                self.kick()
        elif self.bridge.kind == "linux" and ev.name == self.bridge.name:
            self.kick()

    def _fd_lost(self, exc: OSError) -> None:
        self._lost(f"a read of its fd failed: {exc.strerror or exc}")

    def _lost(self, why: str) -> None:
        if not self._tap_gone:
            self._tap_gone = why
            self._gone_at = time.monotonic()
            self.problem = f"TAP {self.tap} lost ({why}): re-creating it"
        self.kick()

    def kick(self) -> None:
        """Reconcile soon (once more if a reconciliation is under way)."""
        if self._loop is None or self._dead:
            return
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = self._loop.create_task(self._reconcile())

    async def stop(self) -> None:
        """Cancel a reconciliation under way (the daemon is stopping)."""
        self._dead = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- repairs ---------------------------------------------------------------------------------

    async def _reconcile(self) -> None:
        while not self._dead:
            self._again = False
            try:
                await self._step()
            except Exception as exc:  # the keeper must outlive any one failed repair: tried again
                self._repair_failed(f"repairing TAP {self.tap} failed: {type(exc).__name__}: {exc}")
            if not self._again:
                return

    def _repair_failed(self, text: str) -> None:
        """Log text (once until it changes) and try again in RETRY_INTERVAL seconds."""
        if text != self._failed:
            log.error("%s", text)
            self._failed = text
        if self._loop is not None and self._retry is None and not self._dead:
            self._retry = self._loop.call_later(RETRY_INTERVAL, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self.kick()

    async def _step(self) -> None:
        why = self._tap_gone
        if why:
            try:
                self.engine.replace_tap()
            except SetupError as exc:
                self._dead = True
                self.problem = f"TAP {self.tap} lost ({why}) and cannot be re-created: {exc}"
                self._fatal(self.problem)
                return
            self.tap_index = _ifindex(self.tap)
            self.tap_recreated += 1
            self._tap_gone = ""
        if self.bridge.kind == "linux":
            plugged = await self._check_linux(recreated=bool(why))
        elif self.bridge.kind == "ovs" and (why or self._ovs_stale):
            self._ovs_stale = True
            plugged = await self._replace_ovs_port(retried=not why)
        else:
            plugged = ""
        if why:
            self.last_recovery = time.monotonic() - self._gone_at
            log.warning(
                "TAP %s lost (%s): re-created it (same name, MAC, MTU %d, %s)%s in %.0f ms (%d so far)",
                self.tap, why, self.engine.tap.mtu, self.engine.tap.describe(), plugged,
                self.last_recovery * 1000, self.tap_recreated,
                extra={"event": "tap_recreated", "reason": why, "count": self.tap_recreated},
            )  # fmt: skip

    async def _replace_ovs_port(self, retried: bool) -> str:
        try:
            await asyncio.to_thread(self.bridge.replace_port, self.tap)
        except SetupError as exc:
            self.problem = str(exc)
            self._repair_failed(str(exc))
            return f", but not back on Open vSwitch bridge {self.bridge.name} (trying again)"
        self._ovs_stale = False
        self.problem = self._failed = ""
        if retried:
            log.warning(
                "TAP %s: its port on Open vSwitch bridge %s replaced at last", self.tap, self.bridge.name,
                extra={"event": "ovs_port_replaced", "bridge": self.bridge.name},
            )  # fmt: skip
        return f" and replaced its port on Open vSwitch bridge {self.bridge.name}"

    async def _check_linux(self, recreated: bool) -> str:
        """Attach the TAP to the Linux bridge if it is not; note a missing bridge. What was done, for the log."""
        br, tap = self.bridge.name, self.tap
        bridge_index, tap_index, master = await asyncio.to_thread(bridge.linux_port_state, br, tap)
        if tap_index is None or tap_index != self.tap_index:
            if not self._tap_gone:  # deleted, and its DELLINK not seen (lost events)
                self._lost("deleted")
            return ""
        if bridge_index is None:
            self._bridge_index = 0
            if not self._bridge_missing:
                self._bridge_missing = True
                self.bridge_lost += 1
                log.warning(
                    "bridge %s is gone: TAP %s is on no bridge until %s exists again", br, tap, br,
                    extra={"event": "bridge_lost", "bridge": br},
                )  # fmt: skip
            self.problem = f"TAP {tap} is not attached: bridge {br} does not exist"  # as linux_attachment_problem
            return ", not attached (no bridge)" if recreated else ""
        self._bridge_index = bridge_index
        if master == bridge_index:
            self._bridge_missing = False
            self.problem = self._failed = ""
            return ""
        try:
            await asyncio.to_thread(self.bridge.attach, tap)
        except SetupError as exc:
            self.problem = str(exc)
            self._repair_failed(str(exc))
            return ""
        self.problem = self._failed = ""
        if recreated:
            self._bridge_missing = False
            return f" and attached it to bridge {br}"
        self.tap_reattached += 1
        if self._bridge_missing:
            self._bridge_missing = False
            log.warning("bridge %s is back: TAP %s attached to it again", br, tap,
                        extra={"event": "bridge_back", "bridge": br})  # fmt: skip
        else:
            log.warning("TAP %s was taken off bridge %s: plugged it back in", tap, br,
                        extra={"event": "tap_reattached", "bridge": br})  # fmt: skip
        return ""
