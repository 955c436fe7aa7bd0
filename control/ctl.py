"""The control socket: `ovl-dp show` and `ovl-dp fdb` ask a running daemon.

One abstract Unix socket per daemon, named ``@ovl-dp/<tap>``. Abstract
sockets belong to the network namespace, like the TAP itself, so daemons in
different namespaces (the lab's hosts) never collide, and ``ip netns exec
HOST ovl-dp show`` finds the daemon of that host. Protocol: one JSON request
line (``{"cmd": "show"}``), one JSON answer line.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from pathlib import Path

PREFIX = "ovl-dp/"
PROC_NET_UNIX = Path("/proc/net/unix")
MAX_REQUEST = 4096


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


async def serve(tap: str, handler: Callable[[str], object]) -> asyncio.AbstractServer:
    """Answer requests for tap with handler(cmd) (JSON-able result) until the server is closed."""

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            try:
                cmd = str(json.loads(line[:MAX_REQUEST])["cmd"])
                answer: object = {"ok": True, "result": handler(cmd)}
            except (ValueError, KeyError, TypeError) as exc:
                answer = {"ok": False, "error": f"bad request: {exc}"}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        finally:
            writer.close()

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(address(tap))
    except OSError as exc:
        sock.close()
        raise OSError(f"control socket @{PREFIX}{tap} is taken: another ovl-dp runs with this TAP ({exc})") from None
    return await asyncio.start_unix_server(on_client, sock=sock)


def request(tap: str, cmd: str, timeout: float = 5.0) -> object:
    """Ask the daemon that owns tap; raises OSError if none answers, RuntimeError on a refusal."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(address(tap))
        sock.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    answer = json.loads(data)
    if not answer.get("ok"):
        raise RuntimeError(answer.get("error", "refused"))
    return answer["result"]
