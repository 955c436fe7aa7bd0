"""The benchmark's pure parts: parsing ping / iperf3 / /proc output, medians and ratios, the table. No lab."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.parse import (
    IperfError,
    iperf_tcp,
    iperf_udp,
    percentile,
    ping_loss,
    ping_summary,
    ping_times,
    proc_cpu_ticks,
    proc_vmhwm_kb,
)
from bench.report import METRICS, REFERENCE, TIMES, cell, medians, ratios, summarize, table, versus_table
from control.lab.shell import LabError

PING = """\
PING 172.20.1.2 (172.20.1.2) 56(84) bytes of data.
64 bytes from 172.20.1.2: icmp_seq=1 ttl=64 time=0.412 ms
64 bytes from 172.20.1.2: icmp_seq=2 ttl=64 time=0.101 ms
64 bytes from 172.20.1.2: icmp_seq=2 ttl=64 time=0.150 ms (DUP!)
64 bytes from 172.20.1.2: icmp_seq=4 ttl=64 time=0.200 ms
64 bytes from 172.20.1.2: icmp_seq=5 ttl=64 time=1.05 ms

--- 172.20.1.2 ping statistics ---
5 packets transmitted, 4 received, +1 duplicates, 20% packet loss, time 41ms
rtt min/avg/max/mdev = 0.101/0.440/1.050/0.370 ms
"""


def test_ping_times_in_order_without_duplicates() -> None:
    assert ping_times(PING) == [0.412, 0.101, 0.200, 1.05]
    assert ping_loss(PING) == 20.0


def test_ping_summary() -> None:
    s = ping_summary(PING)
    assert s["rtt_p50_ms"] == pytest.approx((0.2 + 0.412) / 2)
    assert s["rtt_p99_ms"] == pytest.approx(0.412 + (1.05 - 0.412) * 0.97)
    assert (s["ping_replies"], s["ping_loss_pct"]) == (4, 20.0)


def test_ping_without_replies() -> None:
    out = "PING 172.20.1.2 (172.20.1.2) 56(84) bytes of data.\n\n3 packets transmitted, 0 received, 100% packet loss"
    assert ping_times(out) == [] and ping_loss(out) == 100.0
    with pytest.raises(ValueError, match="no ping replies"):
        ping_summary(out)
    assert ping_loss("ping: connect: Network is unreachable") == 100.0


def test_percentile_interpolates_like_numpy() -> None:
    values = [float(v) for v in range(1, 201)]  # 1..200
    assert percentile(values, 50) == pytest.approx(100.5)
    assert percentile(values, 99) == pytest.approx(198.01)
    assert percentile(values, 0) == 1 and percentile(values, 100) == 200
    assert percentile([3.0], 99) == 3.0
    assert percentile([5.0, 1.0], 50) == 3.0  # unsorted input
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def tcp_result(bits: float, nbytes: int, retransmits: int = 7) -> dict[str, Any]:
    """The parts of an iperf3 3.12 -J TCP result the benchmark reads."""
    return {
        "start": {},
        "intervals": [],
        "end": {
            "sum_sent": {"seconds": 5.0, "bytes": nbytes, "bits_per_second": bits * 1.01, "retransmits": retransmits},
            "sum_received": {"seconds": 5.0, "bytes": nbytes, "bits_per_second": bits},
        },
    }


def test_iperf_tcp() -> None:
    assert iperf_tcp(tcp_result(9.3e9, 5_812_500_000)) == {"gbps": 9.3, "bytes": 5_812_500_000, "retransmits": 7}


def test_iperf_errors() -> None:
    with pytest.raises(IperfError, match="unable to connect"):
        iperf_tcp({"start": {}, "error": "error - unable to connect to server: Connection refused"})
    with pytest.raises(IperfError, match=r"no end\.sum_received"):
        iperf_udp({"start": {}, "end": {}})
    with pytest.raises(IperfError):
        iperf_tcp({"error": ""})  # Lab.iperf3's form when iperf3 printed nothing


UDP = json.loads("""{"end": {
  "sum": {"seconds": 2.00022, "bytes": 8945920, "lost_packets": 14320, "packets": 139780, "sender": true},
  "sum_sent": {"seconds": 2.000159, "bytes": 8945920, "lost_packets": 0, "packets": 139780, "sender": true},
  "sum_received": {"seconds": 2.00022, "bytes": 8029440, "lost_packets": 14320, "packets": 139780,
                   "lost_percent": 10.244670196022321, "sender": false}}}""")


def test_iperf_udp() -> None:
    """Figures from a real iperf3 3.12 run: 139780 sent, 14320 lost, i.e. 8029440 bytes of 64 received."""
    r = iperf_udp(UDP)
    assert r["udp_pps"] == pytest.approx(125460 / 2.00022)
    assert r["udp_pps"] * 2.00022 * 64 == pytest.approx(8029440)
    assert r["udp_sent_pps"] == pytest.approx(139780 / 2.00022)
    assert r["udp_loss_pct"] == pytest.approx(10.244670196022321)


def test_iperf_udp_negative_loss_is_clamped() -> None:
    rx = {"seconds": 1.0, "packets": 100, "lost_packets": -3}
    assert iperf_udp({"end": {"sum_received": rx}}) == {"udp_pps": 100, "udp_sent_pps": 100, "udp_loss_pct": 0}
    with pytest.raises(IperfError):
        iperf_udp({"end": {"sum_received": {**rx, "seconds": 0}}})


def test_proc_figures() -> None:
    # The comm may contain spaces and parentheses: fields are counted after the last ")".
    stat = "4242 (python3 (x) y) S 1 4242 4242 0 -1 4194560 900 0 0 0 1234 567 0 0 20 0 3 0 100 1000 2000"
    assert proc_cpu_ticks(stat) == 1234 + 567
    assert proc_cpu_ticks(Path("/proc/self/stat").read_text()) >= 0
    assert proc_vmhwm_kb("Name:\tpython3\nVmPeak:\t  300000 kB\nVmHWM:\t   39164 kB\nVmRSS:\t 1 kB\n") == 39164
    assert proc_vmhwm_kb(Path("/proc/self/status").read_text()) > 0
    with pytest.raises(ValueError):
        proc_vmhwm_kb("Name:\tkthreadd\n")


def rounds(*values: float | None, key: str = "tcp1_gbps") -> list[dict[str, Any]]:
    """Rounds with one metric; None: a round whose datapath failed."""
    return [
        {"round": i, "ok": True, "error": None, "metrics": {key: v}, "errors": {}}
        if v is not None
        else {"round": i, "ok": False, "error": "LabError: boom", "metrics": {}, "errors": {}}
        for i, v in enumerate(values, 1)
    ]


def test_medians_skip_failed_rounds_and_missing_metrics() -> None:
    rs = rounds(1.0, None, 3.0, 2.0)
    rs.append({"round": 5, "ok": True, "metrics": {"rtt_p50_ms": 0.5}, "errors": {"tcp 1 stream": "x"}})
    assert medians(rs) == {"tcp1_gbps": 2.0, "rtt_p50_ms": 0.5}
    assert medians(rounds(1.0, 4.0)) == {"tcp1_gbps": 2.5}
    assert medians(rounds(None)) == {}
    assert medians([{"metrics": {"tcp1_gbps": float("nan")}}]) == {}


def test_ratios() -> None:
    assert ratios({"a": 1.0, "b": 3.0, "c": 1.0}, {"a": 4.0, "b": 0.0}) == {"a": 0.25}


def test_summarize() -> None:
    runs = {REFERENCE: rounds(10.0, 12.0, 11.0), "ovl-dp-vxlan": rounds(1.0, None, 2.0)}
    runs["ovl-dp-vxlan"][0]["errors"] = {"udp 64 B": "IperfError: timeout"}
    s = summarize(runs)
    assert s[REFERENCE]["median"] == {"tcp1_gbps": 11.0} and s[REFERENCE]["ratio"] == {"tcp1_gbps": 1.0}
    ovl = s["ovl-dp-vxlan"]
    assert ovl["median"] == {"tcp1_gbps": 1.5}
    assert ovl["ratio"]["tcp1_gbps"] == pytest.approx(1.5 / 11)
    assert (ovl["rounds_ok"], ovl["rounds"]) == (2, 3)
    assert ovl["failures"] == ["round 2: LabError: boom"]
    assert ovl["test_errors"] == ["round 1 udp 64 B: IperfError: timeout"]


def test_summarize_without_a_reference_has_no_ratios() -> None:
    s = summarize({REFERENCE: rounds(None), "ovl-dp-gre": rounds(1.0)})
    assert s["ovl-dp-gre"]["ratio"] == {} and s[REFERENCE]["rounds_ok"] == 0


def test_cell() -> None:
    tcp, loss = METRICS[0], next(m for m in METRICS if m.key == "udp_loss_pct")
    kpps = next(m for m in METRICS if m.key == "udp_pps")
    assert cell(tcp, 9.304, 1.0) == f"9.30 {TIMES}1.00"
    assert cell(tcp, 0.7105, None) == "0.71"
    assert cell(tcp, None, None) == "-"
    assert cell(loss, 59.04, 19.0) == "59.0"  # no ratio for a loss percentage
    assert cell(kpps, 29470.0, 0.413) == f"29.5 {TIMES}0.41"


def test_table() -> None:
    runs = {REFERENCE: rounds(10.0), "ovl-dp-vxlan": rounds(1.0), "tinc-switch": rounds(None)}
    text = table(
        summarize(runs),
        labels={REFERENCE: "kernel VXLAN (reference)", "ovl-dp-vxlan": "ovl-dp VXLAN"},
        mtus={REFERENCE: "1450", "ovl-dp-vxlan": "1450"},
    )
    lines = text.splitlines()
    assert len(lines) == 2 + 3
    assert len({len(line) for line in lines}) == 1  # aligned columns
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head == ["datapath", "MTU", *(m.header for m in METRICS), "rounds ok"]
    assert set(lines[1]) <= set("|-:")
    kernel, ovl, tinc = ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])
    assert kernel[:3] == ["kernel VXLAN (reference)", "1450", f"10.00 {TIMES}1.00"]
    assert ovl[:3] == ["ovl-dp VXLAN", "1450", f"1.00 {TIMES}0.10"] and ovl[-1] == "1/1"
    assert tinc[0] == "tinc-switch" and tinc[1] == "-" and set(tinc[2:-1]) == {"-"} and tinc[-1] == "0/1"


def test_datapaths_and_command_line() -> None:
    """The registry holds the reference and every datapath the brief names; --list runs without root or lab."""
    from bench.compare import DATAPATHS, main

    assert {REFERENCE, "ovl-dp-vxlan", "ovl-dp-gre", "ovs-vxlan", "ovs-gre", "tinc-switch"} <= set(DATAPATHS)
    assert {"ovl-dp-vxlan-ovs", "ovl-dp-gre-ovs", "ovl-dp-vxlan-ovs-tso", "ovl-dp-gre-ovs-tso"} <= set(DATAPATHS)
    assert DATAPATHS["ovl-dp-vxlan-udp-gso"].default and not DATAPATHS["ovl-dp-vxlan-python"].default
    # the kernel VXLAN's MTU on a 1500-byte underlay: 1450 over IPv4, 1430 over IPv6 (issue 11)
    assert all(d.mtu == (1430 if d.underlay == "ipv6" else 1450) for d in DATAPATHS.values())
    assert {d.name for d in DATAPATHS.values() if d.underlay == "ipv6"} == {
        "kernel-vxlan6",
        "ovl-dp-vxlan6",
        "ovl-dp-gre6",
    }
    assert main(["--list"]) == 0


def test_summarize_and_table_against_a_second_reference() -> None:
    """ovl-dp on OVS br-int against OVS's own tunnel of the same mode: versus ratios, a small table of them."""
    runs = {
        REFERENCE: rounds(10.0),
        "ovs-vxlan": rounds(0.8),
        "ovl-dp-vxlan-ovs": rounds(1.0),
        "ovl-dp-gre-ovs": rounds(0.5),  # its versus did not run: no versus ratio
    }
    s = summarize(runs, versus={"ovl-dp-vxlan-ovs": "ovs-vxlan", "ovl-dp-gre-ovs": "ovs-gre"})
    assert s["ovl-dp-vxlan-ovs"]["versus"] == "ovs-vxlan"
    assert s["ovl-dp-vxlan-ovs"]["versus_ratio"]["tcp1_gbps"] == pytest.approx(1.25)
    assert s["ovl-dp-vxlan-ovs"]["ratio"]["tcp1_gbps"] == pytest.approx(0.1)  # the main reference stays
    assert "versus" not in s["ovl-dp-gre-ovs"] and "versus" not in s["ovs-vxlan"]
    text = versus_table(s, {"ovl-dp-vxlan-ovs": "ovl-dp VXLAN on OVS br-int", "ovs-vxlan": "OVS userspace VXLAN"})
    lines = text.splitlines()
    assert len(lines) == 3 and len({len(line) for line in lines}) == 1
    row = [c.strip() for c in lines[2].strip("|").split("|")]
    assert row[:3] == ["ovl-dp VXLAN on OVS br-int", "OVS userspace VXLAN", f"{TIMES}1.25"]
    assert set(row[3:]) == {"-"}  # only TCP 1 stream was measured
    assert versus_table(summarize(runs)) == ""


def test_ovs_datapaths_come_with_their_versus() -> None:
    """The seed scenario on OVS: ovl-dp-*-ovs(-tso) are listed, each runs with OVS's tunnel of its mode and OVS
    setting (and the kernel's VXLAN, the main reference)."""
    import argparse

    from bench.compare import DATAPATHS, _select

    for mode in ("vxlan", "gre"):
        plain, tso = DATAPATHS[f"ovl-dp-{mode}-ovs"], DATAPATHS[f"ovl-dp-{mode}-ovs-tso"]
        assert plain.bridge == tso.bridge == "ovs" and plain.default and not tso.default
        assert plain.versus == f"ovs-{mode}" and tso.versus == f"ovs-{mode}-tso"
        assert not plain.ovs_config and DATAPATHS[f"ovs-{mode}"].ovs_config == ()
        assert dict(tso.ovs_config) == dict(DATAPATHS[f"ovs-{mode}-tso"].ovs_config) == {"userspace-tso-enable": "true"}
    names, skipped = _select(argparse.Namespace(only=["ovl-dp-gre-ovs-tso", "ovl-dp-vxlan-ovs"]))
    assert (names + list(skipped))[:1] == [REFERENCE]
    assert set(names) | set(skipped) == {
        REFERENCE,
        "ovl-dp-gre-ovs-tso",
        "ovs-gre-tso",
        "ovl-dp-vxlan-ovs",
        "ovs-vxlan",
    }


# -- the runner, with the lab replaced by fakes ----------------------------------------------------


class FakeLab:
    """Just enough of control.lab.hosts.Lab for bench.compare.measure, without namespaces."""

    closed = 0

    def __init__(self, hosts: int = 2, underlay: str = "ipv4") -> None:
        self.daemons: dict[int, Any] = {}
        self.underlay = underlay

    def __enter__(self) -> FakeLab:
        return self

    def __exit__(self, *exc: object) -> None:
        FakeLab.closed += 1

    def build(self, mtu: int, bridge: str = "linux", ovs_config: dict[str, str] | None = None) -> FakeLab:
        return self

    def ping(self, src: int, dst: int, **kw: Any) -> dict[str, float]:
        return {"loss": 0.0}

    def iperf3(self, client: int, server: int, seconds: int, *extra: str) -> dict[str, Any]:
        if "-u" in extra:
            return {"error": "error - control socket has closed unexpectedly"}
        return tcp_result(4e9 if "-P" in extra else 2e9, 1_250_000_000)


@pytest.fixture
def fake_lab(monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.compare as compare

    monkeypatch.setattr(compare, "Lab", FakeLab)
    monkeypatch.setattr(compare, "_ping", lambda lab, count, interval: ping_summary(PING))
    monkeypatch.setattr(compare, "_container_mtu", lambda lab: 1450)


def test_measure_records_a_failed_test_and_a_failed_datapath(fake_lab: None) -> None:
    from bench.compare import Datapath, measure

    said: list[str] = []
    rnd = measure(Datapath("fake", "fake", lambda lab: []), 5, said.append)
    assert rnd["ok"] and rnd["error"] is None and rnd["mtu"] == 1450
    assert rnd["metrics"]["tcp1_gbps"] == 2.0 and rnd["metrics"]["tcp4_gbps"] == 4.0
    assert "udp_pps" not in rnd["metrics"] and "control socket" in rnd["errors"]["udp 64 B"]
    assert "cpu_s_per_gb" not in rnd["metrics"]  # no userspace processes

    def broken(lab: Any) -> list[int]:
        raise LabError("tincd exited with 1")

    closed = FakeLab.closed
    rnd = measure(Datapath("fake", "fake", broken), 5, said.append)
    assert not rnd["ok"] and rnd["error"] == "LabError: tincd exited with 1" and rnd["metrics"] == {}
    assert FakeLab.closed == closed + 1  # the lab was torn down
    assert any("FAILED" in s for s in said)


def test_measure_cpu_and_rss_of_the_datapaths_processes(fake_lab: None) -> None:
    import os

    from bench.compare import Datapath, measure

    rnd = measure(Datapath("fake", "fake", lambda lab: [os.getpid()]), 5, lambda s: None)
    assert rnd["metrics"]["cpu_s_per_gb"] >= 0 and rnd["metrics"]["rss_mb"] > 1


def test_main_rotates_and_reports(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A whole run with canned rounds: order rotates, a failure is a row, not a crash; table, JSON, PNG."""
    import bench.compare as compare

    calls: list[str] = []

    def fake_measure(dp: Any, seconds: int, say: Any, ping_count: int) -> dict[str, Any]:
        calls.append(dp.name)
        if dp.name == "ovl-dp-gre" and calls.count(dp.name) == 2:
            return {"ok": False, "error": "LabError: boom", "metrics": {}, "errors": {}}
        gbps = 10.0 if dp.name == REFERENCE else 1.0
        return {"ok": True, "error": None, "mtu": 1450, "metrics": {"tcp1_gbps": gbps, "rtt_p50_ms": 0.1}, "errors": {}}

    monkeypatch.setattr(compare, "measure", fake_measure)
    monkeypatch.setattr(compare.os, "geteuid", lambda: 0)
    out_json, out_png = tmp_path / "r" / "b.json", tmp_path / "r" / "b.png"
    args = ["--rounds", "3", "--only", "ovl-dp-vxlan", "--only", "ovl-dp-gre", "--json", str(out_json)]
    try:
        import matplotlib  # noqa: F401

        args += ["--png", str(out_png)]
    except ImportError:
        pass
    assert compare.main(args) == 0
    k, v, g = REFERENCE, "ovl-dp-vxlan", "ovl-dp-gre"
    assert calls == [k, v, g, v, g, k, g, k, v]
    out = capsys.readouterr().out
    assert "| ovl-dp GRE " in out and " 2/3 |" in out and f"1.00 {TIMES}0.10" in out
    assert "ovl-dp-gre: failed in round 2: LabError: boom" in out
    report = json.loads(out_json.read_text())
    assert report["summary"][g]["rounds_ok"] == 2 and report["summary"][v]["ratio"]["tcp1_gbps"] == 0.1
    assert [r["round"] for r in report["runs"][k]] == [1, 2, 3] and report["meta"]["rounds"] == 3
    if "--png" in args:
        assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_main_reports_ovl_dp_on_ovs_against_ovs_native(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--only ovl-dp-vxlan-ovs runs OVS's own VXLAN too; the second table and the JSON give the ratio to it."""
    import dataclasses

    import bench.compare as compare

    for name in ("ovs-vxlan", "ovl-dp-vxlan-ovs"):  # as if OVS were installed here
        monkeypatch.setitem(compare.DATAPATHS, name, dataclasses.replace(compare.DATAPATHS[name], missing=lambda: None))
    gbps = {REFERENCE: 10.0, "ovs-vxlan": 0.8, "ovl-dp-vxlan-ovs": 1.0}
    calls: list[str] = []

    def fake_measure(dp: Any, seconds: int, say: Any, ping_count: int) -> dict[str, Any]:
        calls.append(dp.name)
        return {"ok": True, "error": None, "mtu": 1450, "metrics": {"tcp1_gbps": gbps[dp.name]}, "errors": {}}

    monkeypatch.setattr(compare, "measure", fake_measure)
    monkeypatch.setattr(compare.os, "geteuid", lambda: 0)
    out_json = tmp_path / "r.json"
    assert compare.main(["--rounds", "1", "--only", "ovl-dp-vxlan-ovs", "--json", str(out_json)]) == 0
    assert calls == [REFERENCE, "ovl-dp-vxlan-ovs", "ovs-vxlan"]
    out = capsys.readouterr().out
    assert "each against the tunnel it replaces" in out
    assert "| ovl-dp VXLAN on OVS br-int | OVS userspace VXLAN |" in out and f"{TIMES}1.25" in out
    report = json.loads(out_json.read_text())
    assert report["summary"]["ovl-dp-vxlan-ovs"]["versus_ratio"]["tcp1_gbps"] == pytest.approx(1.25)
    assert report["summary"]["ovl-dp-vxlan-ovs"]["ratio"]["tcp1_gbps"] == pytest.approx(0.1)
    assert report["datapaths"]["ovl-dp-vxlan-ovs"]["versus"] == "ovs-vxlan"
