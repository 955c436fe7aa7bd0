"""The C data path in a thread of its own: Python for control only (issue 10).

A :class:`DataPathThread` runs :meth:`datapath.fast.FastForwarder.run` -- the blocking
poll() loop of ``csrc/loop.c`` over the TAP and the receiving socket -- in a Python
thread. cffi releases the GIL for the whole C call, so the loop runs alongside the
asyncio loop of the control plane without touching the interpreter; every call the
control plane makes on the forwarder parks the loop between two batches for its
duration (:meth:`FastForwarder.paused`), so the C context has a single user at any
time and needs no locks.

Why a Python thread and not a pthread made in C: Python knows of it (a join is
``Thread.join``, not a second mechanism), it can pin itself (``os.sched_setaffinity``),
block the asynchronous signals (they stay the main thread's, which asyncio waits on),
and report a failed read by scheduling a call on the control plane's loop, all
without a callback from C into Python. It is not a daemon thread: it ends only by
:meth:`DataPathThread.stop`, which the engine calls from ``stop_reading`` / ``close``.

A read that fails is passed to ``on_error(kind, OSError)`` in this thread (the engine
hands it to its loop with ``call_soon_threadsafe``) and the loop goes on; a TAP read
failing with one of ``tap_gone`` (the device was deleted) ends the reading of the TAP
(its fd stays readable for ever) while the underlay is still received.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Collection

from datapath import fast

TAP = "tap"  # on_error kinds
TUNNEL = "tunnel"
LOOP = "loop"  # poll() itself failed: the thread has ended

# Signals a thread cannot usefully block (faults are delivered to the faulting thread).
_SYNCHRONOUS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGABRT, signal.SIGTRAP})


class DataPathThread:
    """One run of the C loop on a forwarder's context, over one TAP fd and the underlay sockets."""

    def __init__(
        self,
        fwd: fast.FastForwarder,
        tap_fd: int,
        recv_fd: int,
        send_fd: int,
        on_error: Callable[[str, OSError], None],
        tap_gone: Collection[int] = (),
        cpu: int | None = None,
        name: str = "ovl-dp data path",
        recv2_fd: int = -1,
    ) -> None:
        """on_error(kind, exc) is called in the data-path thread (TAP, TUNNEL or LOOP);
        cpu: pin the thread to that CPU (None: wherever the scheduler puts it); recv2_fd: a second
        receiving socket (the IPv6 one beside an IPv4 one), -1 for none."""
        self._fwd = fwd
        self._fds = (tap_fd, recv_fd, send_fd)
        self._recv2 = recv2_fd
        self._on_error = on_error
        self._tap_gone = frozenset(tap_gone)
        self.cpu = cpu
        self.affinity_error: OSError | None = None  # set if pinning to cpu failed (the thread runs unpinned)
        self.reading_tap = tap_fd >= 0
        self._thread = threading.Thread(target=self._body, name=name, daemon=False)
        self._started = False

    def start(self) -> None:
        """Start the loop; from here on the forwarder's calls pause it (OSError: no runner)."""
        self._fwd.runner_start()
        self._fwd.runner_set_recv2(self._recv2)
        self._started = True
        self._thread.start()  # returns once the thread runs: native_id is set
        if self.cpu is not None:
            try:
                assert self._thread.native_id is not None
                os.sched_setaffinity(self._thread.native_id, {self.cpu})
            except OSError as exc:  # no such CPU, or not in our cpuset: it runs unpinned
                self.affinity_error = exc

    @property
    def alive(self) -> bool:
        """The thread runs (started and not yet ended)."""
        return self._thread.is_alive()

    @property
    def native_id(self) -> int | None:
        """The thread's kernel id (its /proc/self/task entry; named "ovl-dp data" while in the loop)."""
        return self._thread.native_id

    def stop(self) -> None:
        """Stop after the current batch and join (idempotent): every frame read has been forwarded."""
        if not self._started:
            return
        self._fwd.runner_stop()
        if self._thread is not threading.current_thread():
            self._thread.join()
        self._fwd.runner_end()
        self._started = False

    def _body(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals() - _SYNCHRONOUS)
        tap_fd, recv_fd, send_fd = self._fds
        lib = fast.lib
        while True:
            rc, err = self._fwd.run(tap_fd, recv_fd, send_fd)
            if rc == lib.OVL_RUN_STOPPED:
                return
            exc = OSError(err, os.strerror(err))
            if rc == lib.OVL_RUN_TAP_ERROR:
                if err in self._tap_gone:
                    tap_fd = -1  # the dead fd stays readable (EPOLLERR): never read it again
                    self.reading_tap = False
                self._on_error(TAP, exc)
            elif rc == lib.OVL_RUN_RECV_ERROR:
                self._on_error(TUNNEL, exc)
            else:
                self._on_error(LOOP, exc)
                return
