"""What ovl-dp survives around it, tried in the namespace lab: a deleted TAP, a TAP taken off its bridge, a
deleted Linux bridge, and a kill -9 and restart on Open vSwitch; both modes, Linux bridge and OVS where it applies.

While each fault happens, container 1 pings container 2 every 50 ms (`ping -D`:
each reply with its time); the outage is the longest gap between two replies.
Tests assert that traffic comes back and what the daemon reports; the times are
printed (run with -s), never asserted.
"""

from __future__ import annotations

import itertools
import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from control import ovs
from control.lab.hosts import Lab, container_mtu
from control.lab.shell import sh
from control.procs import wait_until
from tests.netns.test_metrics import samples, scrape

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("no_leftovers")]

needs_ovs = pytest.mark.skipif(ovs.installed() is not None, reason="Open vSwitch is not installed")
BRIDGES = ["linux", pytest.param("ovs", marks=needs_ovs)]
MODES = ["gre", "vxlan"]
PING_INTERVAL = 0.05
WAIT = 30.0  # an upper bound for recovery, never a speed requirement
METRICS_PORT = 9119


class PingClock:
    """A ping every 50 ms from container src to container dst, in the background, with reply times."""

    def __init__(self, lab: Lab, src: int, dst: int) -> None:
        self.out = Path(lab.workdir) / f"ping-{src}-{dst}-{time.monotonic_ns()}.txt"
        with self.out.open("wb") as f:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", lab.container(src), "ping", "-n", "-D", "-i", str(PING_INTERVAL), "-W", "1",
                 lab.overlay_ip(dst)],
                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        lab.procs.append(self.proc)  # the lab stops it (by PID) also on failure

    def replies(self) -> list[tuple[float, int]]:
        """(Unix time, icmp_seq) of every reply so far."""
        text = self.out.read_text(errors="replace")
        return [(float(t), int(s)) for t, s in re.findall(r"^\[([\d.]+)\] .*icmp_seq=(\d+)", text, re.M)]

    def wait_reply_after(self, t: float, timeout: float = WAIT) -> float:
        """The time of the first reply later than Unix time t (WaitTimeout if none comes)."""
        return float(wait_until(
            "a ping reply", lambda: next((r for r, _ in self.replies() if r > t), 0.0), timeout, 0.02,
            detail=lambda: self.out.read_text(errors="replace")[-2000:],
        ))  # fmt: skip

    def stop(self) -> tuple[float, int]:
        """Stop pinging; (longest gap between two replies in seconds, replies missing)."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(10)
        got = self.replies()
        assert got, self.out.read_text(errors="replace")
        gap = max((b[0] - a[0] for a, b in itertools.pairwise(got)), default=0.0)
        missing = got[-1][1] - got[0][1] + 1 - len(got)
        return gap, missing


def report(what: str, gap: float, missing: int, extra: str = "") -> None:
    every = f"{PING_INTERVAL * 1000:.0f} ms"
    print(f"\nRECOVERY {what}: outage {gap * 1000:.0f} ms (longest gap between replies, one every {every}), "
          f"{missing} replies missing{extra}")  # fmt: skip


def link_json(lab: Lab, i: int, name: str) -> dict[str, object]:
    return dict(json.loads(sh("ip", "-n", lab.host(i), "-d", "-j", "link", "show", "dev", name).stdout)[0])


def master_of(lab: Lab, i: int, name: str) -> str:
    res = sh("ip", "-n", lab.host(i), "-j", "link", "show", "dev", name, check=False)
    return str(json.loads(res.stdout)[0].get("master", "")) if res.returncode == 0 else ""


def watch_of(lab: Lab, i: int) -> dict[str, object]:
    return dict(lab.ovl(i, "show")["watch"])


def build(bridge: str, mode: str) -> Lab:
    lab = Lab(2)
    try:
        lab.build(container_mtu(mode, tagged=bridge == "ovs"), bridge=bridge)
    except BaseException:
        lab.close()
        raise
    return lab


@pytest.mark.parametrize("bridge", BRIDGES)
@pytest.mark.parametrize("mode", MODES)
def test_deleted_tap_is_recreated_and_plugged_back(bridge: str, mode: str) -> None:
    tap = f"ovl-{mode}"
    with build(bridge, mode) as lab:
        lab.start(1, "--mode", mode, "--remote", lab.underlay_ip(2), "--metrics", str(METRICS_PORT))
        lab.start(2, "--mode", mode, "--remote", lab.underlay_ip(1))
        assert lab.ping(1, 2, count=3)["loss"] == 0
        before = link_json(lab, 1, tap)
        clock = PingClock(lab, 1, 2)
        clock.wait_reply_after(0)
        t0 = time.time()
        sh("ip", "-n", lab.host(1), "link", "del", tap)
        clock.wait_reply_after(t0 + 0.5)
        gap, missing = clock.stop()
        report(f"TAP deleted ({bridge}, {mode})", gap, missing)
        after = link_json(lab, 1, tap)
        for key in ("address", "mtu"):
            assert after[key] == before[key], key
        info = (after["linkinfo"], before["linkinfo"])
        assert info[0]["info_data"] == info[1]["info_data"]  # type: ignore[index]  # tap, vnet_hdr as before
        assert after["ifindex"] != before["ifindex"]  # a new device
        if bridge == "linux":
            assert master_of(lab, 1, tap) == "br-int"
        else:
            assert tap in lab.ovs[1].vsctl("list-ports", "br-int").split()
        assert lab.ping(1, 2, count=5)["loss"] == 0
        w = watch_of(lab, 1)
        assert (w["tap_recreated"], w["problem"]) == (1, ""), w
        log = lab.daemons[1].output()
        assert log.count("re-created it") == 1, log
        assert "Traceback" not in log
        status, body = scrape(lab.host(1), "/metrics", METRICS_PORT)
        assert status == 200 and samples(body)[("ovl_dp_tap_recreated_total", frozenset({("tap", tap)}))] == 1
        assert scrape(lab.host(1), "/healthz", METRICS_PORT) == (200, "ok\n")
        assert lab.stop(lab.daemons[1]) == 0


@pytest.mark.parametrize("mode", MODES)
def test_tap_taken_off_its_bridge_is_plugged_back(mode: str) -> None:
    tap = f"ovl-{mode}"
    with build("linux", mode) as lab:
        lab.start_mesh(mode)
        clock = PingClock(lab, 1, 2)
        clock.wait_reply_after(0)
        t0 = time.time()
        sh("ip", "-n", lab.host(1), "link", "set", tap, "nomaster")
        wait_until("the TAP back on br-int", lambda: master_of(lab, 1, tap) == "br-int", WAIT, 0.01)
        replugged = time.time() - t0
        clock.wait_reply_after(time.time())
        gap, missing = clock.stop()
        report(f"TAP taken off its Linux bridge ({mode})", gap, missing,
               f"; back on the bridge within {replugged * 1000:.0f} ms (polling ip link every 10 ms)")  # fmt: skip
        w = watch_of(lab, 1)
        assert (w["tap_reattached"], w["tap_recreated"], w["problem"]) == (1, 0, ""), w
        assert "was taken off bridge br-int: plugged it back in" in lab.daemons[1].output()
        assert lab.ping(1, 2, count=3)["loss"] == 0


@pytest.mark.parametrize("mode", MODES)
def test_deleted_linux_bridge_is_reported_and_rejoined(mode: str) -> None:
    tap = f"ovl-{mode}"
    with build("linux", mode) as lab:
        h1 = lab.host(1)
        lab.start(1, "--mode", mode, "--remote", lab.underlay_ip(2), "--metrics", str(METRICS_PORT))
        lab.start(2, "--mode", mode, "--remote", lab.underlay_ip(1))
        assert lab.ping(1, 2, count=3)["loss"] == 0
        sh("ip", "-n", h1, "link", "del", "br-int")
        reason = f"TAP {tap} is not attached: bridge br-int does not exist"
        wait_until("show to report the missing bridge", lambda: watch_of(lab, 1)["problem"] == reason, WAIT, 0.05)
        assert scrape(h1, "/healthz", METRICS_PORT) == (503, reason + "\n")
        assert lab.daemons[1].proc.poll() is None  # the daemon waits for the bridge, it does not end
        # The operator creates the bridge again (and puts the container's port back): the TAP joins it.
        clock = PingClock(lab, 1, 2)
        t0 = time.time()
        sh("ip", "-n", h1, "link", "add", "br-int", "type", "bridge")
        wait_until("the TAP on the new br-int", lambda: master_of(lab, 1, tap) == "br-int", WAIT, 0.01)
        joined = time.time() - t0
        sh("ip", "-n", h1, "link", "set", "vm0", "master", "br-int")
        sh("ip", "-n", h1, "link", "set", "br-int", "up")
        back = clock.wait_reply_after(t0)
        clock.stop()
        print(f"\nRECOVERY Linux bridge re-created ({mode}): TAP attached {joined * 1000:.0f} ms after `ip link add "
              f"br-int` (polling every 10 ms); first ping reply {(back - t0) * 1000:.0f} ms after it")  # fmt: skip
        w = watch_of(lab, 1)
        assert (w["bridge_lost"], w["tap_reattached"], w["problem"]) == (1, 1, ""), w
        assert scrape(h1, "/healthz", METRICS_PORT) == (200, "ok\n")
        log = lab.daemons[1].output()
        assert log.count("bridge br-int is gone") == 1 and "bridge br-int is back" in log, log
        assert lab.ping(1, 2, count=3)["loss"] == 0


def test_tap_that_cannot_be_recreated_ends_the_daemon_with_a_message() -> None:
    with build("linux", "gre") as lab:
        lab.start_mesh("gre")
        d = lab.daemons[1]
        # While the daemon is stopped, its TAP goes and a veth takes the name: re-creation must fail.
        d.proc.send_signal(signal.SIGSTOP)
        try:
            sh("ip", "-n", lab.host(1), "link", "del", "ovl-gre")
            sh("ip", "-n", lab.host(1), "link", "add", "ovl-gre", "type", "veth", "peer", "name", "squat0")
        finally:
            d.proc.send_signal(signal.SIGCONT)
        code = d.proc.wait(WAIT)
        log = d.output()
        assert code != 0, log
        assert "ovl-dp: error: TAP ovl-gre lost (" in log and "cannot be re-created" in log and "not a TAP" in log, log
        assert "Traceback" not in log


@needs_ovs
@pytest.mark.parametrize("mode", MODES)
def test_kill_9_and_restart_on_ovs_carries_traffic_again(mode: str) -> None:
    tap = f"ovl-{mode}"
    with build("ovs", mode) as lab:
        lab.start_mesh(mode)
        o = lab.ovs[1]
        assert lab.ping(1, 2, count=3)["loss"] == 0
        ofport = o.vsctl("get", "interface", tap, "ofport").strip()
        lab.stop(lab.daemons[1], signal.SIGKILL)
        assert tap in o.vsctl("list-ports", "br-int").split()  # the stale row the crash left
        clock = PingClock(lab, 1, 2)
        t0 = time.time()
        lab.start(1, "--mode", mode, "--remote", lab.underlay_ip(2))
        ready = time.time()
        back = clock.wait_reply_after(ready)
        clock.stop()
        print(f"\nRECOVERY kill -9 and restart on OVS ({mode}): daemon ready {(ready - t0) * 1000:.0f} ms after the "
              f"start, first ping reply {(back - ready) * 1000:.0f} ms after ready")  # fmt: skip
        log = lab.daemons[1].output()
        assert "replacing it so that OVS opens the new TAP" in log, log
        assert o.vsctl("get", "interface", tap, "ofport").strip() != ofport  # a new port: OVS opened the new device
        assert lab.ping(1, 2, count=5)["loss"] == 0
        assert lab.ping(2, 1, count=3)["loss"] == 0
        assert lab.stop(lab.daemons[1]) == 0
        assert tap not in o.vsctl("list-ports", "br-int").split()
