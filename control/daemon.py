"""`ovl-dp run`: set up, attach to the bridge, run the loop, clean up on signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import uvloop

from control import bridge, config, ctl, inject, logs, metrics, notify, ovs, takeover
from control.config import ConfigSource
from control.ctl import CtlError
from control.keeper import Keeper
from control.nexthop import NextHopKeeper
from control.paths import PathKeeper
from control.pmtu import PmtuKeeper
from control.procs import sigterm_raises_interrupt
from control.report import format_counters, format_fdb
from control.service import Service
from control.watch import GROUPS, GROUPS6, RTMGRP_NEIGH, Watcher
from datapath import mss
from datapath.config import Config
from datapath.counters import Snapshot
from datapath.engine import Engine
from datapath.errors import SetupError
from datapath.ether import ETH_HLEN, format_mac
from datapath.io.tap import offload_names

log = logging.getLogger("ovl-dp")
SETTLE_POLL = 0.2  # seconds between looks at a takeover's membership that joined while etcd was away


def run(
    user_cfg: Config,
    source: ConfigSource | None = None,
    metrics_at: tuple[str, int] | None = None,
    take_over: bool = False,
) -> int:
    """Run the daemon until SIGINT/SIGTERM (or until a new daemon took over); SetupError for anything a
    user must fix.

    source: where user_cfg came from, re-read by `ovl-dp reload` and SIGHUP; metrics_at: (address, port)
    to serve /metrics and /healthz on, None for none; take_over: take the TAP, sockets and FDB of the
    daemon running with this TAP (control/takeover.py) instead of creating them.
    """
    # Until the loop owns the signals, SIGTERM unwinds like Ctrl-C, through the cleanup below.
    with sigterm_raises_interrupt():
        return _run(user_cfg, source, metrics_at, take_over)


@dataclass
class _Outcome:
    """How a run ends: whether the TAP is ours to take off the bridge, and to whom it was handed."""

    attached: bool = False
    handed_to: int | None = None


def _run(user_cfg: Config, source: ConfigSource | None, metrics_at: tuple[str, int] | None, take_over: bool) -> int:
    b = user_cfg.bridge
    br = bridge.resolve(b.name, b.type, b.ovsdb, b.tag)
    ovs_tso = br.kind == "ovs" and ovs.userspace_tso(br.ovsdb)  # OVS carries super-frames: coalesce towards it
    cfg = config.resolve(user_cfg, br.kind, ovs_tso)
    assert cfg.tap.name is not None  # Config names the TAP
    logs.set_tap(cfg.tap.name)  # JSON log records name the TAP from here on
    offer = takeover.request(cfg.tap.name, takeover.identity(user_cfg)) if take_over else None
    try:
        engine, http, listening, cfg = _open(cfg, metrics_at, offer)
    except BaseException as exc:
        if offer is not None:
            takeover.abandon(offer, str(exc) or type(exc).__name__)
        raise
    out = _Outcome()
    host: inject.HostSetup | None = None
    try:
        host = _set_up_inject(engine)
        if offer is None:
            br.attach(engine.tap.name)
        else:  # the TAP is on the bridge already, and must stay there: nothing is (re-)attached
            problem = bridge.linux_attachment_problem(br.name, engine.tap.name) if br.kind == "linux" else ""
            if problem:
                log.warning("takeover: %s", problem)
        out.attached = True
        log.info(
            "%s %s: tap %s mac %s mtu %d (underlay %d) bridge %s (%s) remotes %s; %s path",
            cfg.tunnel.mode,
            cfg.encap.describe(),
            engine.tap.name,
            format_mac(engine.tap.mac),
            cfg.tap_mtu,
            cfg.underlay_mtu,
            br.name if br.kind != "none" else "-",
            br.kind + (f" tag {br.tag}" if br.tag is not None else ""),
            ", ".join(r.addr for r in cfg.remotes) or "none yet (etcd members join)",
            "C fast" if engine.fast else "pure-Python",
            extra={
                "event": "start",
                "mode": cfg.tunnel.mode,
                "mac": format_mac(engine.tap.mac),
                "mtu": cfg.tap_mtu,
                "underlay_mtu": cfg.underlay_mtu,
                "bridge": br.name if br.kind != "none" else None,
                "bridge_type": br.kind,
                "remotes": [r.addr for r in cfg.remotes],
                "fast_path": engine.fast,
            },
        )
        if cfg.tunnel.clamp_mss_setting != mss.CLAMP_OFF:
            l3_mtu = cfg.underlay_mtu - cfg.outer_len - ETH_HLEN  # as csrc/mss.c tunnel_l3_mtu, untagged
            log.info("TCP MSS clamping: %s", mss.describe(cfg.tunnel.clamp_mss_setting, l3_mtu))
        if engine.fast:
            coalesce = cfg.offload.coalesce and engine.tap.vnet_hdr_len > 0
            why = ""
            if br.kind == "ovs" and cfg.offload.policy == "auto" and user_cfg.offload.rx_coalesce is None:
                why = (
                    " (Open vSwitch has other_config:userspace-tso-enable=true)"
                    if ovs_tso
                    else " (Open vSwitch without other_config:userspace-tso-enable=true cannot carry them)"
                )
            log.info("received TCP segments coalesced into super-frames: %s%s", "yes" if coalesce else "no", why)
        loop = uvloop.new_event_loop()
        loop.set_exception_handler(logs.LoopErrors(log))  # never a traceback from the loop in the log
        try:
            service = Service(engine, source, br.kind, user_cfg)
            if offer is not None:
                service.inherit_origins(offer.state.get("origins"))
            loop.run_until_complete(_serve(loop, engine, br, service, http, metrics_at, offer, listening, out))
        finally:
            loop.close()
    finally:
        if offer is not None:
            offer.close()
        if http is not None:
            http.close()  # idempotent; _serve stops it first on the normal path
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            if out.handed_to is not None:
                log.info("handed over to PID %d; exiting; counters:\n%s", out.handed_to,
                         format_counters(engine.snapshot().as_dict()))  # fmt: skip
            else:
                log.info("exiting; counters:\n%s", format_counters(engine.snapshot().as_dict()))
            if out.attached and out.handed_to is None:
                br.detach(engine.tap.name)
        finally:
            # Always: it also stops and joins the data-path thread, without which the interpreter
            # would wait for it at exit. After a handover the new daemon still holds the TAP: it
            # stays, on its bridge.
            try:
                engine.close()
            finally:
                if host is not None:
                    host.undo()  # the injection TAP's firewall rules (its own settings went with the device)
    return 0


def _set_up_inject(engine: Engine) -> inject.HostSetup | None:
    """The host settings for the engine's injection TAP, then the injection on; None when it is not used.

    A host that cannot be set up closes the TAP: super-frames are then segmented in C (logged).
    """
    tap = engine.inject_tap
    if tap is not None:
        try:
            fams = engine.families if engine.cfg.offload.inject6 == "auto" else engine.families - {6}
            if not fams:  # IPv6 remotes only, and --inject6 off
                raise SetupError("IPv6 remotes only, and --inject6 off")
            host = inject.configure(tap.name, engine.cfg.encap.port, fams)
        except SetupError as exc:
            engine.drop_inject(f"not used: {exc}")
            log.warning("injection TAP %s: %s; TCP super-frames are segmented in C", tap.name, exc)
        else:
            try:  # the caller's cleanup knows the setup only once it is returned
                log.info("host changes: %s", "; ".join(host.changes), extra={"event": "host_changes"})
                engine.enable_inject()
                if 6 in engine.families:  # issue 11, inject6
                    if engine.cfg.offload.inject6 == "off":
                        host.ipv6_note = "off (--inject6 off)"
                    engine.enable_inject6(host.ipv6_note if not host.ipv6 else "")
                    if not host.ipv6 and engine.cfg.offload.inject6 != "off":
                        log.warning("injection TAP %s: %s: super-frames to IPv6 remotes are segmented in C",
                                    tap.name, host.ipv6_note)  # fmt: skip
                log.info("TX of TCP super-frames: %s", engine.describe_tx())
            except BaseException:
                host.undo()
                raise
            return host
    if engine.fast and engine.tap.vnet_hdr_len:
        log.info("TX of TCP super-frames: %s", engine.describe_tx())
    return None


def _open(
    cfg: Config, metrics_at: tuple[str, int] | None, offer: takeover.Offer | None
) -> tuple[Engine, metrics.MetricsServer | None, socket.socket | None, Config]:
    """The engine, the metrics server and the control socket's listening socket (None: bind one), and the
    configuration the engine runs: new ones, or those a takeover's offer handed over."""
    if offer is None:
        # Metrics: bound before the TAP exists, so that a taken port fails before anything appears on the bridge.
        http = metrics.MetricsServer(*metrics_at) if metrics_at else None
        try:
            return Engine(cfg), http, None, cfg
        except BaseException:
            if http is not None:
                http.close()
            raise
    cfg = takeover.configure(cfg, offer.state)
    assert cfg.tap.name is not None
    engine = Engine(cfg, inherited=offer.inherited())
    listening: socket.socket | None = None
    try:
        counts = engine.fdb_import(takeover.parse_fdb(offer.state["fdb"]))
        log.info("takeover from PID %d: FDB %s", offer.pid, ", ".join(f"{k} {v}" for k, v in counts.items()))
        fd = offer.take("ctl")
        if fd is not None:
            listening = socket.socket(fileno=fd)
            if listening.family != socket.AF_UNIX or listening.getsockname() != ctl.address(cfg.tap.name).encode():
                raise SetupError(f"takeover: the control socket handed over is not @{ctl.PREFIX}{cfg.tap.name}")
        fd = offer.take("metrics")
        theirs = offer.state.get("metrics")
        if fd is not None and metrics_at is not None and theirs is not None and tuple(theirs) == metrics_at:
            http = metrics.MetricsServer(*metrics_at, listening=socket.socket(fileno=fd))
        else:
            if fd is not None:
                os.close(fd)  # this daemon serves its metrics elsewhere, or not at all
            http = metrics.MetricsServer(*metrics_at) if metrics_at else None
    except BaseException:
        if listening is not None:
            listening.close()
        engine.close()
        raise
    return engine, http, listening, cfg


async def _serve(
    loop: asyncio.AbstractEventLoop,
    engine: Engine,
    br: bridge.Bridge,
    service: Service,
    http: metrics.MetricsServer | None = None,
    metrics_at: tuple[str, int] | None = None,
    offer: takeover.Offer | None = None,
    listening: socket.socket | None = None,
    out: _Outcome | None = None,
) -> None:
    stop = asyncio.Event()
    out = out if out is not None else _Outcome()

    def reload() -> None:
        try:  # through the control handler, which turns every failure into one message
            service.handle("reload", {})
        except CtlError as exc:
            log.warning("reload (SIGHUP) failed: %s", exc)
        except Exception as exc:  # nothing a reload does may end the daemon or print a traceback
            log.error("reload (SIGHUP) failed: %s: %s", type(exc).__name__, exc)

    def dump() -> None:
        log.info("counters:\n%s\n%s", format_counters(engine.snapshot().as_dict()), format_fdb(engine.fdb_table()))

    def handed_over(pid: int) -> None:
        out.handed_to = pid
        stop.set()

    def extra_fds() -> dict[str, int]:
        fds = {"ctl": int(server.sockets[0].fileno())}  # type: ignore[attr-defined]  # (asyncio.Server's)
        if http is not None:
            fds["metrics"] = http.fileno()
        return fds

    origins = lambda: service.origins  # noqa: E731  # (handed over with the remotes, issue 12)
    giver = takeover.Giver(engine, service.user_cfg, metrics_at, extra_fds, handed_over, origins=origins)
    service.giver = giver

    def spawn() -> None:
        takeover.spawn(giver)

    try:
        server = await ctl.serve(
            engine.tap.name, service.handle, service.ctl_stats, {"takeover": giver.session}, listening
        )
    except OSError as exc:
        raise SetupError(str(exc)) from None
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, dump)
    loop.add_signal_handler(signal.SIGUSR2, spawn)
    loop.add_signal_handler(signal.SIGHUP, reload)
    fatal: list[str] = []

    def die(message: str) -> None:  # the TAP cannot be had back: end, so that a supervisor restarts us
        log.error("%s; exiting", message, extra={"event": "fatal"})
        fatal.append(message)
        stop.set()

    keeper = Keeper(engine, br, die)
    try:
        # The TX rings need the next hops' neighbour events too (control/nexthop.py).
        groups = GROUPS | (GROUPS6 if 6 in engine.families else 0)  # issue 11, v6: IPv6 addresses and routes
        watcher = Watcher(groups | RTMGRP_NEIGH if engine.tx_rings is not None else groups)
    except OSError as exc:
        server.close()
        raise SetupError(f"cannot listen to rtnetlink events: {exc}") from None
    try:
        nexthops = NextHopKeeper(engine) if engine.tx_rings is not None else None
    except OSError as exc:
        watcher.close()
        server.close()
        raise SetupError(f"cannot open an rtnetlink socket for the next hops: {exc}") from None
    paths = PathKeeper(engine, service.user_cfg)
    pmtu_keeper = PmtuKeeper(engine)  # per-remote path MTU: routes and underlay ICMP (issue 11)
    paths.on_mtu = pmtu_keeper.route_mtu
    watcher.add(keeper.on_event)
    watcher.add(paths.on_event)
    if nexthops is not None:
        watcher.add(nexthops.on_event)
    engine.start(loop)
    if offer is not None:
        try:
            await _confirm(loop, engine, service, offer, out)
        except BaseException:
            watcher.close()
            if nexthops is not None:
                nexthops.stop()
            server.close()
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            raise
    watcher.start(loop)
    keeper.start(loop)
    paths.start(loop)
    pmtu_keeper.start(loop)
    if nexthops is not None:
        nexthops.start(loop)
    source = MetricsAdapter(engine, br, loop, service)
    source.keeper, source.paths, source.watcher, source.nexthops = keeper, paths, watcher, nexthops
    service.watch_report = source.watch_report
    source.heartbeat.start(loop)
    watch = asyncio.create_task(br.keep_attached(engine.tap.name, report=source.ovs_report))
    membership: Any = None  # issue 12: control.membership.keeper.Membership with --etcd
    if http is not None:
        http.start(source)
    pinger: asyncio.Task[None] | None = None
    settling: asyncio.Task[None] | None = None
    try:
        membership = source.membership_keeper = _membership(engine, service, die)
        # Joined before "ready": a refusal (net config, our address taken) ends here; False: SIGTERM came while
        # etcd had not answered yet (never ready; we leave in the finally below).
        joined = membership is None or await _join_unless_stopped(membership, stop)
        if joined and membership is not None:
            membership.start(loop)
            if membership.state == "connected":  # listed: remotes a takeover handed over are sorted out
                service.settle_inherited()
            elif offer is not None:  # (etcd away: once it is listed)
                settling = asyncio.create_task(_settle_when_listed(membership, service))
        if joined:
            log.info("ready", extra={"event": "ready"})
            if offer is None:
                notify.ready(
                    f"{engine.tap.name}: {engine.cfg.tunnel.mode} to {len(engine.remotes())} remote(s), "
                    f"bridge {br.kind}"
                )
            interval = notify.watchdog_interval()
            pinger = asyncio.create_task(notify.keep_alive(interval)) if interval else None
        await stop.wait()
    finally:
        if settling is not None:
            settling.cancel()
        if membership is not None:
            # Leaving revokes our lease: peers drop us at once, before the TAP leaves the bridge. Handing over
            # (or stopping during a takeover) keeps our key: the new daemon replaces it with its own lease.
            await _leave(membership, handover=out.handed_to is not None or giver.busy)
        if giver.busy and out.handed_to is None:
            # Stopped while a new daemon holds our fds: it may forward already, so the TAP stays on the
            # bridge (a stale OVS row, if it gives up too, is replaced at the next start).
            log.warning("stopping while a takeover is under way: the TAP is left on the bridge")
            out.attached = False
            await giver.cancel()
        if out.handed_to is None:
            notify.stopping()  # (after a handover the new daemon is the service's main process)
        if pinger is not None:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pinger
        if http is not None:
            http.close()
        source.heartbeat.stop()
        watcher.close()
        paths.stop()
        pmtu_keeper.stop()
        if nexthops is not None:
            nexthops.stop()
        await keeper.stop()
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        server.close()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    if fatal:
        raise SetupError(fatal[0])


def _membership(engine: Engine, service: Service, die: Callable[[str], None]) -> Any:
    """The membership keeper of a daemon with --etcd (control/membership/), its sink the service; None without."""
    cfg = engine.cfg
    if not cfg.membership.enabled:
        return None
    from control import joining
    from control.membership.keeper import Membership

    problem, fatal = joining.endpoint_problem(cfg)
    if fatal:
        raise SetupError(problem)
    if problem:
        log.warning("%s; those endpoints will not answer", problem)
    me = joining.member_value(cfg, engine.tap.mac)
    keeper = Membership(cfg.membership, me, joining.net_config(cfg), service, on_fatal=die)
    service.membership = keeper
    log.info("membership: %s", joining.describe(cfg), extra={"event": "membership", "net": cfg.membership.net})
    return keeper


async def _settle_when_listed(membership: Any, service: Service) -> None:
    """A takeover's join found etcd away: the handed-over remotes are sorted out once the net is listed
    (state "connected" comes after the listing's difference is applied)."""
    while membership.state != "connected":
        await asyncio.sleep(SETTLE_POLL)
    service.settle_inherited()


async def _leave(membership: Any, handover: bool) -> None:
    """Leave the net (revoke), or on a handover only stop; never an exception out of the daemon's cleanup."""
    try:
        await (membership.stop() if handover else membership.leave())
    except Exception as exc:
        log.warning("membership: %s failed: %s: %s", "stop" if handover else "leave", type(exc).__name__, exc)


async def _join_unless_stopped(membership: Any, stop: asyncio.Event) -> bool:
    """membership.join(), given up when stop is set first (SIGTERM while etcd does not answer must not wait for
    the join timeout); True once joined (or running degraded), False if stopped. A refusal raises SetupError."""
    joining = asyncio.ensure_future(membership.join(_join_timeout()))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({joining, stopped}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # (the daemon's task cancelled: the join goes with it)
        joining.cancel()
        raise
    finally:
        stopped.cancel()
    if joining.done():
        joining.result()  # (SetupError: the net's config disagrees, our address is held by another host)
        return True
    joining.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await joining
    log.info("membership: stopped before etcd answered the join", extra={"event": "membership_join_stopped"})
    return False


def _join_timeout() -> float:
    from control import joining

    return joining.JOIN_TIMEOUT


async def _confirm(
    loop: asyncio.AbstractEventLoop, engine: Engine, service: Service, offer: takeover.Offer, out: _Outcome
) -> None:
    """The new daemon forwards: tell the old one, which stops; take its last FDB entries and counters.

    If the old one does not answer and still runs (it gave up waiting), this one stops reading and
    exits with an error, leaving the bridge as it is; if it is gone, this one carries on alone.
    """
    try:
        final = await loop.run_in_executor(None, takeover.confirm, offer)
    except OSError as exc:
        if await loop.run_in_executor(None, takeover.wait_gone, offer.pid, 2.0):
            log.warning("takeover: the old daemon (PID %d) exited without its last word (%s); forwarding alone",
                        offer.pid, exc)  # fmt: skip
            final = {}
        else:
            engine.stop_reading()
            out.attached = False  # the TAP is the old daemon's again
            raise SetupError(
                f"takeover: the old daemon (PID {offer.pid}) did not stop ({exc}); it keeps running, this one exits"
            ) from None
    counts = engine.fdb_import(takeover.parse_fdb(final.get("fdb", [])))
    service.takeover = {"from_pid": offer.pid, "at": time.time(), "previous": final.get("counters")}
    log.info("took over from PID %d (FDB entries newer in its last word: %d)", offer.pid, counts["learned"],
             extra={"event": "took_over", "peer_pid": offer.pid})  # fmt: skip
    notify.status(f"{engine.tap.name}: took over from PID {offer.pid}")
    offer.close()


class MetricsAdapter:
    """The daemon's metrics.MetricsSource: the engine read on its loop, the bridge attachment, a loop heartbeat."""

    def __init__(
        self, engine: Engine, br: bridge.Bridge, loop: asyncio.AbstractEventLoop, service: Service | None = None
    ) -> None:
        self.tap = engine.tap.name
        self._service = service
        self.heartbeat = metrics.Heartbeat()
        self._engine = engine
        self._bridge = br
        self._loop = loop
        self._ovs_problem = ""
        self.keeper: Keeper | None = None  # set once the daemon watches links
        self.paths: PathKeeper | None = None
        self.watcher: Watcher | None = None
        self.nexthops: NextHopKeeper | None = None  # with TX rings
        self.membership_keeper: Any = None  # issue 12: control.membership.keeper.Membership, with --etcd
        cfg = engine.cfg
        self._info = {
            "version": metrics.package_version(),
            "mode": cfg.tunnel.mode,
            "path": "c" if engine.fast else "python",
            "bridge_type": br.kind,
        }
        tap = engine.tap
        self._offloads = metrics.OffloadState(
            fast_path=engine.fast,
            vnet_hdr=tap.vnet_hdr_len > 0,
            tun=frozenset(offload_names(tap.offloads).split()) - {"none"},
            udp_gro=bool(engine.udp_gro),
            udp_gso=bool(engine.gso_socks),
            rx_coalesce=engine.fast and cfg.offload.coalesce and tap.vnet_hdr_len > 0,
        )

    def build_info(self) -> Mapping[str, str]:
        """version, mode, path (c or python), bridge_type."""
        return self._info

    def snapshot(self) -> Snapshot:
        """The engine's counters, read on the loop."""
        return metrics.on_loop(self._loop, self._engine.snapshot)

    def remote_rows(self) -> Sequence[Mapping[str, object]]:
        """Per-remote rows, read on the loop."""
        return metrics.on_loop(self._loop, self._remote_rows)

    def _remote_rows(self) -> list[dict[str, object]]:
        # The one place to switch once Engine.remote_rows() (dynamic remotes, with local and
        # last_rx_age) has landed; until then the snapshot's rows, which lack those two.
        rows = getattr(self._engine, "remote_rows", None)
        if callable(rows):
            return list(rows())
        return [dict(r) for r in self._engine.snapshot().remotes]

    def injecting(self) -> bool:
        """TCP super-frames leave through the injection TAP now (read on the loop)."""
        return metrics.on_loop(self._loop, self._engine.injecting)

    def offloads(self) -> metrics.OffloadState:
        """Fixed once the engine runs."""
        return self._offloads

    def control(self) -> Mapping[str, Any]:
        """The control plane's counts, read on the loop (none without a service)."""
        if self._service is None:
            return {"requests": 0, "refused": {}, "reloads": 0, "reload_failures": 0}
        return metrics.on_loop(self._loop, self._service.control)

    def watch_counters(self) -> Mapping[str, int]:
        """What the link watcher repaired: tap_recreated, tap_reattached, bridge_lost, local_changes,
        mtu_changes, netlink_resyncs."""
        counts = dict(self.keeper.counters()) if self.keeper is not None else {}
        if self.paths is not None:
            counts.update(self.paths.counters())
        if self.watcher is not None:
            counts["netlink_resyncs"] = self.watcher.resyncs
        if self.nexthops is not None:
            counts.update(self.nexthops.counters())
            counts.update(self._engine.ring_counters())
        return counts

    def watch_report(self) -> dict[str, object]:
        """watch_counters, and problem: what is wrong with the TAP, its bridge or the paths ("" = nothing)."""
        problems = [p.problem for p in (self.keeper, self.paths) if p is not None and p.problem]
        return {**self.watch_counters(), "problem": "; ".join(problems)}

    def membership(self) -> Mapping[str, Any] | None:
        """Membership on etcd for the metrics (read on the loop): members (others), connected, counters,
        last_keepalive; None when the daemon does not use etcd."""
        keeper = self.membership_keeper
        if keeper is None:
            return None

        def read() -> dict[str, Any]:
            rep = keeper.report()
            return {
                "members": keeper.member_count(),
                "connected": rep.get("state") == "connected",
                "counters": dict(keeper.counters()),
                "last_keepalive": (rep.get("lease") or {}).get("last_keepalive"),
            }

        return metrics.on_loop(self._loop, read)

    def degraded(self) -> str:
        """What works only in part while the daemon forwards ("" = nothing): etcd trouble."""
        keeper = self.membership_keeper
        problem = str(keeper.problem()) if keeper is not None else ""
        return problem.removeprefix("degraded: ")  # (/healthz says "degraded: " itself)

    def ovs_report(self, problem: str) -> None:
        """The OVS port watcher's latest finding ("" = the port is there and usable)."""
        self._ovs_problem = problem

    def health(self) -> str:
        """Loop heartbeat first, then the TAP's place on its bridge; "" when both are fine."""
        stalled = self.heartbeat.problem()
        if stalled:
            return stalled
        if self.keeper is not None and self.keeper.problem:
            return self.keeper.problem
        if self.paths is not None and self.paths.problem:
            return self.paths.problem
        if self._bridge.kind == "linux":
            return bridge.linux_attachment_problem(self._bridge.name, self.tap)
        if self._bridge.kind == "ovs":
            return self._ovs_problem
        return ""
