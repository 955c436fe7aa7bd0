"""ovl-dp against the other L2 tunnel datapaths on this machine, side by side in one run.

    sudo python3 -m bench.compare --json bench/results/compare.json --png bench/results/compare.png

(root: it builds network namespaces; ``--rounds 3 --seconds 5`` are the defaults;
``--only NAME`` repeatable; ``--list`` shows the datapaths and which are available.)

For each round and each datapath available here — ovl-dp VXLAN (as it is, and
with its opt-in ``--udp-gso``) and GRE, the kernel's own VXLAN device (the
reference), Open vSwitch userspace native VXLAN and GRE ports (when OVS is
installed; both hosts OVS), ovl-dp VXLAN and GRE with its TAP a port of OVS
br-int on both hosts (the seed scenario; each also compared with OVS's own
tunnel of the same mode, which runs with it), tinc 1.0 in switch mode (when ``tincd`` is
installed) — the two-host lab of control.lab.hosts is built from scratch, the
datapath brought up (peers from control.lab.peers), and measured between the two
containers:

- TCP throughput: iperf3, 1 stream and 4 streams (``-P 4``), Gbit/s received;
- latency: 200 pings at 10 ms intervals, p50 and p99 of the per-packet RTTs;
- small packets: iperf3 UDP, 64-byte datagrams at unlimited rate (``-b 0``):
  packets/s delivered and loss %;
- for datapaths that are userspace processes (ovl-dp daemons, ovs-vswitchd,
  tincd): CPU seconds (utime+stime of the processes of both hosts, from
  /proc/PID/stat, before/after) per GB received during the 1-stream TCP test,
  and peak RSS (VmHWM, the larger of the two hosts' processes); for ovl-dp
  also its counters after the tests (``ovl-dp show``: offloads used, drops),
  in the JSON.

Containers use MTU 1450 on every datapath unless it needs less (the table's MTU
column says). On Open vSwitch the containers send with ``ethtool -K eth0 tx
off``, as the lab does for OVS (its userspace datapath does not carry checksum
offload state). Datapaths run interleaved, the order rotating each round; the
table shows medians over the rounds, each with its ratio to the kernel's
VXLAN from the same run. A datapath that fails in a round is reported as failed
in that round. Progress goes to stderr, the table to stdout, everything
(every round's figures included) to --json, a chart to --png (matplotlib:
``pip install -e '.[bench]'``). Every lab is torn down, also on failure and
Ctrl-C. The benchmark reports; it does not pass or fail.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.parse import iperf_tcp, iperf_udp, ping_summary, proc_cpu_ticks, proc_vmhwm_kb
from bench.report import METRICS, REFERENCE, TIMES, summarize, table, versus_table
from control import ovs
from control.lab import peers
from control.lab.hosts import Lab
from control.lab.shell import LabError, nsexec, sh
from control.procs import sigterm_raises_interrupt, wait_until

VNI = 42
MTU = 1450  # what the kernel's VXLAN leaves of a 1500-byte underlay; the same for all that can carry it
MTU6 = 1430  # the same over an IPv6 underlay (an IPv6 header is 20 bytes longer)
ETH_HLEN = 14
PING_COUNT = 200
PING_INTERVAL = 0.01
UDP_LEN = 64
ROOT = Path(__file__).resolve().parent.parent


def _nothing_missing() -> str | None:
    return None


@dataclass(frozen=True)
class Datapath:
    """A way to connect the lab's two hosts' bridges; start() returns the PIDs of its userspace processes."""

    name: str
    label: str
    start: Callable[[Lab], list[int]]
    bridge: str = "linux"
    mtu: int = MTU
    missing: Callable[[], str | None] = _nothing_missing
    note: str = ""
    default: bool = True
    versus: str | None = None  # a second reference: the datapath this one replaces (ratios in the table too)
    ovs_config: tuple[tuple[str, str], ...] = ()  # other_config of both hosts' Open vSwitch, set before it starts
    underlay: str = "ipv4"  # the lab's underlay family (control.lab.hosts.UNDERLAYS)


def _kernel_vxlan(lab: Lab) -> list[int]:
    for i, j in ((1, 2), (2, 1)):
        peers.kernel_vxlan(lab, i, j, VNI, 4789)
    return []


def _ovl(mode: str, *options: str) -> Callable[[Lab], list[int]]:
    def start(lab: Lab) -> list[int]:
        extra = ("--vni", str(VNI)) if mode == "vxlan" else ()
        lab.start_mesh(mode, *extra, *options)
        # On OVS br-int the frames cross ovs-vswitchd too: its CPU is part of the cost, as for OVS's own tunnels.
        return [d.proc.pid for d in lab.daemons.values()] + [o.vswitchd.pid for o in lab.ovs.values()]

    return start


def _ovs_native(kind: str) -> Callable[[Lab], list[int]]:
    def start(lab: Lab) -> list[int]:
        for i in (1, 2):
            peers.ovs_underlay_bridge(lab, i)
        options = (f"options:key={VNI}",) if kind == "vxlan" else ()
        for i, j in ((1, 2), (2, 1)):
            peers.ovs_tunnel_port(lab, i, kind, j, *options)
        return [lab.ovs[i].vswitchd.pid for i in (1, 2)]

    return start


def _tinc(lab: Lab) -> list[int]:
    procs = peers.tinc_mesh(lab)
    pmtu = min(peers.tinc_pmtu(lab, i, proc) for i, proc in zip((1, 2), procs, strict=True))
    mtu = min(MTU, pmtu - ETH_HLEN)  # frames tinc's path MTU cannot carry over UDP it sends over TCP
    for i in (1, 2):
        sh("ip", "-n", lab.container(i), "link", "set", "eth0", "mtu", str(mtu))
    return [p.pid for p in procs]


OVS_NOTE = "both hosts Open vSwitch (userspace datapath), containers with tx checksum offload off"
OVL_OVS_NOTE = (
    "the seed scenario: ovl-dp's TAP a port of Open vSwitch br-int (userspace datapath) on both hosts, the "
    "underlay a plain interface; containers with tx checksum offload off"
)
OVS_TSO = (("userspace-tso-enable", "true"),)
OVS_TSO_NOTE = (
    "; both hosts' OVS started with other_config:userspace-tso-enable=true (set by the benchmark, for OVS's "
    "native tunnels and ovl-dp alike)"
)
OVL_TSO_NOTE = OVS_TSO_NOTE + ": ovl-dp sees it and hands OVS coalesced TCP super-frames"
DATAPATHS: dict[str, Datapath] = {
    d.name: d
    for d in (
        Datapath("kernel-vxlan", "kernel VXLAN (reference)", _kernel_vxlan),
        Datapath("ovl-dp-vxlan", "ovl-dp VXLAN", _ovl("vxlan")),
        Datapath("ovl-dp-gre", "ovl-dp GRE", _ovl("gre")),
        Datapath("ovl-dp-vxlan-udp-gso", "ovl-dp VXLAN --udp-gso", _ovl("vxlan", "--udp-gso")),
        Datapath("ovs-vxlan", "OVS userspace VXLAN", _ovs_native("vxlan"), "ovs", missing=ovs.installed, note=OVS_NOTE),
        Datapath("ovs-gre", "OVS userspace GRE", _ovs_native("gre"), "ovs", missing=ovs.installed, note=OVS_NOTE),
        Datapath("ovl-dp-vxlan-ovs", "ovl-dp VXLAN on OVS br-int", _ovl("vxlan"), "ovs", missing=ovs.installed,
                 note=OVL_OVS_NOTE, versus="ovs-vxlan"),
        Datapath("ovl-dp-gre-ovs", "ovl-dp GRE on OVS br-int", _ovl("gre"), "ovs", missing=ovs.installed,
                 note=OVL_OVS_NOTE, versus="ovs-gre"),
        # The same two pairs with Open vSwitch's userspace TSO on both hosts (OVS native and ovl-dp alike):
        Datapath("ovs-vxlan-tso", "OVS userspace VXLAN, OVS TSO", _ovs_native("vxlan"), "ovs", missing=ovs.installed,
                 note=OVS_NOTE + OVS_TSO_NOTE, default=False, ovs_config=OVS_TSO),
        Datapath("ovl-dp-vxlan-ovs-tso", "ovl-dp VXLAN on OVS br-int, OVS TSO", _ovl("vxlan"), "ovs",
                 missing=ovs.installed, note=OVL_OVS_NOTE + OVL_TSO_NOTE, versus="ovs-vxlan-tso", default=False,
                 ovs_config=OVS_TSO),
        Datapath("ovs-gre-tso", "OVS userspace GRE, OVS TSO", _ovs_native("gre"), "ovs", missing=ovs.installed,
                 note=OVS_NOTE + OVS_TSO_NOTE, default=False, ovs_config=OVS_TSO),
        Datapath("ovl-dp-gre-ovs-tso", "ovl-dp GRE on OVS br-int, OVS TSO", _ovl("gre"), "ovs",
                 missing=ovs.installed, note=OVL_OVS_NOTE + OVL_TSO_NOTE, versus="ovs-gre-tso", default=False,
                 ovs_config=OVS_TSO),
        Datapath("tinc-switch", "tinc 1.0 switch mode", _tinc, missing=peers.tinc_installed,
                 note="tincd defaults (UDP, blowfish-CBC, SHA1); container MTU lowered to the path MTU tinc discovers "
                      "(it carries longer frames over TCP)"),
        # Variants for looking into ovl-dp itself, run only when named with --only:
        Datapath("ovl-dp-vxlan-no-offload", "ovl-dp VXLAN --offload off", _ovl("vxlan", "--offload", "off"),
                 default=False),
        Datapath("ovl-dp-vxlan-python", "ovl-dp VXLAN --no-fast-path", _ovl("vxlan", "--no-fast-path"), default=False),
        Datapath("ovl-dp-vxlan-no-inject", "ovl-dp VXLAN --inject off", _ovl("vxlan", "--inject", "off"),
                 default=False),
        Datapath("ovl-dp-gre-no-ring", "ovl-dp GRE --tx-ring off", _ovl("gre", "--tx-ring", "off"), default=False),
        Datapath("ovl-dp-vxlan-no-thread", "ovl-dp VXLAN --no-dp-thread", _ovl("vxlan", "--no-dp-thread"),
                 default=False),
        # Over an IPv6 underlay (issue 11), run only when named with --only:
        Datapath("kernel-vxlan6", "kernel VXLAN over IPv6", _kernel_vxlan, mtu=MTU6, default=False, underlay="ipv6"),
        Datapath("ovl-dp-vxlan6", "ovl-dp VXLAN over IPv6", _ovl("vxlan"), mtu=MTU6, default=False, underlay="ipv6",
                 versus="kernel-vxlan6"),
        Datapath("ovl-dp-gre6", "ovl-dp GRE over IPv6", _ovl("gre"), mtu=MTU6, default=False, underlay="ipv6",
                 versus="kernel-vxlan6"),
    )
}  # fmt: skip


# -- one datapath, one round ---------------------------------------------------------------


def _cpu_ticks(pids: list[int]) -> int:
    return sum(proc_cpu_ticks(Path(f"/proc/{pid}/stat").read_text()) for pid in pids)


def _container_mtu(lab: Lab) -> int:
    """The MTU of container 1's eth0 (what the datapath left it)."""
    return int(sh("ip", "-n", lab.container(1), "-o", "link", "show", "eth0").stdout.split(" mtu ")[1].split()[0])


def _wait_connected(lab: Lab, timeout: float = 20.0) -> None:
    """Until a ping each way gets through (OVS installs flows, tinc exchanges keys), then ARP/FDB warm-up.

    timeout is for both directions together; a ping waits for its reply itself, hence no interval.
    """
    deadline = time.monotonic() + timeout
    for src, dst in ((1, 2), (2, 1)):

        def reached(src: int = src, dst: int = dst) -> bool:
            return lab.ping(src, dst, count=1, interval=0.2, check=False)["loss"] == 0

        wait_until(f"container {src} to reach container {dst}", reached, max(0.0, deadline - time.monotonic()), 0)
    lab.ping(1, 2, count=3, interval=0.1, check=False)


def _ping(lab: Lab, count: int, interval: float) -> dict[str, float]:
    res = nsexec(
        lab.container(1), "ping", "-n", "-c", str(count), "-i", str(interval), "-W", "2", lab.overlay_ip(2),
        check=False, timeout=count * interval + 30,
    )  # fmt: skip
    return ping_summary(res.stdout)


def measure(dp: Datapath, seconds: int, say: Callable[[str], None], ping_count: int = PING_COUNT) -> dict[str, Any]:
    """Build a lab, bring dp up and measure it; the round's record (see bench.report), never raises but Ctrl-C."""
    rnd: dict[str, Any] = {"ok": False, "error": None, "metrics": {}, "errors": {}}
    metrics: dict[str, float] = rnd["metrics"]
    errors: dict[str, str] = rnd["errors"]
    try:
        with Lab(2, underlay=dp.underlay) as lab:
            say("building the lab")
            if dp.ovs_config:
                lab.build(dp.mtu, bridge=dp.bridge, ovs_config=dict(dp.ovs_config))
            else:
                lab.build(dp.mtu, bridge=dp.bridge)
            pids = dp.start(lab)
            _wait_connected(lab)
            rnd["ok"] = True
            rnd["pids"] = pids
            rnd["mtu"] = _container_mtu(lab)

            def tcp1() -> dict[str, float]:
                before = _cpu_ticks(pids)
                tcp = iperf_tcp(lab.iperf3(1, 2, seconds))
                out = {"tcp1_gbps": tcp["gbps"], "tcp1_retransmits": tcp["retransmits"]}
                if pids:
                    cpu = (_cpu_ticks(pids) - before) / os.sysconf("SC_CLK_TCK")
                    out |= {"cpu_s_tcp1": cpu, "cpu_s_per_gb": cpu / (tcp["bytes"] / 1e9) if tcp["bytes"] else 0.0}
                return out

            def tcp4() -> dict[str, float]:
                tcp = iperf_tcp(lab.iperf3(1, 2, seconds, "-P", "4"))
                return {"tcp4_gbps": tcp["gbps"], "tcp4_retransmits": tcp["retransmits"]}

            def udp() -> dict[str, float]:
                return iperf_udp(lab.iperf3(1, 2, seconds, "-u", "-l", str(UDP_LEN), "-b", "0"))

            tests: list[tuple[str, Callable[[], dict[str, float]]]] = [
                ("ping", lambda: _ping(lab, ping_count, PING_INTERVAL)),
                ("tcp 1 stream", tcp1),
                ("tcp 4 streams", tcp4),
                ("udp 64 B", udp),
            ]
            for test, run in tests:
                say(test)
                try:
                    metrics.update(run())
                except Exception as exc:  # the test failed, the datapath still counts (Ctrl-C is no Exception)
                    errors[test] = f"{type(exc).__name__}: {str(exc).strip()[-500:]}"
                    say(f"{test} failed: {errors[test]}")
            if lab.daemons:  # ovl-dp: its counters (offloads used, drops) go into the JSON
                try:
                    rnd["ovl_show"] = {i: lab.ovl(i, "show") for i in sorted(lab.daemons)}
                    stats = rnd["ovl_show"][1].get("stats", {})
                    say("host 1 counters: " + " ".join(f"{k}={v}" for k, v in stats.items()))
                except (LabError, ValueError, OSError, subprocess.SubprocessError) as exc:
                    errors["ovl-dp show"] = str(exc)[-300:]
            if pids:
                try:
                    rss = max(proc_vmhwm_kb(Path(f"/proc/{pid}/status").read_text()) for pid in pids)
                    metrics["rss_mb"] = rss / 1024
                except (OSError, ValueError) as exc:
                    errors["rss"] = str(exc)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        rnd["ok"] = False
        rnd["error"] = f"{type(exc).__name__}: {str(exc).strip()[-1500:]}"
        say(f"FAILED: {rnd['error'][-300:]}")
    return rnd


# -- the run -------------------------------------------------------------------------------


def _meta(args: argparse.Namespace) -> dict[str, Any]:
    def git(*a: str) -> str:
        res = subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True, check=False)
        return res.stdout.strip()

    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python3 -m bench.compare " + " ".join(sys.argv[1:] if args.argv is None else args.argv),
        "commit": git("rev-parse", "HEAD"),
        "datapath_sources_modified": bool(git("status", "--porcelain", "--", "datapath", "csrc", "control")),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "rounds": args.rounds,
        "seconds": args.seconds,
        "ping": {"count": args.ping_count, "interval_s": PING_INTERVAL},
        "udp_datagram_bytes": UDP_LEN,
        "reference": REFERENCE,
    }


def _select(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The datapaths to run (reference first; each one's versus with it) and those skipped, with why."""
    wanted = args.only or [n for n, d in DATAPATHS.items() if d.default]
    names, skipped = [], {}
    with_versus = [m for n in wanted for m in (n, DATAPATHS[n].versus) if m is not None]
    for name in dict.fromkeys([REFERENCE, *with_versus]):
        missing = DATAPATHS[name].missing()
        if missing:
            skipped[name] = missing
        else:
            names.append(name)
    return names, skipped


def main(argv: list[str] | None = None) -> int:
    """`python3 -m bench.compare`: 0 after a run, 130 if interrupted (a table of what ran), 2 if it cannot run."""
    p = argparse.ArgumentParser(prog="python3 -m bench.compare", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--seconds", type=int, default=5, help="duration of each iperf3 test (default 5)")
    p.add_argument("--ping-count", type=int, default=PING_COUNT, help=f"pings per round (default {PING_COUNT})")
    p.add_argument("--only", action="append", choices=sorted(DATAPATHS), help="datapath to run (repeatable)")
    p.add_argument("--json", metavar="FILE", help="write medians, ratios and every round here")
    p.add_argument("--png", metavar="FILE", help="write a chart of the medians here (needs matplotlib)")
    p.add_argument("--list", action="store_true", help="list the datapaths and whether they are available")
    args = p.parse_args(argv)
    args.argv = argv
    if args.list:
        for name, d in DATAPATHS.items():
            status = d.missing() or ("available" if d.default else "available, only with --only")
            print(f"{name:<24} {d.label:<38} {status}")
        return 0
    if os.geteuid() != 0:
        print("bench: needs root (it builds network namespaces)", file=sys.stderr)
        return 2
    for tool in ("ip", "ping", "iperf3", "ss", "ethtool"):
        if shutil.which(tool) is None:
            print(f"bench: needs `{tool}` (apt-get install iproute2 iputils-ping iperf3 ethtool)", file=sys.stderr)
            return 2
    names, skipped = _select(args)
    for name, why in skipped.items():
        print(f"skipping {name}: {why}", file=sys.stderr)

    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background by a script
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    interrupted = False
    t0 = time.monotonic()
    load_start = os.getloadavg()
    try:
        with sigterm_raises_interrupt():  # SIGTERM tears the current lab down as Ctrl-C does
            for r in range(args.rounds):
                order = names[r % len(names) :] + names[: r % len(names)]  # rotate: no datapath always runs first
                for k, name in enumerate(order, 1):
                    prefix = f"round {r + 1}/{args.rounds} ({k}/{len(order)}) {name}"

                    def say(msg: str, prefix: str = prefix) -> None:
                        print(f"[{time.monotonic() - t0:5.0f}s] {prefix}: {msg}", file=sys.stderr, flush=True)

                    rnd = measure(DATAPATHS[name], args.seconds, say, args.ping_count)
                    rnd["round"], rnd["position"] = r + 1, k
                    runs[name].append(rnd)
                    m = rnd["metrics"]
                    if rnd["ok"]:
                        say("  ".join(f"{key}={m[key]:.4g}" for key in (x.key for x in METRICS) if key in m))
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: reporting the rounds completed so far", file=sys.stderr)

    summary = summarize(runs, versus={n: v for n in names if (v := DATAPATHS[n].versus) is not None})
    labels = {n: DATAPATHS[n].label for n in names}
    mtus = {n: "/".join(sorted({str(r["mtu"]) for r in runs[n] if "mtu" in r})) or str(DATAPATHS[n].mtu) for n in names}
    done = min((len(v) for v in runs.values()), default=0)
    print(f"\nmedians of {done} interleaved round(s), iperf3 {args.seconds} s per test; {TIMES}: ratio to kernel VXLAN")
    print(table(summary, labels, mtus))
    if text := versus_table(summary, labels):
        print(f"\neach against the tunnel it replaces, same run ({TIMES}: ratio of the medians)")
        print(text)
    notes = [f"{n}: {DATAPATHS[n].note}" for n in names if DATAPATHS[n].note]
    notes += [f"{n}: skipped ({why})" for n, why in skipped.items()]
    for name, s in summary.items():
        notes += [f"{name}: failed in {f}" for f in s["failures"]]
        notes += [f"{name}: {e}" for e in s["test_errors"]]
    for line in notes:
        print(f"  {line}")

    meta = {**_meta(args), "interrupted": interrupted, "elapsed_s": round(time.monotonic() - t0, 1)}
    meta |= {"loadavg_start": load_start, "loadavg_end": os.getloadavg()}  # other work on the machine skews figures
    report = {
        "meta": meta,
        "datapaths": {
            n: {
                "label": labels[n],
                "mtu": mtus[n],
                "note": DATAPATHS[n].note,
                "versus": DATAPATHS[n].versus,
                "ovs_config": dict(DATAPATHS[n].ovs_config),
            }
            for n in names
        },
        "skipped": skipped,
        "metrics": {m.key: {"header": m.header, "better": m.better, "ratio": m.ratio} for m in METRICS},
        "summary": summary,
        "runs": runs,
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"JSON: {args.json}", file=sys.stderr)
    if args.png:
        try:
            from bench.chart import write_png

            Path(args.png).parent.mkdir(parents=True, exist_ok=True)
            title = (f"{report['meta']['date']}, {os.cpu_count()} CPUs, medians of {done} rounds; "
                     f"{TIMES} = ratio to kernel VXLAN")  # fmt: skip
            write_png(args.png, summary, labels, title)
            print(f"PNG: {args.png}", file=sys.stderr)
        except ImportError as exc:
            print(f"no PNG: {exc} (pip install -e '.[bench]')", file=sys.stderr)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
