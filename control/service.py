"""Changing a running daemon: the control-socket commands, and reload.

:class:`Service` answers the requests of control/ctl.py (``show``, ``fdb``,
``remote``, ``reload``) on a running :class:`datapath.engine.Engine`, and
:meth:`Service.reload` re-reads the configuration (``ovl-dp reload``, SIGHUP)
and applies only what changed, as ``wg syncconf`` does: remotes, static FDB
entries, FDB ageing and size. A change that needs a restart (the tunnel's
identity, the TAP, the bridge, the offloads) is refused with the keys named,
and the daemon keeps its old settings.

Issue 12: remotes have origins, "static" (the configuration, the command line, `remote add`) and
"etcd" (a member of the daemon's net, control/membership/). Service is the membership's
:class:`MemberSink`: a member becomes a remote as `remote add` would make it one, and goes when its
key goes unless it is also static; reload and `remote del` never remove an etcd member's remote.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from control import config as host
from control.ctl import CtlError, CtlStats
from datapath.config import MAX_REMOTES, Config, ConfigError, Remote, StaticEntry, address_family, check_address
from datapath.engine import Engine
from datapath.errors import SetupError
from datapath.ether import format_mac, parse_mac
from datapath.fdb import FdbFull
from datapath.pmtu import MIN_MTU as MIN_PATH_MTU

log = logging.getLogger("ovl-dp")

STATIC, ETCD = "static", "etcd"  # a remote's origins (issue 12)
INHERITED = "inherited"  # handed over by a takeover, origin not known yet (see Service.settle_inherited)

# What reload may change on a running daemon; any other difference needs a restart.
LIVE_KEYS = ("remotes", "fdb.static", "fdb.ageing", "fdb.max_entries")


def _changed(old: Config, new: Config) -> list[str]:
    """The configuration keys whose values differ between old and new (groups and top level)."""
    keys = []
    for group in ("tunnel", "tap", "fdb", "offload", "bridge", "membership"):
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
        self.reload_failures = 0
        self.ctl_stats = CtlStats()  # what the control socket counted (shown by `ovl-dp show`)
        self.giver: Any = None  # the daemon's control.takeover.Giver: no changes while it hands over
        self.takeover: dict[str, object] = {}  # set when this daemon took over from another (shown by show)
        # The link watcher's counters and current problem (shown by `ovl-dp show`), once the daemon runs it.
        self.watch_report: Callable[[], Mapping[str, object]] | None = None
        # issue 12: each remote's origins ("static", "etcd"); the membership keeper once the daemon runs one
        # (its report() and settings); etcd's static FDB entries, (MAC, VLAN) -> remote, applied or pending.
        # A takeover hands over the running remotes without their origins: those not in the configuration
        # are INHERITED until the first listing of the net says which are members (settle_inherited).
        static = {r.addr for r in user_cfg.remotes}
        self.origins: dict[str, set[str]] = {
            r.addr: {STATIC if r.addr in static else INHERITED} for r in engine.remotes()
        }
        self.handed_members: set[str] = set()  # INHERITED ones the old daemon had as members only
        self.membership: Any = None
        self.member_since: dict[str, float] = {}
        self.etcd_static: dict[tuple[bytes, int], str] = {}
        self._handlers: dict[str, Callable[[Mapping[str, Any]], object]] = {
            "show": lambda a: self.show(),
            "fdb": self._fdb,
            "remote": self._remote,
            "reload": lambda a: self.reload(),
            "members": lambda a: self.members(),
        }

    def handle(self, cmd: str, args: Mapping[str, Any]) -> object:
        """Answer one control request; CtlError with a one-line message for anything refused."""
        handler = self._handlers.get(cmd)
        if handler is None:
            raise CtlError(f"unknown command {cmd!r} (one of {', '.join(self._handlers)}, takeover)")
        changes = cmd == "reload" or (cmd in ("remote", "fdb") and args.get("op") not in (None, "list"))
        if changes and self.giver is not None and self.giver.busy:
            raise CtlError(f"{cmd} refused: a takeover is under way (ask the new daemon once it runs)")
        try:
            return handler(args)
        except (ConfigError, SetupError, ValueError, KeyError, FdbFull) as exc:
            raise CtlError(str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)) from None

    # -- reads ---------------------------------------------------------------------------------

    def show(self) -> dict[str, object]:
        """Counters, as `ovl-dp show` prints them."""
        e = self.engine
        shown: dict[str, object] = {"tap": e.tap.name, "mode": e.cfg.tunnel.mode, "pid": os.getpid()}
        shown.update(e.snapshot().as_dict())
        describe_tx = getattr(e, "describe_tx", None)
        if callable(describe_tx):
            shown["tx_path"] = describe_tx()
        shown["control"] = self.control()
        if self.watch_report is not None:
            shown["watch"] = dict(self.watch_report())
        if self.takeover:
            shown["takeover"] = self.takeover
        if self.membership is not None:
            rep = self.membership.report()
            shown["membership"] = {
                "net": rep.get("net"),
                "endpoint": rep.get("endpoint"),
                "endpoints": rep.get("endpoints"),
                "state": rep.get("state"),
                "members": self.membership.member_count(),  # (the others it has as remotes)
                "problem": rep.get("problem", ""),
            }
        return shown

    def control(self) -> dict[str, Any]:
        """The control plane's counts: requests answered, clients refused by reason, reloads and failed ones."""
        counts: dict[str, Any] = {
            "requests": self.ctl_stats.requests,
            "refused": dict(self.ctl_stats.refused),
            "reloads": self.reloads,
            "reload_failures": self.reload_failures,
        }
        if self.giver is not None:
            counts["takeovers_refused"] = self.giver.stats.refused
            counts["takeovers_abandoned"] = self.giver.stats.abandoned
        return counts

    # -- remotes -------------------------------------------------------------------------------

    def _remote(self, args: Mapping[str, Any]) -> object:
        op = args.get("op")
        if op == "list":
            return [{**r, "origin": sorted(self.origins.get(str(r["remote"]), ()))} for r in self.engine.remote_rows()]
        addr = args.get("addr")
        if not isinstance(addr, str):
            raise ValueError("remote: an address is needed")
        if op == "add":
            addr = check_address("remotes", addr)
            if ETCD in self.origins.get(addr, set()) and STATIC not in self.origins[addr]:
                self.origins[addr].add(STATIC)
                return f"remote {addr} is an etcd member already; now also static (it stays when it leaves etcd)"
            note = self.add_remote(addr)
            self.origins[addr] = {STATIC}
            self._apply_etcd_static(addr)  # etcd's static entries that waited for it
            return f"remote {addr} added{note}"
        if op == "del":
            addr = check_address("remotes", addr)
            origins = self.origins.get(addr, set())
            if ETCD in origins:
                net = getattr(getattr(self.membership, "settings", None), "net", None) or "?"
                if STATIC not in origins:
                    raise ValueError(f"remote {addr} is an etcd member of net {net}; it leaves when its key goes")
                origins.discard(STATIC)
                return f"remote {addr} is no longer static; it stays as an etcd member of net {net}"
            purged = self.engine.remove_remote(addr)
            self.origins.pop(addr, None)
            log.info("remote %s removed", addr, extra={"event": "remote_removed", "remote": addr, "purged": purged})
            return f"remote {addr} removed ({purged} FDB entries behind it forgotten)"
        raise ValueError(f"remote: unknown operation {op!r} (add, del, list)")

    def add_remote(self, addr: str) -> str:
        """Resolve addr on this host (not our own address, a route to it) and add it; a note for the answer."""
        addr, local, mtu = self._resolve_new(addr)
        self.engine.add_remote(Remote(addr, local))
        log.info("remote %s added (local %s)", addr, local, extra={"event": "remote_added", "remote": addr})
        if mtu is not None and mtu < self.engine.cfg.underlay_mtu:
            # Its path MTU from now on, not from the next poll of the routes (control/pmtu.py, which then agrees).
            self.engine.set_remote_mtu(addr, max(mtu, MIN_PATH_MTU))
            warn = (
                f"the path MTU towards {addr} is {mtu}, below the underlay MTU {self.engine.cfg.underlay_mtu} "
                "the TAP MTU was derived from: larger frames to it will be dropped (tx_too_big) and answered "
                "with ICMP 'too big'"
            )
            log.warning("%s", warn)
            return f"; warning: {warn}"
        return ""

    def _resolve_new(self, addr: str) -> tuple[str, str, int | None]:
        """(address, local address, path MTU or None) for a remote to add; ValueError/SetupError if it cannot be."""
        addr = check_address("remotes", addr)
        if any(r.addr == addr for r in self.engine.remotes()):
            raise ValueError(f"remote {addr} is there already")
        if host.is_local_address(addr):
            raise ValueError(f"remote {addr} is an address of this host: a tunnel needs another host")
        tunnel = self.engine.cfg.tunnel
        fam = address_family(addr)
        if tunnel.locals and tunnel.local_for(fam) is None:
            raise ValueError(
                f"remote {addr} is IPv{fam} but tunnel.local has no IPv{fam} address ({', '.join(tunnel.locals)})"
            )
        src, mtu = host.underlay.route_to(addr)
        return addr, tunnel.local_for(fam) or src, mtu

    # -- membership on etcd (the keeper's MemberSink) ---------------------------------------------

    def member_added(self, addr: str) -> None:
        """A member of our net: a remote from now on (resolved as `remote add` does); ValueError(reason) if it
        cannot be (our own address, no route, a family we have no sockets for, a full table)."""
        addr = check_address("remotes", addr)
        origins = self.origins.get(addr)
        if origins is not None:  # a static remote already: it just gets the origin
            origins.discard(INHERITED)  # (the old daemon's member: a member here too)
            origins.add(ETCD)
        else:
            try:
                self.add_remote(addr)  # (logged there, with a warning about its path MTU if there is one)
            except SetupError as exc:
                raise ValueError(str(exc)) from None
            self.origins[addr] = {ETCD}
        self.member_since[addr] = time.time()
        self._apply_etcd_static(addr)

    def changes(self) -> contextlib.AbstractContextManager[None]:
        """The keeper's calls inside apply as one change: the data-path thread parked once for a burst."""
        return self.engine.paused()

    def member_removed(self, addr: str) -> None:
        """A member's key went (left, lease expired or revoked): its remote goes at once, unless it is static."""
        addr = check_address("remotes", addr)
        self.member_since.pop(addr, None)
        origins = self.origins.get(addr)
        if origins is None or ETCD not in origins:
            return
        origins.discard(ETCD)
        if origins:
            log.info("member %s left; it stays a (static) remote", addr, extra={"event": "member_removed"})
            return
        del self.origins[addr]
        purged = self.engine.remove_remote(addr)
        log.info("member %s left: remote removed (%d FDB entries behind it forgotten)", addr, purged,
                 extra={"event": "member_removed", "remote": addr, "purged": purged})  # fmt: skip

    def inherit_origins(self, handed: object) -> None:
        """The origins the old daemon of a takeover handed over (addr -> ["etcd", "static"]): a remote it
        had as static (its configuration, or `remote add` of a member) stays static here; those it had as
        members only are INHERITED until the first listing (settle_inherited)."""
        if not isinstance(handed, dict):
            return  # (an older daemon's state: no origins)
        for addr, origins in self.origins.items():
            theirs = handed.get(addr)
            if isinstance(theirs, list) and STATIC in theirs:
                origins.discard(INHERITED)
                origins.add(STATIC)
            elif isinstance(theirs, list) and ETCD in theirs and INHERITED in origins:
                self.handed_members.add(addr)

    def settle_inherited(self) -> None:
        """After the first listing of the net (a takeover's join): remotes handed over that are not members
        were the old daemon's `remote add`s: static from now on; those the old daemon had as members only
        left the net meanwhile: removed, as their key's deletion would have removed them."""
        for addr, origins in list(self.origins.items()):
            if origins != {INHERITED}:
                continue
            if addr in self.handed_members:
                del self.origins[addr]
                purged = self.engine.remove_remote(addr)
                log.info("member %s (handed over) is no longer in the net: remote removed (%d FDB entries behind "
                         "it forgotten)", addr, purged, extra={"event": "member_removed", "remote": addr,
                                                               "purged": purged})  # fmt: skip
                continue
            origins.clear()
            origins.add(STATIC)
            log.info("remote %s (handed over, not a member of the net): static", addr)
        self.handed_members.clear()

    def static_changed(self, mac: bytes, vlan: int, remote: str | None) -> None:
        """An operator's static entry on etcd set (remote) or removed (None). Applied once its remote is a
        remote, pending until then; re-applied when that remote comes back."""
        key = (bytes(mac), vlan)
        before = self.etcd_static.get(key)
        if remote is None:
            self.etcd_static.pop(key, None)
            if before is not None and self._static_rows().get(key) == before:
                self.engine.fdb_del(key[0], vlan=vlan)
                log.info("etcd static entry %s@%d removed", format_mac(key[0]), vlan)
            return
        remote = check_address("fdb.static", remote)
        self.etcd_static[key] = remote
        if before is not None and before != remote and self._static_rows().get(key) == before:
            self.engine.fdb_del(key[0], vlan=vlan)
        if any(r.addr == remote for r in self.engine.remotes()):
            self._add_etcd_static(key, remote)
        else:
            log.info("etcd static entry %s@%d -> %s pending: %s is not a remote (yet)", format_mac(key[0]), vlan,
                     remote, remote)  # fmt: skip

    def _add_etcd_static(self, key: tuple[bytes, int], remote: str) -> None:
        try:
            self.engine.fdb_add(key[0], remote, vlan=key[1])
        except (FdbFull, ValueError, KeyError) as exc:
            log.warning("etcd static entry %s@%d -> %s not applied: %s", format_mac(key[0]), key[1], remote, exc)
        else:
            log.info("etcd static entry %s@%d -> %s applied", format_mac(key[0]), key[1], remote)

    def _apply_etcd_static(self, addr: str) -> None:
        """The pending etcd static entries behind addr, now a remote."""
        for key, remote in self.etcd_static.items():
            if remote == addr:
                self._add_etcd_static(key, remote)

    def members(self) -> dict[str, Any]:
        """The membership report (control/membership keeper) with what this daemon knows of each member:
        whether it is a remote, its origins, the traffic seen from it."""
        if self.membership is None:
            raise ValueError("members: this daemon does not use etcd (ovl-dp run --etcd URL --net NAME)")
        report = dict(self.membership.report())
        rows = {str(r["remote"]): r for r in self.engine.remote_rows()}
        members = []
        for m in report.get("members", []):
            m = dict(m)
            addr = str(m.get("addr"))
            row = rows.get(addr)
            origins = self.origins.get(addr, set())
            m["remote"] = row is not None
            m["static"] = STATIC in origins
            m["origins"] = sorted(origins)
            if addr in self.member_since:
                m["since"] = self.member_since[addr]
            m["rx_packets"] = None if row is None else row.get("rx_packets")
            m["last_rx_age"] = None if row is None else row.get("last_rx_age")
            members.append(m)
        report["members"] = members
        return report

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
        """Re-read the configuration and make the daemon run it where that needs no restart.

        Everything is checked before anything changes (keys that need a restart, the new remotes'
        addresses and routes, the number of remotes); then remotes and static entries become the
        file's (the running sets are compared, as `wg syncconf` does) and the FDB limits are set.
        If a step still fails half-way, the error says what was applied before it.
        """
        if self.source is None or self.source.file is None:
            raise ValueError("reload: the daemon was not started with --config FILE")
        try:
            new = self.source.load()
        except ConfigError as exc:
            raise ValueError(f"reload refused: {exc.render(self.source.names({}))}") from None
        changed = _changed(self.user_cfg, new)
        needs_restart = [k for k in changed if k not in LIVE_KEYS]
        if needs_restart:
            raise ValueError(
                f"reload refused: {', '.join(needs_restart)} changed, which needs a restart; "
                "the daemon keeps its old settings"
            )
        plan = self._plan(new)
        done: list[str] = []
        try:
            with self.engine.paused():  # one change for the data path (its thread parked once)
                self._apply(new, plan, done)
        except Exception as exc:
            self.reload_failures += 1
            log.error("reload of %s failed after: %s", self.source.file, "; ".join(done) or "nothing")
            raise ValueError(
                f"reload failed at {type(exc).__name__}: {exc}; applied before: {'; '.join(done) or 'nothing'}"
            ) from None
        self.user_cfg = new
        self.reloads += 1
        log.info("reloaded %s: %s", self.source.file, "; ".join(done) or "nothing changed",
                 extra={"event": "reloaded", "applied": done})  # fmt: skip
        return {"file": str(self.source.file), "applied": done}

    def _static_rows(self) -> dict[tuple[bytes, int], str]:
        """The static entries the FDB holds now: (MAC, VLAN) -> remote address."""
        return {
            (parse_mac(str(r["mac"])), int(str(r["vlan"]))): str(r["remote"])
            for r in self.engine.fdb_table()
            if r["static"]
        }

    def _plan(self, new: Config) -> dict[str, tuple[str, str, int | None]]:
        """The new remotes resolved (address -> (address, local, MTU)); ValueError before anything changes."""
        live = [r.addr for r in self.engine.remotes()]
        wanted = [r.addr for r in new.remotes]
        if len(wanted) > MAX_REMOTES:
            raise ValueError(f"reload refused: {len(wanted)} remotes, at most {MAX_REMOTES}")
        plan = {}
        for addr in wanted:
            if addr not in live:  # (a live etcd member named by the file only becomes static too)
                try:
                    plan[addr] = self._resolve_new(addr)
                except (ValueError, SetupError) as exc:
                    raise ValueError(f"reload refused: {exc}") from None
        return plan

    def _apply(self, new: Config, plan: Mapping[str, tuple[str, str, int | None]], done: list[str]) -> None:
        """Make the engine run new's remotes, static entries and FDB limits, noting each step in done."""
        e = self.engine
        wanted = {r.addr for r in new.remotes}
        for addr, local, _mtu in plan.values():
            e.add_remote(Remote(addr, local))
            done.append(f"remote {addr} added")
        for addr in plan:
            self.origins[addr] = {STATIC}
        for r in e.remotes():
            origins = self.origins.setdefault(r.addr, set())
            if r.addr in wanted:
                origins.add(STATIC)
            elif ETCD in origins:  # never removed by a reload: it leaves when its key goes
                if STATIC in origins:
                    origins.discard(STATIC)
                    done.append(f"remote {r.addr} no longer static (an etcd member)")
            else:
                purged = e.remove_remote(r.addr)
                self.origins.pop(r.addr, None)
                done.append(f"remote {r.addr} removed ({purged} FDB entries)")
        live_static = self._static_rows()
        for key, remote in self.etcd_static.items():  # etcd's entries are etcd's, not the file's
            if live_static.get(key) == remote:
                del live_static[key]
        new_static = {(s.mac, s.vlan): s.remote for s in new.fdb.static}
        for (mac, vlan), remote in live_static.items():
            if new_static.get((mac, vlan)) != remote:
                e.fdb_del(mac, vlan=vlan)
                done.append(f"static {format_mac(mac)}@{vlan} removed")
        if (new.fdb.max_entries, new.fdb.ageing) != (self.user_cfg.fdb.max_entries, self.user_cfg.fdb.ageing):
            e.set_fdb_limits(new.fdb.max_entries, new.fdb.ageing)
            done.append(f"FDB size {new.fdb.max_entries}, ageing {new.fdb.ageing:g}s")
        for (mac, vlan), remote in new_static.items():
            if live_static.get((mac, vlan)) != remote:
                e.fdb_add(mac, remote, vlan=vlan)
                done.append(f"static {format_mac(mac)}@{vlan} -> {remote} added")
        for addr in plan:  # etcd's static entries that waited for a remote the file added
            self._apply_etcd_static(addr)
