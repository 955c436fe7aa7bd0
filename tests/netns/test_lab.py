"""`ovl-dp lab`, the quickstart's main job: it reports, and it leaves nothing behind, even when interrupted."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from control import ovs
from control.lab import etcd
from control.lab.etcd_demo import etcd_runs
from control.procs import wait_until
from tests.conftest import lab_namespaces

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("no_leftovers")]


def test_lab_reports_and_cleans_up() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "control.cli", "lab", "--mode", "gre", "--bridge-type", "linux", "--seconds", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=120)
    res = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert lab_namespaces(proc.pid) == []
    assert res.returncode == 0, res.stdout + res.stderr
    assert "mode gre, linux br-int: OK" in res.stdout
    assert "iperf3 TCP vmX -> vmY:" in res.stdout and "loss 0%" in res.stdout


def test_lab_interrupted_tears_down() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "control.cli", "lab", "--mode", "vxlan", "--seconds", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until("the lab's 5 namespaces", lambda: len(lab_namespaces(proc.pid)) >= 5, 30)
        assert lab_namespaces(proc.pid), "the lab never built its namespaces"
        time.sleep(2)  # daemons up, traffic running
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert lab_namespaces(proc.pid) == []


@pytest.mark.parametrize("bridge", ["linux", "ovs"])
def test_lab_over_an_ipv6_underlay(bridge: str) -> None:
    """`ovl-dp lab --underlay ipv6`: the seed scenario in both modes with the hosts joined over fd00:192:2::/64."""
    from tests.interop_util import ovl_ipv6_missing

    if (missing := ovl_ipv6_missing("vxlan")) or (missing := ovl_ipv6_missing("gre")):
        pytest.skip(missing)
    if bridge == "ovs" and (no_ovs := ovs.installed()):
        pytest.skip(no_ovs)
    cmd = [sys.executable, "-m", "control.cli", "lab", "--underlay", "ipv6", "--bridge-type", bridge, "--seconds", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=240)
    assert lab_namespaces(proc.pid) == []
    assert proc.returncode == 0, out + err
    for mode in ("gre", "vxlan"):
        assert f"mode {mode} over IPv6, {bridge} br-int: OK" in out, out
    assert "IPv6 underlay fd00:192:2::/64" in out and "loss 0%" in out, out


@pytest.mark.parametrize(("mode", "bridge"), [("gre", "linux"), ("vxlan", "ovs")])
def test_lab_with_etcd(mode: str, bridge: str) -> None:
    """`ovl-dp lab --hosts 3 --etcd`: the hosts join through a real etcd, h3's daemon killed is dropped by h1 and
    h2, whose containers still ping each other; the report says so, and nothing is left, etcd included."""
    if not etcd.available():
        pytest.skip("etcd is not installed (apt-get install etcd-server etcd-client)")
    if bridge == "ovs" and (no_ovs := ovs.installed()):
        pytest.skip(no_ovs)
    lab = ["lab", "--hosts", "3", "--etcd", "--mode", mode, "--bridge-type", bridge]
    cmd = [sys.executable, "-m", "control.cli", *lab]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert lab_namespaces(proc.pid) == []
    started = re.search(r"^etcd: http://192\.0\.2\.250:\d+ in namespace ovl\d+-etcd \(PID (\d+)\)$", out, re.M)
    assert started, out + err
    assert not etcd_runs(int(started.group(1))), f"etcd PID {started.group(1)} still runs"
    assert proc.returncode == 0, out + err
    assert f"=== ovl-dp lab --etcd, 3 hosts, mode {mode}, {bridge} br-int: OK ===" in out, out
    assert "(no --remote)" in out and "--remote 192" not in out
    # all joined: each daemon listed the two others as members and remotes
    assert "joined: every host lists the 2 others" in out, out
    for line in ("h1 (192.0.2.1) lists: 192.0.2.2, 192.0.2.3", "h2 (192.0.2.2) lists: 192.0.2.1, 192.0.2.3",
                 "h3 (192.0.2.3) lists: 192.0.2.1, 192.0.2.2"):  # fmt: skip
        assert f"\n  {line}\n" in out, out
    for src, dst in ((1, 2), (1, 3), (2, 1), (2, 3), (3, 1), (3, 2)):
        assert f"ping c{src} -> c{dst}: loss 0%" in out, out
    # the killed host removed: both others dropped it, its key is gone, the others list each other only
    assert "killed: the daemon of h3 (192.0.2.3) with SIGKILL" in out, out
    for h in ("h1", "h2"):
        assert re.search(rf"^  {h} dropped 192\.0\.2\.3 after \d+\.\d\d s$", out, re.M), out
    assert re.search(r"^removed: every other daemon dropped it after \d+\.\d\d s", out, re.M), out
    assert "\n  h1 lists: 192.0.2.2\n  h2 lists: 192.0.2.1\n" in out, out
    assert "member keys in etcd: 192.0.2.1, 192.0.2.2\n" in out, out
    # pings among the rest succeeded; they left etcd on SIGTERM
    for src, dst in ((1, 2), (2, 1)):
        assert f"ping (after the kill) c{src} -> c{dst}: loss 0%" in out, out
    assert "stopped the others with SIGTERM: exit codes 0, 0; member keys left in etcd: 0" in out, out
    assert f"torn down: namespaces deleted, etcd PID {started.group(1)} gone" in out, out


def _etcd_pids(name: str) -> list[int]:
    """PIDs of the etcd processes running with --name=name."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    args = f.read().split(b"\0")
            except OSError:
                continue
            if args and args[0].endswith(b"etcd") and f"--name={name}".encode() in args:
                pids.append(int(entry))
    return pids


def test_lab_with_etcd_interrupted_tears_down() -> None:
    """Ctrl-C while the etcd lab's daemons run: namespaces gone, etcd gone."""
    if not etcd.available():
        pytest.skip("etcd is not installed (apt-get install etcd-server etcd-client)")
    cmd = [sys.executable, "-m", "control.cli", "lab", "--etcd", "--mode", "vxlan", "--bridge-type", "linux"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    name = f"ovl{proc.pid % 100000}-etcd"
    try:
        pids = wait_until("the lab's etcd", lambda: _etcd_pids(name), 60)
        wait_until("the lab's daemons", lambda: len(lab_namespaces(proc.pid)) >= 8, 60)  # sw, etcd, 3 x (h, c)
        time.sleep(2)  # daemons starting, joining
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert lab_namespaces(proc.pid) == []
    assert _etcd_pids(name) == [] and not any(etcd_runs(p) for p in pids)
    assert proc.returncode == 130, proc.stdout.read() if proc.stdout else ""
