"""`ovl-dp lab --etcd`: N hosts that find each other through a real etcd, one killed and dropped, a report.

The lab (control.lab.hosts.Lab, N hosts h1..hN with containers c1..cN) gets an
etcd namespace on its underlay switch (Lab.start_etcd: 192.0.2.250, an IPv6 lab
fd00:192:2::250). Every host runs ``ovl-dp run --etcd URL --net lab --lease-ttl 3
--keepalive 1`` without a single --remote. Shown, in this order: each daemon
lists the N-1 others as members and remotes (``ovl-dp members --json``);
every container pings every other; host N's daemon is SIGKILLed (no leave, its
lease simply stops being kept alive) and a watcher in each other host
(control.lab.members) times when its daemon dropped it, expected within the
lease TTL + 1 s; the remaining containers ping each other again; the others
stop with SIGTERM, whose leave revokes their leases (their keys go at once).
Everything is torn down by Lab.close, etcd included, also on failure.
"""

from __future__ import annotations

import functools
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from control import ovs
from control.lab.hosts import SEED_TAG, Lab, container_mtu
from control.lab.members import others
from control.lab.shell import LabError
from control.procs import WaitTimeout, wait_until

NET = "lab"
LEASE_TTL = 3  # seconds: short, so that the killed host goes quickly
KEEPALIVE = 1
PING_COUNT = 3
JOIN_TIMEOUT = 60.0  # generous: N daemons start on a shared machine
REMOVAL_TIMEOUT = 30.0  # the watchers give up after this (the target is LEASE_TTL + 1)
MEMBERS_PREFIX = f"/ovl-dp/v1/nets/{NET}/members/"


@dataclass
class EtcdLabResult:
    """What one mode's etcd lab showed; print_report prints it, ok() judges it."""

    mode: str
    bridge: str
    underlay: str
    hosts: list[str]  # host names, h1..hN
    addrs: list[str]  # their underlay addresses
    etcd_url: str = ""
    etcd_pid: int | None = None
    etcd_ns: str = ""
    daemon_args: list[str] = field(default_factory=list)
    joined: dict[str, list[str]] = field(default_factory=dict)  # host -> the other members it lists
    join_seconds: float | None = None  # from starting the daemons until every one listed all the others
    ping: list[dict[str, Any]] = field(default_factory=list)  # {"src", "dst", "loss", ...}
    killed: str = ""  # the host whose daemon was SIGKILLed
    removed: dict[str, float | None] = field(default_factory=dict)  # host -> seconds until its daemon dropped it
    left_after_kill: dict[str, list[str]] = field(default_factory=dict)  # host -> other members listed after
    ping_rest: list[dict[str, Any]] = field(default_factory=list)
    keys_after_kill: list[str] = field(default_factory=list)  # member keys in etcd once the killed one was dropped
    exit_codes: list[int] = field(default_factory=list)  # the others' daemons, stopped with SIGTERM
    keys_after_stop: list[str] | None = None
    error: str = ""

    def all_joined(self) -> bool:
        """Every daemon listed every other host as a member and remote."""
        return len(self.joined) == len(self.hosts) and all(
            self.joined.get(h) == sorted(a for a in self.addrs if a != addr)
            for h, addr in zip(self.hosts, self.addrs, strict=True)
        )

    def removal_seconds(self) -> float | None:
        """When the last of the other daemons had dropped the killed host (None: one never did)."""
        times = list(self.removed.values())
        return None if not times or None in times else max(t for t in times if t is not None)

    def ok(self) -> bool:
        """All joined, all pings answered, the killed host dropped by all others, the rest still pinging,
        the others exited 0 and left etcd (their keys gone). The removal time is reported, not judged."""
        killed_addr = self.addrs[self.hosts.index(self.killed)] if self.killed in self.hosts else ""
        return (
            not self.error
            and self.all_joined()
            and bool(self.ping)
            and all(p["loss"] == 0 for p in self.ping + self.ping_rest)
            and bool(self.ping_rest)
            and self.removal_seconds() is not None
            and all(killed_addr not in listed for listed in self.left_after_kill.values())
            and killed_addr not in self.keys_after_kill
            and self.exit_codes == [0] * (len(self.hosts) - 1)
            and self.keys_after_stop == []
        )


def etcd_runs(pid: int) -> bool:
    """An etcd process with this PID exists (not another process that got the PID since)."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() == "etcd"
    except OSError:
        return False


def _member_keys(lab: Lab) -> list[str]:
    """The member addresses etcd holds for the net now (keys under MEMBERS_PREFIX)."""
    assert lab.etcd is not None
    out = lab.etcd.etcdctl("get", "--prefix", MEMBERS_PREFIX, "--keys-only")
    return sorted(line.strip()[len(MEMBERS_PREFIX) :] for line in out.splitlines() if line.strip())


def _ping_all(lab: Lab, hosts: list[int]) -> list[dict[str, Any]]:
    """Every container of hosts pings every other one (PING_COUNT echoes)."""
    rows = []
    for i in hosts:
        for j in hosts:
            if i != j:
                res = lab.ping(i, j, count=PING_COUNT, check=False)
                rows.append({"src": lab.container(i).split("-", 1)[1], "dst": lab.container(j).split("-", 1)[1], **res})
    return rows


def _wait_joined(lab: Lab, r: EtcdLabResult, hosts: list[int], want: dict[int, list[str]], timeout: float) -> None:
    """Poll `ovl-dp members --json` on each host until it lists exactly want[i]; fills r.joined (or
    r.left_after_kill after the kill); WaitTimeout with what each listed last."""
    seen: dict[int, list[str]] = {}

    def done() -> bool:
        for i in hosts:
            if seen.get(i) != want[i]:
                seen[i] = others(lab.ovl(i, "members"))
        return all(seen[i] == want[i] for i in hosts)

    def detail() -> str:
        logs = (f"--- {lab.host(i)}'s daemon log (end) ---\n{lab.daemons[i].output()[-1500:]}" for i in hosts)
        return "\n".join([f"listed: {seen!r}", *logs])

    try:
        wait_until("every daemon to list the others", done, timeout, 0.1, detail=detail)
    finally:
        for i, listed in seen.items():
            (r.joined if not r.killed else r.left_after_kill)[r.hosts[i - 1]] = listed


def _time_removal(lab: Lab, r: EtcdLabResult, victim: int, rest: list[int]) -> None:
    """SIGKILL victim's daemon; fills r.removed: for each host of rest, seconds until its daemon dropped it."""
    addr = lab.underlay_ip(victim)
    outs = {i: lab.workdir / f"removal-h{i}.txt" for i in rest}
    watchers = {}
    for i in rest:
        with outs[i].open("wb") as out:
            watchers[i] = subprocess.Popen(
                ["ip", "netns", "exec", lab.host(i), sys.executable, "-m", "control.lab.members", addr,
                 str(REMOVAL_TIMEOUT)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        lab.procs.append(watchers[i])

    def answered(i: int) -> bool:
        return bool(outs[i].read_text().strip()) or watchers[i].poll() is not None

    for i in rest:
        wait_until(f"the watcher on {lab.host(i)}", functools.partial(answered, i), 30, 0.05)
        if outs[i].read_text().strip() != "watching":
            raise LabError(f"the removal watcher on {lab.host(i)}: {outs[i].read_text().strip()}")
    r.killed = r.hosts[victim - 1]
    killed_at = time.monotonic()
    lab.daemons[victim].proc.send_signal(signal.SIGKILL)
    lab.daemons[victim].proc.wait()
    for i in rest:
        watchers[i].wait(REMOVAL_TIMEOUT + 30)
        lines = outs[i].read_text().splitlines()
        last = lines[-1].split() if lines else []
        gone = float(last[1]) if len(last) == 2 and last[0] == "gone" else None
        r.removed[r.hosts[i - 1]] = None if gone is None else gone - killed_at


def etcd_demo(mode: str, n: int, fast: bool, bridge: str, underlay: str = "ipv4") -> EtcdLabResult:
    """Build an n-host lab with etcd, run the scenario of the module docstring in mode; the result."""
    family = 6 if underlay == "ipv6" else 4
    with Lab(n, underlay=underlay) as lab:
        r = EtcdLabResult(mode, bridge, underlay, [lab.host(i).split("-", 1)[1] for i in range(1, n + 1)],
                          [lab.underlay_ip(i) for i in range(1, n + 1)])  # fmt: skip
        try:
            if bridge == "ovs":
                lab.build(container_mtu(mode, tagged=True, family=family), bridge="ovs", tag=SEED_TAG)
            else:
                lab.build(container_mtu(mode, family=family))
            etcd = lab.start_etcd()
            r.etcd_url, r.etcd_pid, r.etcd_ns = etcd.url, etcd.pid, lab.etcd_ns
            r.daemon_args = ["--mode", mode, "--etcd", etcd.url, "--net", NET, "--lease-ttl", str(LEASE_TTL),
                             "--keepalive", str(KEEPALIVE), *(() if fast else ("--no-fast-path",))]  # fmt: skip
            everyone = list(range(1, n + 1))
            started = time.monotonic()
            daemons = [lab.start(i, *r.daemon_args, wait=False) for i in everyone]
            for d in daemons:
                lab.wait_ready(d)
            want = {i: sorted(a for a in r.addrs if a != lab.underlay_ip(i)) for i in everyone}
            _wait_joined(lab, r, everyone, want, JOIN_TIMEOUT)
            r.join_seconds = time.monotonic() - started
            r.ping = _ping_all(lab, everyone)
            rest = everyone[:-1]
            _time_removal(lab, r, n, rest)
            gone = lab.underlay_ip(n)
            _wait_joined(lab, r, rest, {i: [a for a in want[i] if a != gone] for i in rest}, 10)
            r.keys_after_kill = _member_keys(lab)
            r.ping_rest = _ping_all(lab, rest)
            r.exit_codes = [lab.stop(lab.daemons[i]) for i in rest]
            r.keys_after_stop = _member_keys(lab)
        except (LabError, ovs.OvsError, WaitTimeout, subprocess.TimeoutExpired) as exc:
            r.error = str(exc)
    return r


def _fmt_ping(p: dict[str, Any]) -> str:
    rtt = f"avg {p['avg']:.3f} ms" if "avg" in p else "no replies"
    return f"{p['src']} -> {p['dst']}: loss {p['loss']:.0f}%, {rtt}"


def print_report(r: EtcdLabResult) -> bool:
    """Print one mode's etcd lab; whether it was OK (EtcdLabResult.ok)."""
    ok = r.ok()
    n = len(r.hosts)
    over = " over IPv6" if r.underlay == "ipv6" else ""
    print(f"\n=== ovl-dp lab --etcd, {n} hosts, mode {r.mode}{over}, {r.bridge} br-int: {'OK' if ok else 'FAILED'} ===")
    print(f"etcd: {r.etcd_url} in namespace {r.etcd_ns} (PID {r.etcd_pid})")
    print(f"each host: ovl-dp run {' '.join(r.daemon_args)}  (no --remote)")
    if r.join_seconds is not None:
        print(f"joined: every host lists the {n - 1} others, {r.join_seconds:.2f} s after the daemons started")
    for h, addr in zip(r.hosts, r.addrs, strict=True):
        if h in r.joined:
            print(f"  {h} ({addr}) lists: {', '.join(r.joined[h]) or '(none)'}")
    for p in r.ping:
        print(f"ping {_fmt_ping(p)}")
    if r.killed:
        addr = r.addrs[r.hosts.index(r.killed)]
        print(f"killed: the daemon of {r.killed} ({addr}) with SIGKILL (no leave; its lease of {LEASE_TTL} s expires)")
        for h, t in r.removed.items():
            print(f"  {h} dropped {addr} after {'never' if t is None else f'{t:.2f} s'}")
        last = r.removal_seconds()
        if last is not None:
            within = "yes" if last <= LEASE_TTL + 1 else "NO"
            print(f"removed: every other daemon dropped it after {last:.2f} s (within TTL + 1 s: {within})")
        for h, listed in r.left_after_kill.items():
            print(f"  {h} lists: {', '.join(listed) or '(none)'}")
        print(f"member keys in etcd: {', '.join(r.keys_after_kill) or '(none)'}")
    for p in r.ping_rest:
        print(f"ping (after the kill) {_fmt_ping(p)}")
    if r.exit_codes:
        codes = ", ".join(map(str, r.exit_codes))
        keys = "?" if r.keys_after_stop is None else len(r.keys_after_stop)
        print(f"stopped the others with SIGTERM: exit codes {codes}; member keys left in etcd: {keys}")
    if r.error:
        print(f"error: {r.error}")
    alive = r.etcd_pid is not None and etcd_runs(r.etcd_pid)
    print(f"torn down: namespaces deleted, etcd PID {r.etcd_pid} {'STILL RUNS' if alive else 'gone'}")
    return ok and not alive
