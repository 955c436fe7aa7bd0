"""Private Open vSwitch instances for the lab: ovsdb-server + ovs-vswitchd per host namespace.

Each instance has its own directory for database, sockets, pid and log files
(OVS_RUNDIR, OVS_LOGDIR, OVS_DBDIR, OVS_SYSCONFDIR), so that several instances
on one machine never share a socket and none touches a system-wide OVS. Its
processes are stopped by the PIDs started here.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from control import ovs
from control.procs import stop_process, wait_until

START_TIMEOUT = 20.0


class OvsInstance:
    """ovsdb-server and ovs-vswitchd for one network namespace, all files under rundir."""

    def __init__(self, netns: str, rundir: Path, other_config: dict[str, str] | None = None) -> None:
        """other_config: Open_vSwitch other_config keys set before ovs-vswitchd starts (some, such as
        userspace-tso-enable, are read only then)."""
        self.netns = netns
        self.rundir = rundir
        self.other_config = dict(other_config or {})
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def db(self) -> str:
        """The database address for --db / ovl-dp --ovsdb."""
        return f"unix:{self.rundir}/db.sock"

    @property
    def env(self) -> dict[str, str]:
        """The environment for this instance's processes: every OVS directory is rundir."""
        d = str(self.rundir)
        return {**os.environ, "OVS_RUNDIR": d, "OVS_LOGDIR": d, "OVS_DBDIR": d, "OVS_SYSCONFDIR": d}

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        exe = ovs._which(name)  # control.ovs's lookup: also where PATH lacks /usr/sbin
        assert exe is not None
        log = (self.rundir / f"{name}.out").open("ab")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, exe, *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def _wait_for(self, path: Path, proc: subprocess.Popen[bytes]) -> None:
        """Until proc has made path (its socket); OvsError with the logs if proc exits first."""

        def there() -> bool:
            if path.exists():
                return True
            if proc.poll() is not None:
                raise ovs.OvsError(f"{path.name} did not appear in {self.netns}: {self.logs()}")
            return False

        wait_until(f"{path.name} in {self.netns}", there, START_TIMEOUT, 0.05, detail=self.logs)

    def start_db(self) -> None:
        """Create the database and start ovsdb-server."""
        self.rundir.mkdir(parents=True, exist_ok=True)
        d = self.rundir
        subprocess.run(["ovsdb-tool", "create", str(d / "conf.db"), str(ovs.SCHEMA)], check=True, capture_output=True)
        srv = self._spawn(
            "ovsdb-server", str(d / "conf.db"), f"--remote=punix:{d}/db.sock", f"--pidfile={d}/ovsdb-server.pid",
            f"--unixctl={d}/ovsdb-server.ctl", f"--log-file={d}/ovsdb-server.log",
        )  # fmt: skip
        self._wait_for(d / "db.sock", srv)
        ovs.vsctl(self.db, "--no-wait", "init")
        if self.other_config:
            keys = [f"other_config:{k}={v}" for k, v in self.other_config.items()]
            ovs.vsctl(self.db, "--no-wait", "set", "Open_vSwitch", ".", *keys)

    def start_vswitchd(self) -> subprocess.Popen[bytes]:
        """Start ovs-vswitchd (again, after stop_vswitchd)."""
        d = self.rundir
        ctl = d / "ovs-vswitchd.ctl"
        ctl.unlink(missing_ok=True)
        proc = self._spawn(
            "ovs-vswitchd", f"unix:{d}/db.sock", f"--pidfile={d}/ovs-vswitchd.pid", f"--unixctl={ctl}",
            f"--log-file={d}/ovs-vswitchd.log",
        )  # fmt: skip
        self._wait_for(ctl, proc)
        self.vswitchd = proc
        return proc

    def start(self) -> OvsInstance:
        """ovsdb-server, then ovs-vswitchd; returns self."""
        self.start_db()
        self.start_vswitchd()
        return self

    def stop_vswitchd(self) -> None:
        """Stop ovs-vswitchd only (by PID), as a restart would."""
        stop_process(self.vswitchd)

    def vsctl(self, *args: str) -> str:
        """ovs-vsctl against this instance's database; its stdout (OvsError if it fails)."""
        return ovs.vsctl(self.db, *args)

    def appctl(self, *args: str) -> str:
        """ovs-appctl against this instance's ovs-vswitchd."""
        res = subprocess.run(
            ["ovs-appctl", "-t", str(self.rundir / "ovs-vswitchd.ctl"), *args],
            capture_output=True, text=True, timeout=15, check=False,
        )  # fmt: skip
        if res.returncode != 0:
            raise ovs.OvsError(f"ovs-appctl {' '.join(args)}: {res.stderr.strip()}")
        return res.stdout

    def logs(self) -> str:
        """The tail of the instance's logs, for error messages."""
        parts = []
        for f in sorted(self.rundir.glob("*.log")) + sorted(self.rundir.glob("*.out")):
            lines = f.read_text(errors="replace").splitlines()[-15:]
            parts.append(f"--- {f.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def stop(self) -> None:
        """Stop vswitchd, then ovsdb-server, by the PIDs started here."""
        for proc in reversed(self.procs):
            stop_process(proc)
