"""Tunnel peers that are not ovl-dp, built inside a lab (control.lab.hosts.Lab): shared by interop tests and bench.

- the Linux kernel's ``vxlan`` device as a port of a host's Linux bridge br-int
  (:func:`kernel_vxlan`);
- Open vSwitch userspace native tunnels: the underlay handed to an OVS bridge
  br-phy (:func:`ovs_underlay_bridge`), then a ``type=vxlan``/``type=gre`` port
  on br-int (:func:`ovs_tunnel_port`), which waits until OVS has learned the
  remote's underlay MAC (:func:`learn_tunnel_neighbour`); :func:`ovs_debug`
  for error messages;
- tinc (1.0) in switch mode (:func:`tinc_mesh`): one ``tincd`` per host with a
  private configuration directory in the lab's workdir, its TAP a port of br-int.

Everything here works only on the Lab's own namespaces and addresses, and leaves
the teardown to the Lab: namespaces, OVS instances, and the processes started
here, which go into ``lab.procs`` (stopped by PID).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from pathlib import Path

from control.lab.hosts import Lab
from control.lab.shell import LabError, mac_of, nsexec, sh
from control.procs import wait_until

# -- the Linux kernel's vxlan device ------------------------------------------------


def kernel_vxlan(
    lab: Lab, i: int, remote: int, vni: int, port: int, *extra: str, name: str = "vx0", family: int | None = None
) -> str:
    """A kernel vxlan device on host i towards host remote, a port of the host's Linux bridge br-int, up.

    family: the underlay family of remote and local (default the lab's); extra: more `ip link add ... type
    vxlan` options, e.g. ("udp6zerocsumtx", "udp6zerocsumrx") or ("noudpcsum",).
    """
    h = lab.host(i)
    sh("ip", "-n", h, "link", "add", name, "type", "vxlan", "id", str(vni), "remote", lab.underlay_ip(remote, family),
       "local", lab.underlay_ip(i, family), "dstport", str(port), "dev", "ul0", *extra)  # fmt: skip
    sh("ip", "-n", h, "link", "set", name, "master", "br-int", "up")
    return name


def kernel_vxlan_fdb(lab: Lab, i: int, dev: str = "vx0") -> str:
    """`bridge fdb show dev DEV` on host i."""
    return sh("bridge", "-n", lab.host(i), "fdb", "show", "dev", dev).stdout


# -- Open vSwitch userspace native tunnels --------------------------------------------


def ovs_underlay_bridge(lab: Lab, i: int) -> None:
    """Give OVS host i's underlay to an OVS bridge br-phy, as OVS native tunnelling needs.

    The userspace datapath routes and ARPs tunnel packets itself, out of the bridge
    that owns the local underlay address: br-phy (datapath_type=netdev, the MAC of
    ul0) gets ul0 as a port, and 192.0.2.i/24 moves from ul0 to br-phy's internal
    interface. The tunnel neighbours are learned once a tunnel port exists
    (ovs_tunnel_port). An IPv6 underlay moves the same way (fd00:192:2::i/64, IPv6
    enabled on br-phy, no DAD); OVS then resolves its tunnel neighbours with
    neighbour discovery instead of ARP (it snoops the advertisements).
    """
    ovs, h = lab.ovs[i], lab.host(i)
    hwaddr = mac_of(h, "ul0")
    ovs.vsctl("add-br", "br-phy", "--", "set", "bridge", "br-phy", "datapath_type=netdev", "fail-mode=standalone",
              f"other_config:hwaddr={hwaddr}")  # fmt: skip
    ovs.vsctl("add-port", "br-phy", "ul0")
    # OVS reads ul0 through a packet socket, and the host's own stack still gets every frame of ul0 as well:
    # 192.0.2.i is local (now on br-phy), so it would answer the tunnel packets with ICMP unreachables and
    # ARP requests a second time. It has its copy through br-phy: on ul0, strict reverse-path filtering
    # (the route back is via br-phy) drops the IP packets, arp_ignore=8 the ARP replies.
    # IPv6 has no such filter: ul0's IPv6 is switched off again (its addresses go with it), and the
    # stack drops every IPv6 packet arriving on it.
    nsexec(h, "sysctl", "-qw", "net.ipv4.conf.ul0.rp_filter=1", "net.ipv4.conf.ul0.arp_ignore=8")
    for cidr in lab.underlay_cidrs(i):
        if ":" not in cidr:
            sh("ip", "-n", h, "addr", "del", cidr, "dev", "ul0")
    if 6 in lab.families:
        nsexec(h, "sysctl", "-qw", "net.ipv6.conf.ul0.disable_ipv6=1")
    lab.add_underlay_addresses(i, "br-phy")
    sh("ip", "-n", h, "link", "set", "br-phy", "up")
    wait_until(f"br-phy's MAC {hwaddr} on host {i}", lambda: mac_of(h, "br-phy") == hwaddr)
    wait_until(f"OVS's route via br-phy on host {i}", lambda: "dev br-phy" in ovs.appctl("ovs/route/show"))


def learn_tunnel_neighbour(lab: Lab, i: int, j: int, timeout: float = 10.0, family: int | None = None) -> None:
    """Make OVS on host i snoop host j's underlay MAC: fresh ARP/ND (flush, then ping) until tnl/neigh has it.

    OVS snoops ARP replies and neighbour advertisements only while the datapath has a
    tunnel port, and the kernel does not resolve again while its own neighbour entry
    lives, hence the flush.
    """
    ovs, h, peer = lab.ovs[i], lab.host(i), lab.underlay_ip(j, family)

    def learned() -> bool:
        if peer in ovs.appctl("tnl/neigh/show"):
            return True
        sh("ip", "-n", h, "neigh", "flush", "dev", "br-phy")
        ping_underlay(lab, i, j, family)
        return False

    wait_until(f"OVS on host {i} to learn {peer}", learned, timeout, 0.1, detail=lambda: ovs_debug(lab, i))


def ping_underlay(lab: Lab, src: int, dst: int, family: int | None = None) -> None:
    """Ping host dst's underlay address from host src (a few tries: OVS may still be adding the port)."""
    addr = lab.underlay_ip(dst, family)
    for _ in range(10):
        res = nsexec(lab.host(src), "ping", "-n", "-q", "-c", "1", "-W", "1", addr, check=False)
        if res.returncode == 0:
            return
    raise LabError(f"host {src} cannot reach {addr} on the underlay: {res.stdout}")


def ovs_tunnel_port(
    lab: Lab, i: int, kind: str, remote: int, *options: str, name: str = "tun0", family: int | None = None
) -> str:
    """An OVS native tunnel port (type kind: gre, vxlan, ip6gre) on host i's br-int towards host remote.

    remote_ip is the remote's underlay address of family (default the lab's; an IPv6
    one for ip6gre). Needs ovs_underlay_bridge(lab, i) first; returns once OVS knows
    the remote's underlay MAC.
    """
    if kind == "ip6gre":
        family = 6
    lab.ovs[i].vsctl("add-port", "br-int", name, "--", "set", "interface", name, f"type={kind}",
                     f"options:remote_ip={lab.underlay_ip(remote, family)}", *options)  # fmt: skip
    learn_tunnel_neighbour(lab, i, remote, family=family)
    return name


def ovs_debug(lab: Lab, i: int) -> str:
    """What OVS on host i thinks about routes, neighbours, tunnel ports and datapath flows (for messages)."""
    out = []
    for cmd in ("ovs/route/show", "tnl/neigh/show", "tnl/ports/show", "dpctl/dump-flows"):
        try:
            out.append(f"--- {cmd}\n{lab.ovs[i].appctl(cmd)}")
        except Exception as exc:
            out.append(f"--- {cmd}: {exc}")
    return "\n".join(out)


# -- tinc in switch mode -------------------------------------------------------------------

TINC_PORT = 655
TINC_IFACE = "tinc0"


def tinc_installed() -> str | None:
    """None if tincd is installed, else what to do about it."""
    return None if shutil.which("tincd") else "tinc is not installed (apt-get install tinc)"


def tinc_mesh(lab: Lab, hosts: tuple[int, ...] = (1, 2), timeout: float = 20.0) -> list[subprocess.Popen[bytes]]:
    """tincd (Mode = switch) on each of hosts, its TAP tinc0 a port of the host's Linux bridge br-int.

    Each host gets a private configuration directory in the lab's workdir: tinc.conf
    (its name hI, switch mode, IPv4, a ConnectTo for every other host), an RSA key
    pair generated non-interactively (``tincd -K``), and hosts/ files with every
    host's underlay address and public key. tincd runs in the foreground (``-D``)
    so that the lab stops it by PID; its log is the file tincd.log in the directory.
    Returns once every tinc0 is in br-int and the hosts' tinc daemons have connected.
    """
    if missing := tinc_installed():
        raise LabError(missing)
    dirs: dict[int, Path] = {}
    for i in hosts:
        d = lab.workdir / f"tinc-h{i}"
        (d / "hosts").mkdir(parents=True)
        others = [f"ConnectTo = h{j}\n" for j in hosts if j != i]
        (d / "tinc.conf").write_text(
            f"Name = h{i}\nMode = switch\nAddressFamily = ipv4\nInterface = {TINC_IFACE}\n"
            f"BindToAddress = {lab.underlay_ip(i)}\nPort = {TINC_PORT}\n" + "".join(others)
        )
        (d / "hosts" / f"h{i}").write_text(f"Address = {lab.underlay_ip(i)}\nPort = {TINC_PORT}\n")
        sh("tincd", "-c", str(d), "-K", "2048", timeout=60)  # stdin is not a terminal: default file names
        dirs[i] = d
    for i in hosts:  # every host knows every host's address and public key
        for j in hosts:
            if j != i:
                shutil.copy(dirs[j] / "hosts" / f"h{j}", dirs[i] / "hosts" / f"h{j}")
    procs = []
    for i in hosts:
        d = dirs[i]
        with (d / "tincd.log").open("wb") as log:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", lab.host(i), "tincd", "-c", str(d), "-D", "-d1", f"--pidfile={d}/tincd.pid"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        lab.procs.append(proc)
        procs.append(proc)
    for i, proc in zip(hosts, procs, strict=True):
        h = lab.host(i)

        def up(proc: subprocess.Popen[bytes] = proc, h: str = h, i: int = i) -> bool:
            if proc.poll() is not None:
                raise LabError(f"tincd on {h} exited with {proc.returncode}:\n{tinc_log(lab, i)}")
            return sh("ip", "-n", h, "link", "show", TINC_IFACE, check=False).returncode == 0

        wait_until(f"tinc's {TINC_IFACE} on host {i}", up, timeout)
        sh("ip", "-n", h, "link", "set", TINC_IFACE, "master", "br-int", "up")
    for i in hosts:

        def connected(i: int = i) -> bool:
            return "activated" in tinc_log(lab, i)

        def log_tail(i: int = i) -> str:
            return tinc_log(lab, i)[-2000:]

        wait_until(f"tinc on host {i} to connect", connected, timeout, detail=log_tail)
    return procs


_TINC_NODE = re.compile(r"^ (h\d+) at (?!MYSELF).*? pmtu (\d+) \(min (\d+) max (\d+)\)", re.MULTILINE)


def tinc_pmtu(lab: Lab, i: int, proc: subprocess.Popen[bytes], timeout: float = 45.0) -> int:
    """The path MTU (frame bytes) tincd on host i settled on towards its peers, the smallest; waits for it.

    tinc 1.0 carries a frame longer than the path MTU it has confirmed so far over
    its TCP meta connection instead of UDP, and its discovery probes take several
    seconds after the connection is up. SIGUSR2 makes tincd log its node list, with
    "pmtu N (min A max B)" per node: discovery is done when min == max for every peer.
    """
    nodes: list[tuple[str, str, str, str]] = []

    def settled() -> int:
        """The smallest confirmed path MTU in tincd's latest node list (0: not yet), then ask for a new list."""
        nonlocal nodes
        dumps = tinc_log(lab, i).split("Nodes:")
        nodes = _TINC_NODE.findall(dumps[-1]) if len(dumps) > 1 else []
        if nodes and all(lo == hi for _, _, lo, hi in nodes):
            return min(int(hi) for _, _, _, hi in nodes)
        if proc.poll() is not None:
            raise LabError(f"tincd on host {i} exited with {proc.returncode}:\n{tinc_log(lab, i)[-1000:]}")
        proc.send_signal(signal.SIGUSR2)
        return 0

    # interval: tincd needs a moment to write the node list SIGUSR2 asked for.
    return wait_until(
        f"tinc on host {i} to settle its path MTU",
        settled,
        timeout,
        0.5,
        detail=lambda: f"{nodes}\n{tinc_log(lab, i)[-1000:]}",
    )


def tinc_log(lab: Lab, i: int) -> str:
    """What tincd on host i logged so far."""
    path = lab.workdir / f"tinc-h{i}" / "tincd.log"
    return path.read_text(errors="replace") if path.exists() else ""
