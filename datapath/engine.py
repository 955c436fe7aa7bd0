"""The forwarding loop: where a reader starts to follow the packet path.

    TAP readable    -> forwarder.from_tap(tap, send socket)
                       (read a batch, FDB lookup, flood or unicast, encapsulate, send)
    socket readable -> forwarder.from_tunnel(recv socket, tap)
                       (receive a batch, check source and header, learn, decapsulate, write to TAP)
    every second    -> fdb.expire()

The forwarder (:mod:`datapath.forwarder`) is the C fast path
(:mod:`datapath.fast`) or the pure-Python reference (:mod:`datapath.pypath`);
both do one batch per call. The engine owns the TAP (:mod:`datapath.io.tap`)
and the sockets (:mod:`datapath.io.underlay`, the receiving one chosen by the
encapsulation) and registers their fds with the asyncio (uvloop) loop; the
control plane starts and stops it and reads :meth:`Engine.snapshot` and
:meth:`Engine.fdb_table`.

At run time the control plane changes the remotes (:meth:`Engine.add_remote`,
:meth:`Engine.remove_remote`; the current set is :meth:`Engine.remotes`, not
``cfg.remotes``, which is the set the engine started with) and the FDB
(:meth:`Engine.fdb_add`, :meth:`Engine.fdb_del`, :meth:`Engine.fdb_flush`,
:meth:`Engine.set_fdb_limits`). These run on the loop's thread between two
batches, so no frame to another remote is lost; the set may become empty (floods
then go nowhere and tunnel packets are dropped as ``rx_not_remote``).

What the host changes under it, the control plane follows with
:meth:`Engine.set_remote_local` (the underlay's address moved), :meth:`Engine.set_tap_mtu`
(the underlay MTU moved) and :meth:`Engine.replace_tap` (the TAP was deleted: a read
that says so unregisters the dead fd and calls ``on_tap_lost`` once).

A takeover (``ovl-dp run --takeover``, control/takeover.py) builds an engine on
the fds of a running one (:class:`Inherited`: the TAP and the sockets, checked
against the configuration before use) instead of opening its own, and loads the
other engine's FDB with its ages (:meth:`Engine.fdb_export`,
:meth:`Engine.fdb_import`); the old engine stops reading at once
(:meth:`Engine.stop_reading`) and closes its copies of the fds, which leaves the
TAP in place as long as the new process holds it.

With the C path the batches run by default in a thread of their own
(:mod:`datapath.dpthread`, ``offload.dp_thread``): the loop's thread keeps the control
plane, and every call above parks the data-path thread between two batches while it
reads or changes the context (:meth:`datapath.fast.FastForwarder.paused`); a read
error comes back to the loop through ``call_soon_threadsafe``, so the handling is the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from datapath import ecn
from datapath.config import MAP_VLAN_MAX, MAX_REMOTES, MIN_MTU, Config, ConfigError, FdbConfig, Remote, check_address
from datapath.counters import REMOTE_FIELDS, Snapshot
from datapath.dpthread import LOOP, TAP, DataPathThread
from datapath.errors import SetupError
from datapath.ether import ETH_ALEN, format_mac
from datapath.fast import FastForwarder
from datapath.fdb import FdbFull, check_vlan
from datapath.forwarder import fast_path_available, make_forwarder
from datapath.io import underlay
from datapath.io.inject import InjectRefused, InjectTap, open_inject_tap
from datapath.io.tap import Tap
from datapath.txring import TxRings

log = logging.getLogger("ovl-dp")

AGEING_SWEEP_INTERVAL = 1.0
ERROR_LOG_INTERVAL = 10.0
# A read of the TAP failing with one of these: the device is gone (deleted under us), not a passing error.
TAP_GONE_ERRNOS = frozenset({errno.EBADFD, errno.ENODEV, errno.EIO, errno.ENXIO})


@dataclass
class Inherited:
    """The fds of a running engine handed to a new one (a takeover), with what the old one says of them.

    The new engine checks every claim against the kernel before it uses an fd, and owns (closes)
    all of them from the moment it is given them, also when a check fails.
    """

    tap_fd: int
    vnet_hdr_len: int  # the TAP's virtio header (0: plain TAP)
    tap_offloads: int  # TUN_F_* set on it
    recv_fd: int
    send_fd: int
    gso_fds: list[int] = field(default_factory=list)
    udp_gro: bool = False  # UDP_GRO is on on the receiving socket
    fast: bool = True  # the old engine ran the C path
    recv2_fd: int = -1  # the IPv6 receiving socket when IPv4 is there too (recv_fd the IPv4 one); -1: none
    send6_fd: int = -1  # the raw IPv6 send socket; -1: none

    def fds(self) -> list[int]:
        """Every fd, once."""
        extra = [fd for fd in (self.recv2_fd, self.send6_fd) if fd >= 0]
        return [self.tap_fd, self.recv_fd, self.send_fd, *self.gso_fds, *extra]


class Engine:
    """Owns the TAP, the tunnel sockets and the forwarder; runs them on an asyncio loop."""

    def __init__(
        self, cfg: Config, clock: Callable[[], float] = time.monotonic, inherited: Inherited | None = None
    ) -> None:
        """cfg: the resolved start configuration; clock: the forwarder's (FDB ages, last receive times);
        inherited: the fds of a running engine to use instead of opening new ones (a takeover)."""
        if not cfg.is_resolved() or cfg.tap.mac is None or cfg.tap.name is None:
            if inherited is not None:
                _close_fds(inherited.fds())
            raise ValueError("the engine needs a resolved configuration (control.config.resolve)")
        self.cfg = cfg
        self._clock = clock
        fast = cfg.offload.fast_path and fast_path_available()
        self._remote_index: dict[str, tuple[int, Remote]] | None = None  # see _index
        self._remote_order: tuple[Remote, ...] | None = None
        self.gso_socks: list[socket.socket] = []
        if inherited is not None:
            self._adopt_io(cfg, fast, inherited)
        else:
            self._open_io(cfg, fast)
        try:
            self.forwarder = make_forwarder(
                cfg, fast, clock, tap_vnet=self.tap.vnet_hdr_len, udp_gro=self.udp_gro, gso_socks=self.gso_socks,
                rx_super=fast and cfg.offload.rx_super,
            )  # fmt: skip
        except Exception:
            self._close_io()
            raise
        self.forwarder.set_send6(self.send6_sock)
        self.fast = fast
        self.inherited = inherited is not None
        # VXLAN TX through an injection TAP: opened here, used once the control plane set the host up
        # (enable_inject); inject_note says why not when it is not.
        self.inject_tap: InjectTap | None = None
        self.inject_note = ""
        self._injecting = False
        self._inject_set = False  # enable_inject was called: the fd is read (drained) while the engine runs
        self.inject6_note = ""  # issue 11, inject6: why IPv6 remotes are not injected (empty: they are, or none)
        self._inject6 = False
        self._open_inject()
        # AF_PACKET TX rings (C path, offload.tx_ring auto): filled by the control plane's next hops.
        fwd = self.forwarder
        use_rings = cfg.offload.tx_ring == "auto" and isinstance(fwd, FastForwarder)
        self.tx_rings: TxRings | None = TxRings(fwd) if use_rings and isinstance(fwd, FastForwarder) else None
        log.info("tap %s: %s", self.tap.name, self.tap.describe())
        log.info("underlay offloads: %s", self.describe_underlay())
        if getattr(self.forwarder, "rx_super", False):
            how = "as one TSO write" if self.forwarder.coalescing() else "cut into segments here"  # type: ignore[attr-defined]
            log.info("super-packets received whole (64 KiB receive slots), to the TAP %s", how)
        self.io_errors = 0
        self.tap_recreated = 0  # times replace_tap() opened the TAP again
        # Called (once per TAP) when a read says the device is gone; its reader is unregistered first.
        self.on_tap_lost: Callable[[OSError], None] | None = None
        self._tap_lost = False
        self._last_error_log = -ERROR_LOG_INTERVAL
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._thread: DataPathThread | None = None  # the C data-path thread while it runs

    @property
    def threaded(self) -> bool:
        """The data path would run in a thread of its own: C path, offload.dp_thread, and the
        clock the C loop reads (CLOCK_MONOTONIC = time.monotonic; another clock keeps the loop)."""
        return self.fast and self.cfg.offload.dp_thread and self._clock is time.monotonic

    def _open_io(self, cfg: Config, fast: bool) -> None:
        """Open the sockets and create the TAP (recv_sock, send_sock, tap, gso_socks, udp_gro)."""
        encap = cfg.encap
        assert cfg.tap.name is not None and cfg.tap.mac is not None
        # Check the configuration before anything is opened (the C side may refuse it).
        make_forwarder(cfg, fast, self._clock)
        # Sockets first: a port in use should fail before a TAP appears on the bridge. Per underlay
        # family in use a receiving socket (the first is recv_sock, an IPv6 one beside an IPv4 one
        # recv_sock2); the IPv4 raw send socket always (it receives nothing), the IPv6 one for IPv6.
        fams = sorted(cfg.families)
        self.recv_sock2: socket.socket | None = None
        self.send6_sock: socket.socket | None = None
        self.recv_sock = encap.open_recv_socket(cfg.bind_for(fams[0]))
        try:
            underlay.enable_recv_tos(self.recv_sock)  # ECN: the outer TOS of every packet (datapath/ecn.py)
            if len(fams) > 1:
                self.recv_sock2 = encap.open_recv_socket(cfg.bind_for(fams[1]))
                underlay.enable_recv_tos(self.recv_sock2)
            self.send_sock = underlay.open_send_socket()
            if 6 in fams:
                self.send6_sock = underlay.open_send_socket(socket.AF_INET6)
        except Exception:
            for sock in (self.recv_sock, self.recv_sock2, getattr(self, "send_sock", None)):
                if sock is not None:
                    sock.close()
            raise
        try:
            # The TAP's flags follow the forwarder: only the C path handles a virtio header.
            self.tap = Tap(
                cfg.tap.name, cfg.tap.mac, cfg.tap_mtu, offloads=fast and cfg.offload.tap, qdisc=cfg.tap.qdisc
            )
        except Exception:
            for sock in (self.recv_sock, self.recv_sock2, self.send_sock, self.send6_sock):
                if sock is not None:
                    sock.close()
            raise
        # Underlay offloads (UDP encapsulations, C path): UDP_GRO on the receiving socket
        # (where the kernel has it); UDP_SEGMENT sends through a pool of UDP sockets (opt-in).
        udp_offloads = fast and encap.udp
        try:
            self.udp_gro = udp_offloads and cfg.offload.udp_gro and underlay.enable_udp_gro(self.recv_sock)
            if self.recv_sock2 is not None and self.udp_gro and not underlay.enable_udp_gro(self.recv_sock2):
                self.udp_gro = False  # (one setting for the context: both sockets, or neither)
                with contextlib.suppress(OSError):
                    self.recv_sock.setsockopt(underlay.SOL_UDP, underlay.UDP_GRO, 0)
            if udp_offloads and cfg.offload.udp_gso and 4 in cfg.families:  # IPv4 UDP sockets only
                ttl = encap.ttl if isinstance(encap.ttl, int) else ecn.DEFAULT_TTL  # each send's TTL is a cmsg
                self.gso_socks = underlay.open_gso_sockets(cfg.bind, ttl, df=encap.df != "unset")
        except Exception:
            self._close_io()
            raise

    def _adopt_io(self, cfg: Config, fast: bool, inh: Inherited) -> None:
        """Take over a running engine's fds, each checked against cfg first (SetupError says what differs)."""
        assert cfg.tap.name is not None and cfg.tap.mac is not None
        fds = inh.fds()
        encap = cfg.encap
        made: list[socket.socket] = []  # detached on failure, so that each fd is closed once
        try:
            if fast != inh.fast:
                ours = "the C fast path" if fast else "the pure-Python path (C module not built, or --no-fast-path)"
                theirs = "C fast" if inh.fast else "pure-Python"
                raise SetupError(f"the running daemon runs the {theirs} path, this one would run {ours}")
            make_forwarder(cfg, fast, self._clock)
            udp_offloads = fast and encap.udp
            if inh.udp_gro and not (udp_offloads and cfg.offload.udp_gro):
                raise SetupError("the running daemon's receiving socket has UDP_GRO on; this configuration has not")
            if bool(inh.gso_fds) != (udp_offloads and cfg.offload.udp_gso):
                raise SetupError("offload.udp_gso differs from the running daemon's")
            recv = underlay.adopt_socket(inh.recv_fd, made)
            send = underlay.adopt_socket(inh.send_fd, made)
            gso = [underlay.adopt_socket(fd, made) for fd in inh.gso_fds]
            fams = sorted(cfg.families)
            if (inh.recv2_fd >= 0) != (len(fams) > 1) or (inh.send6_fd >= 0) != (6 in fams):
                raise SetupError("the running daemon's underlay families (IPv4 / IPv6 sockets) differ from this one's")
            recv2 = underlay.adopt_socket(inh.recv2_fd, made) if inh.recv2_fd >= 0 else None
            send6 = underlay.adopt_socket(inh.send6_fd, made) if inh.send6_fd >= 0 else None
            for sock, fam in ((recv, fams[0]), (recv2, fams[-1])):
                if sock is None:
                    continue
                af = socket.AF_INET6 if fam == 6 else socket.AF_INET
                bound = cfg.bind_for(fam)
                if encap.udp:
                    underlay.check_socket(
                        sock, "receiving", socket.SOCK_DGRAM, socket.IPPROTO_UDP, (bound, encap.port), af
                    )
                else:
                    underlay.check_socket(sock, "receiving", socket.SOCK_RAW, encap.ip_proto, (bound, None), af)
            underlay.check_socket(send, "sending", socket.SOCK_RAW, socket.IPPROTO_RAW, None)
            if send6 is not None:
                underlay.check_socket(send6, "IPv6 sending", socket.SOCK_RAW, socket.IPPROTO_RAW, None, socket.AF_INET6)
            for sock in gso:
                underlay.check_socket(sock, "UDP GSO", socket.SOCK_DGRAM, socket.IPPROTO_UDP, (cfg.bind, None))
            for sock in (recv, recv2):  # ECN (an older daemon's sockets may not have it)
                if sock is not None:
                    underlay.enable_recv_tos(sock)
            for sock in gso:
                underlay.set_gso_df(sock, encap.df != "unset")  # as this configuration says (--df)
            if inh.udp_gro and underlay.udp_gro_on(recv) is False:
                raise SetupError("the running daemon says UDP_GRO is on on its receiving socket; the kernel says not")
            tap = Tap.adopt(inh.tap_fd, cfg.tap.name, cfg.tap.mac, cfg.tap_mtu, inh.vnet_hdr_len, inh.tap_offloads)
        except BaseException:
            for sock in made:
                sock.detach()
            _close_fds(fds)
            raise
        for sock in (recv, send, *gso, *(x for x in (recv2, send6) if x is not None)):
            sock.setblocking(False)
        self.recv_sock, self.send_sock, self.gso_socks, self.tap = recv, send, gso, tap
        self.recv_sock2, self.send6_sock = recv2, send6
        self.udp_gro = inh.udp_gro

    def inherit(self) -> Inherited:
        """This engine's fds and what they are, for a takeover (the fds stay this engine's)."""
        return Inherited(
            tap_fd=self.tap.fileno(),
            vnet_hdr_len=self.tap.vnet_hdr_len,
            tap_offloads=self.tap.offloads,
            recv_fd=self.recv_sock.fileno(),
            send_fd=self.send_sock.fileno(),
            gso_fds=[s.fileno() for s in self.gso_socks],
            udp_gro=bool(self.udp_gro),
            fast=self.fast,
            recv2_fd=self.recv_sock2.fileno() if self.recv_sock2 is not None else -1,
            send6_fd=self.send6_sock.fileno() if self.send6_sock is not None else -1,
        )

    def _open_inject(self) -> None:
        cfg = self.cfg
        if cfg.offload.inject == "off":
            self.inject_note = "off (--inject off)"
        elif not self.fast or cfg.encap.name != "vxlan" or not self.tap.vnet_hdr_len:
            self.inject_note = "not used (VXLAN with the C path and TAP offloads only)"
        elif self.gso_socks:
            self.inject_note = "not used with --udp-gso"
        else:
            # Over IPv6 the outer UDP checksum is due (unless --udp6-zero-csum-tx): the kernel completes
            # it per segment (TUN_F_UDP_TUNNEL_GSO_CSUM). Needed for IPv6 only, it is asked again without
            # when refused: the IPv4 remotes are injected all the same, the IPv6 ones segmented here.
            want6 = 6 in cfg.families and not cfg.encap.udp6_zero_csum_tx
            try:
                self.inject_tap = open_inject_tap(self.tap.name, cfg.encap.udp_csum or want6)
            except InjectRefused as exc:
                self.inject_note = f"refused by the kernel: {exc}"
                if want6 and not cfg.encap.udp_csum and 4 in cfg.families:
                    try:
                        self.inject_tap = open_inject_tap(self.tap.name, False)
                        self.inject6_note = f"no outer UDP checksum offload ({exc})"
                    except InjectRefused as again:
                        self.inject_note = f"refused by the kernel: {again}"

    def enable_inject(self) -> None:
        """Send TCP super-frames through the injection TAP from now on (the host is set up for it)."""
        tap = self.inject_tap
        if tap is None:
            return
        self.forwarder.set_inject(tap.fileno(), tap.mac, tap.udp_tunnel_csum)  # type: ignore[attr-defined]
        self._injecting = True
        self._inject_set = True
        if self._loop is not None:
            self._loop.add_reader(tap.fileno(), self._on_inject)

    def enable_inject6(self, why_not: str = "") -> None:
        """Issue 11: super-frames to IPv6 remotes through the injection TAP too (after enable_inject; the
        host forwards IPv6 from it); why_not: the host could not, and why (they stay segmented in C)."""
        if self.inject_tap is None or 6 not in self.families:
            return
        if why_not or self.inject6_note:
            self.inject6_note = self.inject6_note or why_not
            return
        self.forwarder.set_inject6(True)  # type: ignore[attr-defined]
        self._inject6 = True

    def drop_inject(self, why: str) -> None:
        """Close the injection TAP (before enable_inject): the super-frames are segmented in C."""
        if self.inject_tap is not None:
            self.inject_tap.close()
        self.inject_tap = None
        self.inject_note = why

    def injecting(self) -> bool:
        """True while TCP super-frames leave whole through the injection TAP."""
        return self._inject_set and bool(self.forwarder.injecting())  # type: ignore[attr-defined]

    def describe_tx(self) -> str:
        """How TCP super-frames from the TAP leave: through the injection TAP, or segmented here, and why."""
        if self._inject_set and self.inject_tap is not None:
            if not self.forwarder.injecting():  # type: ignore[attr-defined]
                return f"segmented in C (the injection TAP {self.inject_tap.name} refused a write: {self.inject_note})"
            six = ""
            if 6 in self.families:  # issue 11, inject6
                six = "; IPv6 remotes too" if self._inject6 else f"; IPv6 remotes segmented in C: {self.inject6_note}"
            return f"kernel segmentation through {self.inject_tap.describe()}{six}"
        if not self.fast or not self.tap.vnet_hdr_len:
            return "one frame at a time (no TAP offloads)"
        return f"segmented in C; injection TAP {self.inject_note or 'not set up'}"

    def _on_inject(self) -> None:
        try:
            self.forwarder.inject_drain()  # type: ignore[attr-defined]
        except OSError as exc:
            if exc.errno not in TAP_GONE_ERRNOS or self.inject_tap is None:
                self._io_error("reading the injection TAP", exc)
                return
            # Deleted under us: its fd stays readable (EPOLLERR) for ever. Stop reading it; the
            # next write fails too and turns the injection off (_check_inject says so).
            if self._loop is not None:
                self._loop.remove_reader(self.inject_tap.fileno())
            log.warning(
                "the injection TAP %s is gone (%s): no longer read; TCP super-frames are segmented in C "
                "from the next write on",
                self.inject_tap.name,
                exc.strerror or exc,
            )

    def _check_inject(self) -> None:
        # The kernel refused a write: the C side went back to segmenting; say so once.
        if self._injecting and not self.forwarder.injecting():  # type: ignore[attr-defined]
            self._injecting = False
            err = self.forwarder.inject_errno()  # type: ignore[attr-defined]
            self.inject_note = f"{errno.errorcode.get(err, err)} ({os.strerror(err)})"
            log.warning(
                "the injection TAP %s refused a write: %s; TCP super-frames are segmented in C from now on",
                self.inject_tap.name if self.inject_tap else "?",
                self.inject_note,
            )

    def describe_underlay(self) -> str:
        """UDP_GRO on receive, UDP_SEGMENT on send (UDP encapsulations only)."""
        if not self.cfg.encap.udp or not self.fast:
            return "none (raw sockets, sendmmsg/recvmmsg)" if self.fast else "none"
        gso = f"udp_segment via {len(self.gso_socks)} UDP sockets" if self.gso_socks else "no udp_segment"
        if self.cfg.offload.udp_gso and not self.gso_socks:
            gso += " (refused by the kernel)"
        return f"{'udp_gro' if self.udp_gro else 'no udp_gro'}, {gso}"

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the data-path thread, or register the fds with loop; packets flow from here on."""
        self._loop = loop
        if self.threaded and self._start_thread():
            th = self._thread
            pin = f", pinned to CPU {th.cpu}" if th is not None and th.cpu is not None and not th.affinity_error else ""
            log.info("data path: a C thread of its own%s", pin)
        else:
            loop.add_reader(self.tap.fileno(), self._on_tap)
            self._loop_reads_tunnel()
        if self._inject_set and self.inject_tap is not None:
            loop.add_reader(self.inject_tap.fileno(), self._on_inject)
        self._sweeper = loop.call_later(AGEING_SWEEP_INTERVAL, self._sweep)

    def _start_thread(self) -> bool:
        """The C loop in a thread over the current TAP (not read if lost); False if it cannot start."""
        assert isinstance(self.forwarder, FastForwarder)
        tap_fd = -1 if self._tap_lost else self.tap.fileno()
        th = DataPathThread(
            self.forwarder,
            tap_fd,
            self.recv_sock.fileno(),
            self.send_sock.fileno(),
            lambda kind, exc: self._from_thread(th, kind, exc),
            tap_gone=TAP_GONE_ERRNOS,
            cpu=self.cfg.offload.cpu,
            recv2_fd=self.recv_sock2.fileno() if self.recv_sock2 is not None else -1,
        )
        try:
            th.start()
        except (OSError, RuntimeError) as exc:
            log.warning("data-path thread not started (%s): the batches run on the event loop", exc)
            return False
        self._thread = th
        if th.affinity_error is not None:
            log.warning("data-path thread not pinned to CPU %s: %s", th.cpu, th.affinity_error.strerror)
        return True

    def _stop_thread(self) -> None:
        if self._thread is not None:
            self._thread.stop()
            self._thread = None

    def _from_thread(self, th: DataPathThread, kind: str, exc: OSError) -> None:
        # In the data-path thread: hand the error to the loop.
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
                loop.call_soon_threadsafe(self._thread_error, th, kind, exc)

    def _thread_error(self, th: DataPathThread, kind: str, exc: OSError) -> None:
        if th is not self._thread:  # from a thread already stopped (replace_tap, stop_reading)
            return
        if kind == TAP:
            if exc.errno in TAP_GONE_ERRNOS and self.on_tap_lost is not None:
                self._lose_tap(exc)
            else:
                self._io_error("reading the TAP", exc)
        elif kind == LOOP:  # poll() failed: the thread ended; go on from the event loop
            log.error("data-path thread failed (%s): the batches run on the event loop from now on", exc)
            self._stop_thread()
            if self._loop is not None:
                if not self._tap_lost:
                    self._loop.add_reader(self.tap.fileno(), self._on_tap)
                self._loop_reads_tunnel()
        else:
            self._io_error("receiving from the underlay", exc)

    def _on_tap(self) -> None:
        try:
            self.forwarder.from_tap(self.tap.fileno(), self.send_sock)
            if self._injecting:
                self._check_inject()
        except OSError as exc:
            if exc.errno in TAP_GONE_ERRNOS and self.on_tap_lost is not None:
                self._lose_tap(exc)
            else:
                self._io_error("reading the TAP", exc)

    def _lose_tap(self, exc: OSError) -> None:
        # The fd stays readable (EPOLLERR) for ever: stop reading it, and tell the control plane once.
        self.io_errors += 1
        if self._loop is not None:
            self._loop.remove_reader(self.tap.fileno())
        if not self._tap_lost:
            self._tap_lost = True
            assert self.on_tap_lost is not None
            self.on_tap_lost(exc)

    def replace_tap(self) -> None:
        """Close the TAP and open it again: same name, MAC, MTU, virtio header and offloads.

        For a TAP whose device went away (deleted under the daemon). The new fd is registered
        with the loop if the engine runs; the FDB, remotes and counters stay. SetupError if it
        cannot be opened (the name taken by another kind of device, no /dev/net/tun), or if the
        kernel now refuses the virtio header or offloads the forwarder was built for; the
        engine then has no usable TAP and the daemon must end.
        """
        old = self.tap
        threaded = self._thread is not None
        self._stop_thread()  # joined: nothing reads or writes the old fd any more
        if self._loop is not None and old.fileno() >= 0:
            self._loop.remove_reader(old.fileno())
        old.close()
        new = Tap(old.name, old.mac, old.mtu, offloads=self.fast and self.cfg.offload.tap, qdisc=self.cfg.tap.qdisc)
        if (new.vnet_hdr_len, new.offloads) != (old.vnet_hdr_len, old.offloads):
            new.close()
            raise SetupError(
                f"TAP {old.name} re-opened without what the datapath was built for ({old.describe()}); "
                f"the kernel now gives: {new.describe()}"
            )
        self.tap = new
        self.tap_recreated += 1
        self._tap_lost = False
        if threaded:
            if self._start_thread():
                return
            self._loop_reads_tunnel()
        if self._loop is not None:
            self._loop.add_reader(new.fileno(), self._on_tap)

    def _loop_reads_tunnel(self) -> None:
        # The loop reads the receiving sockets (no thread, or the thread did not come back).
        if self._loop is not None:
            self._loop.add_reader(self.recv_sock.fileno(), self._on_tunnel)
            if self.recv_sock2 is not None:
                self._loop.add_reader(self.recv_sock2.fileno(), self._on_tunnel2)

    def _on_tunnel(self) -> None:
        try:
            self.forwarder.from_tunnel(self.recv_sock, self.tap.fileno())
        except OSError as exc:
            self._io_error("receiving from the underlay", exc)

    def _on_tunnel2(self) -> None:
        assert self.recv_sock2 is not None
        try:
            self.forwarder.from_tunnel(self.recv_sock2, self.tap.fileno())
        except OSError as exc:
            self._io_error("receiving from the underlay (IPv6)", exc)

    def _io_error(self, what: str, exc: OSError) -> None:
        # Keep running (the next readiness may succeed), but do not flood the log.
        now = time.monotonic()
        self.io_errors += 1
        if now - self._last_error_log >= ERROR_LOG_INTERVAL:
            log.warning("error %s: %s (%d so far)", what, exc.strerror or exc, self.io_errors)
            self._last_error_log = now

    def _sweep(self) -> None:
        self.forwarder.fdb.expire()
        if self._injecting:  # (with the data-path thread, _on_tap does not run on the loop)
            self._check_inject()
        assert self._loop is not None
        self._sweeper = self._loop.call_later(AGEING_SWEEP_INTERVAL, self._sweep)

    def stop_reading(self) -> None:
        """Unregister the fds and the ageing timer: nothing is read from here on (idempotent).

        Every frame already read has been forwarded (a batch runs to its end before the loop gets
        here, or before the data-path thread stops: it is joined); what is still queued in the
        kernel is left to whoever else reads the fds.
        """
        self._stop_thread()
        if self._loop is not None:
            if self.tap.fileno() >= 0:  # -1: closed by a replace_tap that failed
                self._loop.remove_reader(self.tap.fileno())
            self._loop.remove_reader(self.recv_sock.fileno())
            if self.recv_sock2 is not None:
                self._loop.remove_reader(self.recv_sock2.fileno())
            if self._inject_set and self.inject_tap is not None:
                self._loop.remove_reader(self.inject_tap.fileno())
            if self._sweeper is not None:
                self._sweeper.cancel()
            self._loop = None

    def close(self) -> None:
        """Unregister, close the sockets and the TAP (which removes it from the bridge, unless another
        process still holds an fd of it, as after a takeover)."""
        self.stop_reading()
        self._close_io()

    def _close_io(self) -> None:
        rings: TxRings | None = getattr(self, "tx_rings", None)  # (not there when the forwarder failed)
        if rings is not None:
            rings.close()
        self.recv_sock.close()
        self.send_sock.close()
        for extra in (getattr(self, "recv_sock2", None), getattr(self, "send6_sock", None)):
            if extra is not None:
                extra.close()
        for sock in self.gso_socks:
            sock.close()
        self.tap.close()
        if getattr(self, "inject_tap", None) is not None:
            self.inject_tap.close()  # type: ignore[union-attr]

    def snapshot(self) -> Snapshot:
        """All counters."""
        return self.forwarder.snapshot()

    def fdb_table(self) -> list[dict[str, object]]:
        """The MAC table with remote addresses, sorted by VLAN (0 = untagged) and MAC."""
        addr = {slot: r.addr for slot, r, _ in self.forwarder.remotes()}
        rows = sorted(self.forwarder.fdb.entries(), key=lambda e: (e.vlan, e.mac))
        return [
            {
                "vlan": e.vlan,
                "mac": format_mac(e.mac),
                "remote": addr[e.remote],
                "static": e.static,
                "age": round(e.age, 1),
            }
            for e in rows
            if e.remote in addr  # always, as removing a remote purges its entries
        ]

    def fdb_export(self) -> list[tuple[bytes, int, str, bool, float]]:
        """Every FDB entry as (MAC, VLAN, remote address, static, age in seconds, not rounded): a takeover's."""
        addr = {slot: r.addr for slot, r, _ in self.forwarder.remotes()}
        entries = self.forwarder.fdb.entries()
        return [(e.mac, e.vlan, addr[e.remote], e.static, e.age) for e in entries if e.remote in addr]

    def fdb_import(self, rows: Iterable[tuple[bytes, int, str, bool, float]]) -> dict[str, int]:
        """Load another engine's fdb_export rows: static entries as static, learned ones with their age.

        Returns counts: static, learned, left_out (a remote that is not one here, a bad row, past its
        age, a newer entry here), full (refused at the size cap).
        """
        with self.paused():  # one stop of the data-path thread for all rows, not one per row
            return self._fdb_import(rows)

    def _fdb_import(self, rows: Iterable[tuple[bytes, int, str, bool, float]]) -> dict[str, int]:
        slot = {r.addr: s for s, r, _ in self.forwarder.remotes()}
        counts = dict.fromkeys(("static", "learned", "left_out", "full"), 0)
        fdb = self.forwarder.fdb
        for mac, vlan, remote, static, age in rows:
            if remote not in slot or len(mac) != ETH_ALEN or not 0 <= vlan <= MAP_VLAN_MAX:
                counts["left_out"] += 1
                continue
            try:
                if static:
                    fdb.add_static(mac, slot[remote], vlan=vlan)
                    counts["static"] += 1
                elif fdb.restore(mac, slot[remote], vlan=vlan, age=age):
                    counts["learned"] += 1
                else:
                    counts["left_out"] += 1
            except FdbFull:
                counts["full"] += 1
        return counts

    # -- changes at run time (the control plane's calls) ---------------------------------

    def paused(self) -> contextlib.AbstractContextManager[None]:
        """``with engine.paused():`` -- no batch runs during the block, so several calls apply as one
        change (the data-path thread parked once; on the loop's path nothing runs between them anyway)."""
        if isinstance(self.forwarder, FastForwarder):
            return self.forwarder.paused()
        return contextlib.nullcontext()

    @property
    def families(self) -> frozenset[int]:
        """The underlay families this engine has receiving sockets for (4, 6)."""
        socks = (self.recv_sock, self.recv_sock2)
        return frozenset(6 if s.family == socket.AF_INET6 else 4 for s in socks if s is not None)

    def _index(self) -> dict[str, tuple[int, Remote]]:
        """address -> (slot, remote): the forwarder's remotes, read once (that read parks the data-path
        thread) and then kept by add_remote/remove_remote/set_remote_local, the only ways they change.
        Hundreds of etcd members joining at once made every lookup cost a park of the thread."""
        if self._remote_index is None:
            self._remote_index = {r.addr: (slot, r) for slot, r, _ in self.forwarder.remotes()}
            self._remote_order = None
        return self._remote_index

    def remotes(self) -> tuple[Remote, ...]:
        """The current remotes, in slot order."""
        if self._remote_order is None or self._remote_index is None:
            index = self._index()
            self._remote_order = tuple(r for _, r in sorted(index.values(), key=lambda sr: sr[0]))
        return self._remote_order

    def _slot(self, addr: str) -> int:
        addr = check_address("remotes", addr)
        found = self._index().get(addr)
        if found is None:
            raise KeyError(f"{addr} is not a remote")
        return found[0]

    def add_remote(self, remote: Remote) -> None:
        """Add a resolved remote (addr and local set): flooded to from the next batch on.

        ConfigError for an unresolved remote, one already there, or a full table
        (MAX_REMOTES). Whether the address is this host's own is for the control plane to check.
        """
        if remote.local is None:
            raise ConfigError(f"{{tunnel.local}} towards remote {remote.addr} is not resolved yet")
        if remote.family not in self.families:
            raise ConfigError(
                f"{{remotes}} {remote.addr}: this daemon has no IPv{remote.family} underlay sockets (it started "
                f"with IPv{'/IPv'.join(map(str, sorted(self.families)))} remotes only); restart it with one"
            )
        current = self.remotes()
        if any(r.addr == remote.addr for r in current):
            raise ConfigError(f"{{remotes}} {remote.addr} is already a remote")
        if len(current) >= MAX_REMOTES:
            raise ConfigError(f"{{remotes}}: at most {MAX_REMOTES} remotes are supported")
        slot = self.forwarder.add_remote(remote)
        self._index()[remote.addr] = (slot, remote)
        self._remote_order = None
        log.debug("remote %s added (from %s, slot %d)", remote.addr, remote.local, slot)  # (the caller says it)

    def remove_remote(self, addr: str) -> int:
        """Remove a remote: no longer flooded to, its packets dropped, its FDB entries (learned and
        static) purged; returns how many entries went. KeyError for an address that is not a remote."""
        slot = self._slot(addr)
        purged = self.forwarder.remove_remote(slot)
        self._index().pop(check_address("remotes", addr), None)
        self._remote_order = None
        if self.tx_rings is not None:  # C forgot its next hop with the slot; the ring bookkeeping follows
            self.tx_rings.clear(slot)
        log.debug("remote %s removed (%d FDB entries purged)", addr, purged)
        return purged

    def set_remote_local(self, addr: str, local: str) -> None:
        """Send to remote addr from local from now on (the underlay's address or route changed); its
        FDB entries, counters and last receive stay. KeyError for an address that is not a remote."""
        slot = self._slot(addr)
        self.forwarder.set_remote_local(slot, check_address("tunnel.local", local))
        self._remote_index = None  # read again: the forwarder's Remote with its new local

    def set_remote_mtu(self, addr: str, mtu: int) -> int:
        """The path MTU towards remote addr (0: the underlay MTU again); returns the one it had.

        KeyError for an address that is not a remote, ValueError for an MTU out of 68..65535.
        """
        slot = self._slot(addr)
        old = self.forwarder.remote_mtu(slot)
        self.forwarder.set_remote_mtu(slot, mtu)
        return old

    def remote_mtu(self, addr: str) -> int:
        """The path MTU towards remote addr that the too-big check uses (KeyError: not a remote)."""
        return self.forwarder.remote_mtu(self._slot(addr))

    def set_nexthop(self, addr: str, ifindex: int, mtu: int, dst: bytes, src: bytes) -> bool:
        """Send to remote addr through the TX ring of device ifindex (MTU mtu), in frames to MAC dst from src.

        False if there is no ring for it (tx_ring off, the Python path, or the kernel refused the
        ring): it goes through the raw socket. KeyError for an address that is not a remote.
        """
        slot = self._slot(addr)
        return self.tx_rings is not None and self.tx_rings.set(slot, ifindex, mtu, dst, src)

    def clear_nexthop(self, addr: str) -> None:
        """Send to remote addr through the raw socket (its next hop is unknown); KeyError: not a remote."""
        slot = self._slot(addr)
        if self.tx_rings is not None:
            self.tx_rings.clear(slot)

    def ring_remotes(self) -> frozenset[str]:
        """The addresses of the remotes whose packets leave through a TX ring now."""
        if self.tx_rings is None or not self.tx_rings.via:
            return frozenset()
        via = self.tx_rings.via
        return frozenset(addr for addr, (slot, _) in self._index().items() if slot in via)

    def ring_counters(self) -> dict[str, int]:
        """The TX ring counters (datapath.fast.RING_FIELDS); {} without rings."""
        return self.tx_rings.fwd.ring_counters() if self.tx_rings is not None else {}

    def set_tap_mtu(self, mtu: int) -> None:
        """Give the TAP another MTU (the underlay's changed and the TAP's was derived from it).

        Not above the MTU the engine started with: the datapath's buffers are sized for that
        (ValueError); SetupError if the kernel refuses it.
        """
        if not MIN_MTU <= mtu <= self.cfg.tap_mtu:
            raise ValueError(f"TAP MTU {mtu} outside {MIN_MTU}..{self.cfg.tap_mtu} (the MTU it started with)")
        self.tap.set_mtu(mtu)
        set_rx_mtu = getattr(self.forwarder, "set_tap_mtu", None)
        if set_rx_mtu is not None:  # the C path cuts received super-packets for the TAP's MTU
            set_rx_mtu(mtu)

    def remote_rows(self) -> list[dict[str, object]]:
        """Per current remote, in slot order: remote, local, the per-remote counters, and
        last_rx_age (seconds since the last packet delivered from it, None if none yet)."""
        now = self._clock()
        counters = {str(row["remote"]): row for row in self.forwarder.snapshot().remotes}
        rows: list[dict[str, object]] = []
        for slot, r, last in self.forwarder.remotes():
            ctr = counters[r.addr]
            rows.append(
                {
                    "remote": r.addr,
                    "local": r.local,
                    **{f: ctr[f] for f in REMOTE_FIELDS},
                    "path_mtu": self.forwarder.remote_mtu(slot),
                    "last_rx_age": None if last is None else round(max(0.0, now - last), 3),
                }
            )
        return rows

    def fdb_add(self, mac: bytes, remote: str, vlan: int = 0) -> None:
        """A static entry: mac in vlan lives behind remote (replaces a learned entry).

        ValueError for a bad MAC or VLAN, KeyError for an address that is not a remote,
        FdbFull at the size cap.
        """
        if len(mac) != ETH_ALEN:
            raise ValueError(f"a MAC address is {ETH_ALEN} bytes, not {len(mac)}")
        if not 0 <= vlan <= MAP_VLAN_MAX:  # as fdb.static: 4095 is reserved by 802.1Q
            raise ValueError(f"a static entry's VLAN must be 0..{MAP_VLAN_MAX} (0 = untagged), not {vlan}")
        self.forwarder.fdb.add_static(bytes(mac), self._slot(remote), vlan=vlan)

    def fdb_del(self, mac: bytes, vlan: int = 0) -> bool:
        """Forget mac in vlan (static or learned); True if it was there."""
        if len(mac) != ETH_ALEN:
            raise ValueError(f"a MAC address is {ETH_ALEN} bytes, not {len(mac)}")
        return self.forwarder.fdb.remove(bytes(mac), vlan=check_vlan(vlan))

    def fdb_flush(self, remote: str | None = None) -> int:
        """Remove every FDB entry (learned and static), or those behind remote; returns how many.

        KeyError for an address that is not a remote.
        """
        return self.forwarder.fdb.flush(None if remote is None else self._slot(remote))

    def set_fdb_limits(self, max_entries: int, ageing: float) -> None:
        """The FDB's size cap and ageing at run time (ConfigError naming fdb.max_entries / fdb.ageing).

        A new ageing applies to the entries there; a cap below the current count keeps them
        all and refuses learning until the count is below it.
        """
        FdbConfig(max_entries=max_entries, ageing=ageing)  # the ranges of the configuration
        self.forwarder.fdb.set_limits(max_entries, float(ageing))


def _close_fds(fds: Iterable[int]) -> None:
    """Close each fd, those already closed (by a socket object that took it) included."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
