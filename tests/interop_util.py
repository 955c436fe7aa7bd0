"""Helpers for the interop tests: peers that are not ovl-dp, built inside a control.lab Lab.

Everything here works only on the Lab's own namespaces and addresses, and leaves
the teardown to the Lab (namespaces, OVS instances and processes it started).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from control.lab import Lab, sh


def nsexec(ns: str, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run cmd inside network namespace ns (LabError with its output if it fails and check is set)."""
    return sh("ip", "netns", "exec", ns, *cmd, check=check, timeout=timeout)


def mac_of(ns: str, dev: str) -> str:
    """The MAC address of dev in namespace ns, lower case."""
    return sh("ip", "-n", ns, "-br", "link", "show", dev).stdout.split()[2].lower()


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 5.0, interval: float = 0.1) -> Any:
    """Poll probe() until it returns something truthy; AssertionError naming what (and the last value) if not."""
    deadline = time.monotonic() + timeout
    value = probe()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = probe()
    assert value, f"timed out waiting for {what}: {value!r}"
    return value


# -- the Linux kernel's vxlan device ------------------------------------------------


def kernel_vxlan(lab: Lab, i: int, remote: int, vni: int, port: int, *extra: str, name: str = "vx0") -> str:
    """A kernel vxlan device on host i towards host remote, a port of the host's Linux bridge br-int, up."""
    h = lab.host(i)
    sh("ip", "-n", h, "link", "add", name, "type", "vxlan", "id", str(vni), "remote", lab.underlay_ip(remote),
       "local", lab.underlay_ip(i), "dstport", str(port), "dev", "ul0", *extra)  # fmt: skip
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
    (ovs_tunnel_port).
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
    nsexec(h, "sysctl", "-qw", "net.ipv4.conf.ul0.rp_filter=1", "net.ipv4.conf.ul0.arp_ignore=8")
    sh("ip", "-n", h, "addr", "del", f"{lab.underlay_ip(i)}/24", "dev", "ul0")
    sh("ip", "-n", h, "addr", "add", f"{lab.underlay_ip(i)}/24", "dev", "br-phy")
    sh("ip", "-n", h, "link", "set", "br-phy", "up")
    wait_for(f"br-phy's MAC {hwaddr} on host {i}", lambda: mac_of(h, "br-phy") == hwaddr)
    wait_for(f"OVS's route via br-phy on host {i}", lambda: "dev br-phy" in ovs.appctl("ovs/route/show"))


def learn_tunnel_neighbour(lab: Lab, i: int, j: int, timeout: float = 10.0) -> None:
    """Make OVS on host i snoop host j's underlay MAC: fresh ARP (flush, then ping) until tnl/neigh has it.

    OVS snoops ARP replies only while the datapath has a tunnel port, and the kernel
    does not ARP again while its own neighbour entry lives, hence the flush.
    """
    ovs, h, peer = lab.ovs[i], lab.host(i), lab.underlay_ip(j)
    deadline = time.monotonic() + timeout
    while peer not in ovs.appctl("tnl/neigh/show"):
        assert time.monotonic() < deadline, f"OVS on host {i} never learned {peer}:\n{ovs_debug(lab, i)}"
        sh("ip", "-n", h, "neigh", "flush", "dev", "br-phy")
        ping_underlay(lab, i, j)
        time.sleep(0.1)


def ping_underlay(lab: Lab, src: int, dst: int) -> None:
    """Ping host dst's underlay address from host src (a few tries: OVS may still be adding the port)."""
    for _ in range(10):
        res = nsexec(lab.host(src), "ping", "-n", "-q", "-c", "1", "-W", "1", lab.underlay_ip(dst), check=False)
        if res.returncode == 0:
            return
    raise AssertionError(f"host {src} cannot reach {lab.underlay_ip(dst)} on the underlay: {res.stdout}")


def ovs_tunnel_port(lab: Lab, i: int, kind: str, remote: int, *options: str, name: str = "tun0") -> str:
    """An OVS native tunnel port (type kind: gre, vxlan) on host i's br-int towards host remote.

    Needs ovs_underlay_bridge(lab, i) first; returns once OVS knows the remote's underlay MAC.
    """
    lab.ovs[i].vsctl("add-port", "br-int", name, "--", "set", "interface", name, f"type={kind}",
                     f"options:remote_ip={lab.underlay_ip(remote)}", *options)  # fmt: skip
    learn_tunnel_neighbour(lab, i, remote)
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


# -- traffic ----------------------------------------------------------------------------


def iperf_bytes(lab: Lab, client: int, server: int, seconds: int = 2) -> int:
    """Bytes an iperf3 TCP transfer from container client to container server delivered (asserts no error)."""
    result = lab.iperf3(client, server, seconds)
    assert "error" not in result, result
    return int(result["end"]["sum_received"]["bytes"])


# -- frames on the wire -------------------------------------------------------------------

SEND_FRAMES = """
import socket, sys
iface, count = sys.argv[1], int(sys.argv[2])
with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
    s.bind((iface, 0))
    for frame in sys.argv[3:]:
        for _ in range(count):
            s.send(bytes.fromhex(frame))
"""


def send_frames(ns: str, iface: str, frames: list[bytes], count: int = 1) -> None:
    """Send each Ethernet frame count times out of iface in namespace ns (AF_PACKET, bytes as given)."""
    nsexec(ns, sys.executable, "-c", SEND_FRAMES, iface, str(count), *(f.hex() for f in frames))


class Capture:
    """tcpdump on iface in namespace ns, writing a pcap in the lab's workdir; stop() returns the frames' bytes.

    The process is one of the lab's, so the lab stops it (by PID) also if the test fails first.
    """

    def __init__(self, lab: Lab, ns: str, iface: str, bpf: str, name: str) -> None:
        self.path = lab.workdir / f"{name}.pcap"
        err = lab.workdir / f"{name}.tcpdump"
        with err.open("wb") as out:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, "tcpdump", "-Z", "root", "--immediate-mode", "-U", "-n", "-s", "0",
                 "-i", iface, "-w", str(self.path), bpf],
                stdout=subprocess.DEVNULL, stderr=out, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        lab.procs.append(self.proc)
        wait_for(f"tcpdump on {ns}/{iface}", lambda: "listening on" in err.read_text() or self.proc.poll() is not None)
        assert self.proc.poll() is None, err.read_text()

    def stop(self) -> list[bytes]:
        """Stop tcpdump (SIGINT: it flushes the file) and return what it captured, oldest first."""
        import scapy.layers.l2  # noqa: F401  (registers Ethernet for rdpcap)
        from scapy.utils import rdpcap

        time.sleep(0.2)  # let the last packets reach the socket
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(5)
        return [bytes(p) for p in rdpcap(str(self.path))]
