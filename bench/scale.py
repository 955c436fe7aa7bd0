"""How ovl-dp's cost grows: throughput and RSS with 100,000 learned MACs and with 1,000 remotes, flood cost per frame.

    python3 -m bench.scale [--seconds 3] [--rounds 1] [--macs 100000] [--remotes 1000] [--floods 4000]

One two-host lab (control.lab.hosts.Lab, Linux bridges), ovl-dp VXLAN on both hosts with default
options (but ``--fdb-max`` room for the MACs). Phases, measured in this order on host 1's daemon:

  base     a handful of FDB entries, 1 remote
  macs     MACs learned for real: container 2 sends frames from N distinct source MACs (AF_PACKET,
           to container 1's MAC), host 2's ovl-dp tunnels them, host 1's learns each behind host 2
           (checked: its FDB holds them); then measured with the table full
  base again  the FDB flushed (control socket): base once more, for the noise between phases
  remotes  then R - 1 more remotes added on host 1 over the control
           socket (``remote add``, as the CLI sends it), addresses 10.200.x.y routed in host 1's
           namespace to a veth whose peer holds no address (a static neighbour no one has: the copies
           leave ovl-dp and the kernel's send path, and are dropped at the far end of that veth)

Each phase: iperf3 TCP container 1 -> 2 and 2 -> 1 (Gbit/s), host 1's daemon VmRSS / VmHWM, and the
flood cost: F broadcast frames from container 1 (AF_PACKET, an experimental EtherType no stack
answers, in chunks of 32), host 1's daemon CPU time (all its threads, /proc/PID/task/*/schedstat,
ns) per flooded frame and per copy sent, and what ``show`` counted (tx_flooded, copies, drops).
Rounds repeat the whole set of phases (new lab each) so that a busy machine shows in the spread.
It reports; it never passes or fails.
"""

from __future__ import annotations

import argparse
import glob
import json
import subprocess
import sys
import time
from typing import Any

from control.lab.hosts import Lab, container_mtu
from control.lab.shell import mac_of, nsexec, sh

SINK_NET = "10.200."

# Frames from N source MACs to dst, out of eth0: written by a child in the container's namespace.
SEND_MACS = """
import socket, sys, time
dst, n = bytes.fromhex(sys.argv[1]), int(sys.argv[2])
with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
    s.bind(("eth0", 0))
    for i in range(n):
        src = bytes([0x02, 0x5c]) + i.to_bytes(4, "big")
        s.send(dst + src + b"\\x88\\xb5" + bytes(46))
        if i % 64 == 63:
            time.sleep(0.0005)  # the TAP queue and the daemon's batches keep up
"""

# F broadcast frames out of eth0, in chunks.
SEND_FLOOD = """
import socket, sys, time
n = int(sys.argv[1])
frame = b"\\xff" * 6 + bytes.fromhex("025c00ff0001") + b"\\x88\\xb5" + bytes(96)
with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
    s.bind(("eth0", 0))
    for i in range(n):
        s.send(frame)
        if i % 32 == 31:
            time.sleep(0.002)
"""

# R - 1 remotes added over the control socket of the daemon in this namespace.
ADD_REMOTES = """
import sys, time
from control import ctl
tap, n = ctl.running()[0], int(sys.argv[1])
took = []
for i in range(n):
    t = time.monotonic()
    ctl.request(tap, "remote", {"op": "add", "addr": f"10.200.{i // 250}.{i % 250 + 1}"})
    took.append(time.monotonic() - t)
k = max(n // 10, 1)
print(f"{sum(took[:k]) / k * 1e3:.1f} {sum(took[-k:]) / k * 1e3:.1f}")
"""

FLUSH_FDB = """
from control import ctl
ctl.request(ctl.running()[0], "fdb", {"op": "flush", "remote": None})
"""


def daemon_pid(lab: Lab, i: int) -> int:
    return lab.daemons[i].proc.pid


def status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of pid, in ns (schedstat's first field)."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that just ended
    return total


def gbits(lab: Lab, client: int, server: int, seconds: int) -> float:
    res = lab.iperf3(client, server, seconds)
    if "error" in res:
        return float("nan")
    return float(res["end"]["sum_received"]["bits_per_second"]) / 1e9


def flood_cost(lab: Lab, frames: int) -> dict[str, Any]:
    """Host 1's daemon CPU per flooded frame from container 1, and what it counted."""
    pid = daemon_pid(lab, 1)
    before = lab.ovl(1, "show")
    # Idle CPU over a comparable wall time (timers, the control plane) is measured first and subtracted.
    t0, c0 = time.monotonic(), cpu_ns(pid)
    time.sleep(1.0)
    idle_per_s = (cpu_ns(pid) - c0) / (time.monotonic() - t0)
    t0, c0 = time.monotonic(), cpu_ns(pid)
    nsexec(lab.container(1), sys.executable, "-c", SEND_FLOOD, str(frames))
    time.sleep(0.5)  # the last batches
    wall, used = time.monotonic() - t0, cpu_ns(pid) - c0
    after = lab.ovl(1, "show")
    flooded = after["stats"]["tx_flooded"] - before["stats"]["tx_flooded"]
    copies = sum(int(r["tx_flood"]) for r in after["remotes"]) - sum(int(r["tx_flood"]) for r in before["remotes"])
    drops = {k: v - before["drops"].get(k, 0) for k, v in after["drops"].items() if v - before["drops"].get(k, 0)}
    cpu = max(used - idle_per_s * wall, 0.0)
    return {
        "flooded": flooded,
        "copies": copies,
        "us_per_frame": cpu / max(flooded, 1) / 1e3,
        "ns_per_copy": cpu / max(copies, 1),
        "drops": drops,
    }


def measure(lab: Lab, phase: str, seconds: int, floods: int) -> dict[str, Any]:
    pid = daemon_pid(lab, 1)
    row: dict[str, Any] = {"phase": phase}
    row["h1_h2"] = gbits(lab, 1, 2, seconds)
    row["h2_h1"] = gbits(lab, 2, 1, seconds)
    row.update(flood_cost(lab, floods))
    t0, c0 = time.monotonic(), cpu_ns(pid)
    time.sleep(2.0)
    row["idle_ms_per_s"] = (cpu_ns(pid) - c0) / (time.monotonic() - t0) / 1e6  # timers, control plane
    snap = lab.ovl(1, "show")
    row["fdb"] = snap["fdb"]["entries"]
    row["remotes"] = len(snap["remotes"])
    row["rss_mb"] = status_kb(pid, "VmRSS") / 1024
    row["hwm_mb"] = status_kb(pid, "VmHWM") / 1024
    return row


def learn_macs(lab: Lab, n: int) -> tuple[float, list[int]]:
    """Container 2 sends frames from n source MACs to container 1; (seconds, host 1's FDB entries after each pass)."""
    dst = mac_of(lab.container(1), "eth0").replace(":", "")
    t0 = time.monotonic()
    passes = []
    for _ in range(4):  # a frame lost on the way (a full TAP queue) is sent again in the next pass
        nsexec(lab.container(2), sys.executable, "-c", SEND_MACS, dst, str(n), timeout=600)
        time.sleep(0.5)
        passes.append(int(lab.ovl(1, "show")["fdb"]["entries"]))
        if passes[-1] >= n:
            break
    return time.monotonic() - t0, passes


def sink_routes(lab: Lab) -> None:
    """10.200.0.0/16 on host 1 goes out of a veth to a neighbour no one has."""
    h = lab.host(1)
    sh("ip", "-n", h, "link", "add", "sink0", "type", "veth", "peer", "name", "sink1")
    for dev in ("sink0", "sink1"):
        sh("ip", "-n", h, "link", "set", dev, "up")
    sh("ip", "-n", h, "addr", "add", "10.254.0.1/30", "dev", "sink0")
    sh("ip", "-n", h, "neigh", "add", "10.254.0.2", "lladdr", "02:00:00:00:00:fe", "dev", "sink0", "nud", "permanent")
    sh("ip", "-n", h, "route", "add", f"{SINK_NET}0.0/16", "via", "10.254.0.2")


def run_round(seconds: int, macs: int, remotes: int, floods: int) -> list[dict[str, Any]]:
    rows = []
    with Lab(2) as lab:
        lab.build(container_mtu("vxlan"))
        sink_routes(lab)
        lab.start_mesh("vxlan", "--fdb-max", str(macs + 1024))
        lab.ping(1, 2, count=3)
        rows.append(measure(lab, "base", seconds, floods))
        took, passes = learn_macs(lab, macs)
        row = measure(lab, f"{macs} MACs", seconds, floods)
        row["learn_s"], row["learn_passes"] = took, passes
        row["h1_fdb"] = lab.ovl(1, "show")["fdb"]
        row["h2_drops"] = {k: v for k, v in lab.ovl(2, "show")["drops"].items() if v}
        rows.append(row)
        nsexec(lab.host(1), sys.executable, "-c", FLUSH_FDB)
        # The same lab again with the FDB flushed: what "base" measures, for the noise between phases.
        rows.append(measure(lab, "base again", seconds, floods))
        t0 = time.monotonic()
        first, last = nsexec(
            lab.host(1), sys.executable, "-c", ADD_REMOTES, str(remotes - 1), timeout=900
        ).stdout.split()
        took = time.monotonic() - t0
        lab.ping(1, 2, count=3)
        # Fewer floods with many remotes: each is `remotes` copies.
        row = measure(lab, f"{remotes} remotes", seconds, max(floods // 10, 200))
        row["add_s"], row["add_ms_first_last_tenth"] = round(took, 1), (float(first), float(last))
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| phase | FDB entries | remotes | TCP h1→h2 Gbit/s | TCP h2→h1 Gbit/s | flood CPU µs/frame | ns/copy "
            "| copies per flood | idle CPU ms/s | RSS MB (peak) |")  # fmt: skip
    out = [head, "|" + "---|" * 10]
    for r in rows:
        per = r["copies"] / max(r["flooded"], 1)
        out.append(
            f"| {r['phase']} | {r['fdb']} | {r['remotes']} | {r['h1_h2']:.2f} | {r['h2_h1']:.2f} "
            f"| {r['us_per_frame']:.1f} | {r['ns_per_copy']:.0f} | {per:.0f} | {r['idle_ms_per_s']:.1f} "
            f"| {r['rss_mb']:.1f} ({r['hwm_mb']:.1f}) |"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--macs", type=int, default=100_000)
    ap.add_argument("--remotes", type=int, default=1000)
    ap.add_argument("--floods", type=int, default=4000)
    ap.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = ap.parse_args()
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {' '.join(load)}", flush=True)
    rows: list[dict[str, Any]] = []
    for k in range(args.rounds):
        got = run_round(args.seconds, args.macs, args.remotes, args.floods)
        for r in got:
            r["round"] = k + 1
            keys = ("learn_s", "learn_passes", "h1_fdb", "h2_drops", "add_s", "add_ms_first_last_tenth")
            extra = {x: r[x] for x in keys if x in r}
            print(f"round {k + 1}: {r['phase']}: drops in the flood {r['drops']} {extra}", flush=True)
        rows += got
    print(table(rows))
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as exc:
        sys.exit(f"bench.scale: {exc.cmd!r} failed: {exc.stderr}")
