"""control/daemon.py: `ovl-dp run --bridge-type none` as a process in a namespace of the test's own.

The daemon is started inside run_isolated's namespace with PR_SET_PDEATHSIG, so
it cannot outlive the test; every test also stops it by its PID.
"""

from __future__ import annotations

import ctypes
import json
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from control.procs import stop_process, wait_until
from tests.isolated import run_isolated
from tests.netns.netutil import exists, veth

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
REMOTE = "10.1.0.2"
TAP = "ovld0"
WAIT = 30.0  # an upper bound for the daemon to get somewhere, never a speed requirement
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "control.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=WAIT
    )


class Daemon:
    """`ovl-dp run ...` with its log in a file; stop() by PID."""

    def __init__(self, *args: str) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="ovl-dp-test-", suffix=".log")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "control.cli", "run", *args],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )

    def output(self) -> str:
        return Path(self.log.name).read_text()

    def wait_for(self, what: Callable[[str], bool], description: str) -> None:
        def probe() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"daemon exited ({self.proc.returncode}) before {description}:\n{self.output()}")
            return what(self.output())

        wait_until(description, probe, timeout=WAIT, interval=0.05, detail=self.output)

    def stop(self) -> int:
        """SIGTERM, and its exit code; SIGKILL (by PID) if it does not exit."""
        return stop_process(self.proc, WAIT)


def run_args(mode: str, path: str, *more: str) -> tuple[str, ...]:
    fast = () if path == "fast" else ("--no-fast-path",)
    return ("--bridge-type", "none", "--mode", mode, "--remote", REMOTE, "--tap", TAP, *fast, *more)


@pytest.mark.parametrize("path", ["fast", "python"])
@pytest.mark.parametrize("mode", ["vxlan", "gre"])
def test_daemon_runs_answers_dumps_and_exits_cleanly(mode: str, path: str) -> None:
    def body() -> None:
        veth("10.1.0.1/24")
        d = Daemon(*run_args(mode, path))
        try:
            d.wait_for(lambda out: " INFO ready" in out, "'ready' in the log")
            out = d.output()
            assert ("C fast path" if path == "fast" else "pure-Python path") in out, out
            assert f"tap {TAP} mac " in out and "mtu" in out
            assert exists(TAP)

            show = cli("show", "--json")
            assert show.returncode == 0, show.stderr
            state = json.loads(show.stdout)
            assert state["tap"] == TAP and state["mode"] == mode
            assert set(state) >= {"stats", "drops", "remotes", "fdb"}
            assert state["remotes"][0]["remote"] == REMOTE

            fdb = cli("fdb", "--tap", TAP, "--json")
            assert fdb.returncode == 0, fdb.stderr
            assert json.loads(fdb.stdout) == []

            text = cli("show", "--tap", TAP)
            assert text.returncode == 0 and text.stdout.startswith(f"{TAP} ({mode})"), text

            before = d.output().count("counters:")
            d.proc.send_signal(signal.SIGUSR1)
            d.wait_for(lambda out: out.count("counters:") > before, "counters logged on SIGUSR1")
            assert d.proc.poll() is None  # SIGUSR1 does not stop it
        finally:
            code = d.stop()
            d.log.close()
        assert code == 0
        assert not exists(TAP)
        assert cli("show").returncode == 2  # nothing answers any more

    run_isolated(body, timeout=120)


def test_sigterm_logs_the_final_counters() -> None:
    def body() -> None:
        veth("10.1.0.1/24")
        d = Daemon(*run_args("gre", "python"))
        try:
            d.wait_for(lambda out: " INFO ready" in out, "'ready' in the log")
            assert "exiting; counters" not in d.output()
        finally:
            code = d.stop()
        try:
            out = d.output()
        finally:
            d.log.close()
        assert code == 0
        assert "exiting; counters:" in out and "tap_rx=" in out, out
        assert "Traceback" not in out
        assert not exists(TAP)

    run_isolated(body, timeout=120)


def test_show_without_a_daemon() -> None:
    def body() -> None:
        res = cli("show")
        assert res.returncode == 2
        assert res.stderr.strip() == "ovl-dp: error: no ovl-dp daemon runs in this network namespace"
        res = cli("fdb", "--tap", TAP)
        assert res.returncode == 2
        assert res.stderr.strip() == f"ovl-dp: error: no ovl-dp daemon with TAP {TAP} answers in this network namespace"

    run_isolated(body, timeout=120)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (run_args("vxlan", "fast", "--local", "10.1.0.9"),
         "ovl-dp: error: --local 10.1.0.9 is not an address of this host (see ovl-dp run --help)"),
        (("--bridge-type", "none", "--mode", "gre", "--remote", "10.7.0.1", "--tap", TAP),
         "ovl-dp: error: no route to remote 10.7.0.1: Network is unreachable"),
        (run_args("vxlan", "fast", "--port", "4799"),
         "ovl-dp: error: UDP port 4799 is already in use on 0.0.0.0 (another ovl-dp, or a kernel vxlan device with "
         "this dstport?)"),
        (("--bridge", "br-none", "--bridge-type", "linux", "--mode", "gre", "--remote", REMOTE, "--tap", TAP),
         "ovl-dp: error: bridge br-none does not exist"),
        (run_args("vxlan", "fast", "--vni", "16777216"),
         "ovl-dp: error: --vni: VNI 16777216 is out of range 0..16777215 (see ovl-dp run --help)"),
    ],
)  # fmt: skip
def test_bad_setup_exits_2_with_one_line(args: tuple[str, ...], message: str) -> None:
    def body() -> None:
        veth("10.1.0.1/24")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
            holder.bind(("0.0.0.0", 4799))
            res = cli("run", *args)
        assert res.returncode == 2, res
        assert len(res.stderr.splitlines()) == 1 and res.stderr.startswith(message), res.stderr
        assert res.stdout == ""
        assert not exists(TAP)

    run_isolated(body, timeout=120)
