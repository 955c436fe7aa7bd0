"""ovl-dp receiving from the kernel's vxlan device: super-packets whole vs a NIC-like wire, kernel as reference.

    python3 -m bench.rx_super [--rounds 2] [--seconds 3]

Two-host lab (control.lab.hosts.Lab, Linux bridges), the kernel's vxlan device on host 2, and on
host 1 one of: ``super`` ovl-dp with the peer's veth at its default offloads (the kernel sends its
GSO packets whole: csrc/rx_super.c), ``txoff`` ovl-dp with the peer's veth ``tx off`` (1,472-byte
datagrams with full checksums, what a NIC sends), ``kernel`` the kernel's vxlan device (reference).
Rounds are interleaved, the order reversed every other round. Printed per run: iperf3 TCP
container 1 -> 2 and 2 -> 1 (Gbit/s; 2 -> 1 is ovl-dp receiving), rx_super, non-zero drops, and
the daemon's peak RSS. It reports; it never passes or fails.
"""

from __future__ import annotations

import argparse
import time

from control.lab.hosts import Lab, container_mtu
from control.lab.peers import kernel_vxlan
from control.lab.shell import nsexec

KINDS = ("super", "txoff", "kernel")


def gbits(lab: Lab, client: int, server: int, seconds: int) -> float:
    res = lab.iperf3(client, server, seconds)
    return float(res["end"]["sum_received"]["bits_per_second"]) / 1e9 if "end" in res else float("nan")


def run(kind: str, seconds: int) -> str:
    with Lab(2) as lab:
        lab.build(container_mtu("vxlan"))
        if kind == "kernel":
            kernel_vxlan(lab, 1, 2, 5001, 4789)
        else:
            lab.start(1, "--mode", "vxlan", "--remote", lab.underlay_ip(2), "--vni", "5001", "--port", "4789")
        kernel_vxlan(lab, 2, 1, 5001, 4789)
        if kind == "txoff":
            nsexec(lab.host(2), "ethtool", "-K", "ul0", "tx", "off")
        lab.ping(1, 2, count=3)
        out = f"{kind:6s} h1->h2 {gbits(lab, 1, 2, seconds):5.2f}  h2->h1 {gbits(lab, 2, 1, seconds):5.2f} Gbit/s"
        if kind != "kernel":
            snap = lab.ovl(1, "show")
            with open(f"/proc/{lab.daemons[1].proc.pid}/status") as f:
                hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
            drops = {k: v for k, v in snap["drops"].items() if v}
            out += f"  rx_super {snap['stats']['rx_super']}  drops {drops}  VmHWM {hwm / 1024:.1f} MB"
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--only", action="append", choices=KINDS)
    args = ap.parse_args()
    kinds = args.only or list(KINDS)
    with open("/proc/loadavg") as f:
        print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {' '.join(f.read().split()[:3])}")
    for r in range(args.rounds):
        for kind in kinds if r % 2 == 0 else kinds[::-1]:
            print(f"round {r + 1}: {run(kind, args.seconds)}", flush=True)


if __name__ == "__main__":
    main()
