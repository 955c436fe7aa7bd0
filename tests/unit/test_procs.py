"""control.procs: stopping a real child by PID, the poll-until helper, SIGTERM as KeyboardInterrupt."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from control.procs import WaitTimeout, sigterm_raises_interrupt, stop_process, wait_until

IGNORE_TERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ok', flush=True); time.sleep(60)"
)


def test_stop_process_terminates_a_running_child() -> None:
    proc = subprocess.Popen(["sleep", "60"])
    assert stop_process(proc, 5) == -signal.SIGTERM
    assert proc.poll() == -signal.SIGTERM


def test_stop_process_kills_a_child_that_ignores_sigterm() -> None:
    proc = subprocess.Popen([sys.executable, "-c", IGNORE_TERM], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ok\n"  # the handler is in place
        t0 = time.monotonic()
        assert stop_process(proc, 0.5) == -signal.SIGKILL
        assert time.monotonic() - t0 < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_stop_process_of_an_exited_child_returns_its_code() -> None:
    proc = subprocess.Popen(["sh", "-c", "exit 3"])
    proc.wait()
    assert stop_process(proc) == 3


def test_wait_until_returns_the_probes_first_truthy_value() -> None:
    values = iter([0, None, "", 7, 8])
    assert wait_until("seven", lambda: next(values), timeout=5, interval=0) == 7
    assert next(values) == 8  # not called again after success


def test_wait_until_probes_once_even_with_no_time_left() -> None:
    calls: list[int] = []
    assert wait_until("at once", lambda: calls.append(1) or "yes", timeout=0) == "yes"
    assert calls == [1]


def test_wait_until_times_out_naming_what_it_waited_for() -> None:
    details: list[int] = []

    def detail() -> str:
        details.append(1)
        return "the log tail"

    t0 = time.monotonic()
    with pytest.raises(WaitTimeout) as info:
        wait_until("the moon", lambda: [], timeout=0.3, interval=0.05, detail=detail)
    assert 0.3 <= time.monotonic() - t0 < 3
    assert str(info.value) == "timed out after 0.3s waiting for the moon (last: []):\nthe log tail"
    assert details == [1]  # called only once, on timeout


def test_wait_until_lets_the_probes_exception_through() -> None:
    def probe() -> bool:
        raise RuntimeError("the process exited")

    with pytest.raises(RuntimeError, match="exited"):
        wait_until("anything", probe, timeout=10)


@pytest.fixture
def sigterm_recorder() -> Iterator[list[int]]:
    """A harmless SIGTERM handler around the test, so that a bug cannot kill pytest; the original comes back."""
    got: list[int] = []
    original = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        yield got
    finally:
        signal.signal(signal.SIGTERM, original)


def _deliver_sigterm() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(2)  # the Python-level handler runs at the next bytecode boundary, at the latest here


def test_sigterm_raises_keyboard_interrupt_inside_and_restores_outside(sigterm_recorder: list[int]) -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), sigterm_raises_interrupt():
        assert signal.getsignal(signal.SIGTERM) is not before
        _deliver_sigterm()
    assert sigterm_recorder == []
    assert signal.getsignal(signal.SIGTERM) is before
    os.kill(os.getpid(), signal.SIGTERM)  # the previous handler is back
    wait_until("the restored handler to run", lambda: sigterm_recorder, timeout=2, interval=0.01)
    assert sigterm_recorder == [signal.SIGTERM]


def test_sigterm_helper_restores_the_handler_after_an_exception(sigterm_recorder: list[int]) -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(ValueError), sigterm_raises_interrupt():
        raise ValueError("unrelated failure")
    assert signal.getsignal(signal.SIGTERM) is before
