"""control/metrics.py: the collector over a fake source, the --metrics address, the HTTP server on loopback."""

from __future__ import annotations

import asyncio
import http.client
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from control import cli, metrics
from datapath.counters import FDB_FIELDS, INJECT_FIELDS, STAT_FIELDS, Snapshot
from datapath.errors import SetupError

TAP = "ovl-test"


class FakeSource:
    """A MetricsSource with values a test sets."""

    def __init__(self) -> None:
        self.tap = TAP
        self.stats = {name: 10 + i for i, name in enumerate(STAT_FIELDS)}
        self.drops = {"tx_runt": 0, "tx_too_big": 3, "rx_not_remote": 7}
        self.fdb = {**{name: 20 + i for i, name in enumerate(FDB_FIELDS)}, "entries": 5}
        self.rows: list[dict[str, object]] = [
            {"remote": "192.0.2.2", "local": "192.0.2.1", "tx_packets": 100, "tx_bytes": 15000, "tx_flood": 4,
             "rx_packets": 90, "rx_bytes": 12000, "last_rx_age": 1.5, "path_mtu": 1400},
            {"remote": "192.0.2.3", "local": "192.0.2.1", "tx_packets": 4, "tx_bytes": 400, "tx_flood": 4,
             "rx_packets": 0, "rx_bytes": 0, "last_rx_age": None, "path_mtu": 1500},
        ]  # fmt: skip
        self.off = metrics.OffloadState(
            fast_path=True, vnet_hdr=True, tun=frozenset({"csum", "tso4"}), udp_gro=True, udp_gso=False,
            rx_coalesce=True,
        )  # fmt: skip
        self.problem = ""
        self.stalled = False
        self.ctl: dict[str, Any] = {"requests": 12, "refused": {"idle": 3, "odd new reason": 1}, "reloads": 2,
                                    "reload_failures": 1}  # fmt: skip

    def build_info(self) -> Mapping[str, str]:
        return {"version": "9.9.9", "mode": "vxlan", "path": "c", "bridge_type": "linux"}

    def snapshot(self) -> Snapshot:
        if self.stalled:
            raise metrics.LoopUnavailable("loop stalled: no answer from the packet loop within 2 s")
        remotes = [{k: v for k, v in r.items() if k not in ("local", "last_rx_age", "path_mtu")} for r in self.rows]
        return Snapshot(dict(self.stats), dict(self.drops), remotes, dict(self.fdb))  # type: ignore[arg-type]

    def remote_rows(self) -> Sequence[Mapping[str, object]]:
        return self.rows

    def offloads(self) -> metrics.OffloadState:
        return self.off

    def health(self) -> str:
        return self.problem

    def control(self) -> Mapping[str, Any]:
        return self.ctl


def families(source: FakeSource) -> dict[str, tuple[str, list[Sample]]]:
    text = metrics.render(source).decode()
    return {f.name: (f.type, f.samples) for f in text_string_to_metric_families(text)}


def value(samples: list[Sample], **labels: str) -> float:
    found = [s.value for s in samples if s.labels == labels]
    assert len(found) == 1, (labels, samples)
    return found[0]


# -- the collector -------------------------------------------------------------------------


def test_every_metric_has_its_type_labels_and_value() -> None:
    src = FakeSource()
    fams = families(src)
    tap = {"tap": TAP}
    # The parser names counters without _total; the exposition has ovl_dp_..._total.
    for key, (name, _) in metrics.STAT_METRICS.items():
        kind, samples = fams[name]
        assert kind == "counter"
        assert [s.name for s in samples] == [f"{name}_total"]
        assert value(samples, **tap) == src.stats[key]
    kind, samples = fams["ovl_dp_drops"]
    assert kind == "counter"
    assert {s.labels["reason"]: s.value for s in samples} == src.drops
    for key, (name, _) in metrics.FDB_METRICS.items():
        assert fams[name][0] == "counter"
        assert value(fams[name][1], **tap) == src.fdb[key]
    assert fams["ovl_dp_fdb_entries"][0] == "gauge"
    assert value(fams["ovl_dp_fdb_entries"][1], **tap) == 5
    assert value(fams["ovl_dp_remotes"][1], **tap) == 2
    for key, (name, _) in metrics.REMOTE_METRICS.items():
        kind, samples = fams[name]
        assert kind == "counter"
        for row in src.rows:
            assert value(samples, tap=TAP, remote=str(row["remote"])) == row[key]
    kind, samples = fams["ovl_dp_remote_last_rx_age_seconds"]
    assert kind == "gauge"
    # Only the remote that was heard from has an age; "never" is an absent series.
    assert [(s.labels, s.value) for s in samples] == [({"tap": TAP, "remote": "192.0.2.2"}, 1.5)]
    kind, samples = fams["ovl_dp_remote_last_rx_timestamp_seconds"]
    assert kind == "gauge" and [s.labels for s in samples] == [{"tap": TAP, "remote": "192.0.2.2"}]
    assert abs(samples[0].value - (time.time() - 1.5)) < 60  # the same moment, as Unix time
    kind, samples = fams["ovl_dp_remote_path_mtu_bytes"]  # issue 11
    assert kind == "gauge" and [(s.labels["remote"], s.value) for s in samples] == [
        ("192.0.2.2", 1400),
        ("192.0.2.3", 1500),
    ]


def test_offload_state_and_build_info() -> None:
    fams = families(FakeSource())
    assert value(fams["ovl_dp_fast_path_enabled"][1], tap=TAP) == 1
    kind, samples = fams["ovl_dp_offload_enabled"]
    assert kind == "gauge"
    assert {s.labels["offload"]: s.value for s in samples} == {
        "vnet_hdr": 1, "tun_csum": 1, "tun_tso4": 1, "tun_tso6": 0, "tun_tso_ecn": 0, "udp_gro": 1, "udp_gso": 0,
        "rx_coalesce": 1,
    }  # fmt: skip
    kind, samples = fams["ovl_dp_build_info"]
    assert kind == "gauge"  # an info metric, as the text format 0.0.4 writes it
    assert [s.name for s in samples] == ["ovl_dp_build_info"]
    assert samples[0].labels == {"tap": TAP, "version": "9.9.9", "mode": "vxlan", "path": "c", "bridge_type": "linux"}
    assert samples[0].value == 1


def test_control_socket_and_reload_counts() -> None:
    """Every refusal reason is exported (0 until it happens), and a reason the collector does not know too."""
    fams = families(FakeSource())
    assert value(fams["ovl_dp_control_requests"][1], tap=TAP) == 12
    kind, samples = fams["ovl_dp_control_refused"]
    assert kind == "counter"
    refused = {s.labels["reason"]: s.value for s in samples}
    assert refused == {**dict.fromkeys(metrics.CONTROL_REFUSALS, 0), "idle": 3, "odd new reason": 1}
    assert value(fams["ovl_dp_reloads"][1], tap=TAP) == 2
    assert value(fams["ovl_dp_reload_failures"][1], tap=TAP) == 1


def test_rows_without_last_rx_age_and_new_counters() -> None:
    """The snapshot-derived rows (no local, no last_rx_age) and a counter the collector has no name for yet."""
    src = FakeSource()
    for row in src.rows:
        del row["last_rx_age"], row["local"]
    src.stats["tx_new_thing"] = 3
    fams = families(src)
    assert fams["ovl_dp_remote_last_rx_age_seconds"][1] == []
    assert value(fams["ovl_dp_remote_tx_packets"][1], tap=TAP, remote="192.0.2.3") == 4
    assert value(fams["ovl_dp_tx_new_thing"][1], tap=TAP) == 3


def test_all_names_follow_the_conventions(source: FakeSource | None = None) -> None:
    text = metrics.render(source or FakeSource()).decode()
    for fam in text_string_to_metric_families(text):
        assert fam.name.startswith("ovl_dp_"), fam.name
        assert fam.name == fam.name.lower()
        assert fam.documentation
        for s in fam.samples:
            assert s.name.endswith("_total") == (fam.type == "counter"), s.name
            assert fam.type != "gauge" or not fam.name.endswith("_total"), fam.name
            assert "tap" in s.labels


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed")
def test_promtool_check_metrics_is_clean(source: FakeSource | None = None) -> None:
    res = subprocess.run(
        ["promtool", "check", "metrics"], input=metrics.render(source or FakeSource()), capture_output=True, timeout=60
    )
    assert res.returncode == 0 and not res.stdout.strip() and not res.stderr.strip(), res


# -- --metrics [ADDR:]PORT --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("9100", ("127.0.0.1", 9100)),
        ("127.0.0.1:9100", ("127.0.0.1", 9100)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
        ("[::1]:9100", ("::1", 9100)),
        ("[::]:65535", ("::", 65535)),
    ],
)
def test_listen_addresses(text: str, expected: tuple[str, int]) -> None:
    assert metrics.parse_listen(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "port '' is not a number"),
        ("abc", "port 'abc' is not a number"),
        ("0", "port 0 is out of range 1..65535"),
        ("65536", "port 65536 is out of range 1..65535"),
        (":9100", "give the address to listen on"),
        ("localhost:9100", "'localhost' is not an IPv4 address (names are not resolved)"),
        ("1.2.3:9100", "'1.2.3' is not an IPv4 address"),
        ("::1:9100", "write an IPv6 address in brackets"),
        ("[::1]9100", "expected [IPV6]:PORT"),
        ("[127.0.0.1]:9100", "'127.0.0.1' is not an IPv6 address"),
        ("[::1]:x", "port 'x' is not a number"),
    ],
)
def test_bad_listen_addresses(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        metrics.parse_listen(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_cli_bad_metrics_value_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["run", "--mode", "vxlan", "--remote", "192.0.2.2", "--metrics", "localhost:9100"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("ovl-dp: error: argument --metrics: 'localhost:9100'"), err
    assert "Traceback" not in err


def test_cli_metrics_is_off_by_default() -> None:
    args = cli.build_parser().parse_args(["run", "--mode", "gre", "--remote", "192.0.2.2"])
    source = cli.run_source(args)
    assert source.metrics_at(getattr(args, "metrics", None)) is None
    source.load()  # not a datapath configuration key: the datapath's config never sees it


# -- the HTTP server ---------------------------------------------------------------------------


@pytest.fixture
def served() -> Iterator[tuple[metrics.MetricsServer, FakeSource]]:
    src = FakeSource()
    server = metrics.MetricsServer("127.0.0.1", 0)
    server.start(src)
    try:
        yield server, src
    finally:
        server.close()


def get(server: metrics.MetricsServer, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as res:
            return res.status, dict(res.headers), res.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_metrics_and_healthz_over_http(served: tuple[metrics.MetricsServer, FakeSource]) -> None:
    server, src = served
    status, headers, body = get(server, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {"ovl_dp_drops", "ovl_dp_remote_rx_bytes", "ovl_dp_build_info"} <= names
    status, _, body = get(server, "/healthz")
    assert (status, body) == (200, b"ok\n")
    src.problem = "TAP ovl-test is not attached: bridge br-int does not exist"
    status, _, body = get(server, "/healthz")
    assert (status, body) == (503, b"TAP ovl-test is not attached: bridge br-int does not exist\n")
    src.problem = ""
    src.stalled = True
    status, _, body = get(server, "/metrics")
    assert status == 503 and body.startswith(b"loop stalled"), body


def test_other_paths_and_methods(served: tuple[metrics.MetricsServer, FakeSource]) -> None:
    server, _ = served
    assert get(server, "/")[0] == 404
    assert get(server, "/metrics?name=x")[0] == 200
    status, headers, body = get(server, "/metrics", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 1000
    assert get(server, "/metrics", method="POST")[0] == 405
    assert get(server, "/healthz", method="DELETE")[0] == 405


def raw_request(server: metrics.MetricsServer, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_requests_are_bounded(served: tuple[metrics.MetricsServer, FakeSource]) -> None:
    server, _ = served
    big = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * metrics.MAX_REQUEST_BYTES + b"\r\n\r\n"
    assert raw_request(server, big).startswith(b"HTTP/1.0 431 ")
    long_line = b"GET /" + b"m" * metrics.MAX_REQUEST_BYTES + b" HTTP/1.1\r\n\r\n"
    assert raw_request(server, long_line).startswith(b"HTTP/1.0 431 ")
    assert raw_request(server, b"garbage\r\n\r\n").startswith(b"HTTP/1.0 400 ")
    assert get(server, "/healthz")[0] == 200  # still serving


def test_an_idle_client_does_not_block_others(served: tuple[metrics.MetricsServer, FakeSource]) -> None:
    server, _ = served
    with socket.create_connection(("127.0.0.1", server.port)) as idle:
        idle.sendall(b"GET /metr")  # and nothing more
        assert get(server, "/metrics")[0] == 200
        assert get(server, "/healthz")[0] == 200


def test_slow_clients_are_cut_off_and_the_rest_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "CLIENT_DEADLINE", 0.5)
    monkeypatch.setattr(metrics, "MAX_CLIENTS", 2)
    server = metrics.MetricsServer("127.0.0.1", 0)
    server.start(FakeSource())
    try:
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(2)]
        for s in idle:
            s.sendall(b"G")
        # Both slots are taken: another connection is closed unanswered ...
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        extra.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert extra.recv(100) == b""
        extra.close()
        # ... and the idle ones are cut at the deadline (the read ends; nothing was answered).
        for s in idle:
            assert s.recv(100) == b""
            s.close()
        # Then the server answers again.
        for _ in range(100):
            try:
                if get(server, "/healthz")[0] == 200:
                    break
            except (urllib.error.URLError, http.client.RemoteDisconnected, ConnectionError):
                pass  # a slot may not be freed yet
            time.sleep(0.05)
        assert get(server, "/healthz")[0] == 200
    finally:
        server.close()


def test_close_stops_serving() -> None:
    server = metrics.MetricsServer("127.0.0.1", 0)
    server.start(FakeSource())
    port = server.port
    server.close()
    server.close()  # idempotent
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=30).close()


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        server = metrics.MetricsServer("::1", 0)
    except SetupError as exc:
        pytest.skip(f"no ::1 here: {exc}")
    server.start(FakeSource())
    try:
        with urllib.request.urlopen(f"http://[::1]:{server.port}/healthz", timeout=30) as res:
            assert res.status == 200
    finally:
        server.close()


def test_bind_errors_are_one_line_setup_errors() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(SetupError) as info:
            metrics.MetricsServer("127.0.0.1", port)
        assert str(info.value) == f"--metrics 127.0.0.1:{port}: port {port} is already in use on 127.0.0.1"
    with pytest.raises(SetupError) as info:
        metrics.MetricsServer("192.0.2.77", 9100)  # TEST-NET-1: never an address of this host
    assert str(info.value) == "--metrics 192.0.2.77:9100: 192.0.2.77 is not an address of this host"


# -- reading on the loop, the heartbeat ----------------------------------------------------------


def test_on_loop_runs_the_call_on_the_loops_thread() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    try:
        assert metrics.on_loop(loop, threading.get_ident) == thread.ident
        with pytest.raises(ZeroDivisionError):
            metrics.on_loop(loop, lambda: 1 // 0)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def test_on_loop_when_the_loop_does_not_answer() -> None:
    loop = asyncio.new_event_loop()  # never runs: like a loop stuck in one callback
    try:
        with pytest.raises(metrics.LoopUnavailable, match="loop stalled"):
            metrics.on_loop(loop, lambda: 1, timeout=0.05)
    finally:
        loop.close()
    with pytest.raises(metrics.LoopUnavailable, match="stopped"):
        metrics.on_loop(loop, lambda: 1)


def test_on_loop_from_the_loop_itself() -> None:
    async def inside() -> int:
        return metrics.on_loop(asyncio.get_running_loop(), lambda: 42)

    assert asyncio.run(inside()) == 42


def test_heartbeat() -> None:
    async def beat() -> metrics.Heartbeat:
        hb = metrics.Heartbeat(interval=0.01)
        hb.start(asyncio.get_running_loop())
        hb.last -= 100  # as if the loop had stopped beating long ago
        await asyncio.sleep(0.05)  # it beats again
        hb.stop()
        return hb

    hb = asyncio.run(beat())
    assert hb.problem() == ""
    hb.last -= 100
    assert hb.problem().startswith("loop stalled: no heartbeat for 10")


class InjectingSource(FakeSource):
    """A source whose datapath has the injection TAP set up (VXLAN TX, csrc/inject.c)."""

    def __init__(self, injecting: bool) -> None:
        super().__init__()
        self.inject = {name: 30 + i for i, name in enumerate(INJECT_FIELDS)}
        self._injecting = injecting

    def snapshot(self) -> Snapshot:
        snap = super().snapshot()
        snap.inject = dict(self.inject)
        return snap

    def injecting(self) -> bool:
        return self._injecting


@pytest.mark.parametrize("on", [True, False])
def test_injection_counters_and_state(on: bool) -> None:
    fams = families(InjectingSource(on))
    kind, samples = fams["ovl_dp_inject"]
    assert kind == "counter"
    for i, name in enumerate(INJECT_FIELDS):
        assert value(samples, tap=TAP, counter=name) == 30 + i
    assert value(fams["ovl_dp_inject_enabled"][1], tap=TAP) == int(on)
    plain = families(FakeSource())  # no injection TAP: neither family
    assert "ovl_dp_inject" not in plain and "ovl_dp_inject_enabled" not in plain
    test_all_names_follow_the_conventions(InjectingSource(on))
    if shutil.which("promtool") is not None:
        test_promtool_check_metrics_is_clean(InjectingSource(on))


class MemberSource(FakeSource):
    """A source whose daemon is on etcd (issue 12): membership() and degraded()."""

    def __init__(self, connected: bool, last_keepalive: float | None) -> None:
        super().__init__()
        self.state: dict[str, Any] = {
            "members": 4,
            "connected": connected,
            "counters": {"joins": 6, "leaves": 2, "refused": 1, "reconnects": 3, "lease_regrants": 1, "relists": 5,
                         "keepalives": 99, "watch_events": 12},
            "last_keepalive": last_keepalive,
        }  # fmt: skip
        self.why = ""

    def membership(self) -> Mapping[str, Any] | None:
        return self.state

    def degraded(self) -> str:
        return self.why


@pytest.mark.parametrize(("connected", "last"), [(True, 1764600000.5), (False, None)])
def test_membership_metrics(connected: bool, last: float | None) -> None:
    src = MemberSource(connected, last)
    fams = families(src)
    assert fams["ovl_dp_membership_members"][0] == "gauge"
    assert value(fams["ovl_dp_membership_members"][1], tap=TAP) == 4
    assert value(fams["ovl_dp_etcd_connected"][1], tap=TAP) == int(connected)
    for name, want in (("ovl_dp_membership_joins", 6), ("ovl_dp_membership_leaves", 2),
                       ("ovl_dp_membership_refused", 1), ("ovl_dp_etcd_reconnects", 3),
                       ("ovl_dp_etcd_lease_regrants", 1), ("ovl_dp_etcd_relists", 5)):  # fmt: skip
        assert fams[name][0] == "counter" and value(fams[name][1], tap=TAP) == want, name
    stamp = fams["ovl_dp_etcd_last_keepalive_timestamp_seconds"][1]
    assert (value(stamp, tap=TAP) == last) if last is not None else stamp == []
    src.state["counters"] = {}  # a keeper that has counted nothing yet: every counter at 0
    fams = families(src)
    assert value(fams["ovl_dp_etcd_relists"][1], tap=TAP) == 0
    test_all_names_follow_the_conventions(src)
    if shutil.which("promtool") is not None:
        test_promtool_check_metrics_is_clean(src)


def test_no_membership_metrics_without_etcd() -> None:
    plain = families(FakeSource())
    assert not [n for n in plain if n.startswith(("ovl_dp_membership", "ovl_dp_etcd"))]

    class Off(FakeSource):
        def membership(self) -> Mapping[str, Any] | None:
            return None

    assert not [n for n in families(Off()) if n.startswith(("ovl_dp_membership", "ovl_dp_etcd"))]


def test_healthz_degraded_is_200_and_503_wins() -> None:
    src = MemberSource(False, None)
    server = metrics.MetricsServer("127.0.0.1", 0)
    server.start(src)
    try:
        assert get(server, "/healthz")[::2] == (200, b"ok\n")
        src.why = "etcd http://192.0.2.250:2379 unreachable: connection refused"
        assert get(server, "/healthz")[::2] == (
            200, b"degraded: etcd http://192.0.2.250:2379 unreachable: connection refused\n"
        )  # fmt: skip
        src.problem = "TAP ovl-test is not attached to bridge br-int"
        assert get(server, "/healthz")[::2] == (503, b"TAP ovl-test is not attached to bridge br-int\n")
    finally:
        server.close()
