"""Run a test body in a forked child inside a network namespace of its own.

The child calls unshare(CLONE_NEWNET) before anything else, so whatever the
body creates (TAPs, sockets, addresses) exists only in that namespace and
disappears with the child, also when the body fails or hangs. The child's
traceback is handed to the parent and becomes the test failure message.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import traceback
from collections.abc import Callable

import pytest

from control.procs import collect_child

CLONE_NEWNET = 0x40000000


def unshare_net() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")


def _setup_namespace() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, capture_output=True)
    # No IPv6 on new interfaces: no router solicitations or MLD reports on our TAP.
    for name in ("default", "all"):
        path = f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6"
        if os.path.exists(path):
            with open(path, "w") as f:
                f.write("1")


def enter_netns(name: str) -> None:
    """Join the named network namespace (/run/netns/NAME, as `ip netns add` makes it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


def _child(body: Callable[[], None], w: int, netns: str | None) -> None:
    status, report = 1, b""
    try:
        if netns is None:
            unshare_net()
            _setup_namespace()
        else:
            enter_netns(netns)
        body()
        status = 0
    except BaseException:
        report = traceback.format_exc().encode()
    finally:
        try:
            view = memoryview(report)
            while view:
                view = view[os.write(w, view) :]
        finally:
            os._exit(status)  # never return into pytest in the child


def run_isolated(body: Callable[[], None], timeout: float = 60.0, netns: str | None = None) -> None:
    """Run body() in a child in a new network namespace (or in the existing one named netns, e.g. a lab
    host's); fail the calling test with the child's traceback."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _child(body, w, netns)
    os.close(w)
    output, timed_out, status = collect_child(pid, r, timeout)
    report = output.decode(errors="replace")
    if timed_out:
        pytest.fail(f"isolated test timed out after {timeout} s\n{report}", pytrace=False)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        pytest.fail(f"isolated test failed in its namespace (exit {code}):\n{report}", pytrace=False)
