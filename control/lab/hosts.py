"""The lab's hosts: hosts and containers as network namespaces, shared by `ovl-dp lab`, tests and bench.

Layout for N hosts (all names carry a per-run tag, so runs never collide):

    <tag>-sw   the underlay switch: Linux bridge br0, one veth per host
    <tag>-hI   host I: ul0 = 192.0.2.I/24 (underlay; with underlay="ipv6"
               fd00:192:2::I/64 instead, "dual" both), bridge br-int,
               veth vm0 on br-int; ovl-dp runs here
    <tag>-cI   container I: eth0 = 172.20.1.I/24, the other end of vm0
    <tag>-etcd only after start_etcd(): ul0 = 192.0.2.250/24 (fd00:192:2::250/64)
               on the switch, a real etcd listening there (control.lab.etcd)

br-int is a Linux bridge, or with ``bridge="ovs"`` an Open vSwitch bridge
(userspace datapath) of a private OVS instance per host
(:class:`control.lab.ovs.OvsInstance`), vm0 then being an access port of VLAN
``tag``. Host and container names can be chosen (the seed scenario's yy2/yy3
and vmX/vmY); they still carry the tag.

192.0.2.0/24 is TEST-NET-1 (RFC 5737), fd00:192:2::/64 a unique local
prefix (RFC 4193), and 172.20.1.0/24 the scenario's overlay;
all exist only inside these namespaces. IPv6 is off in the hosts but on the
underlay device of an IPv6 lab (ul0; OVS's br-phy when it takes the address
over), whose addresses are added without DAD (usable at once), and on its
loopback (::1, which gRPC, the etcd client's transport, needs to use IPv6 at all). Everything the lab made
(processes by PID: daemons, then etcd; then namespaces) is removed by :meth:`Lab.close`, which
the context manager calls also on failure and on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from control.lab.etcd import EtcdServer
from control.lab.ovs import OvsInstance
from control.lab.shell import LabError, sh
from control.procs import stop_process, wait_until
from datapath.encap import lookup
from datapath.encap.ipv4 import IPV4_HLEN
from datapath.ether import VLAN_HLEN

UNDERLAY_PREFIX = "192.0.2."
UNDERLAY_PLEN = 24
# issue 11: the IPv6 underlay, a unique local prefix (RFC 4193) inside the lab only.
UNDERLAY6_PREFIX = "fd00:192:2::"
UNDERLAY6_PLEN = 64
UNDERLAYS = ("ipv4", "ipv6", "dual")  # dual: both families on ul0, underlay_ip() answers IPv4 unless asked
OVERLAY_PREFIX = "172.20.1."
IPV6_HLEN = 40  # the fixed IPv6 header (RFC 8200)
DAEMON_READY_TIMEOUT = 20.0
IPERF_LISTEN_TIMEOUT = 10.0
ETCD_HOST_ID = 250  # the etcd namespace's address on the underlay: 192.0.2.250, fd00:192:2::250


@dataclass
class Daemon:
    """An ovl-dp process the lab started in a host namespace."""

    host: int
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        """What the daemon logged so far (stdout and stderr)."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Lab:
    """Network namespaces for `hosts` hosts, each with a container; see the module docstring."""

    def __init__(
        self,
        hosts: int = 2,
        tag: str | None = None,
        host_names: tuple[str, ...] = (),
        container_names: tuple[str, ...] = (),
        underlay: str = "ipv4",
    ) -> None:
        """underlay: the hosts' underlay address family, one of UNDERLAYS ("ipv4", "ipv6", "dual")."""
        if shutil.which("ip") is None:
            raise LabError("the lab needs iproute2's `ip` command")
        if underlay not in UNDERLAYS:
            raise LabError(f"underlay {underlay!r}: expected one of {', '.join(UNDERLAYS)}")
        self.n = hosts
        self.underlay = underlay
        self.tag = tag or f"ovl{os.getpid() % 100000}"
        self._host_names = host_names or tuple(f"h{i}" for i in range(1, hosts + 1))
        self._container_names = container_names or tuple(f"c{i}" for i in range(1, hosts + 1))
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.daemons: dict[int, Daemon] = {}
        self.ovs: dict[int, OvsInstance] = {}
        self._ovs_config: dict[str, str] = {}
        self.etcd: EtcdServer | None = None
        self.workdir = Path(tempfile.mkdtemp(prefix="ovl-lab-"))

    # -- names and addresses -------------------------------------------------

    def host(self, i: int) -> str:
        """The namespace of host i (1-based)."""
        return f"{self.tag}-{self._host_names[i - 1]}"

    def container(self, i: int) -> str:
        """The namespace of host i's container."""
        return f"{self.tag}-{self._container_names[i - 1]}"

    @property
    def switch(self) -> str:
        """The namespace of the underlay switch."""
        return f"{self.tag}-sw"

    @property
    def families(self) -> tuple[int, ...]:
        """The IP versions on the underlay: (4,), (6,) or (4, 6)."""
        return {"ipv4": (4,), "ipv6": (6,), "dual": (4, 6)}[self.underlay]

    def underlay_ip(self, i: int, family: int | None = None) -> str:
        """Host i's address on the underlay (ul0): of family 4 or 6, default the lab's (IPv4 in a dual lab)."""
        family = family or self.families[0]
        if family not in self.families:
            raise LabError(f"this lab's underlay is {self.underlay}: no IPv{family} address")
        return f"{UNDERLAY_PREFIX}{i}" if family == 4 else f"{UNDERLAY6_PREFIX}{i}"

    def underlay_cidrs(self, i: int) -> list[str]:
        """Host i's underlay addresses with their prefix lengths, as `ip addr add` takes them."""
        plen = {4: UNDERLAY_PLEN, 6: UNDERLAY6_PLEN}
        return [f"{self.underlay_ip(i, f)}/{plen[f]}" for f in self.families]

    @property
    def etcd_ns(self) -> str:
        """The namespace of the lab's etcd (see start_etcd)."""
        return f"{self.tag}-etcd"

    def etcd_ip(self, family: int | None = None) -> str:
        """The etcd namespace's address on the underlay (of family 4 or 6, default the lab's)."""
        return self.underlay_ip(ETCD_HOST_ID, family)

    def add_underlay_addresses(self, i: int, dev: str, ns: str | None = None) -> None:
        """Put host i's underlay addresses on dev (ul0, or OVS's br-phy), IPv6 enabled there and without DAD.

        ns: the namespace of dev when it is not host i's (the etcd namespace, i = ETCD_HOST_ID).
        """
        h = ns or self.host(i)
        if 6 in self.families:
            sh("ip", "netns", "exec", h, "sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=0")
        for cidr in self.underlay_cidrs(i):
            sh("ip", "-n", h, "addr", "add", cidr, "dev", dev, *(("nodad",) if ":" in cidr else ()))

    def underlay_ip6(self, i: int) -> str:
        """Host i's IPv6 address on the underlay (ul0), in an IPv6 or dual lab (or once enable_underlay6 ran)."""
        return self.underlay_ip(i, 6)

    @staticmethod
    def overlay_ip(i: int) -> str:
        """Container i's address on the overlay (eth0)."""
        return f"{OVERLAY_PREFIX}{i}"

    # -- building ----------------------------------------------------------------

    def _netns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def build(
        self,
        container_mtu: int = 1400,
        bridge: str = "linux",
        tag: int | None = None,
        ovs_config: dict[str, str] | None = None,
    ) -> Lab:
        """Create switch, hosts and containers; returns self.

        bridge: "linux", or "ovs" (containers then send with checksum offload off,
        because OVS's userspace datapath does not carry offload state by default);
        ovs_config: other_config keys for every host's OVS, set before it starts
        (e.g. {"userspace-tso-enable": "true"}).
        """
        self._ovs_config = dict(ovs_config or {})
        self._netns(self.switch)
        # IPv6 underlay: no MLD snooping on the switch, so neighbour discovery never waits on group membership.
        snoop = ("mcast_snooping", "0") if 6 in self.families else ()
        sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge", *snoop)
        sh("ip", "-n", self.switch, "link", "set", "br0", "up")
        for i in range(1, self.n + 1):
            h, c = self.host(i), self.container(i)
            self._netns(h)
            self._netns(c)
            # Hosts carry only the underlay: no IPv6 chatter (RS, MLD) from their bridge and TAP.
            for key in ("all", "default"):
                sh("ip", "netns", "exec", h, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1")
            if 6 in self.families:
                self._loopback6(h)
            sh("ip", "-n", h, "link", "add", "ul0", "type", "veth", "peer", "name", f"p{i}", "netns", self.switch)
            sh("ip", "-n", self.switch, "link", "set", f"p{i}", "master", "br0", "up")
            self.add_underlay_addresses(i, "ul0")
            sh("ip", "-n", h, "link", "set", "ul0", "up")
            sh("ip", "-n", h, "link", "add", "vm0", "type", "veth", "peer", "name", "eth0", "netns", c)
            sh("ip", "-n", h, "link", "set", "vm0", "up")
            if bridge == "ovs":
                self._ovs_bridge(i, tag)
            else:
                sh("ip", "-n", h, "link", "add", "br-int", "type", "bridge")
                sh("ip", "-n", h, "link", "set", "br-int", "up")
                sh("ip", "-n", h, "link", "set", "vm0", "master", "br-int")
            sh("ip", "-n", c, "addr", "add", f"{self.overlay_ip(i)}/24", "dev", "eth0")
            sh("ip", "-n", c, "link", "set", "eth0", "mtu", str(container_mtu), "up")
            if bridge == "ovs":
                sh("ip", "netns", "exec", c, "ethtool", "-K", "eth0", "tx", "off")
        return self

    def enable_underlay6(self, hosts: range | None = None) -> None:
        """An IPv4 lab, built, becomes dual-stack: IPv6 on each host's ul0 (only there: the bridge and TAP
        stay quiet), address underlay_ip6(i)/64 without duplicate address detection (usable at once)."""
        if self.underlay == "ipv4":
            self.underlay = "dual"
        for i in hosts or range(1, self.n + 1):
            h = self.host(i)
            self._loopback6(h)
            sh("ip", "netns", "exec", h, "sysctl", "-qw", "net.ipv6.conf.ul0.disable_ipv6=0")
            sh("ip", "-n", h, "-6", "addr", "add", f"{self.underlay_ip6(i)}/{UNDERLAY6_PLEN}", "dev", "ul0", "nodad")

    @staticmethod
    def _loopback6(ns: str) -> None:
        """IPv6 on ns's lo (::1): gRPC, the etcd client's transport, takes IPv6 for unavailable without it
        and then fails every IPv6 connection ("socket: Address family not supported by protocol")."""
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=0")

    def _ovs_bridge(self, i: int, tag: int | None) -> None:
        ovs = OvsInstance(self.host(i), self.workdir / f"ovs-h{i}", self._ovs_config)
        self.ovs[i] = ovs
        ovs.start()
        ovs.vsctl("add-br", "br-int", "--", "set", "bridge", "br-int", "datapath_type=netdev", "fail-mode=standalone")
        ovs.vsctl("add-port", "br-int", "vm0", *([f"tag={tag}"] if tag is not None else []))

    def start_etcd(self) -> EtcdServer:
        """A real etcd in namespace etcd_ns on the underlay switch (the lab is built), started and answering.

        It listens on etcd_ip() (port 2379 of that namespace of its own: its .url); close() stops it by
        PID after the daemons, whose leave (a lease revoke) needs it.
        """
        if self.switch not in self.namespaces:
            raise LabError("start_etcd: build the lab first (etcd joins its underlay switch)")
        if self.etcd is not None:
            raise LabError(f"the lab's etcd runs already ({self.etcd.url})")
        ns = self.etcd_ns
        self._netns(ns)
        sh("ip", "-n", ns, "link", "add", "ul0", "type", "veth", "peer", "name", "pe", "netns", self.switch)
        sh("ip", "-n", self.switch, "link", "set", "pe", "master", "br0", "up")
        self.add_underlay_addresses(ETCD_HOST_ID, "ul0", ns)
        sh("ip", "-n", ns, "link", "set", "ul0", "up")
        self.etcd = EtcdServer(name=f"{self.tag}-etcd", host=self.etcd_ip(), netns=ns)
        return self.etcd.start()  # a server that does not come up is killed by start itself

    # -- ovl-dp ------------------------------------------------------------------

    def start(self, i: int, *args: str, wait: bool = True) -> Daemon:
        """Start `ovl-dp run ARGS` on host i (its log goes to a file in the lab's workdir).

        On an OVS host, --ovsdb naming the host's own OVS instance is added unless given.
        """
        if i in self.ovs and "--ovsdb" not in args:
            args = (*args, "--ovsdb", self.ovs[i].db)
        log = self.workdir / f"h{i}-{len(self.procs)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.host(i), sys.executable, "-m", "control.cli", "run", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.procs.append(proc)
        daemon = Daemon(i, proc, log)
        self.daemons[i] = daemon
        if wait:
            self.wait_ready(daemon)
        return daemon

    def start_mesh(self, mode: str, *extra: str, hosts: range | None = None, family: int | None = None) -> None:
        """ovl-dp on every host (or those in hosts), each with all the others as remotes (by their underlay
        addresses of family 4 or 6; default the lab's, see underlay_ip)."""
        members = list(hosts or range(1, self.n + 1))
        for i in members:
            remotes = [a for j in members if j != i for a in ("--remote", self.underlay_ip(j, family))]
            self.start(i, "--mode", mode, *remotes, *extra)

    @staticmethod
    def wait_ready(daemon: Daemon, timeout: float = DAEMON_READY_TIMEOUT) -> None:
        """Wait until the daemon logs 'ready'; LabError with its log if it exits, WaitTimeout with it if too slow."""

        def ready() -> bool:
            text = daemon.output()
            if " ready" in text:
                return True
            if daemon.proc.poll() is not None:
                raise LabError(f"ovl-dp on host {daemon.host} exited with {daemon.proc.returncode}:\n{text}")
            return False

        wait_until(f"ovl-dp on host {daemon.host} to be ready", ready, timeout, 0.05, detail=daemon.output)

    def stop(self, daemon: Daemon, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        """Signal the daemon (by PID) and wait for it; returns its exit code."""
        if daemon.proc.poll() is None:
            daemon.proc.send_signal(sig)
        try:
            return daemon.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            daemon.proc.kill()
            daemon.proc.wait()
            raise LabError(f"ovl-dp on host {daemon.host} ignored signal {sig}:\n{daemon.output()}") from None

    def ovl(self, i: int, command: str, *args: str) -> Any:
        """`ovl-dp COMMAND --json` on host i, parsed (show: counters; fdb: the table)."""
        res = sh("ip", "netns", "exec", self.host(i), sys.executable, "-m", "control.cli", command, "--json", *args)
        return json.loads(res.stdout)

    # -- traffic -------------------------------------------------------------------

    def ping(self, src: int, dst: int, count: int = 5, interval: float = 0.2, check: bool = True) -> dict[str, float]:
        """Ping container dst from container src; returns loss (%) and rtt min/avg/max/mdev (ms)."""
        res = sh(
            "ip", "netns", "exec", self.container(src), "ping", "-n", "-q", "-c", str(count),
            "-i", str(interval), "-W", "2", self.overlay_ip(dst), check=check, timeout=count * (interval + 2) + 10,
        )  # fmt: skip
        loss = re.search(r"([\d.]+)% packet loss", res.stdout)
        rtt = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms", res.stdout)
        out = {"loss": float(loss.group(1)) if loss else 100.0}
        if rtt:
            out.update(zip(("min", "avg", "max", "mdev"), map(float, rtt.groups()), strict=True))
        return out

    def iperf3(self, client: int, server: int, seconds: int = 3, *extra: str) -> dict[str, Any]:
        """TCP iperf3 from container client to container server; returns iperf3's JSON result."""
        srv = subprocess.Popen(
            ["ip", "netns", "exec", self.container(server), "iperf3", "-s", "-1", "-B", self.overlay_ip(server)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(srv)

        def listening() -> str:
            ns = self.container(server)
            return sh("ip", "netns", "exec", ns, "ss", "-ltnH", "sport", "= :5201", check=False).stdout.strip()

        try:
            wait_until(f"iperf3 to listen in {self.container(server)}", listening, IPERF_LISTEN_TIMEOUT, 0.05)
            res = sh(
                "ip", "netns", "exec", self.container(client), "iperf3", "-J", "-c", self.overlay_ip(server),
                "-t", str(seconds), *extra, check=False, timeout=seconds + 30,
            )  # fmt: skip
            result: dict[str, Any] = json.loads(res.stdout) if res.stdout.strip() else {"error": res.stderr}
        finally:
            stop_process(srv, 5)
        return result

    # -- teardown ------------------------------------------------------------------

    def close(self) -> None:
        """Stop every process the lab started (by PID) and delete its namespaces."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.etcd is not None:  # after the daemons: their leave revokes a lease on it
            self.etcd.close()
            self.etcd = None
        for instance in self.ovs.values():
            instance.stop()
        self.ovs.clear()
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


SEED_TAG = 20  # the scenario's access VLAN of vmX and vmY on br-int


def container_mtu(mode: str, underlay_mtu: int = 1500, tagged: bool = False, family: int = 4) -> int:
    """The MTU containers need so that their frames fit the tunnel (as with a kernel tunnel).

    tagged: frames cross the tunnel with an 802.1Q tag (the TAP is an OVS trunk port), 4 bytes more;
    family 6: the outer header is IPv6 (RFC 8200: 40 bytes, 20 more than IPv4's).
    """
    outer6 = IPV6_HLEN - IPV4_HLEN if family == 6 else 0
    return underlay_mtu - lookup(mode)(None).overhead() - outer6 - (VLAN_HLEN if tagged else 0)


def seed_lab(underlay: str = "ipv4") -> Lab:
    """The seed scenario's two hosts yy2/yy3 and containers vmX/vmY (built by the caller)."""
    return Lab(2, host_names=("yy2", "yy3"), container_names=("vmX", "vmY"), underlay=underlay)
