"""control.ctl: serve() and request() over a real abstract Unix socket in the test process, and running().

The abstract socket belongs to the test's network namespace; its name carries the
test's PID and a counter, so that it never meets a daemon's (``@ovl-dp/<tap>``).
The server runs on an asyncio loop in this thread, the blocking client in a worker
thread (asyncio.to_thread), as `ovl-dp show` would from another process.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TypeVar

import pytest

from control import ctl

T = TypeVar("T")
_names = itertools.count()


def unique_tap() -> str:
    return f"t{os.getpid()}-{next(_names)}"


def answer(cmd: str, args: Mapping[str, object]) -> object:
    """A handler like the daemon's: two commands, CtlError for anything else."""
    if cmd == "show":
        return {"tap": "ovl-test", "stats": {"tx": 1}}
    if cmd == "fdb":
        return [{"mac": "02:00:00:00:00:01", "remote": "192.0.2.2", **args}]
    raise ctl.CtlError(f"unknown command {cmd!r}")


def with_server(tap: str, body: Callable[[], Awaitable[T]]) -> T:
    """Serve tap with answer() while body runs; the server is closed afterwards, also on failure."""

    async def main() -> T:
        server = await ctl.serve(tap, answer)
        try:
            return await body()
        finally:
            server.close()
            await server.wait_closed()

    return asyncio.run(main())


def raw_exchange(tap: str, data: bytes) -> bytes:
    """Send data as it is to the daemon of tap; everything it answers until it closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(ctl.address(tap))
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_address_is_abstract_and_per_tap() -> None:
    assert ctl.address("ovl-vxlan") == "\0ovl-dp/ovl-vxlan"


def test_request_gets_the_handlers_answers() -> None:
    tap = unique_tap()

    async def body() -> tuple[object, object]:
        show = await asyncio.to_thread(ctl.request, tap, "show")
        fdb = await asyncio.to_thread(ctl.request, tap, "fdb")
        return show, fdb

    show, fdb = with_server(tap, body)
    assert show == {"tap": "ovl-test", "stats": {"tx": 1}}
    assert fdb == [{"mac": "02:00:00:00:00:01", "remote": "192.0.2.2"}]


def test_unknown_command_is_refused_with_the_handlers_message() -> None:
    tap = unique_tap()

    async def body() -> None:
        with pytest.raises(RuntimeError) as info:
            await asyncio.to_thread(ctl.request, tap, "reboot")
        assert str(info.value) == "unknown command 'reboot'"

    with_server(tap, body)


@pytest.mark.parametrize("line", [b"not json\n", b'{"command": "show"}\n', b"[1, 2]\n", b"\n"])
def test_garbage_line_gets_a_bad_request_answer(line: bytes) -> None:
    tap = unique_tap()
    reply = with_server(tap, lambda: asyncio.to_thread(raw_exchange, tap, line))
    assert reply.endswith(b"\n") and reply.count(b"\n") == 1
    answer = json.loads(reply)
    assert answer["ok"] is False and answer["error"].startswith("bad request: ")


def test_line_longer_than_max_request_is_cut_there_and_refused() -> None:
    """Only the first MAX_REQUEST bytes are parsed: a valid but longer request is cut and refused."""
    tap = unique_tap()
    request = json.dumps({"cmd": "show", "pad": "x" * ctl.MAX_REQUEST}).encode() + b"\n"
    assert len(request) > ctl.MAX_REQUEST
    reply = with_server(tap, lambda: asyncio.to_thread(raw_exchange, tap, request))
    answer = json.loads(reply)
    assert answer["ok"] is False and answer["error"].startswith("bad request: ")


def test_line_beyond_the_stream_limit_is_refused_and_the_server_carries_on() -> None:
    """A line longer than MAX_REQUEST (the stream's limit) gets a one-line refusal; the next client is served."""
    tap = unique_tap()
    huge = b"x" * (2**16 + 1024) + b"\n"

    async def body() -> tuple[bytes, object]:
        reply = await asyncio.to_thread(raw_exchange, tap, huge)
        after = await asyncio.to_thread(ctl.request, tap, "show")
        return reply, after

    reply, after = with_server(tap, body)
    answer = json.loads(reply)
    assert answer == {"ok": False, "error": f"bad request: longer than {ctl.MAX_REQUEST} bytes"}
    assert after == {"tap": "ovl-test", "stats": {"tx": 1}}


def test_second_server_for_the_same_tap_is_refused() -> None:
    tap = unique_tap()

    async def body() -> None:
        with pytest.raises(OSError, match=f"control socket @ovl-dp/{tap} is taken"):
            await ctl.serve(tap, answer)

    with_server(tap, body)


def test_request_without_a_daemon_raises_oserror() -> None:
    with pytest.raises(OSError):
        ctl.request(unique_tap(), "show", timeout=1)


def test_running_lists_the_tap_while_served_only() -> None:
    tap = unique_tap()

    async def body() -> list[str]:
        return ctl.running()

    assert tap in with_server(tap, body)
    assert tap not in ctl.running()


def test_running_parses_proc_net_unix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only abstract sockets named ovl-dp/..., each once (a listener and its connections share the path), sorted."""
    table = tmp_path / "unix"
    table.write_text(
        "Num       RefCount Protocol Flags    Type St Inode Path\n"
        "0000000000000000: 00000002 00000000 00010000 0001 01 1001 @ovl-dp/ovl-vxlan\n"
        "0000000000000000: 00000003 00000000 00000000 0001 03 1002 @ovl-dp/ovl-vxlan\n"
        "0000000000000000: 00000002 00000000 00010000 0001 01 1003 @ovl-dp/ovl-gre\n"
        "0000000000000000: 00000002 00000000 00010000 0001 01 1004 /run/ovl-dp/not-abstract\n"
        "0000000000000000: 00000002 00000000 00010000 0001 01 1005 @other/ovl-dp/x\n"
        "0000000000000000: 00000003 00000000 00000000 0001 03 1006\n"
    )
    monkeypatch.setattr(ctl, "PROC_NET_UNIX", table)
    assert ctl.running() == ["ovl-gre", "ovl-vxlan"]


# -- who may ask, and hostile clients ----------------------------------------------------------


def _as_nobody(tap: str, data: bytes) -> bytes:
    """raw_exchange from a forked child that runs as uid/gid 65534 (no capabilities); the answer it got."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, ask, write the answer to the pipe (no file is read after fork)
        code = 0
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            os.write(w, raw_exchange(tap, data))
        except BaseException as exc:
            os.write(2, f"child: {exc!r}\n".encode())
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return out


def test_an_unprivileged_client_gets_nothing() -> None:
    """SO_PEERCRED: uid 65534 without CAP_NET_ADMIN is refused, reads included, and the refusal is counted."""
    tap = unique_tap()
    stats = ctl.CtlStats()

    async def main() -> tuple[bytes, object]:
        server = await ctl.serve(tap, answer, stats)
        try:
            reply = await asyncio.to_thread(_as_nobody, tap, b'{"cmd": "show"}\n')
            ok = await asyncio.to_thread(ctl.request, tap, "show")  # root still may
            return reply, ok
        finally:
            server.close()
            await server.wait_closed()

    reply, ok = asyncio.run(main())
    assert json.loads(reply) == {
        "ok": False,
        "error": "permission denied: the control socket is for root or CAP_NET_ADMIN",
    }
    assert "ovl-test" not in reply.decode()
    assert ok == {"tap": "ovl-test", "stats": {"tx": 1}}
    assert stats.refused == {"not privileged": 1} and stats.requests == 1


def test_may_control() -> None:
    assert ctl.may_control(os.getpid(), 0)
    assert not ctl.may_control(os.getpid(), 1000)  # this process is not uid 1000: a stale or wrong pid
    assert not ctl.may_control(2**22 + 12345, 1000)  # no such process: no capabilities


def test_root_of_a_private_user_namespace_is_refused() -> None:
    """uid 65534 in a user namespace of its own (unshare -Ur) has every capability there, none here: refused."""
    import shutil
    import subprocess

    if not (shutil.which("unshare") and shutil.which("setpriv") and os.path.exists("/usr/bin/python3")):
        pytest.skip("needs unshare, setpriv and /usr/bin/python3")
    tap = unique_tap()
    client = (
        "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(chr(0) + sys.argv[1]); "
        's.sendall(b\'{"cmd": "show"}\\n\'); print(s.makefile().readline())'
    )
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "unshare", "-Ur",
           "/usr/bin/python3", "-c", client, ctl.address(tap)[1:]]  # fmt: skip

    def ask() -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)

    res = with_server(tap, lambda: asyncio.to_thread(ask))
    if res.returncode != 0 and "unshare" in res.stderr:
        pytest.skip(f"unprivileged user namespaces are not available here: {res.stderr.strip()}")
    assert json.loads(res.stdout) == {
        "ok": False,
        "error": "permission denied: the control socket is for root or CAP_NET_ADMIN",
    }, res.stderr


def _half_request(tap: str) -> bytes:
    """Half a request line, then the client stops sending (EOF); what comes back."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(ctl.address(tap))
        sock.sendall(b'{"cmd": "sh')
        sock.shutdown(socket.SHUT_WR)
        return sock.recv(4096)


def test_idle_clients_time_out_and_many_clients_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that sends nothing is answered and closed after IDLE_TIMEOUT; beyond MAX_CLIENTS, refused."""
    monkeypatch.setattr(ctl, "IDLE_TIMEOUT", 0.3)
    monkeypatch.setattr(ctl, "MAX_CLIENTS", 4)
    tap = unique_tap()
    stats = ctl.CtlStats()

    async def main() -> tuple[list[bytes], bytes, object]:
        server = await ctl.serve(tap, answer, stats)
        try:
            idle = []
            for _ in range(5):  # 5 silent clients: 4 wait for their timeout, the 5th is refused at once
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(ctl.address(tap))
                idle.append(s)
            await asyncio.sleep(0.1)
            replies = []
            for s in idle:
                s.settimeout(5)
                replies.append(await asyncio.to_thread(s.recv, 4096))
                s.close()
            cut = await asyncio.to_thread(_half_request, tap)
            after = await asyncio.to_thread(ctl.request, tap, "show")
            return replies, cut, after
        finally:
            server.close()
            await server.wait_closed()

    replies, cut, after = asyncio.run(main())
    errors = sorted(json.loads(r)["error"] for r in replies)
    assert errors == ["busy: more than 4 control connections"] + ["no request within 0.3s"] * 4
    assert cut == b""
    assert after == {"tap": "ovl-test", "stats": {"tx": 1}}
    assert stats.refused == {"too many clients": 1, "idle": 4, "cut short": 1}


def test_args_reach_the_handler() -> None:
    tap = unique_tap()
    got = with_server(tap, lambda: asyncio.to_thread(ctl.request, tap, "fdb", {"op": "x"}))
    assert got == [{"mac": "02:00:00:00:00:01", "remote": "192.0.2.2", "op": "x"}]
    bad = with_server(tap, lambda: asyncio.to_thread(raw_exchange, tap, b'{"cmd": "fdb", "args": [1]}\n'))
    assert json.loads(bad) == {"ok": False, "error": 'bad request: "args" must be an object'}


# In a child process (its fd limit is lowered): 20 clients wait in the listen backlog while
# the server may open only 2 more fds; then the limit is restored and one more request is made.
_FD_FLOOD = """
import asyncio, json, logging, os, resource, socket, sys
import uvloop
from control import ctl, logs
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
tap = sys.argv[1]

async def main():
    server = await ctl.serve(tap, lambda cmd, args: {"cmd": cmd})
    clients = []
    for _ in range(20):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.setblocking(False)
        c.connect(ctl.address(tap))
        clients.append(c)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 2, hard))
    await asyncio.sleep(1.5)
    for c in clients:
        c.close()
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    await asyncio.sleep(1.5)  # asyncio retries accepting after a pause
    print(json.dumps(await asyncio.to_thread(ctl.request, tap, "show")))
    server.close()

loop = uvloop.new_event_loop()
errors = logs.LoopErrors(logging.getLogger("ovl-dp"))
loop.set_exception_handler(errors)
loop.run_until_complete(main())
print(errors.count)
"""


def test_a_connection_flood_beyond_the_fd_limit_is_one_line_not_a_traceback() -> None:
    """Accepting fails with EMFILE (libuv then sheds the pending connections): at most a line per kind
    of error, no traceback, and the control socket serves again once fds are free."""
    res = subprocess.run(
        [sys.executable, "-c", _FD_FLOOD, unique_tap()],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    *_, answer, count = res.stdout.splitlines()
    assert json.loads(answer) == {"cmd": "show"}
    assert "Traceback" not in res.stderr, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) <= 3, res.stderr  # one per kind of error at most
    print(f"loop errors: {count}; logged: {lines}")
