"""`ovl-dp run --takeover` (and SIGUSR2) in the two-host lab: a restart that loses no frame.

Host 1's daemon is replaced under an iperf3 TCP transfer and a 50 ms ping; the
checks: what host 1 sent (the old daemon's last counters, handed to the new
one, plus the new one's) is what host 2 received, and the other way round;
iperf3's retransmissions compared with a run without the upgrade; the TAP
never leaves its bridge (its master, or its OVS ofport, sampled through the
handover); the FDB survives (nothing learned anew for the MACs known before);
`ovl-dp show` answers from the new PID. Then takeovers that fail: a
configuration that cannot share the fds, a new process that dies after it got
the fds, or after it said it was forwarding — the old daemon keeps forwarding.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from control import ovs
from control.lab.hosts import SEED_TAG, Lab, container_mtu
from control.lab.shell import sh
from control.procs import wait_until
from tests.netns.test_metrics import scrape

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("no_leftovers")]

RATE = "200M"  # iperf3's pace: the 2-core machine keeps up with it in both modes
OVS_RATE = "50M"  # OVS's userspace datapath drops by itself at 200M on it (thousands of retransmits either way)
SECONDS = 6
STATIC_MAC = "02:00:00:00:99:01"
METRICS_PORT = 9100  # on each host namespace's own loopback


def cli(lab: Lab, i: int, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`ovl-dp ARGS` in host i's namespace."""
    return sh("ip", "netns", "exec", lab.host(i), sys.executable, "-m", "control.cli", *args, check=check)


def show(lab: Lab, i: int) -> dict[str, Any]:
    return dict(json.loads(cli(lab, i, "show", "--json").stdout))


def per_remote(snapshot: dict[str, Any] | None, remote: str, field: str) -> int:
    if not snapshot:
        return 0
    return sum(int(r[field]) for r in snapshot["remotes"] if r["remote"] == remote)


def host1_total(lab: Lab, field: str) -> int:
    """Host 1's count towards/from host 2: its daemon's, plus its predecessor's last counters."""
    s = show(lab, 1)
    return per_remote(s, lab.underlay_ip(2), field) + per_remote(s.get("takeover", {}).get("previous"),
                                                                  lab.underlay_ip(2), field)  # fmt: skip


def gaps(lab: Lab) -> tuple[int, int]:
    """(sent by host 1 not received by host 2, sent by host 2 not received by host 1)."""
    h2 = show(lab, 2)
    a = host1_total(lab, "tx_packets") - per_remote(h2, lab.underlay_ip(1), "rx_packets")
    b = per_remote(h2, lab.underlay_ip(1), "tx_packets") - host1_total(lab, "rx_packets")
    return a, b


def settled_gaps(lab: Lab) -> tuple[int, int]:
    """gaps() once two readings agree (nothing in flight)."""

    def same_twice() -> tuple[int, int] | None:
        g = gaps(lab)
        return g if g == gaps(lab) else None

    found = wait_until("the counters to settle", same_twice, timeout=15, interval=0.2)
    assert found is not None
    return found


class AttachmentWatch:
    """Samples, in a thread, whether host 1's TAP is on its bridge: its master (Linux) or its ofport (OVS)."""

    def __init__(self, lab: Lab, tap: str, bridge: str) -> None:
        self.samples = 0
        self.bad: list[str] = []
        self._stop = threading.Event()
        if bridge == "ovs":
            o = lab.ovs[1]
            self._probe: Callable[[], str] = lambda: o.vsctl("get", "interface", tap, "ofport").strip()
            self._ok: Callable[[str], bool] = lambda v: v.isdigit() and int(v) > 0
        else:
            ns = lab.host(1)

            def master() -> str:
                res = sh("ip", "-n", ns, "-j", "link", "show", "dev", tap, check=False)
                return str(json.loads(res.stdout)[0].get("master")) if res.returncode == 0 else "gone"

            self._probe, self._ok = master, lambda v: v == "br-int"
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                value = self._probe()
            except Exception as exc:  # an ovs-vsctl error counts as a bad sample
                value = f"error: {exc}"
            self.samples += 1
            if not self._ok(value):
                self.bad.append(value)
            time.sleep(0.02)

    def __enter__(self) -> AttachmentWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def kill_later(pids: list[int]) -> None:
    """Stop processes this test caused (the SIGUSR2 successor is no child of ours), by PID."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        gone = f"/proc/{pid}"
        wait_until(f"PID {pid} to exit", lambda: not os.path.exists(gone), timeout=10)  # noqa: B023


def handover_in_log(text: str) -> float:
    """Milliseconds from the old daemon's "handing the TAP" line to its "forwards now" line."""
    stamps = {}
    for line in text.splitlines():
        for key in ("takeover: handing the TAP", "forwards now"):
            if key in line:
                stamps[key] = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return (stamps["forwards now"] - stamps["takeover: handing the TAP"]).total_seconds() * 1000


def counted_drops(lab: Lab, bridge: str) -> dict[str, Any]:
    """Every drop counter that is not zero: each host's ovl-dp (the new daemon on host 1), and OVS's ports."""
    out: dict[str, Any] = {}
    for i in (1, 2):
        drops = show(lab, i).get("drops") or {}
        out[f"ovl-dp {i}"] = {k: v for k, v in drops.items() if v}
        if bridge == "ovs":
            stats = lab.ovs[i].appctl("dpctl/show", "-s").splitlines()
            out[f"ovs {i}"] = [line.strip() for line in stats if "dropped:" in line and "dropped:0 " not in line]
    return out


def tap_drops(lab: Lab, tap: str) -> tuple[int, int]:
    """(tx, rx) frames the kernel dropped at host 1's TAP: tx are frames the bridge sent that no reader took."""
    stats = json.loads(sh("ip", "-n", lab.host(1), "-j", "-s", "link", "show", "dev", tap).stdout)[0]["stats64"]
    return int(stats["tx"]["dropped"]), int(stats["rx"]["dropped"])


def under_traffic(lab: Lab, rate: str, action: Callable[[], None]) -> dict[str, Any]:
    """iperf3 (container 1 -> 2) and a 50 ms ping for SECONDS; action() 2 s in. iperf3's and ping's results."""
    results: dict[str, Any] = {}

    def traffic() -> None:
        results["iperf"] = lab.iperf3(1, 2, SECONDS, "-b", rate)

    def pinger() -> None:
        results["ping"] = lab.ping(1, 2, count=int(SECONDS / 0.05), interval=0.05, check=False)

    threads = [threading.Thread(target=traffic), threading.Thread(target=pinger)]
    for t in threads:
        t.start()
    try:
        time.sleep(2)  # mid-transfer
        action()
    finally:
        for t in threads:
            t.join(SECONDS + 60)
    return results


CASES = [("vxlan", "linux", "cli"), ("gre", "linux", "sigusr2"), ("vxlan", "ovs", "sigusr2"), ("gre", "ovs", "cli")]


@pytest.mark.parametrize(("mode", "bridge", "how"), CASES, ids=["-".join(c) for c in CASES])
def test_takeover_under_iperf3_loses_no_frame(mode: str, bridge: str, how: str) -> None:
    if bridge == "ovs" and ovs.installed() is not None:
        pytest.skip("Open vSwitch is not installed")
    tap = f"ovl-{mode}"
    successors: list[int] = []
    with Lab(2) as lab:
        try:
            if bridge == "ovs":
                lab.build(container_mtu(mode, tagged=True), bridge="ovs", tag=SEED_TAG)
            else:
                lab.build(container_mtu(mode))
            lab.start_mesh(mode)
            old = lab.daemons[1]
            old_pid = show(lab, 1)["pid"]
            assert lab.ping(1, 2, count=3)["loss"] == 0
            rate = RATE if bridge == "linux" else OVS_RATE
            base = under_traffic(lab, rate, lambda: None)
            baseline = base["iperf"]
            assert "error" not in baseline, baseline
            known = {r["mac"]: r for r in lab.ovl(1, "fdb")}
            assert known, "nothing learned before the takeover"
            lost_before = settled_gaps(lab)

            dropped_before = tap_drops(lab, tap)
            timing: dict[str, float] = {}

            def upgrade() -> None:
                with AttachmentWatch(lab, tap, bridge) as watch:
                    t0 = time.monotonic()
                    if how == "cli":
                        lab.start(1, "--mode", mode, "--remote", lab.underlay_ip(2), "--takeover")
                    else:
                        old.proc.send_signal(signal.SIGUSR2)
                    assert old.proc.wait(20) == 0, old.output()
                    timing["handover"] = time.monotonic() - t0
                    time.sleep(0.5)
                timing["samples"], timing["bad"] = watch.samples, len(watch.bad)
                results["bad_samples"] = watch.bad

            results: dict[str, Any] = {}
            results.update(under_traffic(lab, rate, upgrade))
            watch_bad = results["bad_samples"]
            handover = timing["handover"]
            after = show(lab, 1)
            if how == "sigusr2":
                successors.append(int(after["pid"]))
            print(f"\n{mode}/{bridge}/{how}: takeover command to old daemon's exit {handover * 1000:.0f} ms, "
                  f"offer to handed over (old daemon's log) {handover_in_log(old.output()):.0f} ms")  # fmt: skip
            # The new daemon answers; it took over from the old one.
            assert after["pid"] != old_pid and after["takeover"]["from_pid"] == old_pid, after.get("takeover")
            out = old.output()
            assert "Traceback" not in out and f"handed over to PID {after['pid']}" in out, out
            if bridge == "ovs":
                assert "could not remove port" not in out
                assert tap in lab.ovs[1].vsctl("list-ports", "br-int").split()
            # The TAP never left the bridge.
            print(f"attachment samples during the handover: {timing['samples']:.0f}, bad: {watch_bad[:5]}")
            assert timing["samples"] > 0 and not watch_bad, watch_bad
            # Nor did the kernel drop a frame at the TAP for want of a reader.
            assert tap_drops(lab, tap) == dropped_before, (dropped_before, tap_drops(lab, tap))
            # No frame lost: what one side sent, the other received (beyond what the baseline lost).
            final = wait_until(
                "every packet sent across the takeover to be received",
                lambda: (g := gaps(lab)) == lost_before and g,
                timeout=15,
                interval=0.2,
                detail=lambda: f"gaps {gaps(lab)}, {lost_before} before",
            )
            print(f"packets sent but not received (host1->2, host2->1): before {lost_before}, after {final}")
            retrans = [
                r.get("end", {}).get("sum_sent", {}).get("retransmits", -1) for r in (baseline, results["iperf"])
            ]
            print(f"iperf3 retransmits: {retrans[0]} without the upgrade, {retrans[1]} with it; 50 ms ping loss: "
                  f"{base['ping']['loss']}% without, {results['ping']['loss']}% with it (max RTT "
                  f"{base['ping'].get('max')} / {results['ping'].get('max')} ms)")  # fmt: skip
            assert results["iperf"].get("end", {}).get("sum_received", {}).get("bytes", 0) > 0, results["iperf"]
            # (Seen once in CI, OVS case: 233 retransmits and one ping lost with no gap and no TAP drop; the
            # message says whose drop counters moved, to tell ovl-dp's losses from OVS userspace's own.)
            assert 0 <= retrans[1] <= max(100, 5 * retrans[0]), (retrans, counted_drops(lab, bridge))
            if base["ping"]["loss"] == 0:  # (an OVS userspace bridge under load drops by itself: compared only then)
                assert results["ping"]["loss"] == 0, results["ping"]
            # The FDB survived: the MACs known before are there, none had to be learned anew.
            fdb = {r["mac"]: r for r in lab.ovl(1, "fdb")}
            for mac, row in known.items():
                assert mac in fdb and fdb[mac]["remote"] == row["remote"], (mac, fdb)
            assert show(lab, 1)["fdb"]["learns"] == 0, show(lab, 1)["fdb"]
            assert lab.ping(2, 1, count=3)["loss"] == 0
        finally:
            kill_later(successors)


def test_failed_takeovers_leave_the_old_daemon_forwarding() -> None:
    with Lab(2) as lab:
        lab.build(container_mtu("vxlan"))
        lab.start_mesh("vxlan", "--metrics", str(METRICS_PORT))
        old = lab.daemons[1]
        peer = lab.underlay_ip(2)
        assert lab.ping(1, 2, count=2)["loss"] == 0
        # A configuration that cannot share the fds: refused with the keys named, one line, exit 2.
        for args, needle in [
            (("--vni", "77"), "tunnel.vni (running 0, new 77)"),
            (("--port", "4790"), "tunnel.port"),
            (("--bridge", "br-other", "--bridge-type", "none"), "bridge.name"),
        ]:
            res = cli(lab, 1, "run", "--mode", "vxlan", "--remote", peer, *args, "--takeover", check=False)
            assert res.returncode == 2 and res.stderr.count("\n") == 1, (args, res.stderr)
            assert "takeover refused" in res.stderr and needle in res.stderr, (args, res.stderr)
        res = cli(lab, 1, "run", "--mode", "gre", "--remote", peer, "--takeover", check=False)
        assert res.returncode == 2 and "no ovl-dp daemon with TAP ovl-gre" in res.stderr, res.stderr

        # A new process that dies after it got the fds, and one that dies after it said it was forwarding
        # (the real client code; the process is killed at the step).
        def client(step: str) -> subprocess.Popen[str]:
            code = (
                "import sys; from control import takeover\n"
                "from control.config import ConfigSource\n"
                f"cfg = ConfigSource({{'tunnel.mode': 'vxlan', 'remotes': ['{peer}']}}).load()\n"
                "offer = takeover.request('ovl-vxlan', takeover.identity(cfg))\n"
                f'if {step == "forwarding"}: offer.conn.sendall(b\'{{"step": "forwarding"}}\\n\')\n'
                "print('fds', sorted(offer.fds), flush=True)\n"
                "sys.stdin.read()\n"
            )
            return subprocess.Popen(
                ["ip", "netns", "exec", lab.host(1), sys.executable, "-c", code],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip

        for step, needle in [("fds", "abandoned: waiting for the new daemon to be forwarding"),
                             ("forwarding", "after it said it was forwarding")]:  # fmt: skip
            proc = client(step)
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("fds") and "'tap'" in line and "'ctl'" in line, line
            proc.kill()
            proc.wait()
            wait_until(f"the old daemon to note the failure ({step})", lambda: needle in old.output(), timeout=15,  # noqa: B023
                       detail=old.output)  # fmt: skip
            assert old.proc.poll() is None
            assert lab.ping(1, 2, count=3)["loss"] == 0, old.output()
        s = show(lab, 1)
        assert s["control"]["takeovers_refused"] == 3 and s["control"]["takeovers_abandoned"] == 2, s["control"]
        assert "Traceback" not in old.output()
        # Still a working daemon: a real takeover now succeeds, and /healthz answers all along (the metrics
        # listening socket is handed over, never closed or bound again).
        statuses: list[int | str] = []
        polling = threading.Event()

        def poll_health() -> None:
            while not polling.is_set():
                try:
                    statuses.append(scrape(lab.host(1), "/healthz", METRICS_PORT)[0])
                except Exception as exc:
                    statuses.append(str(exc)[:200])
                time.sleep(0.05)

        # Changed at run time: a remote added (the configuration still names host 2 only) and a static entry.
        extra = "192.0.2.77"
        cli(lab, 1, "remote", "add", extra)
        cli(lab, 1, "fdb", "add", f"{STATIC_MAC}@20", extra)
        poller = threading.Thread(target=poll_health)
        poller.start()
        try:
            new = lab.start(1, "--mode", "vxlan", "--remote", peer, "--metrics", str(METRICS_PORT), "--takeover")
            assert old.proc.wait(20) == 0
            time.sleep(0.5)
        finally:
            polling.set()
            poller.join(30)
        print(f"/healthz during the takeover: {len(statuses)} answers, {set(statuses)}")
        assert statuses and all(st == 200 for st in statuses), statuses
        assert show(lab, 1)["pid"] != old.proc.pid and new.proc.poll() is None
        status, body = scrape(lab.host(1), "/metrics", METRICS_PORT)
        assert status == 200 and "ovl_dp_build_info" in body
        assert "metrics on http://127.0.0.1:" in new.output() and "error" not in new.output().lower()
        text = cli(lab, 1, "show").stdout
        assert f"took over from PID {old.proc.pid}" in text, text
        # The running remotes and static entries went over, not the configuration's.
        rows = json.loads(cli(lab, 1, "remote", "list", "--json").stdout)
        assert [r["remote"] for r in rows] == [peer, extra], rows
        fdb = [r for r in lab.ovl(1, "fdb") if r["mac"] == STATIC_MAC]
        assert fdb and fdb[0]["static"] and fdb[0]["vlan"] == 20 and fdb[0]["remote"] == extra, fdb
        assert lab.ping(1, 2, count=3)["loss"] == 0
        # A second takeover: the control socket's listen() was done by the first daemon, which is gone
        # (SO_PEERCRED names it); the newest must still name, and wait for, the one it takes over from.
        newer = lab.start(1, "--mode", "vxlan", "--remote", peer, "--metrics", str(METRICS_PORT), "--takeover")
        assert new.proc.wait(20) == 0
        after = show(lab, 1)
        assert after["pid"] == newer.proc.pid and after["takeover"]["from_pid"] == new.proc.pid, after
        assert f"took over from PID {new.proc.pid}" in newer.output(), newer.output()
        assert lab.ping(1, 2, count=3)["loss"] == 0
        new = newer
        # SIGTERM while a new process holds the fds and has not said it forwards: the daemon stops at once,
        # and leaves the TAP on the bridge (the new one may forward already).
        proc = client("fds")
        assert proc.stdout is not None and proc.stdout.readline().startswith("fds")
        t0 = time.monotonic()
        new.proc.send_signal(signal.SIGTERM)
        assert new.proc.wait(20) == 0
        print(f"SIGTERM during a takeover: exited after {(time.monotonic() - t0) * 1000:.0f} ms")
        proc.kill()
        proc.wait()
        out = new.output()
        assert "stopping while a takeover is under way" in out and "Traceback" not in out, out
        assert "Task was destroyed" not in out and "Exception" not in out, out


def test_sigusr2_under_a_systemd_stand_in_moves_the_main_pid() -> None:
    """As ovl-dp@.service runs it (two capabilities, NotifyAccess=main, a watchdog): SIGUSR2 to the main
    process starts its successor; the old one announces MAINPID=<new> and never STOPPING=1, the new one
    pings the watchdog, and SIGTERM to it ends the service with STOPPING=1. Senders are told by SO_PASSCRED."""
    from tests.isolated import run_isolated
    from tests.netns.netutil import exists, ip, link, veth
    from tests.netns.test_daemon_notify import AS_THE_UNIT, ROOT

    def datagrams(sock: socket.socket, until: float) -> list[tuple[int, bytes]]:
        out = []
        while (left := until - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, anc, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except TimeoutError:
                break
            pid = next((struct.unpack("3i", d)[0] for lvl, t, d in anc if t == socket.SCM_CREDENTIALS), -1)
            out.append((pid, data))
        return out

    def until_field(sock: socket.socket, field: bytes, seen: list[tuple[int, bytes]]) -> tuple[int, bytes]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for pid, data in datagrams(sock, time.monotonic() + 0.2):
                seen.append((pid, data))
                if any(f.startswith(field) for f in data.split(b"\n")):
                    return pid, data
        raise AssertionError(f"no {field!r}: {seen}")

    def body() -> None:
        veth("10.1.0.1/24")
        ip("link", "add", "br0", "type", "bridge")
        ip("link", "set", "br0", "up")
        name = f"ovl-dp-test-takeover-{os.getpid()}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, open(os.devnull, "wb") as null:
            sock.bind("\0" + name)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            env = {**os.environ, "NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "400000"}
            daemon = [sys.executable, "-m", "control.cli", "run", "--mode", "vxlan", "--remote", "10.1.0.2",
                      "--tap", "ovlq0", "--bridge", "br0", "--bridge-type", "linux"]  # fmt: skip
            cmd = [*AS_THE_UNIT, "sh", "-c", 'WATCHDOG_PID=$$ exec "$@"', "sh", *daemon]
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=null, stderr=null)
            seen: list[tuple[int, bytes]] = []
            new_pid = 0
            try:
                assert until_field(sock, b"READY=1", seen)[0] == proc.pid
                proc.send_signal(signal.SIGUSR2)
                sender, data = until_field(sock, b"MAINPID=", seen)
                assert sender == proc.pid, seen  # the main process names its successor
                new_pid = int(next(f for f in data.split(b"\n") if f.startswith(b"MAINPID="))[8:])
                assert proc.wait(30) == 0
                assert not any(b"STOPPING=1" in d for p, d in seen), seen
                row = link("ovlq0")
                assert row is not None and row.get("master") == "br0", row
                pings: list[int] = []  # until the successor's first ping (no fixed window: the machine is slow)
                deadline = time.monotonic() + 30
                while new_pid not in pings and time.monotonic() < deadline:
                    pings += [p for p, d in datagrams(sock, time.monotonic() + 0.5) if d == b"WATCHDOG=1"]
                assert new_pid in pings and set(pings) == {new_pid}, pings  # the successor keeps the watchdog fed
                os.kill(new_pid, signal.SIGTERM)
                assert until_field(sock, b"STOPPING=1", seen)[0] == new_pid
                wait_until("the successor to exit", lambda: not os.path.exists(f"/proc/{new_pid}"), timeout=30)
                assert not exists("ovlq0")
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                if new_pid and os.path.exists(f"/proc/{new_pid}"):
                    os.kill(new_pid, signal.SIGKILL)

    run_isolated(body, timeout=120)


def test_a_takeover_process_killed_at_any_moment_never_leaves_the_tap_unserved() -> None:
    """The real `ovl-dp run --takeover` SIGKILLed after growing delays (before it connects, while it builds
    its engine, around the handover): either the old daemon still forwards, or it handed over and exited 0
    (and then the kill hit the new one: a new daemon is started for the next round). Never an old daemon
    that stopped without a new one having said it forwards."""
    with Lab(2) as lab:
        lab.build(container_mtu("gre"))
        lab.start_mesh("gre")
        peer = lab.underlay_ip(2)
        args = ("--mode", "gre", "--remote", peer)
        outcomes: dict[str, int] = {"old kept forwarding": 0, "handed over before the kill": 0}
        for delay in (0.0, 0.1, 0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.8):
            old = lab.daemons[1]
            new = lab.start(1, *args, "--takeover", wait=False)
            time.sleep(delay)
            new.proc.kill()  # by PID: our own child (ip netns exec execs the daemon)
            new.proc.wait()
            lab.daemons[1] = old
            try:
                old.proc.wait(3)
            except subprocess.TimeoutExpired:
                # Still running: it must be forwarding (it may still be noticing the failure).
                wait_until("the old daemon to forward", lambda: lab.ping(1, 2, count=1, check=False)["loss"] == 0,
                           timeout=20, interval=0)  # fmt: skip
                assert old.proc.poll() is None, old.output()
                outcomes["old kept forwarding"] += 1
                continue
            assert old.proc.returncode == 0 and "handed over to PID" in old.output(), old.output()
            outcomes["handed over before the kill"] += 1
            lab.start(1, *args)  # the TAP went with the killed successor: a fresh daemon for the next round
        print(f"\nkilled takeovers: {outcomes}")
        assert "Traceback" not in "".join(d.output() for d in lab.daemons.values())
        assert outcomes["old kept forwarding"] > 0


# The old side played by a script (real Engine, real offer), so that it can fail at a step of the test's
# choosing: after the new daemon said it forwards, it stays silent (and alive), or it exits.
OLD_SIDE = """
import json, os, socket, sys, time
from control import bridge, config, ctl, takeover
from datapath.engine import Engine
behaviour, peer = sys.argv[1], sys.argv[2]
user = config.ConfigSource({"tunnel.mode": "vxlan", "remotes": [peer]}).load()
br = bridge.resolve("br-int", "auto")
engine = Engine(config.resolve(user, br.kind))
br.attach(engine.tap.name)
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(ctl.address(engine.tap.name))
listener.listen(4)
print("listening", flush=True)
conn, _ = listener.accept()
takeover._read_line(conn, bytearray(), "request")
inh = engine.inherit()
fds = {"tap": inh.tap_fd, "recv": inh.recv_fd, "send": inh.send_fd, "ctl": listener.fileno()}
takeover.send_offer(conn, fds, takeover.export_state(engine, None), 30)
print("forwarding said", flush=True)
if behaviour == "exit":
    os._exit(0)
time.sleep(120)
"""


@pytest.mark.parametrize("behaviour", ["silent", "exit"])
def test_an_old_daemon_that_does_not_answer_forwarding(behaviour: str) -> None:
    """silent: the new daemon stops reading and exits 2 (the old one is alive: two must never forward);
    exit: the old one is gone, the new one forwards alone."""
    with Lab(2) as lab:
        lab.build(container_mtu("vxlan"))
        lab.start(2, "--mode", "vxlan", "--remote", lab.underlay_ip(1))
        peer = lab.underlay_ip(2)
        fake = subprocess.Popen(
            ["ip", "netns", "exec", lab.host(1), sys.executable, "-c", OLD_SIDE, behaviour, peer],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        lab.procs.append(fake)  # type: ignore[arg-type]  # (stopped by PID with the lab)
        assert fake.stdout is not None and fake.stdout.readline().strip() == "listening"
        new = lab.start(1, "--mode", "vxlan", "--remote", peer, "--takeover", wait=False)
        assert fake.stdout.readline().strip() == "forwarding said"
        if behaviour == "silent":
            code = new.proc.wait(60)
            out = new.output()
            assert code == 2, out
            assert "did not stop" in out and "it keeps running, this one exits" in out, out
            assert fake.poll() is None and "Traceback" not in out
            sh("ip", "-n", lab.host(1), "link", "show", "ovl-vxlan")  # the TAP is the old side's still
        else:
            lab.wait_ready(new)
            assert "exited without its last word" in new.output() and "forwarding alone" in new.output()
            assert fake.wait(10) == 0
            assert lab.ping(1, 2, count=3)["loss"] == 0
            assert show(lab, 1)["pid"] == new.proc.pid
