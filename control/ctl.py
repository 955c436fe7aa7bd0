"""The control socket: `ovl-dp show`, `fdb`, `remote`, `reload` ask a running daemon.

One abstract Unix socket per daemon, named ``@ovl-dp/<tap>``. Abstract
sockets belong to the network namespace, like the TAP itself, so daemons in
different namespaces (the lab's hosts) never collide, and ``ip netns exec
HOST ovl-dp show`` finds the daemon of that host. Protocol: one JSON request
line (``{"cmd": "show"}``, or ``{"cmd": "remote", "args": {"op": "add", ...}}``),
one JSON answer line (``{"ok": true, "result": ...}`` or ``{"ok": false,
"error": "..."}``), then the daemon closes the connection.

An abstract socket has no file permissions, so the daemon checks who is
calling (SO_PEERCRED): root, or a process whose effective capabilities
include CAP_NET_ADMIN; everyone else is refused, reads included. A request
is at most :data:`MAX_REQUEST` bytes and must arrive within
:data:`IDLE_TIMEOUT` seconds; at most :data:`MAX_CLIENTS` connections are
served at once. Every refusal is counted (:class:`CtlStats`) and logged once
per kind, never with a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("ovl-dp")

PREFIX = "ovl-dp/"
PROC_NET_UNIX = Path("/proc/net/unix")
MAX_REQUEST = 64 * 1024  # bytes in one request line
MAX_ANSWER = 64 << 20  # what a client reads at most (an FDB of 1M entries fits)
IDLE_TIMEOUT = 5.0  # seconds for a client to send its request line
MAX_CLIENTS = 32  # connections served at once; more are refused
CAP_NET_ADMIN = 12  # <linux/capability.h>
SO_PEERCRED_FORMAT = "3i"  # struct ucred: pid, uid, gid

Handler = Callable[[str, Mapping[str, Any]], object]
# A request that keeps its connection (a takeover): it answers on it itself; CtlError refuses it with one line.
Session = Callable[[asyncio.StreamReader, asyncio.StreamWriter, Mapping[str, Any]], Awaitable[None]]


class CtlError(Exception):
    """A request the daemon refuses, with the one-line reason the client prints."""


@dataclass
class CtlStats:
    """Counted control-socket events (the daemon exports them)."""

    requests: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # reason -> count

    def refuse(self, reason: str, detail: str) -> None:
        """Count a refusal; log the first of each reason."""
        self.refused[reason] = self.refused.get(reason, 0) + 1
        if self.refused[reason] == 1:
            log.warning("control socket: refused a client (%s: %s); further ones are counted", reason, detail)


_SESSION: dict[str, Any] = {}  # _request's answer for a session that answered on its connection itself


def address(tap: str) -> str:
    """The abstract socket address for the daemon that owns tap."""
    return f"\0{PREFIX}{tap}"


def running() -> list[str]:
    """TAP names of the daemons listening in this network namespace."""
    names = []
    for line in PROC_NET_UNIX.read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[7].startswith("@" + PREFIX):
            names.append(fields[7][len(PREFIX) + 1 :])
    return sorted(set(names))


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket."""
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize(SO_PEERCRED_FORMAT))
    pid, uid, gid = struct.unpack(SO_PEERCRED_FORMAT, data)
    return pid, uid, gid


def _same_user_namespace(pid: int) -> bool:
    """Whether process pid lives in this process's user namespace.

    Capabilities are relative to a user namespace: a process that made its own
    (unshare -Ur) has a full CapEff there and none here, so only capabilities held in
    our namespace count.
    """
    try:
        theirs, ours = os.stat(f"/proc/{pid}/ns/user"), os.stat("/proc/self/ns/user")
    except OSError:
        return False
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


def _effective_caps(pid: int, uid: int) -> int:
    """The effective capability set of process pid, if it still is the peer we were told of; else 0.

    Every uid of its Uid: line (real, effective, saved, fs) must be the SO_PEERCRED uid, so a
    process that has since become another (a setuid program after exec) does not count.
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    fields = {k: v.split() for k, _, v in (line.partition(":") for line in status)}
    try:
        if any(int(u) != uid for u in fields.get("Uid", ["-1"])):
            return 0
        return int(fields.get("CapEff", ["0"])[0], 16)
    except ValueError:
        return 0


def may_control(pid: int, uid: int) -> bool:
    """Whether a peer may use the control socket: uid 0, or CAP_NET_ADMIN held in our user namespace.

    (SO_PEERCRED's uid is already mapped into our user namespace: root of a private user namespace is not
    uid 0 here.)
    """
    if uid == 0:
        return True
    return _same_user_namespace(pid) and bool(_effective_caps(pid, uid) >> CAP_NET_ADMIN & 1)


def _parse(line: bytes) -> tuple[str, dict[str, Any]]:
    """(command, arguments) of a request line; ValueError says what is wrong."""
    try:
        req = json.loads(line)
    except (ValueError, RecursionError):
        raise ValueError("not a JSON line") from None
    if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
        raise ValueError('expected {"cmd": NAME[, "args": {...}]}')
    args = req.get("args", {})
    if not isinstance(args, dict):
        raise ValueError('"args" must be an object')
    return req["cmd"], args


async def serve(
    tap: str,
    handler: Handler,
    stats: CtlStats | None = None,
    sessions: Mapping[str, Session] | None = None,
    listening: socket.socket | None = None,
) -> asyncio.AbstractServer:
    """Answer requests for tap with handler(cmd, args) (a JSON-able result, or CtlError) until closed.

    sessions: commands that keep the connection (after the same checks); listening: a socket already
    bound and listening at tap's address (handed over by a takeover) instead of a new one.
    """
    counted = stats if stats is not None else CtlStats()
    clients = 0

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal clients
        clients += 1
        try:
            answer, unread = await _answer(reader, writer, clients)
            if answer is _SESSION:
                return
            if answer is not None:
                writer.write(json.dumps(answer).encode() + b"\n")
                await asyncio.wait_for(writer.drain(), IDLE_TIMEOUT)
            if unread:
                # A client refused before its request was read may still be sending it: closing with
                # unread data would reset the connection (RST), and the client might lose the answer.
                with contextlib.suppress(OSError, ValueError, asyncio.TimeoutError):
                    await asyncio.wait_for(reader.read(MAX_REQUEST), 0.2)
        except (TimeoutError, OSError):
            pass  # the client went away or does not read: nothing to answer
        finally:
            clients -= 1
            writer.close()
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> tuple[dict[str, Any] | None, bool]:
        """The answer (None: none) and whether the request was left unread."""
        sock = writer.get_extra_info("socket")
        pid, uid, _ = peer_credentials(sock) if sock is not None else (0, -1, -1)
        if not may_control(pid, uid):
            counted.refuse("not privileged", f"uid {uid}")
            return {"ok": False, "error": "permission denied: the control socket is for root or CAP_NET_ADMIN"}, True
        if n > MAX_CLIENTS:  # answered and closed at once, unread: a flood of connections costs little
            counted.refuse("too many clients", f"{n} connections")
            return {"ok": False, "error": f"busy: more than {MAX_CLIENTS} control connections"}, False
        return await _request(reader, writer), False

    async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> dict[str, Any] | None:
        """Read, check and handle one request line."""
        try:
            line = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT)
        except TimeoutError:
            counted.refuse("idle", f"no request within {IDLE_TIMEOUT:g}s")
            return {"ok": False, "error": f"no request within {IDLE_TIMEOUT:g}s"}
        except (ValueError, asyncio.LimitOverrunError):  # the line is longer than the stream's limit
            counted.refuse("too long", f"a request over {MAX_REQUEST} bytes")
            return {"ok": False, "error": f"bad request: longer than {MAX_REQUEST} bytes"}
        except asyncio.IncompleteReadError:
            counted.refuse("cut short", "disconnected mid-request")
            return None
        if not line.endswith(b"\n"):
            counted.refuse("cut short", "disconnected mid-request")
            return None
        try:
            cmd, args = _parse(line)
        except ValueError as exc:
            counted.refuse("malformed", str(exc))
            return {"ok": False, "error": f"bad request: {exc}"}
        counted.requests += 1
        session = (sessions or {}).get(cmd)
        try:
            if session is not None:
                await session(reader, writer, args)
                return _SESSION
            return {"ok": True, "result": handler(cmd, args)}
        except CtlError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug in a handler: answer and log it, never drop the client silently
            log.error("control request %r failed: %s: %s", cmd, type(exc).__name__, exc)
            return {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}

    if listening is not None:
        return await asyncio.start_unix_server(on_client, sock=listening, limit=MAX_REQUEST)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(address(tap))
    except OSError as exc:
        sock.close()
        raise OSError(f"control socket @{PREFIX}{tap} is taken: another ovl-dp runs with this TAP ({exc})") from None
    return await asyncio.start_unix_server(on_client, sock=sock, limit=MAX_REQUEST)


def request(tap: str, cmd: str, args: Mapping[str, Any] | None = None, timeout: float = 10.0) -> object:
    """Ask the daemon that owns tap; OSError if none answers, RuntimeError with its reason on a refusal."""
    req: dict[str, Any] = {"cmd": cmd}
    if args:
        req["args"] = dict(args)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(address(tap))
        sock.sendall(json.dumps(req).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n") and len(data) < MAX_ANSWER:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    try:
        answer = json.loads(data)
    except ValueError:
        raise OSError("the daemon closed the control connection without an answer") from None
    if not answer.get("ok"):
        raise RuntimeError(answer.get("error", "refused"))
    return answer["result"]
