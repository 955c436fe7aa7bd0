"""`ovl-dp lab`, the quickstart's main job: it reports, and it leaves nothing behind, even when interrupted."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from control import ovs
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
