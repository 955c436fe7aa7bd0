"""`ovl-dp lab`, a shipped command: the seed scenario built in namespaces, shown working, reported, torn down.

Two hosts yy2/yy3 with containers vmX/vmY (control.lab.hosts.seed_lab), br-int
an Open vSwitch bridge with vmX/vmY on VLAN 20 when OVS is installed, else a
Linux bridge; the underlay between the hosts IPv4 or (--underlay ipv6) IPv6;
ovl-dp on both hosts, then ping both ways, an iperf3 transfer,
and each host's counters and FDB. With --etcd: N hosts that find each other
through a real etcd instead (control.lab.etcd_demo).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from typing import Any

from control import ovs
from control.lab.hosts import SEED_TAG, container_mtu, seed_lab
from control.lab.shell import LabError
from control.procs import WaitTimeout, sigterm_raises_interrupt


def _demo(mode: str, seconds: int, fast: bool, bridge: str, underlay: str = "ipv4") -> dict[str, Any]:
    """Build the seed lab, run ovl-dp in mode on both hosts, measure; what _print_report shows."""
    extra = () if fast else ("--no-fast-path",)
    family = 6 if underlay == "ipv6" else 4
    with seed_lab(underlay) as lab:
        if bridge == "ovs":
            lab.build(container_mtu(mode, tagged=True, family=family), bridge="ovs", tag=SEED_TAG)
        else:
            lab.build(container_mtu(mode, family=family))
        lab.start_mesh(mode, *extra)
        lab.ping(1, 2, count=3)  # ARP and FDB warm-up
        fwd, back = lab.ping(1, 2, count=10), lab.ping(2, 1, count=10)
        perf = lab.iperf3(1, 2, seconds)
        counters = {i: lab.ovl(i, "show") for i in (1, 2)}
        fdb = {i: lab.ovl(i, "fdb") for i in (1, 2)}
        codes = [lab.stop(lab.daemons[i]) for i in (1, 2)]
        names = [lab.container(i).split("-", 1)[1] for i in (1, 2)]
        hosts = [lab.host(i).split("-", 1)[1] for i in (1, 2)]
    gbps = perf.get("end", {}).get("sum_received", {}).get("bits_per_second", 0) / 1e9
    return {"mode": mode, "bridge": bridge, "underlay": underlay, "ping": fwd, "ping_back": back, "gbps": gbps,
            "iperf_error": perf.get("error"), "counters": counters, "fdb": fdb, "exit_codes": codes,
            "names": names, "hosts": hosts}  # fmt: skip


def _print_report(r: dict[str, Any]) -> bool:
    """Print one mode's result; whether it was OK (no loss either way, data moved, both daemons exited 0)."""
    from control.report import format_counters, format_fdb

    ok = r["ping"]["loss"] == 0 and r["ping_back"]["loss"] == 0 and r["gbps"] > 0 and r["exit_codes"] == [0, 0]
    a, b = r["names"]
    over = " over IPv6" if r.get("underlay") == "ipv6" else ""
    print(f"\n=== ovl-dp lab, mode {r['mode']}{over}, {r['bridge']} br-int: {'OK' if ok else 'FAILED'} ===")
    for name, p in ((f"{a} -> {b}", r["ping"]), (f"{b} -> {a}", r["ping_back"])):
        rtt = f"rtt avg {p['avg']:.3f} ms (min {p['min']:.3f}, max {p['max']:.3f})" if "avg" in p else "no replies"
        print(f"ping {name}: loss {p['loss']:.0f}%, {rtt}")
    err = f" ({r['iperf_error']})" if r["iperf_error"] else ""
    print(f"iperf3 TCP {a} -> {b}: {r['gbps']:.3f} Gbit/s{err}")
    for i, host in enumerate(r["hosts"], 1):
        print(f"--- host {host} counters ---\n{format_counters(r['counters'][i])}\n{format_fdb(r['fdb'][i])}")
    return ok


def main(args: argparse.Namespace) -> int:
    """`ovl-dp lab`: build, demonstrate, report, tear down (also on Ctrl-C / SIGTERM)."""
    for tool in ("ping", "iperf3", "ss", "ethtool"):
        if shutil.which(tool) is None:
            print(f"ovl-dp: error: the lab needs `{tool}` (apt-get install iputils-ping iperf3 iproute2 ethtool)")
            return 2
    bridge = args.bridge_type
    missing_ovs = ovs.installed()
    if bridge == "ovs" and missing_ovs:
        print(f"ovl-dp: error: --bridge-type ovs: {missing_ovs}", file=sys.stderr)
        return 2
    if bridge == "auto":
        bridge = "linux" if missing_ovs else "ovs"
        if missing_ovs:
            print(f"note: {missing_ovs}; showing the scenario with Linux bridges instead", flush=True)

    modes = {"both": ["gre", "vxlan"]}.get(args.mode, [args.mode])
    underlay = args.underlay
    if getattr(args, "etcd", False):
        return _etcd_main(args, modes, bridge)
    ok = True
    with sigterm_raises_interrupt():  # SIGTERM tears the lab down as Ctrl-C does
        for mode in modes:
            what = "Open vSwitch br-int, vmX/vmY on VLAN 20" if bridge == "ovs" else "Linux bridges"
            if underlay == "ipv6":
                what += ", IPv6 underlay fd00:192:2::/64"
            print(f"building the two-host lab ({what}) for {mode} ...", flush=True)
            try:
                ok &= _print_report(_demo(mode, args.seconds, not args.no_fast_path, bridge, underlay))
            except (LabError, ovs.OvsError, WaitTimeout) as exc:
                print(f"lab failed in mode {mode}: {exc}", file=sys.stderr)
                ok = False
    return 0 if ok else 1


def _etcd_main(args: argparse.Namespace, modes: list[str], bridge: str) -> int:
    """`ovl-dp lab --etcd`: control.lab.etcd_demo in each mode in turn (--mode both: gre, then vxlan)."""
    from control.lab import etcd, etcd_demo

    if not etcd.available():
        print("ovl-dp: error: the --etcd lab needs etcd (apt-get install etcd-server etcd-client)", file=sys.stderr)
        return 2
    what = "Open vSwitch br-int, containers on VLAN 20" if bridge == "ovs" else "Linux bridges"
    if args.underlay == "ipv6":
        what += ", IPv6 underlay fd00:192:2::/64"
    ok = True
    with sigterm_raises_interrupt():  # SIGTERM tears the lab down as Ctrl-C does
        for mode in modes:
            print(f"building the {args.hosts}-host lab with etcd ({what}) for {mode} ...", flush=True)
            result = etcd_demo.etcd_demo(mode, args.hosts, not args.no_fast_path, bridge, args.underlay)
            ok &= etcd_demo.print_report(result)
    return 0 if ok else 1
