"""Changing a running daemon: the control-socket commands, and reload.

:class:`Service` answers the requests of control/ctl.py (``show``, ``fdb``,
``remote``, ``reload``) on a running :class:`datapath.engine.Engine`, and
:meth:`Service.reload` re-reads the configuration (``ovl-dp reload``, SIGHUP)
and applies only what changed, as ``wg syncconf`` does: remotes, static FDB
entries, FDB ageing and size. A change that needs a restart (the tunnel's
identity, the TAP, the bridge, the offloads) is refused with the keys named,
and the daemon keeps its old settings.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from collections.abc import Callable, Mapping
from typing import Any

from control import config as host
from control.ctl import CtlError
from datapath.config import Config, ConfigError, Remote, StaticEntry, check_address
from datapath.engine import Engine
from datapath.errors import SetupError
from datapath.ether import format_mac, parse_mac
from datapath.fdb import FdbFull

log = logging.getLogger("ovl-dp")

# What reload may change on a running daemon; any other difference needs a restart.
LIVE_KEYS = ("remotes", "fdb.static", "fdb.ageing", "fdb.max_entries")


def _changed(old: Config, new: Config) -> list[str]:
    """The configuration keys whose values differ between old and new (groups and top level)."""
    keys = []
    for group in ("tunnel", "tap", "fdb", "offload", "bridge"):
        a, b = getattr(old, group), getattr(new, group)
        for f in dataclasses.fields(a):
            if getattr(a, f.name) != getattr(b, f.name):
                keys.append(f"{group}.{f.name}")
    if old.batch != new.batch:
        keys.append("batch")
    if {r.addr for r in old.remotes} != {r.addr for r in new.remotes}:
        keys.append("remotes")
    return keys


class Service:
    """The control plane of one running engine: requests, and reload from a configuration source."""

    def __init__(self, engine: Engine, source: host.ConfigSource | None, bridge_kind: str, user_cfg: Config) -> None:
        self.engine = engine
        self.source = source
        self.bridge_kind = bridge_kind
        self.user_cfg = user_cfg  # as loaded, before resolution: what a reload is compared with
        self.reloads = 0
        self._handlers: dict[str, Callable[[Mapping[str, Any]], object]] = {
            "show": lambda a: self.show(),
            "fdb": self._fdb,
            "remote": self._remote,
            "reload": lambda a: self.reload(),
        }

    def handle(self, cmd: str, args: Mapping[str, Any]) -> object:
        """Answer one control request; CtlError with a one-line message for anything refused."""
        handler = self._handlers.get(cmd)
        if handler is None:
            raise CtlError(f"unknown command {cmd!r} (one of {', '.join(self._handlers)})")
        try:
            return handler(args)
        except (ConfigError, SetupError, ValueError, KeyError, FdbFull) as exc:
            raise CtlError(str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)) from None

    # -- reads ---------------------------------------------------------------------------------

    def show(self) -> dict[str, object]:
        """Counters, as `ovl-dp show` prints them."""
        e = self.engine
        return {"tap": e.tap.name, "mode": e.cfg.tunnel.mode, **e.snapshot().as_dict()}

    # -- remotes -------------------------------------------------------------------------------

    def _remote(self, args: Mapping[str, Any]) -> object:
        op = args.get("op")
        if op == "list":
            return self.engine.remote_rows()
        addr = args.get("addr")
        if not isinstance(addr, str):
            raise ValueError("remote: an address is needed")
        if op == "add":
            self.add_remote(addr)
            return f"remote {check_address('remotes', addr)} added"
        if op == "del":
            purged = self.engine.remove_remote(check_address("remotes", addr))
            return f"remote {addr} removed ({purged} FDB entries behind it forgotten)"
        raise ValueError(f"remote: unknown operation {op!r} (add, del, list)")

    def add_remote(self, addr: str) -> None:
        """Resolve addr on this host (not our own address, a route to it) and add it to the engine."""
        addr = check_address("remotes", addr)
        if any(r.addr == addr for r in self.engine.remotes()):
            raise ValueError(f"remote {addr} is there already")
        if host.is_local_address(addr) or ipaddress.IPv4Address(addr).is_loopback:
            raise ValueError(f"remote {addr} is an address of this host: a tunnel needs another host")
        local = self.engine.cfg.tunnel.local
        if local is None:
            local, _mtu = host.underlay.route_to(addr)
        self.engine.add_remote(Remote(addr, local))
        log.info("remote %s added (local %s)", addr, local)

    # -- the FDB -------------------------------------------------------------------------------

    def _fdb(self, args: Mapping[str, Any]) -> object:
        op = args.get("op")
        if op is None:
            return self.engine.fdb_table()
        if op == "flush":
            remote = args.get("remote")
            n = self.engine.fdb_flush(check_address("remotes", remote) if remote else None)
            return f"{n} FDB entries flushed" + (f" (behind {remote})" if remote else "")
        mac = parse_mac(str(args.get("mac", "")))
        vlan = args.get("vlan", 0)
        if not isinstance(vlan, int) or not 0 <= vlan <= 4094:
            raise ValueError(f"fdb: VLAN {vlan!r} out of range 0..4094")
        if op == "add":
            entry = StaticEntry(mac, str(args.get("remote", "")), vlan)
            self.engine.fdb_add(entry.mac, entry.remote, vlan=entry.vlan)
            return f"static entry {format_mac(mac)}@{vlan} -> {entry.remote} added"
        if op == "del":
            if not self.engine.fdb_del(mac, vlan=vlan):
                raise KeyError(f"no FDB entry for {format_mac(mac)} in VLAN {vlan}")
            return f"FDB entry {format_mac(mac)}@{vlan} removed"
        raise ValueError(f"fdb: unknown operation {op!r} (add, del, flush)")

    # -- reload --------------------------------------------------------------------------------

    def reload(self) -> dict[str, object]:
        """Re-read the configuration and apply its differences; ConfigError/ValueError if it cannot."""
        if self.source is None or self.source.file is None:
            raise ValueError("reload: the daemon was not started with --config FILE")
        new = self.source.load()
        changed = _changed(self.user_cfg, new)
        needs_restart = [k for k in changed if k not in LIVE_KEYS]
        if needs_restart:
            raise ValueError(
                f"reload refused: {', '.join(needs_restart)} changed, which needs a restart; "
                "the daemon keeps its old settings"
            )
        applied = self._apply(new)
        self.user_cfg = new
        self.reloads += 1
        log.info("reloaded %s: %s", self.source.file, applied or "nothing changed")
        return {"file": str(self.source.file), "applied": applied}

    def _apply(self, new: Config) -> list[str]:
        """Make the engine run new's remotes, static entries and FDB limits; what was done."""
        done: list[str] = []
        e = self.engine
        old_addrs = [r.addr for r in e.remotes()]
        new_addrs = [r.addr for r in new.remotes]
        # Check every new remote before changing anything (an address of ours, no route).
        for addr in new_addrs:
            if addr not in old_addrs and (host.is_local_address(addr) or ipaddress.IPv4Address(addr).is_loopback):
                raise ValueError(f"reload refused: remote {addr} is an address of this host")
        for addr in new_addrs:
            if addr not in old_addrs:
                self.add_remote(addr)
                done.append(f"remote {addr} added")
        old_static = {(s.mac, s.vlan): s.remote for s in self.user_cfg.fdb.static}
        new_static = {(s.mac, s.vlan): s.remote for s in new.fdb.static}
        for (mac, vlan), remote in old_static.items():
            if new_static.get((mac, vlan)) != remote:
                e.fdb_del(mac, vlan=vlan)
                done.append(f"static {format_mac(mac)}@{vlan} removed")
        for addr in old_addrs:
            if addr not in new_addrs:
                purged = e.remove_remote(addr)
                done.append(f"remote {addr} removed ({purged} FDB entries)")
        if (new.fdb.max_entries, new.fdb.ageing) != (self.user_cfg.fdb.max_entries, self.user_cfg.fdb.ageing):
            e.set_fdb_limits(new.fdb.max_entries, new.fdb.ageing)
            done.append(f"FDB size {new.fdb.max_entries}, ageing {new.fdb.ageing:g}s")
        for (mac, vlan), remote in new_static.items():
            if old_static.get((mac, vlan)) != remote:
                e.fdb_add(mac, remote, vlan=vlan)
                done.append(f"static {format_mac(mac)}@{vlan} -> {remote} added")
        return done
