"""control/notify.py against real Unix datagram sockets: path and abstract names, the watchdog interval."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from control import notify


@pytest.fixture
def receiver() -> Iterator[tuple[socket.socket, str]]:
    """A bound Unix datagram socket at a file path, and that path."""
    with tempfile.TemporaryDirectory() as tmp, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        path = str(Path(tmp) / "notify")
        sock.bind(path)
        sock.settimeout(5)
        yield sock, path


def test_path_socket(receiver: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch) -> None:
    sock, path = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert notify.ready("tap ovl-vxlan\nup")
    assert sock.recv(4096) == b"READY=1\nSTATUS=tap ovl-vxlan up"  # one datagram; STATUS kept to one line
    assert notify.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert notify.status("reloading")
    assert sock.recv(4096) == b"STATUS=reloading"
    assert notify.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    assert notify.ready()
    assert sock.recv(4096) == b"READY=1"


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"ovl-dp-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify.socket_address() == "\0" + name
        assert notify.stopping()
        assert sock.recv(4096) == b"STOPPING=1"


def test_no_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify.socket_address() is None
    assert not notify.ready() and not notify.watchdog() and not notify.stopping() and not notify.status("x")
    assert notify.socket_address({"NOTIFY_SOCKET": "vsock:2:1234"}) is None  # a kind we do not speak
    assert notify.socket_address({"NOTIFY_SOCKET": ""}) is None


def test_a_dead_socket_never_raises(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert notify.ready() is False
    assert notify.watchdog() is False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "1234"}, 0.5),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "999"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "x"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert notify.watchdog_interval(env, pid=1234) == expected


def test_watchdog_interval_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert notify.watchdog_interval() == 2.0


def test_keep_alive_pings_at_half_the_interval(
    receiver: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", path)

    async def run() -> None:
        task = asyncio.create_task(notify.keep_alive(0.2))
        await asyncio.sleep(0.55)  # pings at 0, 0.1, 0.2, ... 0.5
        task.cancel()

    asyncio.run(run())
    sock.setblocking(False)
    pings = []
    while True:
        try:
            pings.append(sock.recv(64))
        except BlockingIOError:
            break
    assert set(pings) == {b"WATCHDOG=1"} and 3 <= len(pings) <= 7, pings
