"""`ovl-dp lab`, the quickstart's main job: it reports, and it leaves nothing behind, even when interrupted."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

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
