"""Medians, ratios to the reference and the table of the benchmark. Pure: no lab, no I/O.

A run is, per datapath, a list of rounds; a round is a dict with ``ok`` (the
datapath came up), ``error`` (why not, or None), ``metrics`` (name -> value,
only those measured) and ``errors`` (test -> message, for a test that failed
while the datapath was up).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

REFERENCE = "kernel-vxlan"
TIMES = "\u00d7"  # the multiplication sign, as in "12.55 x1.00"


@dataclass(frozen=True)
class Metric:
    key: str
    header: str
    fmt: str  # format spec for the value
    scale: float = 1.0  # shown value = stored value * scale
    ratio: bool = True  # a ratio to the reference makes sense
    better: str = "higher"


METRICS: tuple[Metric, ...] = (
    Metric("tcp1_gbps", "TCP 1 stream Gbit/s", ".2f"),
    Metric("tcp4_gbps", "TCP 4 streams Gbit/s", ".2f"),
    Metric("rtt_p50_ms", "RTT p50 ms", ".3f", better="lower"),
    Metric("rtt_p99_ms", "RTT p99 ms", ".3f", better="lower"),
    Metric("udp_pps", "UDP 64 B kpps", ".1f", scale=1e-3),
    Metric("udp_loss_pct", "UDP loss %", ".1f", ratio=False, better="lower"),
    Metric("cpu_s_per_gb", "CPU s/GB", ".2f", better="lower"),
    Metric("rss_mb", "peak RSS MB", ".1f", ratio=False, better="lower"),
)


def medians(rounds: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Per metric, the median over the rounds that measured it (failed rounds have no metrics)."""
    values: dict[str, list[float]] = {}
    for rnd in rounds:
        for key, value in rnd.get("metrics", {}).items():
            if value is not None and not math.isnan(value):
                values.setdefault(key, []).append(float(value))
    return {key: statistics.median(v) for key, v in values.items()}


def ratios(med: Mapping[str, float], ref: Mapping[str, float]) -> dict[str, float]:
    """med / ref for every metric both have (and the reference's is not 0)."""
    return {k: v / ref[k] for k, v in med.items() if k in ref and ref[k] != 0}


def summarize(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    reference: str = REFERENCE,
    versus: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Per datapath: medians, ratios to the reference's medians, rounds ok / failed (with the errors).

    versus: datapath -> a second reference of its own (what it replaces, e.g. ovl-dp on OVS br-int -> OVS's
    native tunnel of the same mode); when that one ran, the entry gets ``versus`` (its name) and
    ``versus_ratio`` (medians / its medians).
    """
    med = {name: medians(rounds) for name, rounds in runs.items()}
    ref = med.get(reference, {})
    out: dict[str, Any] = {}
    for name, rounds in runs.items():
        other = (versus or {}).get(name)
        extra = {"versus": other, "versus_ratio": ratios(med[name], med[other])} if other in med else {}
        out[name] = {
            "median": med[name],
            "ratio": ratios(med[name], ref),
            **extra,
            "rounds_ok": sum(1 for r in rounds if r.get("ok")),
            "rounds": len(rounds),
            "failures": [
                f"round {r.get('round', i + 1)}: {r.get('error')}" for i, r in enumerate(rounds) if not r.get("ok")
            ],
            "test_errors": [
                f"round {r.get('round', i + 1)} {test}: {msg}"
                for i, r in enumerate(rounds)
                for test, msg in r.get("errors", {}).items()
            ],
        }
    return out


def cell(metric: Metric, value: float | None, ratio: float | None) -> str:
    """'12.55 x1.00' (with the multiplication sign), '12.55' (no ratio), or '-' (not measured)."""
    if value is None:
        return "-"
    text = format(value * metric.scale, metric.fmt)
    if metric.ratio and ratio is not None:
        text += f" {TIMES}{ratio:.2f}"
    return text


def table(
    summary: Mapping[str, Mapping[str, Any]],
    labels: Mapping[str, str] | None = None,
    mtus: Mapping[str, str] | None = None,
    metrics: Sequence[Metric] = METRICS,
) -> str:
    """A Markdown pipe table (readable on a terminal): a row per datapath, value and ratio per metric."""
    labels = labels or {}
    head = ["datapath", "MTU", *(m.header for m in metrics), "rounds ok"]
    rows = []
    for name, s in summary.items():
        row = [labels.get(name, name), mtus[name] if mtus and name in mtus else "-"]
        row += [cell(m, s["median"].get(m.key), s["ratio"].get(m.key)) for m in metrics]
        row.append(f"{s['rounds_ok']}/{s['rounds']}")
        rows.append(row)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        parts = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "| " + " | ".join(parts) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(head), rule, *(line(r) for r in rows)])


def versus_table(
    summary: Mapping[str, Mapping[str, Any]],
    labels: Mapping[str, str] | None = None,
    metrics: Sequence[Metric] = METRICS,
) -> str:
    """A Markdown table of the datapaths that have a second reference (summarize's versus): per metric the
    ratio of their median to that reference's median; '' when no datapath has one."""
    labels = labels or {}
    shown = [m for m in metrics if m.ratio]
    head = ["datapath", "versus", *(m.header for m in shown)]
    rows = []
    for name, s in summary.items():
        other = s.get("versus")
        if other is None:
            continue
        r = s.get("versus_ratio", {})
        cells = [f"{TIMES}{r[m.key]:.2f}" if m.key in r else "-" for m in shown]
        rows.append([labels.get(name, name), labels.get(other, other), *cells])
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        parts = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "| " + " | ".join(parts) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i >= 2 else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(head), rule, *(line(r) for r in rows)])
