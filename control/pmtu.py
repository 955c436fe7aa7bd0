"""The path MTU towards each remote, followed at run time (issue 11, pmtu part).

The datapath holds one path MTU per remote (``Engine.set_remote_mtu``; csrc/pmtu.c checks every
copy against it and answers the inner sender). :class:`PmtuKeeper` keeps it up to date from:

- the route: the MTU the kernel would use towards the remote (``IP_MTU`` of a connected UDP
  socket, which includes the path MTU exceptions the kernel learned), given by the
  :class:`control.paths.PathKeeper` at every route / address / link event, and polled every
  :data:`POLL` seconds (an exception the kernel learns makes no rtnetlink event);
- ICMP "fragmentation needed" (ICMPv6 "packet too big") from an underlay router, whose quoted
  packet is one of ours (to a remote, from its local address, our encapsulation: UDP to our
  port, or GRE). The kernel does not record a PMTU exception for our VXLAN packets: they leave
  through the raw IPPROTO_RAW socket with a source port no socket is bound to (udp_err finds no
  socket), so we read them on a raw ICMP socket ourselves (with IPv6 remotes on a raw ICMPv6 one
  too; for GRE the ICMP also reaches our raw GRE socket and the kernel may record one, seen by the
  poll as well). A learned value holds for
  :data:`EXPIRES` seconds (the kernel's net.ipv4.route.mtu_expires), never below
  :data:`MIN_PMTU` (net.ipv4.route.min_pmtu), then the route's MTU applies again.

The path MTU in effect is the smallest of the route's, the learned one and the underlay MTU the
daemon started with (its buffers and the TAP are sized for that). One log line per change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from datapath.config import MIN_MTU
from datapath.engine import Engine
from datapath.errors import SetupError
from datapath.io import underlay

log = logging.getLogger("ovl-dp")

POLL = 5.0  # seconds between two polls of the routes' MTU (exceptions the kernel learned)
EXPIRES = 600.0  # seconds an MTU learned from an underlay ICMP holds (net.ipv4.route.mtu_expires)
MIN_PMTU = 552  # the lowest MTU an underlay ICMP can set (net.ipv4.route.min_pmtu)
IPV6_MIN_MTU = 1280
ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED = 3, 4  # RFC 792 / RFC 1191
ICMPV6_PKT_TOOBIG = 2  # RFC 4443
IPPROTO_UDP, IPPROTO_GRE = 17, 47
ICMP6_FILTER = 1  # <netinet/icmp6.h>: a raw ICMPv6 socket's per-type filter (RFC 3542)


def _icmp6_filter_pass(icmp_type: int) -> bytes:
    """A struct icmp6_filter that blocks every ICMPv6 type but icmp_type (a set bit blocks, as in Linux)."""
    words = [0xFFFFFFFF] * 8
    words[icmp_type >> 5] &= ~(1 << (icmp_type & 31)) & 0xFFFFFFFF
    return struct.pack("=8I", *words)


@dataclass(frozen=True)
class TooBig:
    """An underlay "too big" message about one of our packets: where it went, from where, the MTU reported."""

    remote: str
    local: str
    mtu: int


def parse_too_big(pkt: bytes, family: int, proto: int, port: int | None) -> TooBig | None:
    """The "too big" message pkt as a raw ICMP socket delivers it (AF_INET: with the IPv4 header; AF_INET6: the
    ICMPv6 message only), if its quoted packet is of our encapsulation (proto; UDP: to port); else None."""
    if family == socket.AF_INET:
        if len(pkt) < 20 or pkt[0] >> 4 != 4:
            return None
        ihl = (pkt[0] & 0x0F) * 4
        icmp = pkt[ihl:]
        if len(icmp) < 8 + 20 or icmp[0] != ICMP_DEST_UNREACH or icmp[1] != ICMP_FRAG_NEEDED:
            return None
        mtu = struct.unpack("!H", icmp[6:8])[0]
        q = icmp[8:]
        qhl = (q[0] & 0x0F) * 4
        if q[0] >> 4 != 4 or qhl < 20 or q[9] != proto:
            return None
        if proto == IPPROTO_UDP and (len(q) < qhl + 4 or struct.unpack("!H", q[qhl + 2 : qhl + 4])[0] != port):
            return None
        src, dst = socket.inet_ntop(socket.AF_INET, q[12:16]), socket.inet_ntop(socket.AF_INET, q[16:20])
    elif family == socket.AF_INET6:
        if len(pkt) < 8 + 40 or pkt[0] != ICMPV6_PKT_TOOBIG:
            return None
        mtu = struct.unpack("!I", pkt[4:8])[0]
        q = pkt[8:]
        if q[0] >> 4 != 6 or q[6] != proto:
            return None
        if proto == IPPROTO_UDP and (len(q) < 44 or struct.unpack("!H", q[42:44])[0] != port):
            return None
        src, dst = socket.inet_ntop(socket.AF_INET6, q[8:24]), socket.inet_ntop(socket.AF_INET6, q[24:40])
    else:
        return None
    if mtu == 0:  # a router older than RFC 1191: no MTU to go by
        return None
    return TooBig(dst, src, mtu)


class PmtuKeeper:
    """Per-remote path MTUs from routes and underlay ICMP; see the module docstring."""

    def __init__(
        self,
        engine: Engine,
        clock: Callable[[], float] = time.monotonic,
        route_to: Callable[[str], tuple[str, int]] = underlay.route_to,
    ) -> None:
        self.engine = engine
        self._clock = clock
        self._route_to = route_to
        encap = engine.cfg.encap
        self.proto = IPPROTO_UDP if encap.udp else IPPROTO_GRE
        self.port = encap.port if encap.udp else None
        self.ceiling = engine.cfg.underlay_mtu  # the buffers and the TAP are sized for it
        self._route: dict[str, int] = {}
        self._learned: dict[str, tuple[int, float]] = {}  # remote -> (MTU, expires at)
        self.changes = 0
        self.icmp_seen = 0  # underlay "too big" messages about our packets
        self._loop: asyncio.AbstractEventLoop | None = None
        self._socks: list[socket.socket] = []  # raw ICMP (and ICMPv6) sockets read on the loop
        self._timer: asyncio.TimerHandle | None = None

    # -- inputs ---------------------------------------------------------------------------------

    def route_mtu(self, remote: str, mtu: int) -> None:
        """The route towards remote has MTU mtu (control.paths.PathKeeper, the poll).

        A route whose MTU changed drops what underlay ICMP taught (as the kernel's route exceptions go
        with a replaced route): the new route is followed, lowered or raised.
        """
        if self._route.get(remote, mtu) != mtu:
            self._learned.pop(remote, None)
        self._route[remote] = mtu
        self._apply(remote, why=f"the route's MTU is {mtu}")

    def too_big(self, msg: TooBig) -> bool:
        """An underlay "too big" message; True if it was about one of our remotes (from its local address)."""
        if not any(r.addr == msg.remote and r.local == msg.local for r in self.engine.remotes()):
            return False
        self.icmp_seen += 1
        floor = IPV6_MIN_MTU if ":" in msg.remote else MIN_PMTU
        mtu = max(msg.mtu, floor)
        current = self._learned.get(msg.remote)
        if current is None or mtu <= current[0] or current[1] <= self._clock():
            self._learned[msg.remote] = (mtu, self._clock() + EXPIRES)
            self._apply(msg.remote, why=f"an ICMP from the underlay reports {msg.mtu}")
        return True

    def tick(self) -> None:
        """Expire learned MTUs and poll the routes (the kernel's own exceptions included)."""
        now = self._clock()
        remotes = {r.addr for r in self.engine.remotes()}
        for addr in list(self._learned):
            if addr not in remotes or self._learned[addr][1] <= now:
                del self._learned[addr]
                if addr in remotes:
                    self._apply(addr, why="the MTU learned from the underlay expired")
        for addr in list(self._route):
            if addr not in remotes:
                del self._route[addr]
        for addr in remotes:
            try:
                _, mtu = self._route_to(addr)
            except SetupError:
                continue  # PathKeeper reports a missing route
            if self._route.get(addr) != mtu:
                self.route_mtu(addr, mtu)

    # -- the datapath ---------------------------------------------------------------------------

    def wanted(self, remote: str) -> int:
        """The path MTU towards remote from what is known now."""
        mtu = min(self.ceiling, self._route.get(remote, self.ceiling))
        learned = self._learned.get(remote)
        if learned is not None and learned[1] > self._clock():
            mtu = min(mtu, learned[0])
        return max(mtu, MIN_MTU)

    def _apply(self, remote: str, why: str = "") -> None:
        want = self.wanted(remote)
        try:
            have = self.engine.remote_mtu(remote)
            if have == want:
                return
            self.engine.set_remote_mtu(remote, 0 if want == self.ceiling else want)
        except KeyError:  # removed meanwhile
            return
        self.changes += 1
        log.warning(
            "path MTU towards remote %s is now %d (was %d)%s", remote, want, have, f": {why}" if why else "",
            extra={"event": "path_mtu_changed", "remote": remote, "mtu": want, "was": have},
        )  # fmt: skip

    # -- on the loop ------------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read underlay ICMP (if a raw ICMP socket can be opened; ICMPv6 too with IPv6 remotes) and poll
        the routes on loop."""
        self._loop = loop
        kinds = [(socket.AF_INET, socket.IPPROTO_ICMP, "ICMP")]
        if 6 in self.engine.families:
            kinds.append((socket.AF_INET6, socket.IPPROTO_ICMPV6, "ICMPv6"))
        for fam, proto, name in kinds:
            try:
                sock = socket.socket(fam, socket.SOCK_RAW, proto)
            except OSError as exc:
                log.warning("path MTU: no raw %s socket (%s): %s from the underlay is not followed", name,
                            exc.strerror, name)  # fmt: skip
                continue
            if fam == socket.AF_INET6:  # only "packet too big" (not every neighbour discovery message)
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, _icmp6_filter_pass(ICMPV6_PKT_TOOBIG))
            sock.setblocking(False)
            self._socks.append(sock)
            loop.add_reader(sock.fileno(), self._on_icmp, sock)
        self._timer = loop.call_later(POLL, self._tick)

    def _tick(self) -> None:
        try:
            self.tick()
        except Exception as exc:  # the next poll tries again; never a traceback
            log.error("path MTU poll failed: %s: %s", type(exc).__name__, exc)
        if self._loop is not None:
            self._timer = self._loop.call_later(POLL, self._tick)

    def _on_icmp(self, sock: socket.socket, budget: int = 64) -> None:
        for _ in range(budget):
            try:
                pkt = sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("path MTU: reading ICMP failed: %s", exc.strerror)
                return
            msg = parse_too_big(pkt, sock.family, self.proto, self.port)
            if msg is not None:
                self.too_big(msg)

    def stop(self) -> None:
        """Stop reading and polling; close the sockets."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for sock in self._socks:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(sock.fileno())
            sock.close()
        self._socks = []
        self._loop = None

    def counters(self) -> dict[str, int]:
        """path_mtu_changes, underlay_too_big."""
        return {"path_mtu_changes": self.changes, "underlay_too_big": self.icmp_seen}
