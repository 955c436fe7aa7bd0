"""`ovl-dp run --takeover`: a new daemon takes over the running one's TAP, sockets and FDB, and the old one exits.

The conversation runs on the control socket (control/ctl.py: ``@ovl-dp/<tap>``, the same
credential check as every request), one connection, four steps:

    new -> old   {"cmd": "takeover", "args": {"protocol": 1, "identity": {...}}}
    old -> new   {"ok": true, "result": {"protocol": 1, "fds": [names], "state_bytes": N}}\\n
                 with the fds attached (SCM_RIGHTS), then N bytes of state (JSON)
    new -> old   {"step": "forwarding"}\\n        (the new engine reads the fds now)
    old -> new   {"step": "stopped", "counters": ..., "fdb": [...]}\\n   (the old reads nothing more)
    new -> old   {"step": "done"}\\n              (the old exits 0, without touching the bridge)

The fds: the TAP, the receiving and the sending socket, the UDP GSO pool, the control
socket's listening socket and the metrics listening socket if there is one (passed
rather than bound again: no moment without an answer on /healthz, and no bind that can
fail after the point of no return). The state: the TAP's facts (name, MAC, MTU,
virtio header, offloads), the underlay MTU, the runtime remotes (with their local
addresses), the FDB with ages, and where the metrics listen.

The identity (:func:`identity`: every tunnel, TAP, bridge and offload key) must be
the same on both sides, or the old daemon refuses with the keys named: the fds
carry those settings. The remotes, the FDB limits and the batch size may differ
(the running remotes win; `ovl-dp reload` then applies the file's).

Until the old one receives "forwarding" it forwards as before, and if the new
one fails, goes away or stays silent (:data:`HANDOVER_TIMEOUT`), the old one
logs it and carries on. Between "forwarding" and "stopped" both read the same
fds, which loses nothing: each frame goes to one reader. If the new one does
not confirm "done", the old one reads again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from control import ctl, notify
from control.ctl import CtlError
from datapath.config import Config, Remote
from datapath.engine import Engine, Inherited
from datapath.errors import SetupError
from datapath.ether import format_mac, parse_mac

log = logging.getLogger("ovl-dp")

PROTOCOL = 1
HANDOVER_TIMEOUT = 30.0  # seconds the old daemon waits for the new one to be forwarding
STEP_TIMEOUT = 10.0  # seconds either side waits for the other's next message otherwise
MAX_FDS = 16
MAX_LINE = 1 << 20
IDENTITY_GROUPS = ("tunnel", "tap", "bridge", "offload")
REQUIRED_KEYS = ("tunnel.mode", "tap.name", "bridge.name", "bridge.type")
ENGINE_FDS = ("tap", "recv", "send")


def identity(cfg: Config) -> dict[str, str]:
    """What must be equal on both sides of a takeover: every tunnel, TAP, bridge and offload key (as text)."""
    keys = {}
    for group in IDENTITY_GROUPS:
        obj = getattr(cfg, group)
        for f in dataclasses.fields(obj):
            keys[f"{group}.{f.name}"] = repr(getattr(obj, f.name))
    encap = cfg.encap  # defaults filled in: --vni 0 is the default VNI, --port 4789 the default port
    if encap.udp:
        keys["tunnel.port"] = repr(encap.port)
        keys[f"tunnel.{encap.id_key}"] = repr(cfg.base_id)
    return keys


def differences(running: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    """The keys whose values differ ("KEY (running X, new Y)"); keys one side lacks count only if required."""
    out = [
        f"{k} (running {running[k]}, new {new[k]})" for k in sorted(running.keys() & new.keys()) if running[k] != new[k]
    ]
    out += [f"{k} (missing)" for k in REQUIRED_KEYS if k not in running or k not in new]
    return out


def _line(obj: object) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def _read_line(sock: socket.socket, buf: bytearray, what: str) -> dict[str, Any]:
    """The next JSON line from a blocking sock (buf keeps what follows it); OSError on EOF or a bad line."""
    while b"\n" not in buf:
        if len(buf) > MAX_LINE:
            raise OSError(f"{what}: a line over {MAX_LINE} bytes")
        chunk = sock.recv(65536)
        if not chunk:
            raise OSError(f"{what}: the other side closed the connection")
        buf += chunk
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    try:
        msg = json.loads(line)
    except ValueError:
        raise OSError(f"{what}: not a JSON line") from None
    if not isinstance(msg, dict):
        raise OSError(f"{what}: not a JSON object")
    return msg


# -- the running daemon's side ------------------------------------------------------------------


def export_state(
    engine: Engine, metrics_at: tuple[str, int] | None, origins: Mapping[str, Collection[str]] | None = None
) -> dict[str, Any]:
    """What the new daemon needs besides the fds (JSON-able); origins: each remote's origins (issue 12:
    "static", "etcd"), so that a member the operator also made static with `remote add` stays static."""
    tap = engine.tap
    return {
        "protocol": PROTOCOL,
        "pid": os.getpid(),
        "tap": {
            "name": tap.name,
            "mac": format_mac(tap.mac),
            "mtu": tap.mtu,
            "vnet_hdr_len": tap.vnet_hdr_len,
            "offloads": tap.offloads,
        },
        "underlay_mtu": engine.cfg.underlay_mtu,
        "udp_gro": bool(engine.udp_gro),
        "fast": engine.fast,
        "remotes": [[r.addr, r.local] for r in engine.remotes()],
        "fdb": fdb_rows(engine),
        "metrics": list(metrics_at) if metrics_at else None,
        "origins": {addr: sorted(o) for addr, o in (origins or {}).items()},
    }


def fdb_rows(engine: Engine) -> list[list[object]]:
    """The FDB as JSON rows [MAC, VLAN, remote, static, age]."""
    return [[format_mac(m), v, r, s, a] for m, v, r, s, a in engine.fdb_export()]


@dataclass
class GiverStats:
    """Takeovers this daemon refused or saw fail (shown by `ovl-dp show`)."""

    refused: int = 0
    abandoned: int = 0


class Giver:
    """The running daemon's end: hands its fds and state to a new daemon, then stops.

    extra_fds() gives the daemon's own listening sockets ({"ctl": fd, "metrics": fd}); handed_over(pid)
    is called on the loop once the new daemon (pid) is forwarding and this engine has stopped reading.
    """

    def __init__(
        self,
        engine: Engine,
        user_cfg: Config,
        metrics_at: tuple[str, int] | None,
        extra_fds: Callable[[], dict[str, int]],
        handed_over: Callable[[int], None],
        handover_timeout: float = HANDOVER_TIMEOUT,
        origins: Callable[[], Mapping[str, Collection[str]]] | None = None,
    ) -> None:
        self.engine = engine
        self.origins = origins  # each remote's origins (control/service.py), handed over with the remotes
        self.user_cfg = user_cfg
        self.metrics_at = metrics_at
        self.extra_fds = extra_fds
        self.handed_over = handed_over
        self.handover_timeout = handover_timeout
        self.busy = False  # a takeover is under way (or done)
        self.done = False
        self.stats = GiverStats()
        self._conn: socket.socket | None = None
        self._task: asyncio.Task[Any] | None = None

    async def session(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, args: Mapping[str, Any]
    ) -> None:
        """Serve one takeover request on its connection (ctl's session hook); CtlError refuses it with one line."""
        if self.busy:
            raise CtlError("takeover refused: another takeover is under way")
        if args.get("protocol") != PROTOCOL:
            raise CtlError(f"takeover refused: protocol {args.get('protocol')!r}, this daemon speaks {PROTOCOL}")
        theirs = args.get("identity")
        if not isinstance(theirs, dict) or not all(isinstance(v, str) for v in theirs.values()):
            raise CtlError("takeover refused: no identity given")
        diff = differences(identity(self.user_cfg), theirs)
        if diff:
            self.stats.refused += 1
            raise CtlError(
                "takeover refused: the new configuration cannot share this daemon's TAP and sockets: " + "; ".join(diff)
            )
        raw = writer.get_extra_info("socket")
        if raw is None:
            raise CtlError("takeover refused: no socket behind this connection")
        pid = ctl.peer_credentials(raw)[0]
        loop = asyncio.get_running_loop()
        self.busy = True
        conn = socket.socket(fileno=os.dup(raw.fileno()))
        self._conn, self._task = conn, asyncio.current_task()
        try:
            # The conversation goes on on conn, in a thread: the stream must not read what comes next.
            # (uvloop's transports do not derive from asyncio.ReadTransport, hence no isinstance.)
            pause: Callable[[], None] = getattr(writer.transport, "pause_reading")  # noqa: B009
            pause()
            conn.setblocking(True)
            state = export_state(self.engine, self.metrics_at, self.origins() if self.origins else None)
            fds = self._fds()
            log.info("takeover: handing the TAP, %d fds and %d FDB entries to PID %d", len(fds), len(state["fdb"]), pid,
                     extra={"event": "takeover_offer", "peer_pid": pid})  # fmt: skip
            try:
                buf = await loop.run_in_executor(None, send_offer, conn, fds, state, self.handover_timeout)
            except OSError as exc:
                self._abandoned(pid, f"{exc}")
                return
            # The new daemon is forwarding: stop reading at once, then tell it.
            self.engine.stop_reading()
            stopped = {"step": "stopped", "pid": os.getpid(), "counters": self.engine.snapshot().as_dict(),
                       "fdb": fdb_rows(self.engine)}  # fmt: skip
            try:
                await loop.run_in_executor(None, send_stopped, conn, buf, stopped)
            except OSError as exc:
                self.engine.start(loop)  # the new one went away during the handover: forward again
                self._abandoned(pid, f"after it said it was forwarding: {exc}; reading again")
                return
            log.info(
                "takeover: PID %d forwards now; this daemon exits", pid, extra={"event": "handed_over", "peer_pid": pid}
            )
            notify.notify(f"MAINPID={pid}", f"STATUS=handed over to PID {pid}")
            self.done = True  # busy for good: nothing changes in a daemon that is on its way out
            self.handed_over(pid)
        finally:
            self._conn = None
            conn.close()
            self.busy = self.done

    async def cancel(self, timeout: float = 2.0) -> None:
        """The daemon stops (SIGTERM): end a conversation under way (its thread returns at once) and let it
        finish, up to timeout seconds."""
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.shutdown(socket.SHUT_RDWR)
        task = self._task
        if task is not None and not task.done() and task is not asyncio.current_task():
            await asyncio.wait([task], timeout=timeout)

    def _fds(self) -> dict[str, int]:
        inh = self.engine.inherit()
        fds = {"tap": inh.tap_fd, "recv": inh.recv_fd, "send": inh.send_fd}
        fds.update({f"gso{i}": fd for i, fd in enumerate(inh.gso_fds)})
        if inh.recv2_fd >= 0:  # the IPv6 receiving socket of a mesh of both families
            fds["recv2"] = inh.recv2_fd
        if inh.send6_fd >= 0:
            fds["send6"] = inh.send6_fd
        fds.update(self.extra_fds())
        return fds

    def _abandoned(self, pid: int, why: str) -> None:
        self.stats.abandoned += 1
        log.warning("takeover by PID %d abandoned: %s; this daemon keeps forwarding", pid, why,
                    extra={"event": "takeover_abandoned", "peer_pid": pid})  # fmt: skip


def send_offer(conn: socket.socket, fds: dict[str, int], state: dict[str, Any], timeout: float) -> bytearray:
    """Send the fds and the state on conn (blocking); wait up to timeout for "forwarding"; what was read
    after it. OSError if the new daemon fails, goes away or is silent."""
    body = json.dumps(state).encode()
    header = _line({"ok": True, "result": {"protocol": PROTOCOL, "fds": list(fds), "state_bytes": len(body)}})
    conn.settimeout(STEP_TIMEOUT)
    socket.send_fds(conn, [header], list(fds.values()))
    conn.sendall(body)
    conn.settimeout(timeout)
    buf = bytearray()
    try:
        msg = _read_line(conn, buf, "waiting for the new daemon to be forwarding")
    except TimeoutError:
        raise OSError(f"not forwarding within {timeout:g}s") from None
    if msg.get("step") != "forwarding":
        raise OSError(f"the new daemon gave up: {msg.get('error', msg)}")
    return buf


def send_stopped(conn: socket.socket, buf: bytearray, stopped: dict[str, Any]) -> None:
    """Send "stopped" (with the last counters and FDB); OSError unless "done" comes back."""
    conn.settimeout(STEP_TIMEOUT)
    conn.sendall(_line(stopped))
    try:
        msg = _read_line(conn, buf, "waiting for the new daemon's last word")
    except TimeoutError:
        raise OSError(f"no confirmation within {STEP_TIMEOUT:g}s") from None
    if msg.get("step") != "done":
        raise OSError(f"unexpected message {msg!r}")


# -- the new daemon's side ------------------------------------------------------------------------


@dataclass
class Offer:
    """What the running daemon handed over: its connection, PID, fds by name and state."""

    conn: socket.socket
    pid: int
    fds: dict[str, int]
    state: dict[str, Any]
    buf: bytearray = field(default_factory=bytearray)
    final: dict[str, Any] = field(default_factory=dict)

    def take(self, name: str) -> int | None:
        """The fd named name, now the caller's to close (None if there is none)."""
        return self.fds.pop(name, None)

    def inherited(self) -> Inherited:
        """The engine's fds (taken out of the offer) with the old daemon's claims about them."""
        tap = self.state["tap"]
        names = sorted((n for n in self.fds if n.startswith("gso")), key=lambda n: int(n[3:]))
        fds = {n: self.take(n) for n in (*ENGINE_FDS, *names)}
        if any(fd is None for fd in fds.values()):
            _close_all([fd for fd in fds.values() if fd is not None])
            raise SetupError("takeover: the running daemon did not send the TAP and both sockets")
        recv2, send6 = self.take("recv2"), self.take("send6")
        return Inherited(
            recv2_fd=-1 if recv2 is None else recv2,
            send6_fd=-1 if send6 is None else send6,
            tap_fd=fds["tap"] or 0,
            vnet_hdr_len=int(tap["vnet_hdr_len"]),
            tap_offloads=int(tap["offloads"]),
            recv_fd=fds["recv"] or 0,
            send_fd=fds["send"] or 0,
            gso_fds=[fds[n] or 0 for n in names],
            udp_gro=bool(self.state["udp_gro"]),
            fast=bool(self.state["fast"]),
        )

    def close(self) -> None:
        """Close the fds not taken and the connection (the old daemon, if waiting, carries on)."""
        _close_all(list(self.fds.values()))
        self.fds.clear()
        self.conn.close()


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def trusted(uid: int) -> bool:
    """Whether a control socket bound by uid may hand us fds: root's, or this process's own user's.

    SO_PEERCRED names whoever last called listen() on it (a listening socket handed on keeps the
    old daemon's until the new one listens again), so the PID comes with the state instead.
    """
    return uid in (0, os.geteuid())


def request(tap: str, ident: Mapping[str, str], timeout: float = STEP_TIMEOUT) -> Offer:
    """Ask the daemon that owns tap for its fds and state; SetupError says why not (every fd received closed)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fds: list[int] = []
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(ctl.address(tap))
        except OSError:
            raise SetupError(f"--takeover: no ovl-dp daemon with TAP {tap} runs in this network namespace") from None
        uid = ctl.peer_credentials(sock)[1]
        if not trusted(uid):
            raise SetupError(
                f"--takeover: the control socket @{ctl.PREFIX}{tap} is held by uid {uid}, neither root nor this"
                " user: nothing is taken from it"
            )
        sock.sendall(_line({"cmd": "takeover", "args": {"protocol": PROTOCOL, "identity": dict(ident)}}))
        buf = bytearray()
        while b"\n" not in buf:
            data, got, flags, _ = socket.recv_fds(sock, 65536, MAX_FDS)
            fds += got
            if flags & socket.MSG_CTRUNC:
                raise SetupError("--takeover: the running daemon's fds did not fit (MSG_CTRUNC)")
            if not data:
                break
            buf += data
        line, _, rest = bytes(buf).partition(b"\n")
        try:
            answer = json.loads(line)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise SetupError("--takeover: the running daemon closed the connection without an answer")
        if not answer.get("ok"):
            raise SetupError(str(answer.get("error", "refused")))
        result = answer.get("result")
        result = result if isinstance(result, dict) else {}
        names, size = result.get("fds"), result.get("state_bytes")
        if (not isinstance(names, list) or len(names) != len(fds) or not isinstance(size, int)
                or result.get("protocol") != PROTOCOL):  # fmt: skip
            raise SetupError(f"--takeover: the running daemon sent {len(fds)} fds and an answer not understood")
        body = bytearray(rest)
        while len(body) < size:
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise SetupError("--takeover: the running daemon closed the connection mid-state")
            body += chunk
        extra = body[size:]
        try:
            state = json.loads(bytes(body[:size]))
        except ValueError:
            state = None
        pid = state.get("pid") if isinstance(state, dict) else None
        if not isinstance(pid, int) or pid <= 0:
            raise SetupError("--takeover: the running daemon's state is not understood")
    except OSError as exc:
        sock.close()
        _close_all(fds)
        raise SetupError(f"--takeover: the conversation with the running daemon failed: {exc}") from None
    except BaseException:
        sock.close()
        _close_all(fds)
        raise
    return Offer(sock, pid, dict(zip(names, fds, strict=True)), state, bytearray(extra))


def configure(cfg: Config, state: Mapping[str, Any]) -> Config:
    """cfg (resolved on this host) made to run what the old daemon runs: its TAP MAC and MTU, underlay MTU,
    remotes; no static entries (they come with the FDB)."""
    tap = state["tap"]
    remotes = tuple(Remote(a, local) for a, local in state["remotes"]) or cfg.remotes
    return dataclasses.replace(
        cfg,
        remotes=remotes,
        tap=dataclasses.replace(cfg.tap, mac=parse_mac(tap["mac"]), mtu=int(tap["mtu"])),
        tunnel=dataclasses.replace(cfg.tunnel, underlay_mtu=int(state["underlay_mtu"])),
        fdb=dataclasses.replace(cfg.fdb, static=()),
    )


def parse_fdb(rows: list[list[Any]]) -> list[tuple[bytes, int, str, bool, float]]:
    """fdb_rows back into Engine.fdb_import's rows (bad rows are left out)."""
    out = []
    for row in rows:
        try:
            mac, vlan, remote, static, age = row
            out.append((parse_mac(str(mac)), int(vlan), str(remote), bool(static), float(age)))
        except (ValueError, TypeError):
            continue
    return out


def confirm(offer: Offer, timeout: float = STEP_TIMEOUT) -> dict[str, Any]:
    """Tell the old daemon we forward; its "stopped" message (final counters, FDB), after which we send "done".

    OSError if it does not answer (it gave up waiting, or went away).
    """
    conn = offer.conn
    conn.settimeout(timeout)
    conn.sendall(_line({"step": "forwarding"}))
    msg = _read_line(conn, offer.buf, "waiting for the old daemon to stop")
    if msg.get("step") != "stopped":
        raise OSError(f"unexpected answer {msg!r}")
    conn.sendall(_line({"step": "done"}))
    offer.final = msg
    return msg


def abandon(offer: Offer, why: str) -> None:
    """Tell the old daemon we give up (it carries on), and close what is left."""
    with contextlib.suppress(OSError):
        offer.conn.sendall(_line({"step": "abandon", "error": why}))
    offer.close()


def alive(pid: int) -> bool:
    """Whether process pid still exists (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pid: int, timeout: float) -> bool:
    """Whether pid is gone within timeout seconds."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


# -- SIGUSR2: the running daemon starts its successor ----------------------------------------------


def successor_command(argv: list[str] | None = None) -> list[str]:
    """This process's own command line (the interpreter as sys.executable) with --takeover added once."""
    args = [sys.executable, *(sys.orig_argv if argv is None else argv)[1:]]
    if "--takeover" not in args:
        args.append("--takeover")
    return args


def spawn(giver: Giver) -> subprocess.Popen[bytes] | None:
    """Start `ovl-dp ... run ... --takeover` with this daemon's command line and environment (SIGUSR2).

    The child runs the code installed now (an upgrade), in this service's cgroup, with this daemon's
    stdout and stderr; WATCHDOG_PID is dropped from its environment (its pings count once it is the
    main process). Its exit status is logged if it fails; this daemon keeps forwarding then.
    """
    if giver.busy:
        log.warning("SIGUSR2: a takeover is under way already")
        return None
    args = successor_command()
    env = {k: v for k, v in os.environ.items() if k != "WATCHDOG_PID"}
    try:
        proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL)
    except OSError as exc:
        log.error("SIGUSR2: cannot start %s: %s", args[0], exc.strerror or exc)
        return None
    log.info("SIGUSR2: started PID %d to take over: %s", proc.pid, " ".join(args),
             extra={"event": "takeover_spawned", "peer_pid": proc.pid})  # fmt: skip

    def reap() -> None:
        code = proc.wait()
        if code != 0:
            log.warning("the takeover process PID %d exited with %d; this daemon keeps forwarding", proc.pid, code)

    threading.Thread(target=reap, name="ovl-dp-takeover-reaper", daemon=True).start()
    return proc
