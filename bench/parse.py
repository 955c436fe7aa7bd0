"""Pure parsers for the benchmark: ping and iperf3 output, /proc figures, percentiles. No lab, no I/O."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

_PING_TIME = re.compile(r"icmp_seq=(\d+)\b.*?\btime[=<]([\d.]+) ms")
_PING_LOSS = re.compile(r"([\d.]+)% packet loss")


def ping_times(output: str) -> list[float]:
    """Per-packet RTTs (ms) of iputils ping's output, in order; duplicate replies (DUP!) counted once."""
    seen: set[int] = set()
    times = []
    for line in output.splitlines():
        m = _PING_TIME.search(line)
        if m is None or "DUP!" in line:
            continue
        seq = int(m.group(1))
        if seq not in seen:
            seen.add(seq)
            times.append(float(m.group(2)))
    return times


def ping_loss(output: str) -> float:
    """Packet loss (%) from ping's summary line; 100 if there is none."""
    m = _PING_LOSS.search(output)
    return float(m.group(1)) if m else 100.0


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} outside 0-100")
    s = sorted(values)
    pos = (len(s) - 1) * p / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def ping_summary(output: str) -> dict[str, float]:
    """RTT p50/p99 (ms) over the per-packet times, the number of replies and the loss (%)."""
    times = ping_times(output)
    if not times:
        raise ValueError(f"no ping replies: {output.strip()[-300:]}")
    return {
        "rtt_p50_ms": percentile(times, 50),
        "rtt_p99_ms": percentile(times, 99),
        "ping_replies": float(len(times)),
        "ping_loss_pct": ping_loss(output),
    }


class IperfError(Exception):
    """iperf3 reported an error or produced no result."""


def _end(result: dict[str, Any]) -> dict[str, Any]:
    if "error" in result:
        raise IperfError(str(result["error"]).strip()[-300:])
    end = result.get("end")
    if not isinstance(end, dict) or "sum_received" not in end:
        raise IperfError(f"no end.sum_received in iperf3's result (keys {sorted(result)})")
    return end


def iperf_tcp(result: dict[str, Any]) -> dict[str, float]:
    """Received Gbit/s, received bytes and sender retransmits of an iperf3 -J TCP result (all streams)."""
    end = _end(result)
    rx = end["sum_received"]
    return {
        "gbps": float(rx["bits_per_second"]) / 1e9,
        "bytes": float(rx["bytes"]),
        "retransmits": float(end.get("sum_sent", {}).get("retransmits", 0)),
    }


def iperf_udp(result: dict[str, Any]) -> dict[str, float]:
    """Delivered packets/s, sent packets/s and loss (%) of an iperf3 -J -u result.

    iperf3 (3.9+) puts the receiver's view in end.sum_received: packets is what
    the client sent, lost_packets what the server did not get (it may go
    negative with reordering: clamped at 0).
    """
    end = _end(result)
    rx = end["sum_received"]
    seconds = float(rx["seconds"])
    if seconds <= 0:
        raise IperfError("iperf3 UDP result covers no time")
    sent = float(rx["packets"])
    lost = min(max(float(rx["lost_packets"]), 0.0), sent)
    return {
        "udp_pps": (sent - lost) / seconds,
        "udp_sent_pps": sent / seconds,
        "udp_loss_pct": 100.0 * lost / sent if sent else 100.0,
    }


def proc_cpu_ticks(stat: str) -> int:
    """utime + stime (clock ticks, all threads) from the text of /proc/PID/stat."""
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": fields[0] is the state, field 3
    return int(fields[11]) + int(fields[12])  # fields 14 and 15: utime, stime


def proc_vmhwm_kb(status: str) -> int:
    """Peak resident set size (VmHWM, kB) from the text of /proc/PID/status."""
    m = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    if m is None:
        raise ValueError("no VmHWM in /proc/PID/status")
    return int(m.group(1))
