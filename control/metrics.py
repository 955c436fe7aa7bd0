"""Prometheus metrics and /healthz for `ovl-dp run --metrics [ADDR:]PORT`.

The collector reads the datapath when Prometheus scrapes, through a small
interface (:class:`MetricsSource`) that the daemon implements over the engine
and the bridge; nothing is copied per packet. The HTTP server runs in threads
of its own: a slow or hostile client can hold at most one of a few handler
threads for a bounded time, and never the packet loop. Reads of the datapath
are handed to the loop (:func:`on_loop`), so they never race a batch; a loop
that does not answer makes /metrics answer 503.

/healthz answers 200 while the loop's :class:`Heartbeat` is fresh and the TAP is
attached to its bridge, 503 with the reason otherwise (:meth:`MetricsSource.health`). A daemon
that forwards but has trouble with something it only needs to change (etcd, issue 12) is "degraded":
200 with the body ``degraded: <reason>`` (an optional ``degraded()`` of the source), so that a
liveness probe does not restart it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import io
import ipaddress
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from typing import IO, Any, Protocol, TypeVar

from prometheus_client import exposition
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from datapath.counters import Snapshot
from datapath.errors import SetupError

log = logging.getLogger("ovl-dp")

DEFAULT_ADDRESS = "127.0.0.1"
HEARTBEAT_INTERVAL = 1.0  # the loop beats this often
HEARTBEAT_STALE = 5.0  # /healthz says "loop stalled" when the last beat is older than this
LOOP_CALL_TIMEOUT = 2.0  # a scrape waits this long for the loop to hand over the counters
MAX_REQUEST_BYTES = 8192  # request line and headers together
MAX_CLIENTS = 8  # connections handled at once; more are closed unanswered
CLIENT_DEADLINE = 5.0  # seconds a connection may take from accept to the last byte of the answer
CONTENT_TYPE = getattr(exposition, "CONTENT_TYPE_PLAIN_0_0_4", exposition.CONTENT_TYPE_LATEST)

T = TypeVar("T")


# -- what the collector reads -------------------------------------------------------------


@dataclass(frozen=True)
class OffloadState:
    """Which offloads the running datapath uses (fixed once it runs)."""

    fast_path: bool  # the C fast path (False: the pure-Python reference)
    vnet_hdr: bool  # the TAP carries a virtio_net_hdr
    tun: frozenset[str]  # TUN_F_* offloads the kernel accepted: csum, tso4, tso6, tso_ecn
    udp_gro: bool  # UDP_GRO on the receiving socket
    udp_gso: bool  # UDP_SEGMENT sends through the GSO socket pool
    rx_coalesce: bool  # received TCP segments written to the TAP as super-frames


TUN_OFFLOADS = ("csum", "tso4", "tso6", "tso_ecn")
# The refusal reasons of control.ctl, exported at 0 before the first one happens.
CONTROL_REFUSALS = ("not privileged", "too many clients", "idle", "too long", "cut short", "malformed")


class MetricsSource(Protocol):
    """What the collector and /healthz read; the daemon implements it over the Engine and the bridge.

    snapshot() and remote_rows() may be called from any thread (the implementation
    hands them to the loop); health() must answer even when the loop is stuck.
    """

    @property
    def tap(self) -> str:
        """The TAP's name: the `tap` label of every metric."""
        ...

    def build_info(self) -> Mapping[str, str]:
        """Labels of ovl_dp_build_info besides `tap` (version, mode, ...)."""
        ...

    def snapshot(self) -> Snapshot:
        """All datapath counters (stats, drops, FDB)."""
        ...

    def remote_rows(self) -> Sequence[Mapping[str, object]]:
        """Per remote: remote, tx_packets, tx_bytes, tx_flood, rx_packets, rx_bytes, and when known
        local and last_rx_age (seconds since the last packet from it, None if never)."""
        ...

    def offloads(self) -> OffloadState:
        """The offloads in use."""
        ...

    def health(self) -> str:
        """Why the daemon is unhealthy, or "" when it is healthy."""
        ...

    def control(self) -> Mapping[str, Any]:
        """The control plane's counts: requests, refused (reason -> count), reloads, reload_failures."""
        ...


class LoopUnavailable(Exception):
    """The packet loop did not hand over the counters (stalled or stopped)."""


def on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[[], T], timeout: float = LOOP_CALL_TIMEOUT) -> T:
    """fn() run on loop's thread (between two batches) and its result; LoopUnavailable if the loop does not answer.

    Called on the loop's own thread, fn runs at once.
    """
    try:
        if asyncio.get_running_loop() is loop:
            return fn()
    except RuntimeError:
        pass  # no loop runs in this thread
    fut: concurrent.futures.Future[T] = concurrent.futures.Future()

    def call() -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(fn())
        except BaseException as exc:
            fut.set_exception(exc)

    try:
        loop.call_soon_threadsafe(call)
    except RuntimeError:  # closed
        raise LoopUnavailable("the packet loop has stopped") from None
    try:
        return fut.result(timeout)
    except concurrent.futures.TimeoutError:
        fut.cancel()
        raise LoopUnavailable(f"loop stalled: no answer from the packet loop within {timeout:g} s") from None


class Heartbeat:
    """A timestamp the loop refreshes every interval; its age tells whether the loop still runs."""

    def __init__(self, interval: float = HEARTBEAT_INTERVAL) -> None:
        self.interval = interval
        self.last = time.monotonic()
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Beat on loop from now on."""
        self._loop = loop
        self._beat()

    def _beat(self) -> None:
        self.last = time.monotonic()
        assert self._loop is not None
        self._handle = self._loop.call_later(self.interval, self._beat)

    def stop(self) -> None:
        """No more beats."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def age(self) -> float:
        """Seconds since the last beat."""
        return time.monotonic() - self.last

    def problem(self, stale: float = HEARTBEAT_STALE) -> str:
        """'loop stalled: ...' when the last beat is older than stale seconds, else ""."""
        age = self.age()
        return f"loop stalled: no heartbeat for {age:.1f} s" if age > stale else ""


def package_version() -> str:
    """ovl-dp's installed version, 'unknown' when it runs from a checkout that was never installed."""
    try:
        return metadata.version("ovl-dp")
    except metadata.PackageNotFoundError:
        return "unknown"


# issue 12, membership on etcd (an optional membership() of the source; exported only when it is on):
# keeper counter -> (metric name without _total, help).
MEMBERSHIP_COUNTERS: dict[str, tuple[str, str]] = {
    "joins": ("ovl_dp_membership_joins", "Members that joined the net (became known to this daemon)"),
    "leaves": ("ovl_dp_membership_leaves", "Members whose key went (left, lease expired or revoked)"),
    "refused": ("ovl_dp_membership_refused", "Members that could not become remotes (our address, no route, ...)"),
    "reconnects": ("ovl_dp_etcd_reconnects", "Times the connection to etcd was made again after a failure"),
    "lease_regrants": ("ovl_dp_etcd_lease_regrants", "Times our lease was gone and a new one granted"),
    "relists": ("ovl_dp_etcd_relists", "Times the members were listed again (compaction, reconnect)"),
}


# -- the collector ---------------------------------------------------------------------------

# Datapath counters (Snapshot.stats): key -> (metric name without _total, help).
STAT_METRICS: dict[str, tuple[str, str]] = {
    "tap_rx": ("ovl_dp_tap_rx_frames", "Frames read from the TAP (from the bridge), super-frames counted as segments"),
    "tap_tx": ("ovl_dp_tap_tx_frames", "Frames written to the TAP (to the bridge), super-frames counted as segments"),
    "tx_unicast": ("ovl_dp_tx_unicast_frames", "Frames sent to the one remote the FDB named"),
    "tx_flooded": ("ovl_dp_tx_flooded_frames", "Frames replicated to every remote (broadcast, multicast, unknown)"),
    "tap_rx_gso": ("ovl_dp_tap_rx_gso_frames", "TCP super-frames read from the TAP and segmented"),
    "tap_tx_gso": ("ovl_dp_tap_tx_gso_frames", "TCP super-frames written to the TAP (received segments coalesced)"),
    "tx_gso": ("ovl_dp_tx_gso_sends", "UDP_SEGMENT sends carrying several VXLAN datagrams"),
    "rx_gro": ("ovl_dp_rx_gro_receives", "UDP_GRO receives holding several VXLAN datagrams"),
    "rx_super": ("ovl_dp_rx_super_packets", "Super-packets received whole and written to the TAP as one TSO frame"),
    "rx_super_split": ("ovl_dp_rx_super_split_packets", "Super-packets received whole and cut into segments"),
    "tx_pmtu_icmp": ("ovl_dp_tx_pmtu_icmp_replies", "ICMP / ICMPv6 'too big' replies written to the TAP (issue 11)"),
    "tx_pmtu_limited": ("ovl_dp_tx_pmtu_limited_replies", "ICMP 'too big' replies suppressed by the rate limit"),
    "tx_fragmented": ("ovl_dp_tx_fragmented_packets", "Outer packets sent in fragments (inner IPv4 without DF)"),
    "rx_ecn_ce": ("ovl_dp_rx_ecn_ce_packets", "Inner packets marked CE because the outer header was (RFC 6040)"),
    "mss_clamped": ("ovl_dp_tcp_mss_clamped", "TCP SYN / SYN-ACK whose MSS option was lowered (--clamp-mss)"),
}
FDB_METRICS: dict[str, tuple[str, str]] = {
    "learns": ("ovl_dp_fdb_learns", "MAC addresses learned"),
    "moves": ("ovl_dp_fdb_moves", "Learned MAC addresses that moved to another remote"),
    "refused_full": ("ovl_dp_fdb_refused_full", "Learns refused because the FDB was full (the frame is delivered)"),
    "aged": ("ovl_dp_fdb_aged", "Learned entries expired"),
}
# What the daemon's link watcher repaired (an optional watch_counters() of the source): key -> (name, help).
WATCH_METRICS: dict[str, tuple[str, str]] = {
    "tap_recreated": ("ovl_dp_tap_recreated", "Times the TAP was re-created after its device was deleted"),
    "tap_reattached": ("ovl_dp_tap_reattached", "Times the TAP was plugged back into its Linux bridge"),
    "bridge_lost": ("ovl_dp_bridge_lost", "Times the Linux bridge of the TAP disappeared"),
    "local_changes": ("ovl_dp_local_changes", "Times a remote's local address changed with the underlay"),
    "mtu_changes": ("ovl_dp_tap_mtu_changes", "Times the automatic TAP MTU followed the underlay MTU"),
    "netlink_resyncs": ("ovl_dp_netlink_resyncs", "Times rtnetlink events were lost (ENOBUFS) and the state re-read"),
    "ring_tx": ("ovl_dp_tx_ring_packets", "Outer packets sent through an AF_PACKET TX ring"),
    "ring_fallback": ("ovl_dp_tx_ring_fallback_packets", "Outer packets sent the raw way while TX rings are on"),
    "ring_full": ("ovl_dp_tx_ring_full_packets", "Outer packets dropped for want of a free TX ring slot"),
    "nexthop_changes": ("ovl_dp_nexthop_changes", "Times a remote's next hop (TX ring) was set or changed"),
}
REMOTE_METRICS: dict[str, tuple[str, str]] = {
    "tx_packets": ("ovl_dp_remote_tx_packets", "Packets sent to the remote"),
    "tx_bytes": ("ovl_dp_remote_tx_bytes", "Bytes of inner frames sent to the remote"),
    "tx_flood": ("ovl_dp_remote_tx_flood_packets", "Flooded copies sent to the remote (part of tx_packets)"),
    "rx_packets": ("ovl_dp_remote_rx_packets", "Packets received from the remote and delivered to the bridge"),
    "rx_bytes": ("ovl_dp_remote_rx_bytes", "Bytes of inner frames received from the remote and delivered"),
}
OFFLOAD_LABELS = ("vnet_hdr", *(f"tun_{name}" for name in TUN_OFFLOADS), "udp_gro", "udp_gso", "rx_coalesce")


class DatapathCollector:
    """A prometheus_client custom collector: every metric read from a MetricsSource at scrape time."""

    def __init__(self, source: MetricsSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        """The metric families of one scrape (LoopUnavailable when the loop does not answer)."""
        src = self.source
        tap = src.tap
        snap = src.snapshot()
        rows = list(src.remote_rows())
        off = src.offloads()

        info = InfoMetricFamily("ovl_dp_build", "ovl-dp's version and how this instance runs", labels=["tap"])
        info.add_metric([tap], dict(src.build_info()))
        yield info

        for key, value in snap.stats.items():
            name, text = STAT_METRICS.get(key, (f"ovl_dp_{key}", f"Datapath counter {key}"))
            yield _counter(name, text, ["tap"], [([tap], value)])
        yield _counter(
            "ovl_dp_drops",
            "Frames or packets dropped, by reason (see the README's drop reasons)",
            ["tap", "reason"],
            [([tap, reason], value) for reason, value in snap.drops.items()],
        )
        for key, (name, text) in FDB_METRICS.items():
            if key in snap.fdb:
                yield _counter(name, text, ["tap"], [([tap], snap.fdb[key])])
        entries = GaugeMetricFamily(
            "ovl_dp_fdb_entries", "Entries in the FDB now, static ones included", labels=["tap"]
        )
        entries.add_metric([tap], snap.fdb.get("entries", 0))
        yield entries

        remotes = GaugeMetricFamily("ovl_dp_remotes", "Remotes configured", labels=["tap"])
        remotes.add_metric([tap], len(rows))
        yield remotes
        for key, (name, text) in REMOTE_METRICS.items():
            samples = [([tap, str(r["remote"])], r[key]) for r in rows if isinstance(r.get(key), int)]
            yield _counter(name, text, ["tap", "remote"], samples)
        age = GaugeMetricFamily(
            "ovl_dp_remote_last_rx_age_seconds",
            "Seconds since the last packet received from the remote (absent: none yet, or not known)",
            labels=["tap", "remote"],
        )
        stamp = GaugeMetricFamily(
            "ovl_dp_remote_last_rx_timestamp_seconds",
            "Unix time of the last packet received from the remote (absent: none yet, or not known)",
            labels=["tap", "remote"],
        )
        now = time.time()
        for r in rows:
            last = r.get("last_rx_age")
            if isinstance(last, int | float):
                age.add_metric([tap, str(r["remote"])], float(last))
                stamp.add_metric([tap, str(r["remote"])], now - float(last))
        path = GaugeMetricFamily(
            "ovl_dp_remote_path_mtu_bytes",
            "Path MTU towards the remote that the too-big check uses (the underlay MTU unless one was learned)",
            labels=["tap", "remote"],
        )
        for r in rows:
            if isinstance(r.get("path_mtu"), int):
                path.add_metric([tap, str(r["remote"])], float(r["path_mtu"]))  # type: ignore[arg-type]
        yield path
        yield age
        yield stamp

        fast = GaugeMetricFamily(
            "ovl_dp_fast_path_enabled", "1 when the C fast path forwards, 0 for the pure-Python path", labels=["tap"]
        )
        fast.add_metric([tap], int(off.fast_path))
        yield fast
        offload = GaugeMetricFamily(
            "ovl_dp_offload_enabled",
            "1 when the offload is in use: TAP virtio header, each TUN_F offload the kernel accepted, UDP GRO/GSO, "
            "coalescing of received TCP segments",
            labels=["tap", "offload"],
        )
        state = {
            "vnet_hdr": off.vnet_hdr,
            **{f"tun_{name}": name in off.tun for name in TUN_OFFLOADS},
            "udp_gro": off.udp_gro,
            "udp_gso": off.udp_gso,
            "rx_coalesce": off.rx_coalesce,
        }
        for label in OFFLOAD_LABELS:
            offload.add_metric([tap, label], int(state[label]))
        yield offload

        ctl = src.control()
        yield _counter(
            "ovl_dp_control_requests", "Control-socket requests answered", ["tap"], [([tap], ctl["requests"])]
        )
        refused = dict(ctl["refused"])
        yield _counter(
            "ovl_dp_control_refused",
            "Control-socket clients refused, by reason (not privileged, too long, malformed, cut short, idle, "
            "too many clients)",
            ["tap", "reason"],
            [([tap, reason], refused.get(reason, 0)) for reason in sorted({*CONTROL_REFUSALS, *refused})],
        )
        yield _counter("ovl_dp_reloads", "Reloads applied (ovl-dp reload, SIGHUP)", ["tap"], [([tap], ctl["reloads"])])
        yield _counter(
            "ovl_dp_reload_failures", "Reloads refused or failed", ["tap"], [([tap], ctl["reload_failures"])]
        )

        if snap.inject is not None:  # the injection TAP is set up (VXLAN, C path, Linux 6.17+)
            yield _counter(
                "ovl_dp_inject",
                "VXLAN TX through the injection TAP: writes, frames, segments sent that way; super-frames segmented "
                "in C instead (fallback_*); failed writes; frames the kernel sent to that TAP (drained)",
                ["tap", "counter"],
                [([tap, key], value) for key, value in snap.inject.items()],
            )
        injecting = getattr(src, "injecting", None)  # optional, as watch_counters
        if callable(injecting):
            gauge = GaugeMetricFamily(
                "ovl_dp_inject_enabled",
                "1 while TCP super-frames leave whole through the injection TAP (the kernel segments them)",
                labels=["tap"],
            )
            gauge.add_metric([tap], int(bool(injecting())))
            yield gauge

        watch = getattr(src, "watch_counters", None)  # optional: sources without a link watcher lack it
        if callable(watch):
            counts = watch()
            for key, (name, text) in WATCH_METRICS.items():
                if key in counts:
                    yield _counter(name, text, ["tap"], [([tap], counts[key])])

        membership = getattr(src, "membership", None)  # optional (issue 12): None when etcd is not used
        member_state = membership() if callable(membership) else None
        if member_state is not None:
            yield from _membership_metrics(tap, member_state)


def _membership_metrics(tap: str, state: Mapping[str, Any]) -> Iterator[Metric]:
    """The membership families from a source's membership(): members, connected, counters, last_keepalive."""
    members = GaugeMetricFamily(
        "ovl_dp_membership_members", "Other members of the net on etcd, as this daemon knows them", labels=["tap"]
    )
    members.add_metric([tap], int(state.get("members", 0)))
    yield members
    connected = GaugeMetricFamily(
        "ovl_dp_etcd_connected", "1 while this daemon is connected to etcd (watching its net), else 0", labels=["tap"]
    )
    connected.add_metric([tap], int(bool(state.get("connected"))))
    yield connected
    counts = state.get("counters") or {}
    for key, (name, text) in MEMBERSHIP_COUNTERS.items():
        yield _counter(name, text, ["tap"], [([tap], counts.get(key, 0))])
    last = GaugeMetricFamily(
        "ovl_dp_etcd_last_keepalive_timestamp_seconds",
        "Unix time of the last successful refresh of our lease (absent: none yet)",
        labels=["tap"],
    )
    if isinstance(state.get("last_keepalive"), int | float):
        last.add_metric([tap], float(state["last_keepalive"]))
    yield last


def _counter(name: str, text: str, labels: list[str], samples: list[tuple[list[str], Any]]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, text, labels=labels)
    for values, value in samples:
        family.add_metric(values, int(value))
    return family


def registry_for(source: MetricsSource) -> CollectorRegistry:
    """A registry holding only the datapath collector (no process or platform collectors: nothing else is read)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatapathCollector(source))
    return registry


def render(source: MetricsSource) -> bytes:
    """One scrape in the Prometheus text format (0.0.4)."""
    return bytes(exposition.generate_latest(registry_for(source)))


# -- the --metrics address -------------------------------------------------------------------


def parse_listen(text: str) -> tuple[str, int]:
    """`[ADDR:]PORT` -> (address, port); a bare port means 127.0.0.1. IPv6 addresses in brackets: [::1]:9100.

    ValueError with a one-line message for anything else (names are not resolved: literals only).
    """
    addr, port_text = DEFAULT_ADDRESS, text
    if text.startswith("["):
        inside, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected [IPV6]:PORT, e.g. [::1]:9100")
        addr, port_text = inside, rest[1:]
        _literal(addr, text, version=6)
    elif text.count(":") > 1:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:9100")
    elif ":" in text:
        addr, port_text = text.split(":")
        if not addr:
            raise ValueError(f"{text!r}: give the address to listen on, e.g. 127.0.0.1{text} or 0.0.0.0{text}")
        _literal(addr, text, version=4)
    try:
        port = int(port_text, 10)
    except ValueError:
        raise ValueError(f"{text!r}: port {port_text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"{text!r}: port {port} is out of range 1..65535")
    return addr, port


def _literal(addr: str, text: str, version: int) -> None:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        raise ValueError(f"{text!r}: {addr!r} is not an IPv{version} address (names are not resolved)") from None
    if ip.version != version:
        raise ValueError(f"{text!r}: {addr!r} is not an IPv{version} address")


def format_listen(addr: str, port: int) -> str:
    """(address, port) as a user writes it: 127.0.0.1:9100, [::1]:9100."""
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


# -- the HTTP server ---------------------------------------------------------------------------


class _TooLarge(Exception):
    pass


class _CappedReader:
    """The request stream, cut off after limit bytes (request line and headers)."""

    def __init__(self, raw: IO[bytes] | io.BufferedIOBase, limit: int) -> None:
        self._raw = raw
        self._left = limit

    def readline(self, size: int = -1) -> bytes:
        want = self._left + 1 if size < 0 else min(size, self._left + 1)
        line = self._raw.readline(want)
        self._left -= len(line)
        if self._left < 0:
            raise _TooLarge
        return line

    def read(self, size: int = -1) -> bytes:
        # A body is never read (GET/HEAD only); anything asked for counts against the cap.
        want = self._left + 1 if size < 0 else min(size, self._left + 1)
        data = self._raw.read(want)
        self._left -= len(data)
        if self._left < 0:
            raise _TooLarge
        return data

    def close(self) -> None:
        self._raw.close()


class _Handler(BaseHTTPRequestHandler):
    """GET/HEAD /metrics and /healthz; one request per connection."""

    server: _Server
    server_version = "ovl-dp"
    sys_version = ""
    protocol_version = "HTTP/1.0"
    default_request_version = "HTTP/1.0"  # never HTTP/0.9 answers without a status line
    timeout = CLIENT_DEADLINE  # per socket operation; the server's timer bounds the whole connection

    def setup(self) -> None:
        super().setup()
        self.rfile = _CappedReader(self.rfile, MAX_REQUEST_BYTES)  # type: ignore[assignment]

    def handle(self) -> None:
        self.requestline, self.command, self.request_version = "", "", "HTTP/1.0"  # for a refused request line
        try:
            self.handle_one_request()
        except _TooLarge:
            self._reply(431, b"request too large\n")
        except (TimeoutError, OSError):
            pass  # gone, too slow, or cut off at the deadline
        self.close_connection = True

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            try:
                data = self.server.render()
            except LoopUnavailable as exc:
                self._reply(503, f"{exc}\n".encode(), body=body)
                return
            except Exception as exc:  # a failed scrape is an answer, never a dead server
                log.warning("metrics scrape failed: %s", exc)
                self._reply(500, f"scrape failed: {exc}\n".encode(), body=body)
                return
            self._reply(200, data, CONTENT_TYPE, body=body)
        elif path == "/healthz":
            try:
                problem = self.server.health()
            except Exception as exc:
                problem = f"health check failed: {exc}"
            if problem:
                self._reply(503, f"{problem}\n".encode(), body=body)
                return
            try:
                degraded = self.server.degraded()
            except Exception as exc:
                degraded = f"degraded check failed: {exc}"
            if degraded:
                self._reply(200, f"degraded: {degraded}\n".encode(), body=body)
            else:
                self._reply(200, b"ok\n", body=body)
        else:
            self._reply(404, b"not found: try /metrics or /healthz\n", body=body)

    def _reply(self, code: int, data: bytes, ctype: str = "text/plain; charset=utf-8", body: bool = True) -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            if body:
                self.wfile.write(data)
        except OSError:
            pass

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors from parsing (400, 405, 501, ...) as plain one-line bodies."""
        self.close_connection = True
        self._reply(code, f"{message or self.responses.get(code, ('error',))[0]}\n".encode())

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics %s: %s", self.address_string(), format % args)


for _method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
    setattr(_Handler, f"do_{_method}", lambda self: self.send_error(405, "method not allowed: GET or HEAD only"))


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer with at most MAX_CLIENTS connections at once, each cut off at CLIENT_DEADLINE."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, addr: str, port: int, listening: socket.socket | None = None) -> None:
        self.address_family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        self.render: Callable[[], bytes] = lambda: b""
        self.health: Callable[[], str] = lambda: "starting"
        self.degraded: Callable[[], str] = lambda: ""
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        super().__init__((addr, port), _Handler, bind_and_activate=listening is None)
        if listening is not None:  # bound and listening already (a takeover handed it over)
            self.socket.close()
            self.socket = listening
            self.server_address = listening.getsockname()
            self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def server_bind(self) -> None:
        # HTTPServer.server_bind would look the address up in DNS (getfqdn); a literal needs no name.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A handler that failed: one log line, never a traceback on stderr."""
        log.debug("metrics: a request from %s failed", client_address, exc_info=True)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # busy: closed unanswered; the packet loop is never involved
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        deadline = threading.Timer(CLIENT_DEADLINE, _cut, (request,))
        deadline.daemon = True
        deadline.start()
        try:
            super().process_request_thread(request, client_address)
        finally:
            deadline.cancel()
            self._slots.release()


def _cut(sock: socket.socket) -> None:
    """A connection past its deadline: unblock its thread's read or write."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class MetricsServer:
    """/metrics and /healthz on one address; bound at construction (errors are SetupError), served from start()."""

    def __init__(self, addr: str, port: int, listening: socket.socket | None = None) -> None:
        """listening: a socket bound to addr:port and listening already (handed over by a takeover)."""
        where = format_listen(addr, port)
        try:
            self._server = _Server(addr, port, listening)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise SetupError(f"--metrics {where}: port {port} is already in use on {addr}") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise SetupError(f"--metrics {where}: {addr} is not an address of this host") from None
            raise SetupError(f"--metrics {where}: cannot listen: {exc.strerror or exc}") from None
        self.addr = addr
        self.port = int(self._server.server_address[1])
        self._thread: threading.Thread | None = None
        self._closed = False

    def fileno(self) -> int:
        """The listening socket's fd (handed to a new daemon by a takeover)."""
        return int(self._server.socket.fileno())

    def start(self, source: MetricsSource) -> None:
        """Serve source's metrics and health from a thread of its own."""
        self._server.render = lambda: render(source)
        self._server.health = source.health
        degraded = getattr(source, "degraded", None)  # optional: "" or what works only in part (etcd)
        if callable(degraded):
            self._server.degraded = degraded
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="ovl-dp-metrics", daemon=True
        )
        self._thread.start()
        log.info("metrics on http://%s/metrics, health on /healthz", format_listen(self.addr, self.port))

    def close(self) -> None:
        """Stop serving and close the listening socket (idempotent); handlers still running end at their deadline."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()
