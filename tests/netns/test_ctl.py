"""control/ctl.py: the control socket, in a namespace of the test's own (abstract sockets belong to it)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable, Mapping

import pytest

from control import ctl
from tests.isolated import run_isolated

pytestmark = pytest.mark.netns


def test_address() -> None:
    assert ctl.address("ovl-vxlan") == "\0ovl-dp/ovl-vxlan"


def serve_in_thread(
    tap: str, handler: Callable[[str, Mapping[str, object]], object]
) -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    """Run ctl.serve(tap, handler) on a loop in a thread; stop with loop.call_soon_threadsafe(loop.stop)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        server = loop.run_until_complete(ctl.serve(tap, handler))
        ready.set()
        loop.run_forever()
        server.close()
        # Let the connections' handlers finish (they close their sockets), then the server.
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(server.wait_closed())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(30)
    return loop, thread


def test_serve_running_and_request() -> None:
    def body() -> None:
        assert ctl.running() == []

        def answer(cmd: str, args: Mapping[str, object]) -> object:
            if cmd == "show":
                return {"tap": "t1", "n": 3}
            raise ctl.CtlError(f"unknown command {cmd!r}")

        loop, thread = serve_in_thread("t1", answer)
        try:
            assert ctl.running() == ["t1"]
            assert ctl.request("t1", "show") == {"tap": "t1", "n": 3}
            with pytest.raises(RuntimeError, match="unknown command 'nope'"):
                ctl.request("t1", "nope")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:  # not JSON at all
                raw.settimeout(30)
                raw.connect(ctl.address("t1"))
                raw.sendall(b"hello\n")
                reply = json.loads(raw.makefile().readline())
            assert reply["ok"] is False and reply["error"].startswith("bad request: ")
            with pytest.raises(OSError):
                ctl.request("t2", "show")  # nobody serves t2
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(30)
        assert ctl.running() == []

    run_isolated(body)


def test_a_taken_control_socket() -> None:
    def body() -> None:
        loop, thread = serve_in_thread("t1", lambda cmd, args: cmd)
        try:
            with pytest.raises(OSError, match="control socket @ovl-dp/t1 is taken: another ovl-dp runs with this TAP"):
                asyncio.run(ctl.serve("t1", lambda cmd, args: cmd))
            other, other_thread = serve_in_thread("t0", lambda cmd, args: cmd)
            try:
                assert ctl.running() == ["t0", "t1"]
            finally:
                other.call_soon_threadsafe(other.stop)
                other_thread.join(30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(30)

    run_isolated(body)
