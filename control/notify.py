"""The sd_notify protocol, written out (no libsystemd): tell a supervisor we are ready, alive, stopping.

A notification is one datagram of ``KEY=VALUE`` lines sent to the Unix socket named by
``$NOTIFY_SOCKET``: a path, or an abstract name written with a leading ``@`` (sent as a
leading NUL). Without NOTIFY_SOCKET every call does nothing, so the daemon runs the same
outside systemd. A failed send is logged at debug level and never stops the daemon.

The watchdog: with ``WatchdogSec=`` systemd sets ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``,
the PID it expects pings from); the daemon sends WATCHDOG=1 from an event-loop timer at
half that interval, so a stuck loop stops pinging and systemd restarts it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("ovl-dp")


def socket_address(env: Mapping[str, str] | None = None) -> str | None:
    """The address to send to, as socket.sendto takes it (abstract names with a leading NUL); None if unset."""
    path = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if path.startswith("@"):
        return "\0" + path[1:]
    if path.startswith("/"):
        return path
    return None  # unset, or a kind we do not speak (vsock:...)


def notify(*fields: str, env: Mapping[str, str] | None = None) -> bool:
    """Send KEY=VALUE fields as one datagram; False if there is no socket or the send failed."""
    addr = socket_address(env)
    if addr is None or not fields:
        return False
    message = "\n".join(fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, addr)
    except OSError as exc:
        log.debug("sd_notify to %r failed: %s", addr, exc)
        return False
    return True


def ready(status: str | None = None) -> bool:
    """READY=1 (with STATUS= if given): setup is done, the service is up."""
    return notify("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))


def stopping() -> bool:
    """STOPPING=1: the service begins to shut down."""
    return notify("STOPPING=1")


def watchdog() -> bool:
    """WATCHDOG=1: the keep-alive ping."""
    return notify("WATCHDOG=1")


def status(text: str) -> bool:
    """STATUS=text: a line systemctl status shows."""
    return notify(f"STATUS={_one_line(text)}")


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between required pings ($WATCHDOG_USEC), or None: unset, invalid, or meant for another PID."""
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = env.get("WATCHDOG_PID")
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 1e6


def _one_line(text: str) -> str:
    return " ".join(text.split())


async def keep_alive(interval: float) -> None:
    """WATCHDOG=1 now and every interval/2 seconds, from the event loop, until cancelled."""
    while True:
        watchdog()
        await asyncio.sleep(interval / 2)
