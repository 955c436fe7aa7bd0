"""bench.members' pure parts: member addresses and values, the daemons' log lines, latency figures, the table."""

from __future__ import annotations

import ipaddress
import json
import time

import pytest

from bench.members import fake_addr, latency_stats, log_events, member_key, member_value, propagation, table


def test_fake_addresses_are_distinct_hosts_of_the_benchmarking_range() -> None:
    net = ipaddress.ip_network("198.18.0.0/15")
    addrs = [fake_addr(i) for i in range(2000)]
    assert len(set(addrs)) == 2000
    for a in addrs:
        ip = ipaddress.ip_address(a)
        assert ip in net
        assert a.split(".")[3] not in ("0", "255")
    assert fake_addr(0) == "198.18.0.1"
    assert fake_addr(254) == "198.18.1.1"
    with pytest.raises(ValueError, match="beyond"):
        fake_addr(254 * 512)


def test_member_value_follows_the_contract() -> None:
    value = json.loads(member_value("198.18.0.7", 6, 1700000000.123456))
    assert set(value) == {"addr", "mac", "hostname", "machine_id", "netns", "version", "pid", "joined"}
    assert value["addr"] == "198.18.0.7"
    assert value["mac"] == "02:be:00:00:00:06"
    assert value["joined"] == 1700000000.123
    assert isinstance(value["netns"], int) and isinstance(value["pid"], int)
    other = json.loads(member_value("198.18.0.8", 7, 0))
    assert other["machine_id"] != value["machine_id"] and len(value["machine_id"]) == 32
    assert member_key("bench", "198.18.0.7") == "/ovl-dp/v1/nets/bench/members/198.18.0.7"


def test_log_events_reads_remote_changes_with_their_local_time() -> None:
    lines = [
        "2026-12-01 21:21:39,502 ovl-dp[10100] INFO ready",
        "2026-12-01 21:21:39,550 ovl-dp[10100] INFO remote 192.0.2.2: raw socket (neighbour being resolved)",
        "2026-12-01 21:21:40,007 ovl-dp[10100] INFO remote 198.18.0.1 added (local 192.0.2.1)",
        "2026-12-01 21:21:41,250 ovl-dp[10100] INFO remote 198.18.0.1 removed",
        "2026-12-01 21:21:40,100 ovl-dp[10100] INFO member 198.18.0.1 joined: a remote now",
        "2026-12-01 21:21:42,500 ovl-dp[10100] INFO member 198.18.0.2 left: remote removed (0 FDB entries ...)",
        "2026-12-01 21:21:42,600 ovl-dp[10100] INFO member 198.18.0.3 left; it stays a (static) remote",
        "Traceback (most recent call last):",
        "2026-12-01 21:21:4",  # a partial line
    ]
    got = log_events(lines)
    base = time.mktime(time.strptime("2026-12-01 21:21:40", "%Y-%m-%d %H:%M:%S"))
    assert [(k, a) for _, k, a in got] == [
        ("added", "198.18.0.1"),
        ("removed", "198.18.0.1"),
        ("removed", "198.18.0.2"),
    ]
    assert got[0][0] == pytest.approx(base + 0.007)
    assert got[1][0] == pytest.approx(base + 1.25)


def test_latency_stats_counts_the_missing_and_gives_ms() -> None:
    st = latency_stats([0.010, 0.020, None, 0.030])
    assert st["n"] == 4 and st["missing"] == 1
    assert st["p50_ms"] == 20.0 and st["max_ms"] == 30.0 and st["mean_ms"] == 20.0
    assert 29.0 < st["p99_ms"] <= 30.0
    none = latency_stats([None])
    assert none["missing"] == 1 and none["p99_ms"] is None


def test_propagation_takes_the_last_daemon() -> None:
    sent = {"a": 100.0, "b": 200.0}
    d1 = {"a": 100.010, "b": 200.500}
    d2 = {"a": 100.030}  # never saw b
    res = propagation(sent, [d1, d2], {"a": 100.005, "b": 200.001})
    assert res["all"]["n"] == 2 and res["all"]["missing"] == 1
    assert res["all"]["max_ms"] == pytest.approx(30.0)
    assert res["after_etcd"]["max_ms"] == pytest.approx(25.0)
    assert res["per_daemon"][0]["missing"] == 0 and res["per_daemon"][0]["max_ms"] == pytest.approx(500.0)
    assert res["per_daemon"][1]["missing"] == 1


def test_table_says_whether_targets_were_reached() -> None:
    ok = propagation({"a": 0.0}, [{"a": 0.2}], {})
    slow = propagation({"b": 0.0}, [{"b": 1.5}], {})
    crash = propagation({"c": 0.0}, [{"c": 15.6}], {})
    result = {
        "phases": {
            "join one by one": {"kind": "added", **ok},
            "leave burst": {"kind": "removed", **slow},
            "crash": {"kind": "removed", "target_ms": 16000.0, **crash},
        }
    }
    lines = table(result).splitlines()
    row = {ln.split("|")[1].strip(): ln for ln in lines if ln.startswith("| ") and "phase" not in ln}
    assert row["join one by one"].rstrip(" |").endswith("yes")
    assert row["leave burst"].rstrip(" |").endswith("no")
    assert row["crash"].rstrip(" |").endswith("yes")
