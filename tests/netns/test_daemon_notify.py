"""`ovl-dp run` under a stand-in for systemd: sd_notify datagrams, the watchdog, JSON logs, the unit's capabilities.

The test binds the notify socket itself (a file path, and an abstract name: abstract Unix sockets belong to
a network namespace, and the daemon runs in the test's), starts the daemon the way ovl-dp@.service does
(only CAP_NET_ADMIN and CAP_NET_RAW, no new privileges, WATCHDOG_PID = the daemon's own PID) and reads
READY=1 once the TAP is up and on its Linux bridge, WATCHDOG=1 again and again, STOPPING=1 on SIGTERM.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.isolated import run_isolated
from tests.netns.netutil import exists, ip, link, veth

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
TAP = "ovln0"
WAIT = 30.0  # an upper bound for the daemon to get somewhere, never a speed requirement
WATCHDOG_USEC = 400_000  # pings expected every 0.2 s
PR_SET_PDEATHSIG = 1
# What ovl-dp@.service grants: CapabilityBoundingSet/AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW, NoNewPrivileges.
AS_THE_UNIT = ("setpriv", "--no-new-privs", "--bounding-set=-all,+net_admin,+net_raw", "--inh-caps=-all")


def _die_with_parent() -> None:
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def receive(sock: socket.socket, until: float) -> list[bytes]:
    """Datagrams until the deadline."""
    out = []
    while (left := until - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            out.append(sock.recv(4096))
        except TimeoutError:
            break
    return out


def wait_for(sock: socket.socket, field: bytes, proc: subprocess.Popen[bytes], log: Path) -> list[bytes]:
    """Datagrams up to and including the first with field; fail if the daemon dies or WAIT passes."""
    seen: list[bytes] = []
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        sock.settimeout(0.2)
        try:
            seen.append(sock.recv(4096))
        except TimeoutError:
            if proc.poll() is not None:
                pytest.fail(f"daemon exited ({proc.returncode}) before {field!r}; got {seen}:\n{log.read_text()}")
            continue
        if field in seen[-1].split(b"\n"):
            return seen
    pytest.fail(f"no {field!r} after {WAIT} s; got {seen}:\n{log.read_text()}")


def notify_run(address: str, bind: str) -> None:
    """The whole sequence with NOTIFY_SOCKET=address, the test's socket bound at bind."""
    veth("10.1.0.1/24")
    ip("link", "add", "br0", "type", "bridge")
    ip("link", "set", "br0", "up")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, tempfile.NamedTemporaryFile(suffix=".log") as log:
        sock.bind(bind)
        env = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
        daemon = [sys.executable, "-m", "control.cli", "--log-format", "json", "run", "--mode", "vxlan"]
        daemon += ["--remote", "10.1.0.2", "--tap", TAP, "--bridge", "br0", "--bridge-type", "linux"]
        # exec keeps the PID, so WATCHDOG_PID names the daemon itself, as systemd's does.
        cmd = [*AS_THE_UNIT, "sh", "-c", 'WATCHDOG_PID=$$ exec "$@"', "sh", *daemon]
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )  # fmt: skip
        logfile = Path(log.name)
        try:
            before = wait_for(sock, b"READY=1", proc, logfile)
            assert b"STOPPING=1" not in b"\n".join(before)
            ready = before[-1].split(b"\n")
            assert any(f.startswith(b"STATUS=" + TAP.encode()) for f in ready), ready
            # READY=1 only once the TAP is up and on its bridge, and the log says ready.
            row = link(TAP)
            assert row is not None and row.get("master") == "br0" and "UP" in row["flags"], row
            records = [json.loads(line) for line in logfile.read_text().splitlines()]
            assert any(r["message"] == "ready" and r.get("event") == "ready" for r in records), records

            pings = [d for d in receive(sock, time.monotonic() + 1.5) if d == b"WATCHDOG=1"]
            assert len(pings) >= 3, pings  # ~7 expected at 0.2 s; a loaded machine may lose a few

            proc.send_signal(signal.SIGTERM)
            after = wait_for(sock, b"STOPPING=1", proc, logfile)
            assert all(d in (b"WATCHDOG=1", b"STOPPING=1") for d in after), after
            assert proc.wait(WAIT) == 0
        finally:
            if proc.poll() is None:
                proc.kill()  # by PID: our own child
                proc.wait()
        out = logfile.read_text()
        lines = out.splitlines()
        records = [json.loads(line) for line in lines]  # every line of the log is one JSON object
        start = next(r for r in records if r.get("event") == "start")
        assert start["tap"] == TAP and start["mode"] == "vxlan" and start["bridge"] == "br0"
        assert start["remotes"] == ["10.1.0.2"] and start["level"] == "info" and start["time"].endswith("Z")
        assert all(r["tap"] == TAP for r in records)  # known from the configuration before the TAP exists
        assert any(r["message"].startswith("exiting; counters:") for r in records)
        assert "Traceback" not in out
        # After STOPPING=1 nothing pings any more.
        assert all(d != b"WATCHDOG=1" for d in receive(sock, time.monotonic() + 0.5))
    assert not exists(TAP)


def test_notify_path_socket() -> None:
    def body() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = str(Path(tmp) / "notify")
            notify_run(path, path)

    run_isolated(body, timeout=120)


def test_notify_abstract_socket() -> None:
    def body() -> None:
        name = f"ovl-dp-test-notify-{os.getpid()}"
        notify_run("@" + name, "\0" + name)

    run_isolated(body, timeout=120)
