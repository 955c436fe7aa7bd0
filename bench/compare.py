"""ovl-dp against the kernel's own VXLAN, side by side in one run.

Each round builds the two-host lab (control.lab) once per datapath, in an
interleaved order, and measures TCP throughput (iperf3, one stream, container
MTU 1450 for every datapath) and ping RTT between the containers. Medians over
the rounds are printed as a table, each also as a ratio to the kernel's VXLAN
from the same run, and written as JSON.

    python3 -m bench.compare [--rounds 3] [--seconds 5] [--json FILE]

The benchmark reports; it does not pass or fail.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from control.lab import Lab, sh

VNI = 42
CONTAINER_MTU = 1450  # what the kernel's VXLAN leaves on a 1500 underlay; the same for all


def _kernel_vxlan(lab: Lab) -> None:
    for i, j in ((1, 2), (2, 1)):
        h = lab.host(i)
        sh("ip", "-n", h, "link", "add", "vx0", "type", "vxlan", "id", str(VNI), "remote", lab.underlay_ip(j),
           "local", lab.underlay_ip(i), "dstport", "4789", "dev", "ul0")  # fmt: skip
        sh("ip", "-n", h, "link", "set", "vx0", "master", "br-int", "up")


def _ovl(mode: str, fast: bool = True) -> Callable[[Lab], None]:
    def start(lab: Lab) -> None:
        extra = ("--vni", str(VNI)) if mode == "vxlan" else ()
        lab.start_mesh(mode, *extra, *(() if fast else ("--no-fast-path",)))

    return start


DATAPATHS: dict[str, Callable[[Lab], None]] = {
    "kernel-vxlan": _kernel_vxlan,
    "ovl-dp-vxlan": _ovl("vxlan"),
    "ovl-dp-gre": _ovl("gre"),
    "ovl-dp-vxlan-python": _ovl("vxlan", fast=False),
}


def measure(name: str, seconds: int) -> dict[str, float]:
    """One lab, one datapath: throughput (Gbit/s) and ping RTT (ms)."""
    with Lab(2) as lab:
        lab.build(CONTAINER_MTU)
        DATAPATHS[name](lab)
        lab.ping(1, 2, count=3, interval=0.1)  # ARP and FDB warm-up
        rtt = lab.ping(1, 2, count=50, interval=0.02)
        perf = lab.iperf3(1, 2, seconds)
    gbps = perf.get("end", {}).get("sum_received", {}).get("bits_per_second", 0.0) / 1e9
    return {"gbps": gbps, "rtt_avg_ms": rtt.get("avg", float("nan")), "loss": rtt["loss"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.compare", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=5, help="iperf3 duration per measurement")
    p.add_argument("--only", action="append", choices=sorted(DATAPATHS), help="datapaths to run (default all)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    names = args.only or list(DATAPATHS)
    if "kernel-vxlan" not in names:
        names.insert(0, "kernel-vxlan")
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate: no datapath always runs first
        for name in order:
            print(f"round {r + 1}/{args.rounds}: {name} ...", file=sys.stderr, flush=True)
            runs[name].append(measure(name, args.seconds))
    med = {n: {k: statistics.median(x[k] for x in runs[n]) for k in ("gbps", "rtt_avg_ms")} for n in names}
    ref = med["kernel-vxlan"]
    print(f"\n{'datapath':<22} {'TCP Gbit/s':>10} {'x kernel':>9} {'RTT ms':>8} {'x kernel':>9}")
    for n in names:
        m = med[n]
        print(f"{n:<22} {m['gbps']:>10.3f} {m['gbps'] / ref['gbps']:>9.2f} "
              f"{m['rtt_avg_ms']:>8.3f} {m['rtt_avg_ms'] / ref['rtt_avg_ms']:>9.2f}")  # fmt: skip
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "rounds": args.rounds,
        "seconds": args.seconds,
        "median": med,
        "runs": runs,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
