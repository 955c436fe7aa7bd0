"""`ovl-dp run`: set up, attach to the bridge, run the loop, clean up on signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import uvloop

from control import bridge, config, ctl, logs, notify
from control.procs import sigterm_raises_interrupt
from control.report import format_counters, format_fdb
from datapath.config import Config
from datapath.engine import Engine
from datapath.errors import SetupError
from datapath.ether import format_mac

log = logging.getLogger("ovl-dp")


def run(user_cfg: Config) -> int:
    """Run the daemon until SIGINT/SIGTERM; SetupError for anything a user must fix."""
    # Until the loop owns the signals, SIGTERM unwinds like Ctrl-C, through the cleanup below.
    with sigterm_raises_interrupt():
        return _run(user_cfg)


def _run(user_cfg: Config) -> int:
    b = user_cfg.bridge
    br = bridge.resolve(b.name, b.type, b.ovsdb, b.tag)
    cfg = config.resolve(user_cfg, br.kind)
    logs.set_tap(cfg.tap.name)  # JSON log records name the TAP from here on
    engine = Engine(cfg)
    attached = False
    try:
        br.attach(engine.tap.name)
        attached = True
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
            ", ".join(r.addr for r in cfg.remotes),
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
        if engine.fast:
            coalesce = cfg.offload.coalesce and engine.tap.vnet_hdr_len > 0
            log.info("received TCP segments coalesced into super-frames: %s", "yes" if coalesce else "no")
        loop = uvloop.new_event_loop()
        try:
            loop.run_until_complete(_serve(loop, engine, br))
        finally:
            loop.close()
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log.info("exiting; counters:\n%s", format_counters(engine.snapshot().as_dict()))
        if attached:
            br.detach(engine.tap.name)
        engine.close()
    return 0


async def _serve(loop: asyncio.AbstractEventLoop, engine: Engine, br: bridge.Bridge) -> None:
    stop = asyncio.Event()

    def answer(cmd: str) -> object:
        if cmd == "show":
            return {"tap": engine.tap.name, "mode": engine.cfg.tunnel.mode, **engine.snapshot().as_dict()}
        if cmd == "fdb":
            return engine.fdb_table()
        raise ValueError(f"unknown command {cmd!r}")

    def dump() -> None:
        log.info("counters:\n%s\n%s", format_counters(engine.snapshot().as_dict()), format_fdb(engine.fdb_table()))

    try:
        server = await ctl.serve(engine.tap.name, answer)
    except OSError as exc:
        raise SetupError(str(exc)) from None
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, dump)
    engine.start(loop)
    watch = asyncio.create_task(br.keep_attached(engine.tap.name))
    log.info("ready", extra={"event": "ready"})
    notify.ready(
        f"{engine.tap.name}: {engine.cfg.tunnel.mode} to {len(engine.cfg.remotes)} remote(s), bridge {br.kind}"
    )
    interval = notify.watchdog_interval()
    pinger = asyncio.create_task(notify.keep_alive(interval)) if interval else None
    try:
        await stop.wait()
    finally:
        notify.stopping()
        if pinger is not None:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pinger
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        server.close()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            loop.remove_signal_handler(sig)
