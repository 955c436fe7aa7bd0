"""Membership at scale: 500 members of one net on a real etcd, a few real daemons, how fast and at what cost.

    python3 -m bench.members [--members 500] [--hosts 3] [--one-by-one 100] [--burst 100] [--leaves 100]
                             [--leave-burst 100] [--crashes 3] [--ttl 15] [--floods 500] [--json PATH]

(root: it builds network namespaces.) A lab of ``--hosts`` hosts (control.lab.hosts.Lab, Linux
bridges) and a real etcd (control.lab.etcd.EtcdServer, temp data dir) in the underlay switch's
namespace at 192.0.2.254; ovl-dp VXLAN runs on every host with ``--etcd URL --net bench`` (no
static remote) and registers itself. The bench writes the other members itself, ``members -
hosts`` keys ``/ovl-dp/v1/nets/bench/members/<addr>`` with the contract's JSON value, each on a
lease of its own (``--ttl``, kept alive every ttl/3 s as a daemon does), from a worker process in
the switch's namespace (aetcd). Their addresses are in 198.18.0.0/15 (RFC 2544's benchmarking
range), routed on every host to a veth whose peer is in the switch's namespace (it answers ARP,
does not forward): the daemons accept them as remotes, and flooded copies to them leave ovl-dp and
the kernel's send path and are dropped at the far end of that veth.

When a daemon has a member as a remote is read from its log (``remote X added`` /
``member X left: remote removed``, timestamps to the millisecond, truncated; one clock for all processes); the state is
checked over the control socket (``show``) at the end of each phase. A key's latency is measured
from the moment the bench sent its put (revoke) to the moment the *last* daemon logged it; the
bench's own etcd watch gives the time etcd published it, for reference. Phases, in order:

  join one by one   ``--one-by-one`` keys, each put once the previous one is everywhere
  join burst        ``--burst`` keys put at once (concurrent puts)
  fill              the remaining keys up to ``--members`` at once (their latency reported too)
  500 members       every daemon's RSS (VmRSS, VmHWM) and idle CPU; the flood cost on host 1:
                    ``--floods`` broadcast frames from container 1 at ``--flood-rate`` frames/s, then
                    as many at ``--flood-burst-rate``: CPU of the daemon's data path thread (schedstat; the
                    kernel's send path runs in it) per flooded frame and per copy, and of the whole daemon
                    (idle subtracted: noisier); copies as ``show`` counts them and as they arrived at the
                    far end of the sink veth (outer packets/s), drops
  leave one by one  ``--leaves`` leases revoked, each once the previous removal is everywhere
  leave burst       ``--leave-burst`` leases revoked at once
  crash             ``--crashes`` members whose leases are no longer kept alive: time from each one's
                    last keepalive to every daemon having dropped it (etcd expires it about ttl later)
  daemon killed     the last host's daemon SIGKILLed: time until every other daemon dropped it

Daemon CPU (utime + stime from /proc/PID/stat) is reported per phase. ``--via remote-add`` skips
etcd: a static mesh, and the 198.18 remotes added over the control socket (``remote add``), then
only the "500 members" phase (RSS, CPU, flood) — for comparison. Table to stdout, progress to
stderr, everything to ``--json`` (default bench/results/members-<date>.json). It reports; it
never passes or fails (a key that never arrives is reported as missing).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bench.parse import percentile, proc_cpu_ticks
from bench.scale import cpu_ns, status_kb
from control.lab.hosts import Lab, container_mtu
from control.lab.shell import LabError, nsexec, sh
from control.procs import sigterm_raises_interrupt, stop_process

ROOT = Path(__file__).resolve().parent.parent
NET = "bench"
KEY_PREFIX = "/ovl-dp/v1/nets/"
FAKE_NET = "198.18.0.0/15"  # RFC 2544: benchmarking; only inside the lab's hosts
FAKE_BASE = (198 << 24) | (18 << 16)
ETCD_ADDR = "192.0.2.254"  # on the switch's bridge, in the underlay with the hosts (.1 .. .N)
CLK_TCK = os.sysconf("SC_CLK_TCK")
DATA_THREAD = "ovl-dp data"  # the C data path thread's name (csrc/loop.c)
TARGET_P99_S = 1.0
TARGET_RSS_MB = 80.0
CRASH_SLACK_S = 1.0
# "remote X added (local L)" (a static or a member's remote), "remote X removed" (remote del),
# "member X left: remote removed (...)" (a member's key went).
_REMOTE_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ovl-dp\[\d+\] [A-Z]+ "
    r"(?:remote (\S+) (added|removed)\b|member (\S+) left: remote (removed)\b)"
)

# -- pure parts ----------------------------------------------------------------------------------


def fake_addr(i: int) -> str:
    """The i-th bench member's address in 198.18.0.0/15 (i from 0): 198.18.0.1, .2, ... skipping .0 and .255."""
    n = FAKE_BASE + (i // 254) * 256 + i % 254 + 1
    if n >= FAKE_BASE + (2 << 16):
        raise ValueError(f"member {i}: beyond 198.18.0.0/15")
    return ".".join(str((n >> s) & 255) for s in (24, 16, 8, 0))


def member_key(net: str, addr: str) -> str:
    """The member key of addr in net (the README's data model)."""
    return f"{KEY_PREFIX}{net}/members/{addr}"


def member_value(addr: str, i: int, now: float) -> bytes:
    """The contract's member JSON for bench member i: its own machine id and netns, so no daemon takes it as its own."""
    mac = bytes([0x02, 0xBE, (i >> 24) & 255, (i >> 16) & 255, (i >> 8) & 255, i & 255])
    value = {
        "addr": addr,
        "mac": ":".join(f"{b:02x}" for b in mac),
        "hostname": f"bench-{i}",
        "machine_id": hashlib.md5(f"ovl-dp-bench-{i}".encode()).hexdigest(),
        "netns": 4_000_000_000 + i,
        "version": "bench",
        "pid": 100_000 + i,
        "joined": round(now, 3),
    }
    return json.dumps(value, separators=(",", ":")).encode()


def log_events(lines: Iterable[str]) -> list[tuple[float, str, str]]:
    """(unix time, "added"|"removed", address) for each remote change in a daemon's text log lines.

    The text format's time is logging's asctime: local time to the millisecond. Other lines are skipped.
    """
    out = []
    for line in lines:
        m = _REMOTE_LINE.match(line)
        if m is None:
            continue
        when = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1e3
        out.append((when, m.group(4) or m.group(6), m.group(3) or m.group(5)))
    return out


def latency_stats(values: Sequence[float | None]) -> dict[str, Any]:
    """n, missing (None: never seen), p50/p99/max/mean in ms of the seen ones (None when none was)."""
    seen = [v for v in values if v is not None]
    out: dict[str, Any] = {"n": len(values), "missing": len(values) - len(seen)}
    for name, p in (("p50_ms", 50), ("p99_ms", 99)):
        out[name] = round(percentile(seen, p) * 1e3, 1) if seen else None
    out["max_ms"] = round(max(seen) * 1e3, 1) if seen else None
    out["mean_ms"] = round(sum(seen) / len(seen) * 1e3, 1) if seen else None
    return out


def propagation(
    sent: dict[str, float], seen_by: Sequence[dict[str, float]], published: dict[str, float] | None = None
) -> dict[str, Any]:
    """Per key: from sent to the last daemon's time (None if a daemon never saw it); stats of that, of each
    daemon's own, and of the last daemon's time after etcd published the key (the bench's watch)."""
    last: list[float | None] = []
    after_etcd: list[float | None] = []
    for addr, t0 in sent.items():
        times = [d.get(addr) for d in seen_by]
        if any(t is None for t in times):
            last.append(None)
            after_etcd.append(None)
            continue
        t_last = max(t for t in times if t is not None)
        last.append(t_last - t0)
        pub = (published or {}).get(addr)
        after_etcd.append(None if pub is None else t_last - pub)
    per_daemon = [latency_stats([None if d.get(a) is None else d[a] - t0 for a, t0 in sent.items()]) for d in seen_by]
    return {"all": latency_stats(last), "after_etcd": latency_stats(after_etcd), "per_daemon": per_daemon}


def change_rate(seen: dict[str, float], keys: Iterable[str]) -> float | None:
    """A daemon's pace through a batch of changes: ms from its first to its last of keys, per change (None
    for fewer than two)."""
    times = [seen[k] for k in keys if k in seen]
    if len(times) < 2:
        return None
    return round((max(times) - min(times)) / (len(times) - 1) * 1e3, 2)


# -- the etcd side: a worker process in etcd's namespace ------------------------------------------


async def _worker(url: str, net: str, ttl: int) -> None:
    """Serve JSON requests on stdin, one per line, answering each with one JSON line on stdout."""
    aetcd = importlib.import_module("aetcd")  # only here: the rest of the bench runs without it

    hostport = url.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    client = aetcd.Client(host=host, port=int(port), timeout=5)
    await client.connect()
    prefix = f"{KEY_PREFIX}{net}/members/".encode()
    leases: dict[str, int] = {}  # addr -> lease id, kept alive
    last_ka: dict[str, float] = {}  # addr -> when its last keepalive (or grant) was answered
    refreshing: dict[str, int] = {}  # addr -> keepalives in flight
    seen: dict[str, dict[str, float]] = {"put": {}, "delete": {}}  # what our own watch saw, when
    limit = asyncio.Semaphore(64)
    watch = await client.watch_prefix(prefix)

    async def watching() -> None:
        async for ev in watch:
            kind = "put" if ev.kind == aetcd.rtypes.EventKind.PUT else "delete"
            seen[kind].setdefault(ev.kv.key[len(prefix) :].decode(), time.time())

    async def bounded(coro: Any) -> Any:
        async with limit:
            return await asyncio.wait_for(coro, 10)

    async def refresh(addr: str, lease: int) -> None:
        refreshing[addr] = refreshing.get(addr, 0) + 1
        try:
            reply = await bounded(client.refresh_lease(lease))
        except Exception as exc:  # one keepalive failing is reported, the next one retries
            print(f"bench worker: keepalive of {addr} failed: {exc}", file=sys.stderr)
            return
        finally:
            refreshing[addr] -= 1
        if reply is not None and reply.TTL > 0:  # also for a member crashed meanwhile: etcd renewed it
            last_ka[addr] = time.time()

    async def crash(addrs: list[str]) -> dict[str, float]:
        """No more keepalives for addrs; when each one's last renewal was answered (after any in flight)."""
        for a in addrs:
            leases.pop(a, None)
        deadline = time.monotonic() + 15
        while any(refreshing.get(a, 0) for a in addrs) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        return {a: last_ka.pop(a) for a in addrs if a in last_ka}

    async def keepalive() -> None:
        while True:
            await asyncio.sleep(ttl / 3)
            await asyncio.gather(*(refresh(a, lease) for a, lease in list(leases.items())))

    async def join(members: list[list[Any]]) -> list[dict[str, Any]]:
        granted = await asyncio.gather(*(bounded(client.lease(ttl)) for _ in members))
        now = time.time()

        async def put(addr: str, i: int, lease: int) -> dict[str, Any]:
            sent = time.time()
            r = await bounded(client.put(member_key(net, addr).encode(), member_value(addr, i, sent), lease=lease))
            acked = time.time()
            leases[addr], last_ka[addr] = lease, now
            return {"addr": addr, "sent": sent, "acked": acked, "revision": r.header.revision}

        return list(await asyncio.gather(*(put(a, i, g.id) for (a, i), g in zip(members, granted, strict=True))))

    async def leave(addrs: list[str]) -> list[dict[str, Any]]:
        async def revoke(addr: str) -> dict[str, Any]:
            lease = leases.pop(addr)
            sent = time.time()
            await bounded(client.revoke_lease(lease))
            return {"addr": addr, "sent": sent, "acked": time.time()}

        return list(await asyncio.gather(*(revoke(a) for a in addrs)))

    async def wait_seen(kind: str, addrs: list[str], timeout: float) -> dict[str, float | None]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(a in seen[kind] for a in addrs):
            await asyncio.sleep(0.01)
        return {a: seen[kind].get(a) for a in addrs}

    async def remaining(addr: str) -> dict[str, Any]:
        kv = await bounded(client.get(member_key(net, addr).encode()))
        if kv is None:
            return {"addr": addr, "present": False}
        info = await bounded(client.get_lease_info(kv.lease))
        return {"addr": addr, "present": True, "lease": kv.lease, "ttl_left": info.TTL, "at": time.time()}

    tasks = [asyncio.create_task(watching()), asyncio.create_task(keepalive())]
    loop = asyncio.get_running_loop()
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            req = json.loads(line)
            op = req["op"]
            try:
                if op == "join":
                    result: Any = await join(req["members"])
                elif op == "leave":
                    result = await leave(req["addrs"])
                elif op == "crash":
                    result = await crash(req["addrs"])
                elif op == "seen":
                    result = await wait_seen(req["kind"], req["addrs"], float(req["wait"]))
                elif op == "remaining":
                    result = await remaining(req["addr"])
                elif op == "count":
                    result = len(await bounded(client.get_prefix(prefix, keys_only=True)))
                elif op == "quit":
                    await asyncio.gather(*(bounded(client.revoke_lease(lease)) for lease in leases.values()))
                    leases.clear()
                    result = "bye"
                else:
                    raise ValueError(f"unknown op {op!r}")
                answer = {"ok": True, "result": result}
            except Exception as exc:  # the bench reports what went wrong, with its type
                answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(answer), flush=True)
            if op == "quit":
                break
    finally:
        for t in tasks:
            t.cancel()
        await watch.cancel()
        await client.close()


class Worker:
    """The etcd worker as a child process in a namespace; request() sends one op and returns its result."""

    def __init__(self, netns: str, url: str, net: str, ttl: int) -> None:
        cmd = ["ip", "netns", "exec", netns, sys.executable, "-m", "bench.members", "--worker", url, "--net", net]
        self.proc = subprocess.Popen([*cmd, "--ttl", str(ttl)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)

    def request(self, op: str, timeout: float = 120.0, **args: Any) -> Any:
        """Send {"op": op, **args}; the result, or LabError with the worker's error or if it takes over timeout s."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}).encode() + b"\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)  # an answer is one line, written at once
        if not ready:
            raise LabError(f"bench etcd worker: no answer to {op} within {timeout:g} s")
        line = self.proc.stdout.readline()
        if not line:
            raise LabError(f"bench etcd worker exited ({self.proc.poll()}) during {op}")
        answer = json.loads(line)
        if not answer["ok"]:
            raise LabError(f"bench etcd worker: {op}: {answer['error']}")
        return answer["result"]

    def close(self) -> None:
        """Revoke what is left (bounded), then stop the process by its PID."""
        if self.proc.poll() is None:
            with contextlib.suppress(LabError, OSError, ValueError):
                self.request("quit", timeout=30)
        stop_process(self.proc, 5)


# -- the daemons' side ---------------------------------------------------------------------------


class LogWatch:
    """What one daemon logged about its remotes so far: addr -> first time added / removed (unix)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.rest = ""
        self.added: dict[str, float] = {}
        self.removed: dict[str, float] = {}

    def poll(self) -> None:
        """Read what the log gained since the last poll."""
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return
        self.offset += len(data)
        text = self.rest + data.decode(errors="replace")
        lines = text.split("\n")
        self.rest = lines.pop()
        for when, kind, addr in log_events(lines):
            (self.added if kind == "added" else self.removed).setdefault(addr, when)


def wait_all(watches: Sequence[LogWatch], kind: str, addrs: Iterable[str], timeout: float) -> bool:
    """Poll the logs until every daemon logged kind for every addr, at most timeout s; whether they all did."""
    want = list(addrs)
    deadline = time.monotonic() + timeout
    while True:
        for w in watches:
            w.poll()
        if all(a in getattr(w, kind) for w in watches for a in want):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)


def cpu_s(pid: int) -> float:
    """utime + stime of pid (all threads), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        return proc_cpu_ticks(f.read()) / CLK_TCK


def remotes_of(lab: Lab, i: int) -> set[str]:
    """Host i's daemon's remotes, over its control socket."""
    return {str(r["remote"]) for r in lab.ovl(i, "show")["remotes"]}


def progress(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def fake_routes(lab: Lab) -> None:
    """198.18.0.0/15 on every host I via a veth "sink0" (10.254.I.1/30) whose peer "skI" is in the switch's
    namespace (10.254.I.2/30): a real neighbour that answers ARP, where the copies to the bench's members arrive
    and are dropped (not for it, no forwarding). Not a static neighbour entry: ovl-dp's next-hop keeper
    replaces those (NTF_USE with NLM_F_REPLACE makes a PERMANENT entry an ordinary one, which then fails)."""
    for i in range(1, lab.n + 1):
        h, peer = lab.host(i), f"sk{i}"
        sh("ip", "-n", h, "link", "add", "sink0", "type", "veth", "peer", "name", peer, "netns", lab.switch)
        sh("ip", "-n", h, "addr", "add", f"10.254.{i}.1/30", "dev", "sink0")
        sh("ip", "-n", lab.switch, "addr", "add", f"10.254.{i}.2/30", "dev", peer)
        sh("ip", "-n", h, "link", "set", "sink0", "up")
        sh("ip", "-n", lab.switch, "link", "set", peer, "up")
        sh("ip", "-n", h, "route", "add", FAKE_NET, "via", f"10.254.{i}.2")


# F broadcast frames out of eth0 at R frames/s (paced by the clock, not by sleeps adding up).
SEND_PACED = """
import socket, sys, time
n, rate = int(sys.argv[1]), float(sys.argv[2])
frame = b"\\xff" * 6 + bytes.fromhex("025c00ff0002") + b"\\x88\\xb5" + bytes(96)
with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
    s.bind(("eth0", 0))
    t0 = time.monotonic()
    for i in range(n):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        s.send(frame)
"""


def sink_tx(lab: Lab, i: int) -> tuple[int, int]:
    """(arrived, dropped) packets at the far end of host i's sink veth: the copies to the bench's members that
    left host i, and those the kernel dropped on the way in (rx_dropped: its backlog full)."""
    stats = f"/sys/class/net/sk{i}/statistics/"
    out = nsexec(lab.switch, "cat", stats + "rx_packets", stats + "rx_dropped").stdout.split()
    return int(out[0]), int(out[1])


def ip_counters(lab: Lab, i: int) -> dict[str, int]:
    """The Ip: line of /proc/net/snmp in host i's namespace (OutRequests, OutDiscards, OutNoRoutes, ...)."""
    lines = [ln.split() for ln in nsexec(lab.host(i), "cat", "/proc/net/snmp").stdout.splitlines()]
    names, values = (ln[1:] for ln in lines if ln and ln[0] == "Ip:")
    return dict(zip(names, map(int, values), strict=True))


def counter_deltas(before: dict[str, Any], after: dict[str, Any], prefixes: tuple[str, ...]) -> dict[str, int]:
    """The integer counters named with one of prefixes that changed from before to after, by how much."""
    out = {}
    for k, v in after.items():
        if isinstance(v, int) and k.startswith(prefixes) and v != before.get(k, 0):
            out[k] = v - int(before.get(k, 0))
    return out


def thread_ns(pid: int, name: str = DATA_THREAD) -> int:
    """CPU time (schedstat, ns) of pid's threads called name: the C data path thread's."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "comm").read_text().strip() == name:
                total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that just ended
    return total


def flood_paced(lab: Lab, frames: int, rate: float) -> dict[str, Any]:
    """Host 1's daemon CPU per broadcast frame from container 1 sent at rate frames/s, and where the copies went.

    The data path thread's CPU is the flood's cost (the kernel's send path runs in it too); the whole
    process's (minus its idle rate over the second before) is given as well, noisier: the control plane's
    periodic work (the next-hop keeper re-resolving every remote each 15 s) lands in either window.
    """
    pid = lab.daemons[1].proc.pid
    t0, c0, d0 = time.monotonic(), cpu_ns(pid), thread_ns(pid)
    time.sleep(1.0)
    wall = time.monotonic() - t0
    idle_per_s, data_idle_per_s = (cpu_ns(pid) - c0) / wall, (thread_ns(pid) - d0) / wall
    before, tx0, ip0 = lab.ovl(1, "show"), sink_tx(lab, 1), ip_counters(lab, 1)
    t0, c0, d0 = time.monotonic(), cpu_ns(pid), thread_ns(pid)
    nsexec(lab.container(1), sys.executable, "-c", SEND_PACED, str(frames), str(rate), timeout=frames / rate + 60)
    sent_s = time.monotonic() - t0
    time.sleep(0.5)  # the last batches
    wall, used, data = time.monotonic() - t0, cpu_ns(pid) - c0, thread_ns(pid) - d0
    after, tx1, ip1 = lab.ovl(1, "show"), sink_tx(lab, 1), ip_counters(lab, 1)
    flooded = after["stats"]["tx_flooded"] - before["stats"]["tx_flooded"]
    copies = sum(int(r["tx_flood"]) for r in after["remotes"]) - sum(int(r["tx_flood"]) for r in before["remotes"])
    drops = {k: v - before["drops"].get(k, 0) for k, v in after["drops"].items() if v - before["drops"].get(k, 0)}
    cpu = max(data - data_idle_per_s * wall, 0.0)
    return {
        "rate": rate,
        "flooded": flooded,
        "copies": copies,
        "sink_packets": tx1[0] - tx0[0],
        "sink_dropped": tx1[1] - tx0[1],
        "outer_pps": round((tx1[0] - tx0[0]) / sent_s),
        "stats": counter_deltas(before["stats"], after["stats"], ("tx",)),
        "watch": counter_deltas(before["watch"], after["watch"], ("ring", "nexthop")),
        "ip": counter_deltas(ip0, ip1, ("Out",)),  # the raw socket's packets, as the kernel's IP layer counted them
        "us_per_frame": cpu / max(flooded, 1) / 1e3,
        "ns_per_copy": cpu / max(copies, 1),
        "data_thread_cpu_s": round(data / 1e9, 3),
        "process_cpu_s": round(used / 1e9, 3),
        "process_us_per_frame": max(used - idle_per_s * wall, 0.0) / max(flooded, 1) / 1e3,
        "wall_s": round(wall, 2),
        "drops": drops,
    }


ADD_REMOTES = """
import sys
from control import ctl
tap = ctl.running()[0]
for addr in sys.argv[1:]:
    ctl.request(tap, "remote", {"op": "add", "addr": addr})
"""


class Bench:
    """One run: the lab, etcd, the worker, the daemons' logs, and the result being built."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.lab = Lab(args.hosts)
        self.etcd: Any = None
        self.worker: Worker | None = None
        self.logs: dict[int, LogWatch] = {}  # host -> its daemon's log
        self.live: list[int] = []  # hosts whose daemon runs
        self.next_member = 0
        self.joined: list[str] = []  # bench members present, in join order
        self.result: dict[str, Any] = {"phases": {}}

    # -- setup

    def setup(self) -> None:
        a, lab = self.args, self.lab
        lab.build(container_mtu("vxlan"))
        fake_routes(lab)
        common = ("--mode", "vxlan")
        if a.via == "etcd":
            from control.lab.etcd import EtcdServer

            sh("ip", "-n", lab.switch, "addr", "add", f"{ETCD_ADDR}/24", "dev", "br0")
            self.etcd = EtcdServer(name="bench", host=ETCD_ADDR, netns=lab.switch)
            self.etcd.start()
            self.result["etcd_pid"] = self.etcd.pid
            self.worker = Worker(lab.switch, self.etcd.url, NET, a.ttl)
            keepalive = f"{a.ttl / 3:g}"  # as the bench keeps its members' leases
            opts = ("--etcd", self.etcd.url, "--net", NET, "--lease-ttl", str(a.ttl), "--keepalive", keepalive)
            for i in range(1, lab.n + 1):
                lab.start(i, *common, *opts)
        else:
            lab.start_mesh("vxlan")
        self.live = list(range(1, lab.n + 1))
        self.logs = {i: LogWatch(lab.daemons[i].log) for i in self.live}
        for i in self.live if a.via == "etcd" else ():  # static remotes (remote-add) are there once it is ready
            others = [lab.underlay_ip(j) for j in self.live if j != i]
            if not wait_all([self.logs[i]], "added", others, 30):
                raise LabError(f"host {i}'s daemon did not add the other hosts:\n{lab.daemons[i].output()}")
        progress(f"{lab.n} daemons up, each with the {lab.n - 1} others as remotes")

    @property
    def watches(self) -> list[LogWatch]:
        return [self.logs[i] for i in self.live]

    def pids(self) -> list[int]:
        return [self.lab.daemons[i].proc.pid for i in self.live]

    def cpu(self) -> list[float]:
        return [cpu_s(p) for p in self.pids()]

    def new_members(self, n: int) -> list[list[Any]]:
        out = [[fake_addr(self.next_member + k), self.next_member + k] for k in range(n)]
        self.next_member += n
        return out

    # -- phases

    def phase(self, name: str, kind: str, sent: dict[str, float], published: dict[str, float | None],
              cpu0: list[float], wall0: float) -> dict[str, Any]:  # fmt: skip
        seen = [getattr(w, kind) for w in self.watches]
        pub = {a: t for a, t in published.items() if t is not None}
        row = {"kind": kind, **propagation(sent, seen, pub)}
        row["daemon_ms_per_change"] = [change_rate(d, sent) for d in seen]
        row["wall_s"] = round(time.monotonic() - wall0, 2)
        row["daemon_cpu_s"] = [round(c1 - c0, 2) for c0, c1 in zip(cpu0, self.cpu(), strict=True)]
        self.result["phases"][name] = row
        st = row["all"]
        progress(f"{name}: {st['n']} keys, p50 {st['p50_ms']} ms p99 {st['p99_ms']} ms max {st['max_ms']} ms, "
                 f"{st['missing']} missing")  # fmt: skip
        return row

    def join_one_by_one(self, n: int) -> None:
        assert self.worker is not None
        cpu0, wall0 = self.cpu(), time.monotonic()
        sent: dict[str, float] = {}
        for m in self.new_members(n):
            (put,) = self.worker.request("join", members=[m])
            sent[put["addr"]] = put["sent"]
            self.joined.append(put["addr"])
            wait_all(self.watches, "added", [put["addr"]], self.args.timeout)
        pub = self.worker.request("seen", kind="put", addrs=list(sent), wait=5)
        self.phase("join one by one", "added", sent, pub, cpu0, wall0)

    def join_burst(self, n: int, name: str) -> None:
        assert self.worker is not None
        cpu0, wall0 = self.cpu(), time.monotonic()
        puts = self.worker.request("join", members=self.new_members(n))
        sent = {p["addr"]: p["sent"] for p in puts}
        self.joined += list(sent)
        wait_all(self.watches, "added", sent, self.args.timeout)
        pub = self.worker.request("seen", kind="put", addrs=list(sent), wait=5)
        row = self.phase(name, "added", sent, pub, cpu0, wall0)
        row["put_s"] = round(max(p["acked"] for p in puts) - min(p["sent"] for p in puts), 3)

    def leave(self, n: int, burst: bool) -> None:
        assert self.worker is not None
        cpu0, wall0 = self.cpu(), time.monotonic()
        addrs, self.joined = self.joined[:n], self.joined[n:]
        sent: dict[str, float] = {}
        if burst:
            sent = {r["addr"]: r["sent"] for r in self.worker.request("leave", addrs=addrs)}
            wait_all(self.watches, "removed", addrs, self.args.timeout)
        else:
            for addr in addrs:
                (r,) = self.worker.request("leave", addrs=[addr])
                sent[addr] = r["sent"]
                wait_all(self.watches, "removed", [addr], self.args.timeout)
        pub = self.worker.request("seen", kind="delete", addrs=addrs, wait=5)
        self.phase("leave burst" if burst else "leave one by one", "removed", sent, pub, cpu0, wall0)

    def crash(self, n: int) -> None:
        """n members stop keeping their leases alive; from each one's last keepalive to every daemon dropping it."""
        assert self.worker is not None
        cpu0, wall0 = self.cpu(), time.monotonic()
        addrs, self.joined = self.joined[:n], self.joined[n:]
        last = self.worker.request("crash", addrs=addrs)
        progress(f"crash: {n} members stopped keeping their leases alive (ttl {self.args.ttl} s)")
        wait_all(self.watches, "removed", addrs, self.args.ttl + self.args.timeout)
        pub = self.worker.request("seen", kind="delete", addrs=addrs, wait=5)
        row = self.phase("crash", "removed", last, pub, cpu0, wall0)
        row["ttl_s"] = self.args.ttl
        row["target_ms"] = (self.args.ttl + CRASH_SLACK_S) * 1e3

    def kill_daemon(self) -> None:
        """SIGKILL the last host's daemon; from the kill to every other daemon dropping it."""
        assert self.worker is not None
        lab, k = self.lab, self.live[-1]
        addr = lab.underlay_ip(k)
        left = self.worker.request("remaining", addr=addr)
        self.live.remove(k)
        cpu0, wall0 = self.cpu(), time.monotonic()
        killed = time.time()
        lab.daemons[k].proc.send_signal(signal.SIGKILL)
        lab.daemons[k].proc.wait(10)
        progress(f"daemon killed: host {k}'s daemon SIGKILLed (its lease had {left.get('ttl_left')} s left)")
        wait_all(self.watches, "removed", [addr], self.args.ttl + self.args.timeout)
        pub = self.worker.request("seen", kind="delete", addrs=[addr], wait=5)
        row = self.phase("daemon killed", "removed", {addr: killed}, pub, cpu0, wall0)
        row["lease_ttl_left_at_kill_s"] = left.get("ttl_left")
        row["ttl_s"] = self.args.ttl
        row["target_ms"] = (self.args.ttl + CRASH_SLACK_S) * 1e3

    def check_state(self, label: str) -> None:
        """Every daemon's remotes (control socket) are the other hosts and the bench members present."""
        lab = self.lab
        hosts = [lab.underlay_ip(i) for i in self.live]
        want = set(self.joined)
        diffs = {}
        for i in self.live:
            have = remotes_of(lab, i)
            expect = want | {h for h in hosts if h != lab.underlay_ip(i)}
            if have != expect:
                diffs[f"h{i}"] = {"missing": len(expect - have), "extra": len(have - expect)}
        self.result.setdefault("checks", {})[label] = diffs or "ok"
        if diffs:
            progress(f"state after {label}: differs from etcd's: {diffs}")

    def at_scale(self) -> None:
        """RSS, idle CPU of every daemon and host 1's flood cost with all members present."""
        lab, a = self.lab, self.args
        n_remotes = [len(remotes_of(lab, i)) for i in self.live]
        pids = self.pids()
        t0, c0 = time.monotonic(), [cpu_ns(p) for p in pids]
        time.sleep(a.idle)
        wall = time.monotonic() - t0
        idle = [round((cpu_ns(p) - c) / wall / 1e6, 2) for p, c in zip(pids, c0, strict=True)]
        paced = flood_paced(lab, a.floods, a.flood_rate)
        burst = flood_paced(lab, a.floods, a.flood_burst_rate)
        self.result["at_scale"] = {
            "remotes": n_remotes,
            "rss_mb": [round(status_kb(p, "VmRSS") / 1024, 1) for p in pids],
            "hwm_mb": [round(status_kb(p, "VmHWM") / 1024, 1) for p in pids],
            "idle_cpu_ms_per_s": idle,
            "flood_h1": paced,
            "flood_burst_h1": burst,
            "etcd_rss_mb": round(status_kb(self.etcd.pid, "VmRSS") / 1024, 1) if self.etcd else None,
            "etcd_cpu_s": round(cpu_s(self.etcd.pid), 2) if self.etcd else None,
        }
        rss = self.result["at_scale"]["rss_mb"]
        progress(f"at scale: remotes {n_remotes}, RSS {rss} MB, flood {paced['us_per_frame']:.0f} µs/frame at "
                 f"{a.flood_rate:g}/s ({paced['sink_packets']} of {paced['copies']} copies left), "
                 f"burst {burst['us_per_frame']:.0f} µs/frame (drops {burst['drops']})")  # fmt: skip

    def add_remotes(self, n: int) -> None:
        """--via remote-add: n 198.18 remotes on every host over the control socket."""
        addrs = [fake_addr(k) for k in range(n)]
        for i in range(1, self.lab.n + 1):
            for k in range(0, n, 100):
                nsexec(self.lab.host(i), sys.executable, "-c", ADD_REMOTES, *addrs[k : k + 100], timeout=600)
        self.joined = addrs

    def run(self) -> dict[str, Any]:
        a = self.args
        fake = a.members - a.hosts
        self.setup()
        hosts = list(self.live)
        start_cpu, start_pids, t_start = self.cpu(), self.pids(), time.monotonic()
        if a.via == "remote-add":
            self.add_remotes(fake)
            self.check_state("remote add")
            self.at_scale()
        else:
            if a.one_by_one > 0:
                self.join_one_by_one(min(a.one_by_one, fake))
            if a.burst > 0 and fake > self.next_member:
                self.join_burst(min(a.burst, fake - self.next_member), "join burst")
            if fake > self.next_member:
                self.join_burst(fake - self.next_member, "fill")
            self.check_state("joins")
            self.result["members_in_etcd"] = self.worker.request("count") if self.worker else None
            self.at_scale()
            if a.leaves > 0 and self.joined:
                self.leave(min(a.leaves, len(self.joined)), burst=False)
            if a.leave_burst > 0 and self.joined:
                self.leave(min(a.leave_burst, len(self.joined)), burst=True)
            self.check_state("leaves")
            if a.crashes > 0 and self.joined:
                self.crash(min(a.crashes, len(self.joined)))
            if a.hosts > 2 and not a.no_kill:
                self.kill_daemon()
            self.check_state("crashes")
        end_cpu = dict(zip(self.live, self.cpu(), strict=True))
        self.result["daemon_pids"] = dict(zip(map(str, hosts), start_pids, strict=True))
        self.result["daemon_cpu_s_total"] = [
            round(end_cpu[i] - c0, 2) if i in end_cpu else None for i, c0 in zip(hosts, start_cpu, strict=True)
        ]
        self.result["measured_s"] = round(time.monotonic() - t_start, 1)
        return self.result

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
        if self.etcd is not None:
            self.etcd.close()
        self.lab.close()


# -- report --------------------------------------------------------------------------------------


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def table(result: dict[str, Any]) -> str:
    """The phases' propagation and the at-scale figures as Markdown tables, with the targets."""
    out = ["| phase | keys | p50 ms | p99 ms | max ms | missing | after etcd's event: p99 ms | daemon ms per change "
           "| daemon CPU s | target | reached |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, row in result.get("phases", {}).items():
        st, ae = row["all"], row["after_etcd"]
        if "target_ms" in row:
            target, value = f"max ≤ {row['target_ms'] / 1e3:.0f} s (TTL + 1)", st["max_ms"]
            ok = value is not None and st["missing"] == 0 and value <= row["target_ms"]
        else:
            target, value = "p99 ≤ 1 s", st["p99_ms"]
            ok = value is not None and st["missing"] == 0 and value <= TARGET_P99_S * 1e3
        pace = [p for p in row.get("daemon_ms_per_change", []) if p is not None]
        cpu = row.get("daemon_cpu_s", [])
        out.append(f"| {name} | {st['n']} | {_ms(st['p50_ms'])} | {_ms(st['p99_ms'])} | {_ms(st['max_ms'])} "
                   f"| {st['missing']} | {_ms(ae['p99_ms'])} | {_ms(max(pace)) if pace else '-'} "
                   f"| {max(cpu) if cpu else '-'} | {target} | {'yes' if ok else 'no'} |")  # fmt: skip
    s = result.get("at_scale")
    if s:
        rss_ok = max(s["rss_mb"]) <= TARGET_RSS_MB
        out += [
            "",
            "| daemon | remotes | RSS MB | peak MB | idle CPU ms/s | CPU s (whole run) |",
            "|---|---|---|---|---|---|",
        ]
        totals = result.get("daemon_cpu_s_total") or [None] * len(s["rss_mb"])
        for i, (n, rss, hwm, idle, tot) in enumerate(
            zip(s["remotes"], s["rss_mb"], s["hwm_mb"], s["idle_cpu_ms_per_s"], totals, strict=True)
        ):
            out.append(f"| h{i + 1} | {n} | {rss} | {hwm} | {idle} | {'-' if tot is None else tot} |")
        out += [
            "",
            f"RSS target ≤ {TARGET_RSS_MB:.0f} MB with {max(s['remotes'])} remotes: {'yes' if rss_ok else 'no'} "
            f"(largest {max(s['rss_mb'])} MB).",
            "",
            "| flood on h1 | frames | copies | copies arrived at the sink | outer packets/s | data path CPU µs/frame "
            "| ns/copy | drops (ovl-dp) | dropped by the kernel (sink) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for label, f in (("paced", s["flood_h1"]), ("burst", s["flood_burst_h1"])):
            rate = f" at {f['rate']:g}/s" if "rate" in f else ""
            out.append(
                f"| {label}{rate} | {f['flooded']} | {f['copies']} | {f.get('sink_packets', '-')} "
                f"| {f.get('outer_pps', '-')} | {f['us_per_frame']:.0f} | {f['ns_per_copy']:.0f} "
                f"| {f['drops'] or 'none'} | {f.get('sink_dropped', '-')} |"
            )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """The bench's command line (and the hidden --worker mode it runs itself in etcd's namespace)."""
    ap = argparse.ArgumentParser(prog="python3 -m bench.members", description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--members", type=int, default=500, help="members in the net, real daemons included (500)")
    ap.add_argument("--hosts", type=int, default=3, help="real daemons, in lab hosts (3)")
    ap.add_argument("--one-by-one", type=int, default=100, help="keys put one by one, each awaited (100)")
    ap.add_argument("--burst", type=int, default=100, help="keys put at once (100)")
    ap.add_argument("--leaves", type=int, default=100, help="leases revoked one by one (100)")
    ap.add_argument("--leave-burst", type=int, default=100, help="leases revoked at once (100)")
    ap.add_argument("--crashes", type=int, default=3, help="members whose leases stop being kept alive (3)")
    ap.add_argument("--no-kill", action="store_true", help="do not SIGKILL the last host's daemon at the end")
    ap.add_argument("--ttl", type=int, default=15, help="lease TTL, s, of the bench's members and the daemons (15)")
    ap.add_argument("--floods", type=int, default=500, help="broadcast frames for the flood cost (500)")
    ap.add_argument("--flood-rate", type=float, default=100.0, help="paced flood: frames per second (100)")
    ap.add_argument("--flood-burst-rate", type=float, default=10000.0, help="burst flood: frames per second (10000)")
    ap.add_argument("--idle", type=float, default=5.0, help="seconds of idle CPU measured at scale (5)")
    ap.add_argument("--timeout", type=float, default=30.0, help="longest wait for one propagation, s (30)")
    ap.add_argument("--via", choices=("etcd", "remote-add"), default="etcd",
                    help="etcd (default), or remote-add: no etcd, remotes added over the control socket, "
                    "at-scale phase only")  # fmt: skip
    ap.add_argument("--json", metavar="PATH", help="where the result goes (default bench/results/members-DATE.json)")
    ap.add_argument("--note", default="", help="a note kept in the result (e.g. 'machine shared')")
    ap.add_argument("--worker", metavar="URL", help=argparse.SUPPRESS)
    ap.add_argument("--net", default=NET, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        asyncio.run(_worker(args.worker, args.net, args.ttl))
        return 0
    if args.members <= args.hosts or args.hosts < 2:
        ap.error("--members must be more than --hosts, and --hosts at least 2")
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    bench = Bench(args)
    try:
        with sigterm_raises_interrupt():
            result = bench.run()
    finally:
        bench.close()
    with open("/proc/loadavg") as f:
        load_after = " ".join(f.read().split()[:3])
    result.update(
        {
            "date": started,
            "command": "python3 -m bench.members " + " ".join(sys.argv[1:] if argv is None else argv),
            "commit": commit.stdout.strip(),
            "load_before": load,
            "load_after": load_after,
            "cpus": os.cpu_count(),
            "note": args.note,
            "args": {k: v for k, v in vars(args).items() if k not in ("worker", "json")},
        }
    )
    print(f"{started}, load {load} before, {load_after} after; {args.members} members, {args.hosts} daemons")
    print(table(result))
    path = Path(args.json) if args.json else ROOT / "bench" / "results" / f"members-{time.strftime('%Y-%m-%d')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"result: {path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (LabError, subprocess.TimeoutExpired) as exc:
        sys.exit(f"bench.members: {exc}")
    except KeyboardInterrupt:
        sys.exit("bench.members: interrupted")
