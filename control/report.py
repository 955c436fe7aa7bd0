"""Human-readable counters and FDB, for logs, `ovl-dp show`, `ovl-dp fdb` and the lab."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def format_counters(snap: Mapping[str, Any]) -> str:
    """Counters as a few aligned lines; zero drop reasons are left out."""
    stats = snap["stats"]
    lines = [
        "datapath: " + "  ".join(f"{k}={v}" for k, v in stats.items()),
        "fdb:      " + "  ".join(f"{k}={v}" for k, v in snap["fdb"].items()),
    ]
    drops = {k: v for k, v in snap["drops"].items() if v}
    lines.append("drops:    " + ("  ".join(f"{k}={v}" for k, v in drops.items()) if drops else "none"))
    inject = snap.get("inject")
    if inject is not None:
        lines.append("inject:   " + "  ".join(f"{k}={v}" for k, v in inject.items()))
    if snap.get("tx_path"):
        lines.append(f"tx path:  {snap['tx_path']}")
    w = _width(r["remote"] for r in snap["remotes"])
    for r in snap["remotes"]:
        fields = "  ".join(f"{k}={v}" for k, v in r.items() if k != "remote")
        lines.append(f"remote {r['remote']:<{w}} {fields}")
    member = snap.get("membership")  # issue 12: a daemon on etcd
    if member:
        lines.append("members:  " + format_membership_line(member))
    watch = snap.get("watch")
    if watch:
        lines.append("watch:    " + "  ".join(f"{k}={v}" for k, v in watch.items() if k != "problem"))
        lines.append(f"problem:  {watch.get('problem') or 'none'}")
    return "\n".join(lines)


def format_fdb(rows: Sequence[Mapping[str, Any]]) -> str:
    """The MAC table as a table; VLAN 0 is untagged."""
    if not rows:
        return "(FDB empty)"
    w = _width(r["remote"] for r in rows)
    out = [f"{'VLAN':>4}  {'MAC':<17}  {'REMOTE':<{w}}  {'TYPE':<7}  AGE(s)"]
    for r in rows:
        kind = "static" if r["static"] else "learned"
        age = "-" if r["static"] else f"{r['age']:.1f}"
        out.append(f"{r.get('vlan', 0):>4}  {r['mac']:<17}  {r['remote']:<{w}}  {kind:<7}  {age}")
    return "\n".join(out)


def format_remotes(rows: Sequence[Mapping[str, Any]]) -> str:
    """The remotes with their counters and the seconds since a packet last came from each."""
    if not rows:
        return "(no remotes)"
    w, lw = _width(r["remote"] for r in rows), _width(r.get("local") or "-" for r in rows)
    out = [
        f"{'REMOTE':<{w}}  {'LOCAL':<{lw}}  {'TX PKTS':>9}  {'TX BYTES':>12}  {'RX PKTS':>9}  {'RX BYTES':>12}  "
        f"{'PMTU':>5}  LAST RX"
    ]
    for r in rows:
        age = r.get("last_rx_age")
        last = "never" if age is None else f"{age:.1f}s ago"
        out.append(
            f"{r['remote']:<{w}}  {r.get('local') or '-':<{lw}}  {r['tx_packets']:>9}  {r['tx_bytes']:>12}  "
            f"{r['rx_packets']:>9}  {r['rx_bytes']:>12}  {r.get('path_mtu') or '-':>5}  {last}"
        )
    return "\n".join(out)


def format_membership_line(m: Mapping[str, Any]) -> str:
    """`ovl-dp show`'s one line about membership on etcd: net, endpoint, state, members, problem."""
    where = m.get("endpoint") or ",".join(m.get("endpoints") or []) or "-"
    text = f"net {m.get('net')} on {where}: {m.get('state')}, {m.get('members', 0)} other member(s)"
    if m.get("problem"):
        text += f"; problem: {m['problem']}"
    return text


def _ago(stamp: object, now: float) -> str:
    return "never" if not isinstance(stamp, int | float) else f"{max(0.0, now - stamp):.1f}s ago"


def format_members(report: Mapping[str, Any], now: float | None = None) -> str:
    """`ovl-dp members`: a header line (net, etcd endpoint, state, our lease, last keepalive), then per member
    its address, host, since when this daemon has it, the traffic seen from it, and its state (last: a
    refusal's reason is as long as it is)."""
    import time

    now = time.time() if now is None else now
    lease = report.get("lease") or {}
    ttl = lease.get("ttl")
    head = (
        f"net {report.get('net')} on {report.get('endpoint') or 'no endpoint'} "
        f"({', '.join(report.get('endpoints') or [])}): {report.get('state')}; "
        f"our lease {'-' if ttl is None else f'{ttl:g} s'}, last keepalive {_ago(lease.get('last_keepalive'), now)}"
    )
    lines = [head]
    if report.get("problem"):
        lines.append(f"problem: {report['problem']}")
    rows = report.get("members") or []
    if not rows:
        lines.append("(no members)")
        return "\n".join(lines)
    w = _width(r["addr"] for r in rows)
    hw = max([4, *(len(str(r.get("hostname") or "-")) for r in rows)])
    lines.append(f"{'ADDR':<{w}}  {'HOST':<{hw}}  {'SINCE':>10}  {'RX PKTS':>9}  {'LAST RX':<10}  STATE")
    for r in rows:
        if r.get("self"):
            state, since = "self", "-"
        else:
            since = _ago(r.get("since"), now) if r.get("since") else "-"
            if r.get("refused"):
                state = f"refused: {r['refused']}"
            elif r.get("remote"):
                state = "remote" + (" (also static)" if r.get("static") else "")
            else:
                state = "not a remote"
        rx = r.get("rx_packets")
        age = r.get("last_rx_age")
        last = "-" if r.get("self") else ("never" if age is None else f"{age:.1f}s ago")
        lines.append(
            f"{r['addr']:<{w}}  {r.get('hostname') or '-':<{hw}}  {since:>10}  {'-' if rx is None else rx:>9}  "
            f"{last:<10}  {state}"
        )
    return "\n".join(lines)


def _width(addrs: Iterable[str]) -> int:
    """The column width for addresses: 15 (an IPv4 address), or the longest (an IPv6 one)."""
    return max([15, *(len(str(a)) for a in addrs)])
