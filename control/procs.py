"""Stopping the processes we started — by their PID, never by name."""

from __future__ import annotations

import subprocess


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10) -> int:
    """SIGTERM proc if it still runs, wait up to timeout, then SIGKILL; returns its exit code."""
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
