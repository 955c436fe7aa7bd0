"""A real etcd for the lab, the tests and the benchmark: one server or a small cluster, stopped by PID.

Each :class:`EtcdServer` runs Debian's ``/usr/bin/etcd`` (3.4) with a data directory
of its own (a temporary directory it removes, unless one is given), on loopback
with free ports or inside a network namespace (``ip netns exec`` execs etcd, so
the PID we hold is etcd's). A server can be stopped (SIGTERM), killed (SIGKILL)
and restarted on the same data directory, which is what the membership tests do
to it. :class:`EtcdCluster` starts n members that know each other.

The child gets PR_SET_PDEATHSIG: if the test or lab process dies without its
cleanup, the kernel kills etcd too, so no server outlives its owner.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType

from control.lab.shell import LabError
from control.procs import WaitTimeout, stop_process, wait_until

ETCD = "etcd"
ETCDCTL = "etcdctl"
SETPRIV = "setpriv"  # util-linux
READY_TIMEOUT = 20.0  # a cluster elects a leader within a few election timeouts (1 s each by default)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
NETNS_CLIENT_PORT = 2379  # inside a namespace of its own the IANA ports collide with nothing
NETNS_PEER_PORT = 2380

_started: list[EtcdServer] = []  # every server this process launched (tests check none is left running)


def available() -> bool:
    """etcd and etcdctl are installed."""
    return shutil.which(ETCD) is not None and shutil.which(ETCDCTL) is not None


def leftovers() -> list[str]:
    """The etcd servers this process started that still run ("name (PID n)"): a test's cleanup bug."""
    return [f"{s.name} (PID {s.pid})" for s in _started if s.running]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (on host, in this namespace)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def etcdctl(endpoints: str, *args: str, netns: str | None = None, timeout: float = 15) -> str:
    """Run ``etcdctl --endpoints ENDPOINTS ARGS`` (API v3), inside netns if given; its stdout.

    LabError with etcdctl's message if it fails.
    """
    cmd = [ETCDCTL, f"--endpoints={endpoints}", "--dial-timeout=2s", "--command-timeout=5s", *args]
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    env = {**os.environ, "ETCDCTL_API": "3"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, env=env)
    if res.returncode != 0:
        raise LabError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip() or res.stdout.strip()}")
    return res.stdout


class EtcdServer:
    """One etcd process: start, stop, kill, restart on its data directory; ``with`` stops it and removes its data.

    host: the address it listens on (loopback, or an address of netns); client_port/peer_port: free ones
    on loopback when None, 2379/2380 inside a namespace; cluster: the ``--initial-cluster`` value when it
    is one member of several (EtcdCluster sets it), else itself alone.
    """

    def __init__(
        self,
        name: str = "e0",
        host: str = "127.0.0.1",
        client_port: int | None = None,
        peer_port: int | None = None,
        netns: str | None = None,
        data_dir: str | Path | None = None,
        cluster: str | None = None,
        token: str | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.netns = netns
        if netns is None:
            client_port = client_port or free_port(host)
            peer_port = peer_port or free_port(host)
        self.client_port = client_port or NETNS_CLIENT_PORT
        self.peer_port = peer_port or NETNS_PEER_PORT
        self._own_dir = data_dir is None
        self.workdir = Path(tempfile.mkdtemp(prefix=f"ovl-etcd-{name}-")) if data_dir is None else Path(data_dir)
        self.data_dir = self.workdir / "data" if self._own_dir else self.workdir
        self.log_path = self.workdir / "etcd.log" if self._own_dir else self.workdir.parent / f"etcd-{name}.log"
        self.cluster = cluster or f"{name}={self.peer_url}"
        self.token = token or f"ovl-{uuid.uuid4().hex[:12]}"  # never joins another test's cluster
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        """The client URL, http://host:port."""
        return _url(self.host, self.client_port)

    @property
    def peer_url(self) -> str:
        """The peer URL, http://host:port."""
        return _url(self.host, self.peer_port)

    @property
    def pid(self) -> int | None:
        """etcd's PID while it runs."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    @property
    def running(self) -> bool:
        """The process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def _command(self) -> list[str]:
        cmd = [
            ETCD,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self.cluster}",
            f"--initial-cluster-token={self.token}",
            "--initial-cluster-state=new",  # ignored once the data directory holds a member
            "--logger=zap",
            "--log-level=warn",
        ]
        if shutil.which(SETPRIV):  # PR_SET_PDEATHSIG without Python code between fork and exec (see launch)
            cmd = [SETPRIV, "--pdeathsig", "KILL", *cmd]
        return ["ip", "netns", "exec", self.netns, *cmd] if self.netns is not None else cmd

    def launch(self) -> None:
        """Start the process without waiting for it to answer (a cluster starts all members first)."""
        if self.running:
            raise LabError(f"etcd {self.name} runs already (PID {self.pid})")
        if not available():
            raise LabError("etcd is not installed (apt-get install etcd-server etcd-client)")
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self._command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # A preexec_fn runs Python in the child of a process that may have other threads (an
                # in-process gRPC client's): a child of such a fork crashed (SIGSEGV) before its exec.
                preexec_fn=None if shutil.which(SETPRIV) else _die_with_parent,
            )
        self.starts += 1
        if self not in _started:
            _started.append(self)

    def healthy(self) -> bool:
        """etcd answers a linearizable read (it has a leader)."""
        if not self.running:
            return False
        try:
            etcdctl(self.url, "endpoint", "health", netns=self.netns, timeout=10)
        except (LabError, subprocess.TimeoutExpired):
            return False
        return True

    def wait_healthy(self, timeout: float = READY_TIMEOUT) -> None:
        """Wait until it answers; LabError with its log if it exits or takes longer than timeout."""

        def probe() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise LabError(f"etcd {self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            return self.healthy()

        try:
            wait_until(f"etcd {self.name} at {self.url} to answer", probe, timeout=timeout, interval=0.2)
        except WaitTimeout as exc:
            raise LabError(f"{exc}\n{self.log_tail()}") from None

    def start(self, timeout: float = READY_TIMEOUT) -> EtcdServer:
        """Start it and wait until it answers; returns self."""
        self.launch()
        try:
            self.wait_healthy(timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM, wait up to timeout, then SIGKILL (by PID; nothing if it is not running)."""
        if self.proc is not None:
            stop_process(self.proc, timeout)

    def kill(self) -> None:
        """SIGKILL it and reap it (a crash: no clean shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def restart(self, down: float = 0.0, timeout: float = READY_TIMEOUT) -> None:
        """Stop it, stay down for `down` seconds, start it again on the same data directory (waits for it)."""
        self.stop()
        if down > 0:
            time.sleep(down)
        self.start(timeout)

    def etcdctl(self, *args: str) -> str:
        """etcdctl against this server (inside its namespace if it has one)."""
        return etcdctl(self.url, *args, netns=self.netns)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of its log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no etcd log)"

    def close(self) -> None:
        """Stop it and remove the data directory it made (not one it was given)."""
        try:
            self.stop()
        finally:
            if self._own_dir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> EtcdServer:
        if not self.running:
            self.start()
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class EtcdCluster:
    """n etcd members that form one cluster (on loopback with free ports, or all in netns on host:port+i)."""

    def __init__(self, n: int = 3, host: str = "127.0.0.1", netns: str | None = None) -> None:
        if n < 1:
            raise ValueError("an etcd cluster has at least one member")
        token = f"ovl-{uuid.uuid4().hex[:12]}"
        ports = [
            (free_port(host), free_port(host))
            if netns is None
            else (NETNS_CLIENT_PORT + 10 * i, NETNS_PEER_PORT + 10 * i)
            for i in range(n)
        ]
        cluster = ",".join(f"e{i}={_url(host, peer)}" for i, (_, peer) in enumerate(ports))
        self.members = [
            EtcdServer(f"e{i}", host, client, peer, netns=netns, cluster=cluster, token=token)
            for i, (client, peer) in enumerate(ports)
        ]

    @property
    def urls(self) -> str:
        """The client URLs, comma-separated (what --etcd and etcdctl --endpoints take)."""
        return ",".join(m.url for m in self.members)

    def start(self, timeout: float = READY_TIMEOUT) -> EtcdCluster:
        """Start every member, then wait until each answers; returns self."""
        try:
            for m in self.members:
                m.launch()
            for m in self.members:
                m.wait_healthy(timeout)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop every member and remove their data."""
        for m in self.members:
            with contextlib.suppress(Exception):
                m.close()

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
