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
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Sequence

from datapath.config import Config
from datapath.counters import Snapshot
from datapath.errors import SetupError
from datapath.ether import format_mac
from datapath.fdb import FdbFull
from datapath.forwarder import Forwarder, fast_path_available, make_forwarder
from datapath.io import underlay
from datapath.io.tap import Tap

log = logging.getLogger("ovl-dp")

AGEING_SWEEP_INTERVAL = 1.0
ERROR_LOG_INTERVAL = 10.0


class Engine:
    """Owns the TAP, the tunnel sockets and the forwarder; runs them on an asyncio loop."""

    def __init__(self, cfg: Config) -> None:
        if not cfg.is_resolved() or cfg.tap.mac is None or cfg.tap.name is None:
            raise ValueError("the engine needs a resolved configuration (control.config.resolve)")
        self.cfg = cfg
        encap = cfg.encap
        fast = cfg.offload.fast_path and fast_path_available()
        # Check the configuration before anything is opened (the C side may refuse it).
        _forwarder(cfg, fast)
        # Sockets first: a port in use should fail before a TAP appears on the bridge.
        self.recv_sock = encap.open_recv_socket(cfg.bind)
        try:
            self.send_sock = underlay.open_send_socket()
        except Exception:
            self.recv_sock.close()
            raise
        try:
            # The TAP's flags follow the forwarder: only the C path handles a virtio header.
            self.tap = Tap(cfg.tap.name, cfg.tap.mac, cfg.tap_mtu, offloads=fast and cfg.offload.tap)
        except Exception:
            self.recv_sock.close()
            self.send_sock.close()
            raise
        # Underlay offloads (UDP encapsulations, C path): UDP_GRO on the receiving socket
        # (where the kernel has it); UDP_SEGMENT sends through a pool of UDP sockets (opt-in).
        self.gso_socks: list[socket.socket] = []
        udp_offloads = fast and encap.udp
        try:
            self.udp_gro = udp_offloads and cfg.offload.udp_gro and underlay.enable_udp_gro(self.recv_sock)
            if udp_offloads and cfg.offload.udp_gso:
                self.gso_socks = underlay.open_gso_sockets(cfg.bind, cfg.tunnel.ttl)
            self.forwarder = _forwarder(
                cfg, fast, tap_vnet=self.tap.vnet_hdr_len, udp_gro=self.udp_gro, gso_socks=self.gso_socks
            )
        except Exception:
            self._close_io()
            raise
        self.fast = fast
        log.info("tap %s: %s", self.tap.name, self.tap.describe())
        log.info("underlay offloads: %s", self.describe_underlay())
        self.io_errors = 0
        self._last_error_log = -ERROR_LOG_INTERVAL
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    def describe_underlay(self) -> str:
        """UDP_GRO on receive, UDP_SEGMENT on send (UDP encapsulations only)."""
        if not self.cfg.encap.udp or not self.fast:
            return "none (raw sockets, sendmmsg/recvmmsg)" if self.fast else "none"
        gso = f"udp_segment via {len(self.gso_socks)} UDP sockets" if self.gso_socks else "no udp_segment"
        if self.cfg.offload.udp_gso and not self.gso_socks:
            gso += " (refused by the kernel)"
        return f"{'udp_gro' if self.udp_gro else 'no udp_gro'}, {gso}"

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Register the fds with loop; packets flow from here on."""
        self._loop = loop
        loop.add_reader(self.tap.fileno(), self._on_tap)
        loop.add_reader(self.recv_sock.fileno(), self._on_tunnel)
        self._sweeper = loop.call_later(AGEING_SWEEP_INTERVAL, self._sweep)

    def _on_tap(self) -> None:
        try:
            self.forwarder.from_tap(self.tap.fileno(), self.send_sock)
        except OSError as exc:
            self._io_error("reading the TAP", exc)

    def _on_tunnel(self) -> None:
        try:
            self.forwarder.from_tunnel(self.recv_sock, self.tap.fileno())
        except OSError as exc:
            self._io_error("receiving from the underlay", exc)

    def _io_error(self, what: str, exc: OSError) -> None:
        # Keep running (the next readiness may succeed), but do not flood the log.
        now = time.monotonic()
        self.io_errors += 1
        if now - self._last_error_log >= ERROR_LOG_INTERVAL:
            log.warning("error %s: %s (%d so far)", what, exc.strerror or exc, self.io_errors)
            self._last_error_log = now

    def _sweep(self) -> None:
        self.forwarder.fdb.expire()
        assert self._loop is not None
        self._sweeper = self._loop.call_later(AGEING_SWEEP_INTERVAL, self._sweep)

    def close(self) -> None:
        """Unregister, close the sockets and the TAP (which removes it from the bridge)."""
        if self._loop is not None:
            self._loop.remove_reader(self.tap.fileno())
            self._loop.remove_reader(self.recv_sock.fileno())
            if self._sweeper is not None:
                self._sweeper.cancel()
            self._loop = None
        self._close_io()

    def _close_io(self) -> None:
        self.recv_sock.close()
        self.send_sock.close()
        for sock in self.gso_socks:
            sock.close()
        self.tap.close()

    def snapshot(self) -> Snapshot:
        """All counters."""
        return self.forwarder.snapshot()

    def fdb_table(self) -> list[dict[str, object]]:
        """The MAC table with remote addresses, sorted by VLAN (0 = untagged) and MAC."""
        remotes = self.cfg.remotes
        rows = sorted(self.forwarder.fdb.entries(), key=lambda e: (e.vlan, e.mac))
        return [
            {
                "vlan": e.vlan,
                "mac": format_mac(e.mac),
                "remote": remotes[e.remote].addr,
                "static": e.static,
                "age": round(e.age, 1),
            }
            for e in rows
        ]


def _forwarder(
    cfg: Config, fast: bool, tap_vnet: int = 0, udp_gro: bool = False, gso_socks: Sequence[socket.socket] = ()
) -> Forwarder:
    """make_forwarder, with a full table of static entries reported as a setup problem."""
    try:
        return make_forwarder(cfg, fast, tap_vnet=tap_vnet, udp_gro=udp_gro, gso_socks=gso_socks)
    except FdbFull as exc:
        raise SetupError(f"the static FDB entries do not fit the FDB ({exc}): raise the FDB size") from None
