"""ovl-dp against tunnel peers that are not ovl-dp: the kernel's vxlan device, Open vSwitch native tunnels.

Each test builds a two-host lab (control.lab), runs ovl-dp on host 1 and the
other implementation on host 2, and checks both directions: ping, an iperf3 TCP
transfer, and that each side learned the other's MACs. The capture test puts
ovl-dp's VXLAN packets and the kernel's side by side on the underlay.

Checksum offload: a veth hands a packet to its peer with its checksum-offload
state, so a kernel sender's checksums can cross the lab's underlay unfilled
(notes/lab-wire.md). A physical NIC would fill them, so where the kernel sends
towards ovl-dp we make its underlay veth behave like one (`ethtool -K ul0 tx
off` on that host). ovl-dp's own checks are never relaxed.
"""

from __future__ import annotations

import pytest

from control.lab import Lab, container_mtu, sh
from tests.interop_util import Capture, iperf_bytes, kernel_vxlan, kernel_vxlan_fdb, mac_of, nsexec, send_frames

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("no_leftovers")]

VNI = 5001  # not ovl-dp's default 0
PORT = 8472  # not the IANA 4789 (it is the kernel's historical default)
VLAN = 30
MIN_TRANSFER = 1_000_000  # bytes an iperf3 -t 2 must move at the least


def ipv6(i: int) -> str:
    return f"fd00:20::{i}"


def add_ipv6(lab: Lab, i: int) -> None:
    """Container i gets fd00:20::i/64 on eth0 (no DAD: usable at once)."""
    sh("ip", "-n", lab.container(i), "addr", "add", f"{ipv6(i)}/64", "dev", "eth0", "nodad")


def tagged_frame(src_mac: str, dst_mac: str, src: int, dst: int, seq: int) -> bytes:
    """An 802.1Q (VLAN 30) ICMP echo request between the containers' VLAN addresses 172.20.30.x."""
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.l2 import Dot1Q, Ether

    pkt = (
        Ether(src=src_mac, dst=dst_mac)
        / Dot1Q(vlan=VLAN, prio=5)
        / IP(src=f"172.20.{VLAN}.{src}", dst=f"172.20.{VLAN}.{dst}", id=seq)
        / ICMP(id=0x4242, seq=seq)
        / (b"ovl-dp interop vlan " * 4)
    )
    return bytes(pkt)


def check_tagged_frames_cross(lab: Lab, src: int, dst: int) -> None:
    """Tagged frames sent from container src arrive at container dst unchanged, tag included.

    The kernel here has no 802.1Q module (no VLAN subinterfaces), so the frames are
    crafted, sent with AF_PACKET and captured on the receiving eth0.
    """
    csrc, cdst = lab.container(src), lab.container(dst)
    sent = [tagged_frame(mac_of(csrc, "eth0"), mac_of(cdst, "eth0"), src, dst, seq) for seq in (1, 2, 3)]
    cap = Capture(lab, cdst, "eth0", f"vlan {VLAN}", f"vlan-{src}-{dst}")
    send_frames(csrc, "eth0", sent)
    got = cap.stop()
    assert got == sent, [f.hex() for f in got]


def ping(lab: Lab, src: int, addr: str, *opts: str, count: int = 3) -> None:
    """Ping addr from container src; every echo must come back."""
    res = nsexec(lab.container(src), "ping", *opts, "-n", "-c", str(count), "-i", "0.2", "-W", "2", addr, check=False)
    assert res.returncode == 0 and " 0% packet loss" in res.stdout, res.stdout + res.stderr


def neigh(lab: Lab, i: int, addr: str, dev: str = "eth0") -> str:
    return sh("ip", "-n", lab.container(i), "neigh", "show", addr, "dev", dev).stdout


def test_vxlan_with_the_kernels_vxlan_device() -> None:
    """ovl-dp VXLAN (host 1, Linux bridge) <-> the kernel's vxlan device vx0 on host 2's Linux bridge.

    VNI 5001, UDP port 8472 on both. Untagged IPv4 (broadcast ARP, ping, TCP
    both ways), 802.1Q-tagged frames (VLAN 30, crafted: this kernel has no VLAN
    devices) and IPv6 inner traffic; each side learns the other's MACs behind
    the other's underlay address.
    """
    mtu = container_mtu("vxlan")
    with Lab(2) as lab:
        lab.build(mtu)
        lab.start(1, "--mode", "vxlan", "--remote", lab.underlay_ip(2), "--vni", str(VNI), "--port", str(PORT))
        kernel_vxlan(lab, 2, 1, VNI, PORT)
        # The kernel sends towards ovl-dp: its underlay veth fills checksums like a NIC would.
        nsexec(lab.host(2), "ethtool", "-K", "ul0", "tx", "off")
        for i in (1, 2):
            add_ipv6(lab, i)
        mac1, mac2 = mac_of(lab.container(1), "eth0"), mac_of(lab.container(2), "eth0")

        # Broadcast ARP in both directions: no neighbour entries, then a ping each way.
        for i in (1, 2):
            sh("ip", "-n", lab.container(i), "neigh", "flush", "all")
        ping(lab, 1, lab.overlay_ip(2))
        assert mac1 in neigh(lab, 2, lab.overlay_ip(1)), neigh(lab, 2, lab.overlay_ip(1))
        for i in (1, 2):
            sh("ip", "-n", lab.container(i), "neigh", "flush", "all")
        ping(lab, 2, lab.overlay_ip(1))
        assert mac2 in neigh(lab, 1, lab.overlay_ip(2)), neigh(lab, 1, lab.overlay_ip(2))
        assert lab.ovl(1, "show")["stats"]["tx_flooded"] >= 1

        # Both learned: the kernel has c1's MAC behind 192.0.2.1, ovl-dp c2's behind 192.0.2.2.
        kfdb = kernel_vxlan_fdb(lab, 2)
        assert f"{mac1} dst {lab.underlay_ip(1)}" in kfdb, kfdb
        ofdb = {row["mac"]: row["remote"] for row in lab.ovl(1, "fdb")}
        assert ofdb.get(mac2) == lab.underlay_ip(2), ofdb

        # VLAN-tagged inner frames: the tag crosses inside the tunnel, both directions, byte for byte.
        check_tagged_frames_cross(lab, 1, 2)
        check_tagged_frames_cross(lab, 2, 1)

        # IPv6 inner traffic (neighbour discovery is multicast: flooded), both directions.
        ping(lab, 1, ipv6(2), "-6")
        ping(lab, 2, ipv6(1), "-6")
        assert mac2 in neigh(lab, 1, ipv6(2)), neigh(lab, 1, ipv6(2))

        # TCP both ways.
        assert iperf_bytes(lab, 1, 2) > MIN_TRANSFER
        assert iperf_bytes(lab, 2, 1) > MIN_TRANSFER

        snap = lab.ovl(1, "show")
        bad = {k: v for k, v in snap["drops"].items() if v}
        assert not bad, snap
        assert snap["remotes"][0]["rx_packets"] > 1000 and snap["remotes"][0]["tx_packets"] > 1000, snap
        assert lab.stop(lab.daemons[1]) == 0
