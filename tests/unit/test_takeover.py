"""control/takeover.py: what must match, the state's rows, the successor's command line, and the wire
protocol itself (SCM_RIGHTS, the steps, failures) between two ends of a real Unix socket."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import threading
from typing import Any

import pytest

from control import takeover
from datapath.config import Config, FdbConfig, Remote, StaticEntry, TapConfig, TunnelConfig
from datapath.errors import SetupError


def cfg(**tunnel: Any) -> Config:
    return Config(TunnelConfig(**{"mode": "vxlan", **tunnel}), (Remote("192.0.2.2"),))


def test_identity_fills_in_defaults_and_names_what_differs() -> None:
    base = takeover.identity(cfg())
    assert takeover.differences(base, takeover.identity(cfg(vni=0, port=4789))) == []
    diff = takeover.differences(base, takeover.identity(cfg(vni=7)))
    assert diff == ["tunnel.vni (running 0, new 7)"]
    gre = takeover.identity(Config(TunnelConfig("gre"), (Remote("192.0.2.2"),)))
    assert "tunnel.mode (running 'vxlan', new 'gre')" in takeover.differences(base, gre)
    assert "tap.name (running 'ovl-vxlan', new 'ovl-gre')" in takeover.differences(base, gre)
    # What may differ: remotes, FDB limits, batch.
    other = dataclasses.replace(cfg(), remotes=(Remote("192.0.2.9"),), fdb=FdbConfig(max_entries=9), batch=8)
    assert takeover.differences(base, takeover.identity(other)) == []
    # A key only one side knows (another version) counts only if it is one that must be there.
    assert takeover.differences({**base, "tap.future": "1"}, base) == []
    missing = {k: v for k, v in base.items() if k != "tap.name"}
    assert takeover.differences(base, missing) == ["tap.name (missing)"]


def test_configure_runs_what_the_old_daemon_runs() -> None:
    mine = dataclasses.replace(
        cfg(underlay_mtu=1500),
        remotes=(Remote("192.0.2.2", "192.0.2.1"),),
        tap=TapConfig(name="ovl-vxlan", mtu=1450, mac=b"\x02\x00\x00\x00\x00\x01"),
        fdb=FdbConfig(static=(StaticEntry(b"\x02\x00\x00\x00\x00\x09", "192.0.2.2"),)),
    )
    state = {"tap": {"mac": "02:00:00:00:00:02", "mtu": 1400}, "underlay_mtu": 1450,
             "remotes": [["192.0.2.3", "192.0.2.1"], ["192.0.2.4", "192.0.2.1"]]}  # fmt: skip
    run = takeover.configure(mine, state)
    assert run.tap.mac == b"\x02\x00\x00\x00\x00\x02" and run.tap.mtu == 1400 and run.underlay_mtu == 1450
    assert [r.addr for r in run.remotes] == ["192.0.2.3", "192.0.2.4"]
    assert run.fdb.static == ()  # they come with the FDB
    assert run.is_resolved()
    # No remote left in the old daemon (all removed at run time): the configuration's, removed later.
    assert takeover.configure(mine, {**state, "remotes": []}).remotes == mine.remotes


def test_parse_fdb_leaves_bad_rows_out() -> None:
    rows = [["02:00:00:00:00:01", 20, "192.0.2.2", False, 12.5], ["zz", 0, "192.0.2.2", True, 0], [1, 2], None]
    assert takeover.parse_fdb(rows) == [(b"\x02\x00\x00\x00\x00\x01", 20, "192.0.2.2", False, 12.5)]  # type: ignore[arg-type]


def test_successor_command_is_this_one_with_takeover_once() -> None:
    argv = ["python3", "-m", "control.cli", "--log-format", "json", "run", "--config", "/etc/x.toml"]
    cmd = takeover.successor_command(argv)
    assert cmd[1:] == [*argv[1:], "--takeover"] and os.path.isabs(cmd[0])
    assert takeover.successor_command([*argv, "--takeover"]).count("--takeover") == 1


def _pipe_fds() -> tuple[list[int], list[int]]:
    """Two pipes: (read ends kept here, write ends to hand over)."""
    a, b = os.pipe(), os.pipe()
    return [a[0], b[0]], [a[1], b[1]]


def _serve_one(listener: socket.socket, steps: list[str], fds: dict[str, int], state: dict[str, Any],
               out: dict[str, Any]) -> None:  # fmt: skip
    """The old daemon's side for one connection: read the request, then the steps asked for."""
    conn, _ = listener.accept()
    with conn:
        buf = bytearray()
        out["request"] = takeover._read_line(conn, buf, "request")
        try:
            if "refuse" in steps:
                conn.sendall(b'{"ok": false, "error": "takeover refused: tunnel.vni differs"}\n')
                return
            rest = takeover.send_offer(conn, fds, state, timeout=5)
            out["offered"] = True
            takeover.send_stopped(conn, rest, {"step": "stopped", "counters": {"n": 1}, "fdb": []})
            out["done"] = True
        except OSError as exc:
            out["error"] = str(exc)


@pytest.fixture
def listener() -> Any:
    """A control socket at a name of this test's own (abstract: no file; unique per process)."""
    tap = f"tk{os.getpid() % 100000}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(f"\0ovl-dp/{tap}")
    sock.listen(1)
    yield tap, sock
    sock.close()


def _run_old(listener: tuple[str, socket.socket], steps: list[str], fds: dict[str, int], state: dict[str, Any]
             ) -> tuple[threading.Thread, dict[str, Any]]:  # fmt: skip
    out: dict[str, Any] = {}
    t = threading.Thread(target=_serve_one, args=(listener[1], steps, fds, state, out))
    t.start()
    return t, out


def test_the_fds_and_the_state_cross_and_the_steps_follow(listener: tuple[str, socket.socket]) -> None:
    keep, give = _pipe_fds()
    state = {"protocol": 1, "pid": os.getpid(), "fdb": [["02:00:00:00:00:01", 0, "192.0.2.2", False, 3.0]] * 20000}
    t, out = _run_old(listener, [], {"tap": give[0], "recv": give[1]}, state)
    try:
        offer = takeover.request(listener[0], {"tap.name": "'x'"})
        assert out["request"]["cmd"] == "takeover" and out["request"]["args"]["identity"] == {"tap.name": "'x'"}
        assert offer.pid == os.getpid() and offer.state == state and sorted(offer.fds) == ["recv", "tap"]
        # The fds are the same pipes: what is written into the received ones comes out of ours.
        for name, r in zip(("tap", "recv"), keep, strict=True):
            fd = offer.take(name)
            assert fd is not None and fd not in give
            os.write(fd, name.encode())
            os.close(fd)
            assert os.read(r, 16) == name.encode()
        final = takeover.confirm(offer)
        assert final["step"] == "stopped" and final["counters"] == {"n": 1}
        offer.close()
        t.join(10)
        assert out.get("done"), out
    finally:
        for fd in keep + give:
            os.close(fd)


def test_a_refusal_is_one_clear_error(listener: tuple[str, socket.socket]) -> None:
    t, _ = _run_old(listener, ["refuse"], {}, {})
    with pytest.raises(SetupError, match=r"^takeover refused: tunnel.vni differs$"):
        takeover.request(listener[0], {})
    t.join(10)


def test_a_new_daemon_that_goes_away_or_gives_up_is_noticed(listener: tuple[str, socket.socket]) -> None:
    keep, give = _pipe_fds()
    try:
        t, out = _run_old(listener, [], {"tap": give[0]}, {"protocol": 1, "pid": os.getpid()})
        offer = takeover.request(listener[0], {})
        offer.close()  # gone after it got the fds, before "forwarding"
        t.join(10)
        assert "closed the connection" in out["error"] and "offered" not in out, out
        t, out = _run_old(listener, [], {"tap": give[0]}, {"protocol": 1, "pid": os.getpid()})
        takeover.abandon(takeover.request(listener[0], {}), "the TAP fd does not match")
        t.join(10)
        assert "gave up: the TAP fd does not match" in out["error"], out
        # It said it was forwarding, then went away before "done": the old one hears of it (and reads again).
        t, out = _run_old(listener, [], {"tap": give[0]}, {"protocol": 1, "pid": os.getpid()})
        offer = takeover.request(listener[0], {})
        offer.conn.sendall(json.dumps({"step": "forwarding"}).encode() + b"\n")
        offer.close()
        t.join(10)
        assert out.get("offered") and "done" not in out and "error" in out, out
    finally:
        for fd in keep + give:
            os.close(fd)


def test_no_daemon_no_takeover() -> None:
    with pytest.raises(SetupError, match="no ovl-dp daemon with TAP tk-none-here runs in this network namespace"):
        takeover.request("tk-none-here", {})


def test_ctl_sessions_keep_their_connection_and_a_listener_can_be_handed_in() -> None:
    """control/ctl.py's hooks for the takeover: a session command answers on the connection itself (CtlError:
    one line), other commands go to the handler; a listening socket given to serve() is served."""
    import asyncio

    from control import ctl

    tap = f"tks{os.getpid() % 100000}"

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, args: Any) -> None:
        if args.get("no"):
            raise ctl.CtlError("takeover refused: no")
        writer.write(b"first\n")
        line = await reader.readline()  # the conversation goes on
        writer.write(b"got " + line)
        await writer.drain()

    def exchange(data: bytes) -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(ctl.address(tap))
            sock.sendall(data)
            out = b""
            while chunk := sock.recv(4096):
                out += chunk
            return out

    async def main() -> list[bytes]:
        listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listening.bind(ctl.address(tap))
        listening.listen(8)
        server = await ctl.serve(tap, lambda cmd, args: {"cmd": cmd}, None, {"tk": session}, listening)
        try:
            loop = asyncio.get_running_loop()
            return [
                await loop.run_in_executor(None, exchange, b'{"cmd": "tk"}\nhello\n'),
                await loop.run_in_executor(None, exchange, b'{"cmd": "tk", "args": {"no": 1}}\n'),
                await loop.run_in_executor(None, exchange, b'{"cmd": "show"}\n'),
            ]
        finally:
            server.close()
            await server.wait_closed()

    talk, refused, show = asyncio.run(main())
    assert talk == b"first\ngot hello\n"
    assert json.loads(refused) == {"ok": False, "error": "takeover refused: no"}
    assert json.loads(show) == {"ok": True, "result": {"cmd": "show"}}


def _listen_elsewhere(tap: str, uid: int | None = None) -> tuple[int, socket.socket]:
    """A listening socket at tap's address whose listen() ran in another process (which has exited):
    what a daemon that took over serves on. uid: the user that process became first. (its PID, socket)"""
    a, b = socket.socketpair()
    with a, b:
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child)
            try:
                if uid is not None:
                    os.setgid(uid)
                    os.setuid(uid)
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.bind(f"\0ovl-dp/{tap}")
                s.listen(4)
                socket.send_fds(a, [b"l"], [s.fileno()])
            finally:
                os._exit(0)
        _, got, _, _ = socket.recv_fds(b, 1, 1)
        os.waitpid(pid, 0)
    assert len(got) == 1
    return pid, socket.socket(fileno=got[0])


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_handed_over_listener_names_the_serving_daemon_by_its_state() -> None:
    # A listening socket whose last listen() ran in another process: SO_PEERCRED names that one. The PID
    # the new daemon waits for and reports is the serving one's, from its state.
    tap = f"tl{os.getpid() % 100000}"
    gone, sock = _listen_elsewhere(tap)
    keep, give = _pipe_fds()
    try:
        t, out = _run_old((tap, sock), [], {"tap": give[0]}, {"protocol": 1, "pid": os.getpid()})
        offer = takeover.request(tap, {})
        assert offer.pid == os.getpid() != gone
        takeover.confirm(offer)
        offer.close()
        t.join(10)
        assert out.get("done"), out
    finally:
        sock.close()
        for fd in keep + give:
            os.close(fd)


def test_a_control_socket_of_another_user_hands_nothing_over() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (to become another user)")
    tap = f"tu{os.getpid() % 100000}"
    _, sock = _listen_elsewhere(tap, uid=65534)
    keep, give = _pipe_fds()
    try:
        before = _open_fds()
        body = json.dumps({"protocol": 1, "pid": os.getpid(), "tap": {}}).encode()
        header = json.dumps({"ok": True, "result": {"protocol": 1, "fds": ["tap", "recv"], "state_bytes": len(body)}})
        out: dict[str, Any] = {}
        t = threading.Thread(target=_serve_raw, args=(sock, give, header.encode() + b"\n", body, out))
        t.start()
        with pytest.raises(SetupError, match=r"held by uid 65534, neither root nor this user: nothing is taken"):
            takeover.request(tap, {})
        t.join(10)
        assert "sent" not in out, out  # not even asked
        assert _open_fds() == before
    finally:
        sock.close()
        for fd in keep + give:
            os.close(fd)


def _serve_raw(listener: socket.socket, fds: list[int], header: bytes, body: bytes,
               out: dict[str, Any] | None = None) -> None:  # fmt: skip
    """A peer that answers any request with header (fds attached) and body; out["sent"] once it did."""
    conn, _ = listener.accept()
    with conn, contextlib.suppress(OSError):
        takeover._read_line(conn, bytearray(), "request")
        socket.send_fds(conn, [header], fds)
        conn.sendall(body)
        if out is not None:
            out["sent"] = True


@pytest.mark.parametrize(
    "header, body",
    [
        (b'{"ok": true, "result": {"protocol": 1, "fds": ["tap", "recv"], "state_bytes": 5}}\n', b"{nope"),
        (b'{"ok": true, "result": {"protocol": 1, "fds": ["tap", "recv"], "state_bytes": 2}}\n', b"[]"),
        (b'{"ok": true, "result": {"protocol": 1, "fds": ["tap", "recv"], "state_bytes": 9}}\n', b"{}"),
        (b'{"ok": true, "result": {"protocol": 1, "fds": ["tap", "recv"]}}\n', b""),
        (b'{"ok": true}\n', b""),
        (b"[1]\n", b""),
    ],
    ids=["bad-json", "not-an-object", "cut-short", "no-size", "no-result", "not-an-answer"],
)
def test_a_bad_answer_or_state_is_one_clear_error_and_leaks_no_fd(
    listener: tuple[str, socket.socket], header: bytes, body: bytes
) -> None:
    keep, give = _pipe_fds()
    try:
        before = _open_fds()
        t = threading.Thread(target=_serve_raw, args=(listener[1], give, header, body))
        t.start()
        with pytest.raises(SetupError, match=r"^--takeover: "):
            takeover.request(listener[0], {})
        t.join(10)
        assert _open_fds() == before  # the two fds received are closed again
    finally:
        for fd in keep + give:
            os.close(fd)
