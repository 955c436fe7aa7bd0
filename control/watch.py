"""rtnetlink events on the daemon's loop: links, IPv4 (and with IPv6 remotes IPv6) addresses and routes, no polling.

A :class:`Watcher` owns a netlink socket of its own (``AF_NETLINK``,
``NETLINK_ROUTE``) bound to the multicast groups ``RTMGRP_LINK``,
``RTMGRP_IPV4_IFADDR`` and ``RTMGRP_IPV4_ROUTE``, non-blocking and registered
with the loop (``add_reader``). pyroute2 (0.9) decodes the messages
(:func:`decode`, pure: bytes in, events out); its ``IPRoute`` object is not
used on the loop, because it runs an event loop of its own and refuses to run
inside a running one ("this event loop is already running").

Each message becomes a small frozen event (:class:`LinkEvent`,
:class:`AddrEvent`, :class:`RouteEvent`) handed to every handler. When the
kernel had to drop events because the socket buffer was full (``ENOBUFS`` on
receive), or a datagram was larger than the read (``MSG_TRUNC``: pyroute2 would
silently decode nothing of it), the handlers get :data:`RESYNC` instead: events
were lost, re-read the state. A handler that raises is logged (rate-limited, no traceback) and counted;
the watcher carries on with the next handler and the next message.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.rtnl.marshal import MarshalRtnl

log = logging.getLogger("ovl-dp")

# <linux/rtnetlink.h>
RTMGRP_LINK = 0x1
RTMGRP_NEIGH = 0x4  # only for who asks (Watcher(groups=GROUPS | RTMGRP_NEIGH)): control/nexthop.py
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE
# issue 11, v6: with IPv6 remotes the daemon also follows IPv6 addresses and routes.
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
GROUPS6 = RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE
IFF_UP = 0x1
RT_TABLE_MAIN = 254
RT_TABLE_LOCAL = 255

RCVBUF = 1 << 20  # bytes; a burst beyond it is an ENOBUFS (then a resync), never a stuck watcher
RECV_SIZE = 1 << 16  # bytes per read; a longer datagram is cut (MSG_TRUNC): a resync
READS_PER_WAKE = 64  # then back to the loop: a storm of events never starves the packets
ERROR_LOG_INTERVAL = 10.0


@dataclass(frozen=True)
class LinkEvent:
    """RTM_NEWLINK / RTM_DELLINK: op is "new" or "del"; master 0 = none; kind '' when the link has none."""

    op: str
    index: int
    name: str
    master: int = 0
    mtu: int = 0
    kind: str = ""
    up: bool = False


@dataclass(frozen=True)
class AddrEvent:
    """RTM_NEWADDR / RTM_DELADDR (IPv4)."""

    op: str
    index: int
    address: str
    prefixlen: int


@dataclass(frozen=True)
class RouteEvent:
    """RTM_NEWROUTE / RTM_DELROUTE (IPv4, main or local table); dst '' is the default route."""

    op: str
    dst: str
    prefixlen: int
    oif: int = 0
    gateway: str = ""
    table: int = RT_TABLE_MAIN


@dataclass(frozen=True)
class NeighEvent:
    """RTM_NEWNEIGH / RTM_DELNEIGH (IPv4): state is the NUD_* bits, lladdr '' when the entry has none."""

    op: str
    index: int
    dst: str
    lladdr: str = ""
    state: int = 0


@dataclass(frozen=True)
class Resync:
    """Events were lost (ENOBUFS): whoever keeps state from events must read it again."""


RESYNC = Resync()
Event = LinkEvent | AddrEvent | RouteEvent | NeighEvent | Resync
Handler = Callable[[Event], None]

_OPS = {
    "RTM_NEWLINK": "new", "RTM_DELLINK": "del",
    "RTM_NEWADDR": "new", "RTM_DELADDR": "del",
    "RTM_NEWROUTE": "new", "RTM_DELROUTE": "del",
    "RTM_NEWNEIGH": "new", "RTM_DELNEIGH": "del",
}  # fmt: skip


def event_of(msg: Any) -> LinkEvent | AddrEvent | RouteEvent | NeighEvent | None:
    """The event a decoded pyroute2 rtnetlink message stands for; None for messages we do not watch."""
    name = msg.get("event")
    op = _OPS.get(name or "")
    if op is None:
        return None
    if name.endswith("LINK"):
        if msg["family"] == socket.AF_BRIDGE:  # bridge-port news; "del" there is a port leaving, not a link
            return None
        info = msg.get_attr("IFLA_LINKINFO")
        kind = (info.get_attr("IFLA_INFO_KIND") if info else None) or ""
        return LinkEvent(
            op=op,
            index=int(msg["index"]),
            name=msg.get_attr("IFLA_IFNAME") or "",
            master=int(msg.get_attr("IFLA_MASTER") or 0),
            mtu=int(msg.get_attr("IFLA_MTU") or 0),
            kind=str(kind),
            up=bool(int(msg["flags"]) & IFF_UP),
        )
    if msg["family"] != socket.AF_INET and not (msg["family"] == socket.AF_INET6 and not name.endswith("NEIGH")):
        return None  # IPv6: addresses and routes (IPv6 remotes); neighbours only IPv4 (the TX rings' next hops)
    if name.endswith("NEIGH"):
        dst = msg.get_attr("NDA_DST")
        if not dst:
            return None
        return NeighEvent(
            op=op, index=int(msg["ifindex"]), dst=str(dst), lladdr=str(msg.get_attr("NDA_LLADDR") or ""),
            state=int(msg["state"]),
        )  # fmt: skip
    if name.endswith("ADDR"):
        addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        if not addr:
            return None
        return AddrEvent(op=op, index=int(msg["index"]), address=str(addr), prefixlen=int(msg["prefixlen"]))
    table = int(msg.get_attr("RTA_TABLE") or msg["table"])
    if table not in (RT_TABLE_MAIN, RT_TABLE_LOCAL):
        return None
    return RouteEvent(
        op=op,
        dst=str(msg.get_attr("RTA_DST") or ""),
        prefixlen=int(msg["dst_len"]),
        oif=int(msg.get_attr("RTA_OIF") or 0),
        gateway=str(msg.get_attr("RTA_GATEWAY") or ""),
        table=table,
    )


_marshal = MarshalRtnl()


def decode(data: bytes) -> list[LinkEvent | AddrEvent | RouteEvent | NeighEvent]:
    """The watched events in one netlink datagram (several messages may share it)."""
    events = []
    for msg in _marshal.parse(data):
        ev = event_of(msg)
        if ev is not None:
            events.append(ev)
    return events


def route_covers(ev: RouteEvent, addr: str) -> bool:
    """Whether the route of ev matches addr (the default route matches every address)."""
    if not ev.dst:
        return ev.prefixlen == 0
    try:
        return ipaddress.ip_address(addr) in ipaddress.ip_network(f"{ev.dst}/{ev.prefixlen}", strict=False)
    except ValueError:
        return False


class Watcher:
    """The rtnetlink event socket on a loop, handing every event to its handlers."""

    def __init__(self, groups: int = GROUPS, rcvbuf: int = RCVBUF, recv_size: int = RECV_SIZE) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.bind((0, groups))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.recv_size = recv_size
        self.handlers: list[Handler] = []
        self.events = 0  # events handed out
        self.resyncs = 0  # ENOBUFS seen (events lost)
        self.handler_errors = 0
        self.recv_errors = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_log = -ERROR_LOG_INTERVAL

    def add(self, handler: Handler) -> None:
        """Hand every event from now on to handler too."""
        self.handlers.append(handler)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read events whenever the socket is readable."""
        self._loop = loop
        loop.add_reader(self.sock.fileno(), self.on_readable)

    def on_readable(self) -> None:
        """Read what is there (up to READS_PER_WAKE datagrams) and dispatch it."""
        for _ in range(READS_PER_WAKE):
            try:
                data, _, flags, _ = self.sock.recvmsg(self.recv_size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # the kernel dropped events: the socket is usable again
                    self.resyncs += 1
                    log.info("netlink events were lost (socket buffer full): re-reading the state")
                    self.dispatch([RESYNC])
                    continue
                self.recv_errors += 1
                self._complain(f"reading netlink events failed: {exc.strerror or exc}")
                return
            if flags & socket.MSG_TRUNC:  # the rest of the datagram is gone: treat it as lost events
                self.resyncs += 1
                self._complain(f"a netlink message longer than {self.recv_size} bytes was cut: re-reading the state")
                self.dispatch([RESYNC])
                continue
            try:
                events: list[Event] = list(decode(data))
            except Exception as exc:  # a message pyroute2 cannot parse: treat it as lost events
                self._complain(f"cannot decode a netlink message ({type(exc).__name__}: {exc}): re-reading the state")
                events = [RESYNC]
            self.dispatch(events)

    def dispatch(self, events: Iterable[Event]) -> None:
        """Hand each event to every handler; a failing handler is logged and counted, never fatal."""
        for ev in events:
            self.events += 1
            for handler in self.handlers:
                try:
                    handler(ev)
                except Exception as exc:  # the watcher must outlive any one failed handler
                    self.handler_errors += 1
                    self._complain(f"handling {type(ev).__name__} failed: {type(exc).__name__}: {exc}")

    def _complain(self, text: str) -> None:
        now = time.monotonic()
        if now - self._last_log >= ERROR_LOG_INTERVAL:
            log.error("%s", text)
            self._last_log = now

    def close(self) -> None:
        """Unregister and close the socket."""
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._loop = None
        self.sock.close()
