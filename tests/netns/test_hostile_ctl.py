"""Hostile control clients against a real daemon (`ovl-dp run --bridge-type none` in a namespace of its own).

Each bad client of the issue — a request line over 64 KiB, ``"[" * 4000``, a client
that disconnects mid-request, 200 idle connections, an unprivileged user — is
answered or dropped, counted once, and leaves no traceback in the daemon's log;
idle connections do not hold the daemon's fds once IDLE_TIMEOUT has passed, and
the daemon keeps answering and forwarding state throughout.
"""

from __future__ import annotations

import json
import os
import socket
import time

import pytest

from control import ctl
from control.procs import wait_until
from tests.isolated import run_isolated
from tests.netns.netutil import veth
from tests.netns.test_daemon import TAP, Daemon, cli, run_args
from tests.unit.test_ctl import _as_nobody, raw_exchange

pytestmark = pytest.mark.netns

IDLE = 200


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_hostile_clients_are_counted_never_a_traceback_and_idle_ones_let_go() -> None:
    def body() -> None:
        veth("10.1.0.1/24")
        d = Daemon(*run_args("vxlan", "fast"))
        try:
            d.wait_for(lambda out: " INFO ready" in out, "'ready' in the log")
            pid = d.proc.pid
            baseline = fds(pid)

            too_long = raw_exchange(TAP, b'{"cmd": "show", "x": "' + b"a" * (ctl.MAX_REQUEST + 10) + b'"}\n')
            assert json.loads(too_long)["error"].startswith("bad request: longer than"), too_long
            nested = raw_exchange(TAP, b"[" * 4000 + b"\n")
            assert json.loads(nested)["error"].startswith("bad request"), nested
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as cut:
                cut.connect(ctl.address(TAP))
                cut.sendall(b'{"cmd": "sh')  # and gone
            refused = _as_nobody(TAP, b'{"cmd": "show"}\n')
            assert json.loads(refused) == {
                "ok": False,
                "error": "permission denied: the control socket is for root or CAP_NET_ADMIN",
            }
            assert TAP not in refused.decode()  # not even counters

            idle = []
            for _ in range(IDLE):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(ctl.address(TAP))
                idle.append(s)
            time.sleep(0.5)
            held = fds(pid)
            # Beyond MAX_CLIENTS connections are answered and closed at once.
            assert held - baseline <= ctl.MAX_CLIENTS + 8, (baseline, held)
            wait_until(
                "idle control connections to be closed",
                lambda: fds(pid) <= baseline + 1,
                timeout=ctl.IDLE_TIMEOUT + 20,
                interval=0.2,
            )
            for s in idle:
                s.close()
            released = fds(pid)

            show = cli("show", "--json")
            assert show.returncode == 0, show.stderr
            control = json.loads(show.stdout)["control"]
            print(f"fds: baseline {baseline}, with {IDLE} idle clients {held}, after {released}; control {control}")
            refusals = control["refused"]
            assert refusals["too long"] == 1 and refusals["malformed"] == 1, control
            assert refusals["cut short"] >= 1 and refusals["not privileged"] == 1, control
            assert refusals["idle"] + refusals["too many clients"] == IDLE, control
        finally:
            code = d.stop()
        out = d.output()
        d.log.close()
        assert code == 0, out
        assert "Traceback" not in out and "Unhandled exception" not in out, out
        assert len(out.splitlines()) < 40, out  # one line per kind of refusal, not one per client

    run_isolated(body, timeout=120)
