"""control.report: counters and the FDB as text for logs, `ovl-dp show`, `ovl-dp fdb` and the lab."""

from __future__ import annotations

from typing import Any

from control.report import format_counters, format_fdb


def snapshot(**drops: int) -> dict[str, Any]:
    return {
        "stats": {"tx_frames": 10, "rx_frames": 7},
        "fdb": {"entries": 2, "learned": 3},
        "drops": {"rx_bad_vni": 0, "tx_too_big": 0, **drops},
        "remotes": [
            {"remote": "192.0.2.2", "tx_frames": 6, "rx_frames": 4},
            {"remote": "192.0.2.3", "tx_frames": 4, "rx_frames": 3},
        ],
    }


def test_counters_one_line_each_and_a_line_per_remote() -> None:
    assert format_counters(snapshot()).splitlines() == [
        "datapath: tx_frames=10  rx_frames=7",
        "fdb:      entries=2  learned=3",
        "drops:    none",
        "remote 192.0.2.2       tx_frames=6  rx_frames=4",
        "remote 192.0.2.3       tx_frames=4  rx_frames=3",
    ]


def test_counters_show_only_the_drop_reasons_that_happened() -> None:
    text = format_counters(snapshot(tx_too_big=2, rx_not_remote=5))
    assert "drops:    tx_too_big=2  rx_not_remote=5" in text.splitlines()
    assert "rx_bad_vni" not in text


def test_counters_without_remotes() -> None:
    snap = snapshot()
    snap["remotes"] = []
    assert len(format_counters(snap).splitlines()) == 3


def test_empty_fdb() -> None:
    assert format_fdb([]) == "(FDB empty)"


def test_fdb_table_learned_static_and_untagged() -> None:
    rows = [
        {"vlan": 20, "mac": "02:00:00:00:00:01", "remote": "192.0.2.2", "static": False, "age": 1.26},
        {"mac": "02:00:00:00:00:02", "remote": "192.0.2.3", "static": True, "age": 0.0},
    ]
    assert format_fdb(rows).splitlines() == [
        "VLAN  MAC                REMOTE           TYPE     AGE(s)",
        "  20  02:00:00:00:00:01  192.0.2.2        learned  1.3",
        "   0  02:00:00:00:00:02  192.0.2.3        static   -",
    ]


def test_counters_with_the_link_watchers_report() -> None:
    snap = {**snapshot(), "watch": {"tap_recreated": 1, "bridge_lost": 0, "problem": ""}}
    assert format_counters(snap).splitlines()[-2:] == ["watch:    tap_recreated=1  bridge_lost=0", "problem:  none"]
    snap["watch"]["problem"] = "TAP t is not attached: bridge b does not exist"
    assert format_counters(snap).splitlines()[-1] == "problem:  TAP t is not attached: bridge b does not exist"


def test_remotes_show_the_path_mtu() -> None:
    """Issue 11: `remote list` shows each remote's path MTU (PMTU), '-' where the row has none."""
    from control.report import format_remotes

    row = {"remote": "192.0.2.2", "local": "192.0.2.1", "tx_packets": 1, "tx_bytes": 2, "rx_packets": 3,
           "rx_bytes": 4, "last_rx_age": None}  # fmt: skip
    text = format_remotes([{**row, "path_mtu": 1400}, {**row, "remote": "192.0.2.3"}])
    head, first, second = text.splitlines()
    assert head.split()[-3:] == ["PMTU", "LAST", "RX"]
    assert first.split()[-2:] == ["1400", "never"] and second.split()[-2:] == ["-", "never"]
