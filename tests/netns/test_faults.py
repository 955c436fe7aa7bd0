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
import sys
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


@pytest.mark.parametrize(
    ("bridge", "mode", "path"),
    [
        *[("linux", m, "fast") for m in MODES],
        *[pytest.param("ovs", m, "fast", marks=needs_ovs) for m in MODES],
        ("linux", "vxlan", "python"),
    ],
)  # fmt: skip
def test_deleted_tap_is_recreated_and_plugged_back(bridge: str, mode: str, path: str) -> None:
    tap = f"ovl-{mode}"
    extra = ("--no-fast-path",) if path == "python" else ()
    with build(bridge, mode) as lab:
        lab.start(1, "--mode", mode, "--remote", lab.underlay_ip(2), "--metrics", str(METRICS_PORT), *extra)
        lab.start(2, "--mode", mode, "--remote", lab.underlay_ip(1))
        assert lab.ping(1, 2, count=3)["loss"] == 0
        before = link_json(lab, 1, tap)
        ofport = lab.ovs[1].vsctl("get", "interface", tap, "ofport").strip() if bridge == "ovs" else ""
        clock = PingClock(lab, 1, 2)
        clock.wait_reply_after(0)
        t0 = time.time()
        sh("ip", "-n", lab.host(1), "link", "del", tap)
        clock.wait_reply_after(t0 + 0.5)
        gap, missing = clock.stop()
        took = re.search(r"re-created it .* in (\d+) ms", lab.daemons[1].output())
        report(f"TAP deleted ({bridge}, {mode}, {path} path)", gap, missing,
               f"; the daemon logged the TAP back {took.group(1) if took else '?'} ms after noticing")  # fmt: skip
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
            assert lab.ovs[1].vsctl("get", "interface", tap, "ofport").strip() == ofport  # the same OpenFlow port
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
        # A new port (OVS opened the new device: the pings) with the old OpenFlow port number, which flows may name.
        assert o.vsctl("get", "interface", tap, "ofport").strip() == ofport
        assert lab.ping(1, 2, count=5)["loss"] == 0
        assert lab.ping(2, 1, count=3)["loss"] == 0
        assert lab.stop(lab.daemons[1]) == 0
        assert tap not in o.vsctl("list-ports", "br-int").split()


@needs_ovs
def test_ovs_port_replaced_once_the_database_answers_again() -> None:
    # The TAP is deleted while the OVS database does not answer ovs-vsctl: the port cannot be replaced then,
    # and no rtnetlink event says when the database is back; the daemon keeps trying until it is.
    tap = "ovl-vxlan"
    with build("ovs", "vxlan") as lab:
        lab.start_mesh("vxlan")
        assert lab.ping(1, 2, count=3)["loss"] == 0
        sock = lab.ovs[1].rundir / "db.sock"
        away = sock.with_name("db.sock.away")
        sock.rename(away)  # ovs-vswitchd keeps its connection; a new ovs-vsctl finds no database
        try:
            sh("ip", "-n", lab.host(1), "link", "del", tap)
            failed = "cannot remove the stale port"
            wait_until("the failed replacement logged", lambda: failed in lab.daemons[1].output(), WAIT, 0.05)
            w = watch_of(lab, 1)
            assert w["tap_recreated"] == 1 and failed in str(w["problem"]), w
        finally:
            away.rename(sock)
        clock = PingClock(lab, 1, 2)
        t0 = time.time()
        back = clock.wait_reply_after(t0)
        clock.stop()
        print(f"\nRECOVERY OVS port replaced once the database answers again: first ping reply "
              f"{(back - t0) * 1000:.0f} ms after the database is reachable")  # fmt: skip
        wait_until("the problem to clear", lambda: watch_of(lab, 1)["problem"] == "", WAIT, 0.05)
        log = lab.daemons[1].output()
        assert log.count("cannot remove the stale port") == 1, log  # logged once, not at every try
        assert "replaced at last" in log and "Traceback" not in log, log
        assert lab.ping(1, 2, count=3)["loss"] == 0
        assert lab.stop(lab.daemons[1]) == 0


def logged_at(lab: Lab, i: int, needle: str) -> float:
    """The Unix time of the daemon's first log line containing needle (its timestamp, in ms)."""
    for line in lab.daemons[i].output().splitlines():
        if needle in line:
            stamp = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})", line)
            assert stamp, line
            return time.mktime(time.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S")) + int(stamp.group(2)) / 1000
    raise AssertionError(f"{needle!r} not in the log:\n{lab.daemons[i].output()}")


def lab_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "control.cli", *args]


def remotes_of(lab: Lab, i: int) -> dict[str, str]:
    res = sh("ip", "netns", "exec", lab.host(i), *lab_cli("remote", "list", "--json"))
    return {str(r["remote"]): str(r["local"]) for r in json.loads(res.stdout)}


@pytest.mark.parametrize("mode", MODES)
def test_underlay_address_changed_is_followed(mode: str) -> None:
    with build("linux", mode) as lab:
        lab.start_mesh(mode)
        h1, new = lab.host(1), "192.0.2.11"
        sh("ip", "netns", "exec", lab.host(2), *lab_cli("remote", "add", new))  # host 2 accepts the new address
        assert lab.ping(1, 2, count=3)["loss"] == 0
        clock = PingClock(lab, 1, 2)
        clock.wait_reply_after(0)
        sh("ip", "-n", h1, "addr", "del", "192.0.2.1/24", "dev", "ul0")
        t0 = time.time()
        sh("ip", "-n", h1, "addr", "add", f"{new}/24", "dev", "ul0")
        wait_until("the new local address", lambda: remotes_of(lab, 1) == {lab.underlay_ip(2): new}, WAIT, 0.05)
        applied = logged_at(lab, 1, "is now reached from") - t0
        clock.wait_reply_after(time.time())
        gap, missing = clock.stop()
        report(f"underlay address changed ({mode})", gap, missing,
               f"; new local address in use {applied * 1000:.0f} ms after `ip addr add` (log time, ms)")  # fmt: skip
        w = watch_of(lab, 1)
        assert (w["local_changes"], w["problem"]) == (1, ""), w
        assert lab.ping(1, 2, count=3)["loss"] == 0


@pytest.mark.parametrize("mode", MODES)
def test_underlay_mtu_change_moves_an_automatic_tap_mtu(mode: str) -> None:
    tap = f"ovl-{mode}"
    with build("linux", mode) as lab:
        lab.start_mesh(mode)
        h1 = lab.host(1)
        start = int(link_json(lab, 1, tap)["mtu"])  # type: ignore[call-overload]
        t0 = time.time()
        sh("ip", "-n", h1, "link", "set", "ul0", "mtu", "1400")
        wait_until("the TAP MTU to follow", lambda: link_json(lab, 1, tap)["mtu"] == start - 100, WAIT, 0.05)
        applied = logged_at(lab, 1, f"MTU now {start - 100}") - t0
        print(f"\nRECOVERY underlay MTU 1500 -> 1400 ({mode}): TAP MTU {start} -> {start - 100} "
              f"{applied * 1000:.0f} ms after `ip link set ul0 mtu 1400` (log time, ms)")  # fmt: skip
        assert lab.ping(1, 2, count=3)["loss"] == 0  # small frames still cross
        sh("ip", "-n", h1, "link", "set", "ul0", "mtu", "1500")
        wait_until("the TAP MTU back", lambda: link_json(lab, 1, tap)["mtu"] == start, WAIT, 0.05)
        w = watch_of(lab, 1)
        assert (w["mtu_changes"], w["problem"]) == (2, ""), w


def test_hand_set_tap_mtu_that_no_longer_fits_is_reported() -> None:
    with build("linux", "vxlan") as lab:
        h1 = lab.host(1)
        lab.start(1, "--mode", "vxlan", "--remote", lab.underlay_ip(2), "--mtu", "1450", "--metrics", str(METRICS_PORT))
        sh("ip", "-n", h1, "link", "set", "ul0", "mtu", "1400")
        reason = ("TAP MTU 1450 (set by hand) does not fit the underlay MTU 1400: at most 1350; "
                  "larger frames are dropped (tx_too_big / tx_error)")  # fmt: skip
        wait_until("show to report the MTU", lambda: watch_of(lab, 1)["problem"] == reason, WAIT, 0.05)
        assert scrape(h1, "/healthz", METRICS_PORT) == (503, reason + "\n")
        assert link_json(lab, 1, "ovl-vxlan")["mtu"] == 1450  # set by hand: not changed
        sh("ip", "-n", h1, "link", "set", "ul0", "mtu", "1500")
        wait_until("the problem to clear", lambda: watch_of(lab, 1)["problem"] == "", WAIT, 0.05)
        assert scrape(h1, "/healthz", METRICS_PORT) == (200, "ok\n")
        assert lab.daemons[1].output().count("does not fit the underlay MTU") == 1
