"""Next hops of the remotes for the AF_PACKET TX rings: what the kernel does for a raw socket, done here.

A TX ring frame goes to the driver as it is (datapath/io/ring.py): the Ethernet header is
ours, so for each remote the control plane finds the egress device and the next hop's MAC
and sets them in the engine (:meth:`Engine.set_nexthop`); until it has them, or when it
cannot (a device without Ethernet headers, the neighbour FAILED), the remote's packets go
through the raw socket, where the kernel routes and resolves (:meth:`Engine.clear_nexthop`).

Resolving one remote (:func:`resolve`), over rtnetlink requests the kernel answers at once
(:class:`Rtnl`, a socket of its own, safe on the loop unlike pyroute2's IPRoute):
``RTM_GETROUTE`` to the remote from its local address -> egress device and gateway (the next
hop is the gateway, or the remote itself on a connected route); ``RTM_GETNEIGH`` -> MAC and
state; if there is no usable entry, ``RTM_NEWNEIGH`` with ``NTF_USE`` makes the kernel resolve
it (ARP) without a packet from us, and the ``RTM_NEWNEIGH`` event that follows (the watcher
listens to RTMGRP_NEIGH for this keeper) resolves the remote again: nothing waits.

Keeping them right (:class:`NextHopKeeper`): ring frames never confirm a neighbour entry, so it
goes STALE; every REFRESH seconds, and when an event says STALE, ``NTF_USE`` again makes the
kernel re-validate it (a unicast ARP probe), and a change of MAC or a FAILED entry comes back as
an event, which re-resolves only the remotes behind that neighbour. Route, address and link events
and lost events re-resolve every remote; remotes
added at run time are picked up within CHECK seconds.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from control.watch import AddrEvent, Event, LinkEvent, NeighEvent, Resync, RouteEvent
from datapath.config import Remote
from datapath.engine import Engine

log = logging.getLogger("ovl-dp")

# <linux/rtnetlink.h>, <linux/neighbour.h>
RTM_GETLINK, RTM_NEWNEIGH, RTM_GETNEIGH, RTM_GETROUTE = 18, 28, 30, 26
NTF_USE = 0x01
NUD_INCOMPLETE, NUD_REACHABLE, NUD_STALE, NUD_DELAY, NUD_PROBE = 0x01, 0x02, 0x04, 0x08, 0x10
NUD_FAILED, NUD_NOARP, NUD_PERMANENT = 0x20, 0x40, 0x80
NUD_USABLE = NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_PERMANENT
ARPHRD_ETHER = 1

REFRESH = 15.0  # seconds between NTF_USE re-validations of every next hop in use
CHECK = 1.0  # seconds between looks for remotes added or removed at run time
SETTLE = 0.05  # after the first event of a burst, resolve once for all of it
TIMEOUT = 1.0  # seconds for the kernel's answer to one request

BYPASS_NOTE = (
    "TX ring: outer packets leave through AF_PACKET TX rings, which bypass netfilter OUTPUT/POSTROUTING "
    "and the qdisc (host firewall rules on OUTPUT/POSTROUTING do not see tunnel packets; use a netdev "
    "egress chain or --tx-ring off)"
)


class Rtnl:
    """Requests on a NETLINK_ROUTE socket of its own, each answered by the kernel before send() returns."""

    def __init__(self, timeout: float = TIMEOUT) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        self.sock.settimeout(timeout)
        self.sock.bind((0, 0))
        self._seq = 0
        self._marshal = MarshalRtnl()

    def request(self, msg: Any, kind: int, flags: int) -> list[Any]:
        """Send msg as a request of type kind; its answers. OSError for an error answer or no answer in time."""
        self._seq += 1
        msg["header"]["type"] = kind
        msg["header"]["flags"] = flags
        msg["header"]["sequence_number"] = self._seq
        msg.encode()
        self.sock.send(msg.data)
        while True:  # (an answer to an earlier, timed-out request may still come: skipped by its number)
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                raise OSError(errno.ETIMEDOUT, "no answer from rtnetlink") from None
            answers = [m for m in self._marshal.parse(data) if m["header"]["sequence_number"] == self._seq]
            if not answers:
                continue
            for m in answers:
                err = m["header"].get("error")
                if err is not None:
                    code = int(err[0]) if isinstance(err, tuple) else int(getattr(err, "code", errno.EIO))
                    raise OSError(code, os.strerror(code))
            return [m for m in answers if m.get("event") != "NLMSG_ERROR"]

    def route(self, dst: str, src: str | None) -> tuple[int, str]:
        """(egress ifindex, next hop address) of the route to dst from src; OSError (ENETUNREACH...)."""
        m = rtmsg()
        m["family"] = socket.AF_INET
        m["dst_len"] = 32
        m["attrs"] = [("RTA_DST", dst)]
        if src:
            m["src_len"] = 32
            m["attrs"].append(("RTA_SRC", src))
        answers = self.request(m, RTM_GETROUTE, NLM_F_REQUEST)
        if not answers or not answers[0].get_attr("RTA_OIF"):
            raise OSError(errno.ENETUNREACH, "no route with an egress device")
        r = answers[0]
        return int(r.get_attr("RTA_OIF")), str(r.get_attr("RTA_GATEWAY") or dst)

    def link(self, ifindex: int) -> tuple[str, int, int, str]:
        """(name, ARPHRD type, MTU, MAC or '') of device ifindex; OSError (ENODEV...)."""
        m = ifinfmsg()
        m["index"] = ifindex
        answers = self.request(m, RTM_GETLINK, NLM_F_REQUEST)
        if not answers:
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        a = answers[0]
        return (
            str(a.get_attr("IFLA_IFNAME")), int(a["ifi_type"]), int(a.get_attr("IFLA_MTU") or 0),
            str(a.get_attr("IFLA_ADDRESS") or ""),
        )  # fmt: skip

    def neighbour(self, ifindex: int, addr: str) -> tuple[str, int]:
        """(MAC or '', NUD state) of addr's entry on ifindex; ('', 0) when there is none."""
        n = ndmsg()
        n["family"] = socket.AF_INET
        n["ifindex"] = ifindex
        n["attrs"] = [("NDA_DST", addr)]
        try:
            answers = self.request(n, RTM_GETNEIGH, NLM_F_REQUEST)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return "", 0
            raise
        if not answers:
            return "", 0
        return str(answers[0].get_attr("NDA_LLADDR") or ""), int(answers[0]["state"])

    def use(self, ifindex: int, addr: str) -> None:
        """NTF_USE (``ip neigh replace ADDR dev DEV use``): the kernel resolves or re-validates addr's entry."""
        n = ndmsg()
        n["family"] = socket.AF_INET
        n["ifindex"] = ifindex
        n["flags"] = NTF_USE
        n["attrs"] = [("NDA_DST", addr)]
        self.request(n, RTM_NEWNEIGH, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE)

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


class OneLook:
    """An Rtnl whose link and neighbour answers are kept for one resolve: remotes behind one gateway (or
    one device) share them, so 500 remotes cost 500 route lookups, not 1,500 requests on the loop."""

    def __init__(self, rtnl: Rtnl) -> None:
        self._rtnl = rtnl
        self._links: dict[int, tuple[str, int, int, str]] = {}
        self._neighbours: dict[tuple[int, str], tuple[str, int]] = {}

    def route(self, dst: str, src: str | None) -> tuple[int, str]:
        """As Rtnl.route (not kept: each remote its own)."""
        return self._rtnl.route(dst, src)

    def link(self, ifindex: int) -> tuple[str, int, int, str]:
        """As Rtnl.link, asked once per device."""
        if ifindex not in self._links:
            self._links[ifindex] = self._rtnl.link(ifindex)
        return self._links[ifindex]

    def neighbour(self, ifindex: int, addr: str) -> tuple[str, int]:
        """As Rtnl.neighbour, asked once per next hop."""
        key = (ifindex, addr)
        if key not in self._neighbours:
            self._neighbours[key] = self._rtnl.neighbour(ifindex, addr)
        return self._neighbours[key]

    def use(self, ifindex: int, addr: str) -> None:
        """As Rtnl.use, once per next hop (the kernel resolves it; its event brings the answer)."""
        if self._neighbours.get((ifindex, addr)) != ("", -1):
            self._rtnl.use(ifindex, addr)
            self._neighbours[(ifindex, addr)] = ("", -1)  # asked for: the others behind it wait too


@dataclass(frozen=True)
class NextHop:
    """Where a remote's ring frames go: device ifindex (name, MTU, our MAC src), next hop address and MAC."""

    ifindex: int
    device: str
    mtu: int
    src: bytes
    addr: str
    mac: bytes
    static: bool = False  # a PERMANENT or NOARP neighbour entry: never asked for with NTF_USE (see refresh)


def resolve(rtnl: Rtnl | OneLook, remote: Remote) -> tuple[NextHop | None, tuple[int, str] | None, str]:
    """remote's next hop: (NextHop or None, (ifindex, next hop address) to wait for or None, why not).

    A next hop with no usable neighbour entry is asked for (NTF_USE); its event resolves again.
    An IPv6 remote has none: the TX rings carry IPv4 only (issue 11: its packets leave through the
    raw IPv6 socket, not counted as ring fallback).
    """
    if remote.family == 6:
        return None, None, "IPv6 remote: the raw IPv6 socket (TX rings are IPv4 only)"
    try:
        ifindex, nh = rtnl.route(remote.addr, remote.local)
        device, kind, mtu, address = rtnl.link(ifindex)
        if kind != ARPHRD_ETHER or not address:
            return None, None, f"{device} is not an Ethernet device"
        src = bytes.fromhex(address.replace(":", ""))
        mac, state = rtnl.neighbour(ifindex, nh)
        if not mac or not state & NUD_USABLE:
            rtnl.use(ifindex, nh)
            return None, (ifindex, nh), f"neighbour {nh} on {device} is being resolved"
        static = bool(state & (NUD_PERMANENT | NUD_NOARP))
        hop = NextHop(ifindex, device, mtu, src, nh, bytes.fromhex(mac.replace(":", "")), static)
        return hop, (ifindex, nh), ""
    except (OSError, ValueError) as exc:
        return None, None, f"no next hop: {getattr(exc, 'strerror', None) or exc}"


class NextHopKeeper:
    """The remotes' next hops in the engine's TX rings; a handler of a control.watch.Watcher (with RTMGRP_NEIGH)."""

    def __init__(
        self,
        engine: Engine,
        rtnl: Rtnl | None = None,
        refresh: float = REFRESH,
        check: float = CHECK,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.rtnl = rtnl or Rtnl()
        self.refresh, self.check, self._clock = refresh, check, clock
        self.hops: dict[str, NextHop] = {}  # remote address -> its next hop in the engine
        self.waiting: dict[tuple[int, str], set[str]] = {}  # (ifindex, next hop) -> remotes behind it
        self.why: dict[str, str] = {}  # remote address -> why it has no next hop
        self.resolves = 0
        self.changes = 0  # next hops set or changed
        self._known: tuple[str, ...] = ()
        self._last_refresh = clock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: asyncio.TimerHandle | None = None
        self._full = False  # the planned resolve is of every remote, else only of _only
        self._only: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Resolve now and follow events and the clock on loop."""
        log.warning(BYPASS_NOTE, extra={"event": "tx_ring_bypass"})
        self._loop = loop
        self.schedule()
        self._timer = loop.call_later(self.check, self._tick)

    def stop(self) -> None:
        """No more resolving; the socket is closed."""
        for h in (self._pending, self._timer):
            if h is not None:
                h.cancel()
        self._pending = self._timer = None
        self._loop = None
        self.rtnl.close()

    def counters(self) -> dict[str, int]:
        """nexthops (remotes sent through a ring), nexthop_resolves, nexthop_changes."""
        return {"nexthops": len(self.hops), "nexthop_resolves": self.resolves, "nexthop_changes": self.changes}

    def on_event(self, ev: Event) -> None:
        """Routes, addresses, links and lost events re-resolve; neighbour news of a next hop we use or wait for too."""
        if isinstance(ev, NeighEvent):
            behind = self.waiting.get((ev.index, ev.dst))
            if behind is None:
                return
            if ev.op == "new" and ev.state & NUD_STALE:
                self._use(ev.index, ev.dst)  # re-validate: ring frames never confirm it
            self.schedule(behind)  # only the remotes behind this neighbour
        elif isinstance(ev, AddrEvent | RouteEvent | LinkEvent | Resync):
            self.schedule()

    def _use(self, ifindex: int, addr: str) -> None:
        try:
            self.rtnl.use(ifindex, addr)
        except OSError as exc:
            log.debug("NTF_USE %s on %d: %s", addr, ifindex, exc.strerror)

    def schedule(self, only: Iterable[str] | None = None) -> None:
        """Resolve SETTLE seconds from now (every remote, or those of only), unless that is already planned."""
        if only is None:
            self._full = True
        else:
            self._only.update(only)
        if self._loop is not None and self._pending is None:
            self._pending = self._loop.call_later(SETTLE, self._run)

    def _tick(self) -> None:
        self._timer = None
        if self._loop is None:
            return
        self._timer = self._loop.call_later(self.check, self._tick)
        now = self._clock()
        if now - self._last_refresh >= self.refresh:
            self._last_refresh = now
            # Not a static entry: NTF_USE turns a PERMANENT entry into INCOMPLETE (then FAILED) on Linux
            # 6.18 -- checked with `ip neigh replace ADDR dev DEV use` -- and the host's entries are not ours.
            for ifindex, addr in {(h.ifindex, h.addr) for h in self.hops.values() if not h.static}:
                self._use(ifindex, addr)
            self.schedule()
        else:
            self._follow_remotes()

    def _follow_remotes(self) -> None:
        """Remotes added since the last look are resolved, removed ones forgotten: only those, so that
        hundreds of etcd members joining at once do not re-resolve every remote each second."""
        current = tuple(r.addr for r in self.engine.remotes())
        lost = set(self.hops) - set(self.engine.ring_remotes())  # removed and added again: a new slot
        if current != self._known:
            known, now = set(self._known), set(current)
            for gone in known - now:
                self.hops.pop(gone, None)
                self.why.pop(gone, None)
            self.waiting = {key: behind & now for key, behind in self.waiting.items() if behind & now}
            self._known = current
            lost |= now - known
        if lost:
            self.schedule(lost & set(current))

    def _run(self) -> None:
        self._pending = None
        only = None if self._full else self._only
        self._full, self._only = False, set()
        try:
            self.resolve(only)
        except Exception as exc:  # the next event or tick tries again; never a traceback
            log.error("resolving next hops failed: %s: %s", type(exc).__name__, exc)

    def resolve(self, only: set[str] | None = None) -> None:
        """Resolve every remote's next hop (or only those of the addresses in only) and set what changed."""
        e = self.engine
        remotes = e.remotes()
        self.resolves += 1
        on_ring = e.ring_remotes()  # a remote re-added with the same address has no next hop in its new slot
        if only is None:
            self._known = tuple(r.addr for r in remotes)
            waiting: dict[tuple[int, str], set[str]] = {}
            for gone in set(self.hops) - set(self._known):
                del self.hops[gone]
            for gone in set(self.why) - set(self._known):
                del self.why[gone]
        else:  # the others keep what they wait for
            remotes = tuple(r for r in remotes if r.addr in only)
            waiting = {key: behind - only for key, behind in self.waiting.items() if behind - only}
        look = OneLook(self.rtnl)
        found = []  # the lookups first, with the data path running; then the changes, with it parked once
        for r in remotes:
            hop, key, why = resolve(look, r)
            if key is not None:
                waiting.setdefault(key, set()).add(r.addr)
            if hop is not None and hop == self.hops.get(r.addr) and r.addr in on_ring:
                continue
            found.append((r, hop, why))
        self.waiting = waiting
        if found:
            with e.paused():
                self._apply(found)

    def _apply(self, found: list[tuple[Remote, NextHop | None, str]]) -> None:
        e = self.engine
        for r, hop, why in found:
            if hop is not None and e.set_nexthop(r.addr, hop.ifindex, hop.mtu, hop.mac, hop.src):
                self.hops[r.addr] = hop
                self.changes += 1
                self.why.pop(r.addr, None)
                log.info(
                    "remote %s: next hop %s (%s) on %s, through the TX ring", r.addr, hop.addr,
                    hop.mac.hex(":"), hop.device,
                    extra={"event": "nexthop", "remote": r.addr, "nexthop": hop.addr, "mac": hop.mac.hex(":")},
                )  # fmt: skip
                continue
            if hop is not None:
                why = f"the TX ring on {hop.device} was refused"
            if r.addr in self.hops or r.addr not in self.why:
                e.clear_nexthop(r.addr)
                self.hops.pop(r.addr, None)
                log.info("remote %s: raw socket (%s)", r.addr, why, extra={"event": "nexthop_none", "remote": r.addr})
            self.why[r.addr] = why
