"""Processes: stopping those we started (by PID, never by name), being stopped, waiting for them.

Shared by the daemon's control plane, the lab (control.lab), the benchmark and the tests:

- :func:`stop_process`: SIGTERM, a grace period, then SIGKILL, for one child by its PID;
- :func:`sigterm_raises_interrupt`: while it is active, SIGTERM unwinds like Ctrl-C
  (KeyboardInterrupt), so that ``finally`` blocks and context managers clean up;
- :func:`wait_until`: the one poll-until loop, with an error that says what it waited for.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(Exception):
    """wait_until gave up; the message says what it waited for, the probe's last value and any detail."""


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10) -> int:
    """SIGTERM proc if it still runs, wait up to timeout, then SIGKILL; returns its exit code."""
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def wait_until(
    what: str,
    probe: Callable[[], T],
    timeout: float = 5.0,
    interval: float = 0.1,
    detail: Callable[[], str] | None = None,
) -> T:
    """Call probe() until it returns something truthy, every interval seconds; returns that value.

    The probe runs at least once, also with timeout 0, and may raise to give up early
    (e.g. when the process it waits for has exited). After timeout seconds: WaitTimeout
    "timed out after Ns waiting for WHAT (last: VALUE)", followed by detail() if given
    (a log tail, say), which is called only then.
    """
    deadline = time.monotonic() + timeout
    value = probe()
    while not value:
        if time.monotonic() >= deadline:
            extra = f":\n{detail()}" if detail is not None else ""
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what} (last: {value!r}){extra}")
        time.sleep(interval)
        value = probe()
    return value


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_raises_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises KeyboardInterrupt in the main thread; the previous handler comes back on exit.

    A plain SIGTERM would end the process at once, skipping every ``finally``: the lab's
    namespaces, OVS instances and daemons would be left behind. Main thread only, as
    with any signal.signal call.
    """
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        # None: the previous handler was not installed from Python; the default is the nearest we can restore.
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def collect_child(pid: int, fd: int, timeout: float) -> tuple[bytes, bool, int]:
    """What a forked child writes to fd until it closes it, within timeout; then reap the child.

    Returns (output, timed out, wait status); a child past the timeout is killed (by its PID). fd is closed.
    """
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    timed_out = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                os.kill(pid, signal.SIGKILL)
                break
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    return b"".join(chunks), timed_out, status
