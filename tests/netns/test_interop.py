"""ovl-dp against tunnel peers that are not ovl-dp: the kernel's vxlan device, Open vSwitch native tunnels.

Each test builds a two-host lab (control.lab.hosts), runs ovl-dp on host 1 and the
other implementation on host 2, and checks both directions: ping, an iperf3 TCP
transfer, and that each side learned the other's MACs. The capture test puts
ovl-dp's VXLAN packets and the kernel's side by side on the underlay.

Checksum offload: a veth hands a packet to its peer with its checksum-offload
state, so a kernel sender's checksums can cross the lab's underlay unfilled
(notes/lab-wire.md). A physical NIC would fill them, so where the kernel's vxlan
sends towards ovl-dp we make its underlay veth behave like one (`ethtool -K ul0
tx off` on that host); without it ping works and TCP stalls in both directions
(the kernel's ACKs arrive with bad checksums too). On Open vSwitch hosts the lab
already sends from the containers with tx offload off, and OVS fills every
checksum it puts on the underlay itself. ovl-dp's own checks are never relaxed.
"""

from __future__ import annotations

from typing import Any

import pytest

from control.lab.hosts import SEED_TAG, Lab, container_mtu
from control.lab.peers import kernel_vxlan, kernel_vxlan_fdb, ovs_debug, ovs_tunnel_port, ovs_underlay_bridge
from control.lab.shell import mac_of, nsexec, sh
from tests.interop_util import Capture, iperf_bytes, send_frames

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


OFFLOADS = pytest.mark.parametrize("offload", ["auto", "off"], ids=["offload-auto", "offload-off"])


@OFFLOADS
def test_vxlan_with_the_kernels_vxlan_device(offload: str) -> None:
    """ovl-dp VXLAN (host 1, Linux bridge) <-> the kernel's vxlan device vx0 on host 2's Linux bridge.

    VNI 5001, UDP port 8472 on both. Untagged IPv4 (broadcast ARP, ping, TCP
    both ways), 802.1Q-tagged frames (VLAN 30, crafted: this kernel has no VLAN
    devices) and IPv6 inner traffic; each side learns the other's MACs behind
    the other's underlay address.
    """
    mtu = container_mtu("vxlan")
    with Lab(2) as lab:
        lab.build(mtu)
        lab.start(1, "--mode", "vxlan", "--remote", lab.underlay_ip(2), "--vni", str(VNI), "--port", str(PORT),
                  f"--offload={offload}")  # fmt: skip
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


def ovs_port_fdb(lab: Lab, i: int, port: str) -> dict[str, str]:
    """OVS host i's br-int MAC table: MAC -> VLAN, for the MACs learned on port."""
    ofport = lab.ovs[i].vsctl("get", "interface", port, "ofport").strip()
    rows = [line.split() for line in lab.ovs[i].appctl("fdb/show", "br-int").splitlines()[1:]]
    return {row[2]: row[1] for row in rows if len(row) == 4 and row[0] == ofport}


def check_with_ovs_native_port(lab: Lab) -> None:
    """ovl-dp on host 1 and OVS's native tunnel port tun0 on host 2 are up; check traffic both ways.

    Broadcast ARP each way, ping each way, learning on both sides (VLAN 20: the
    frames cross tagged, both tunnel ends being trunk ports of OVS br-int), TCP
    each way; OVS really tunnelled natively (tnl_push / tnl_pop datapath actions).
    """
    mac1, mac2 = mac_of(lab.container(1), "eth0"), mac_of(lab.container(2), "eth0")
    for src, dst, mac in ((1, 2, mac1), (2, 1, mac2)):
        for i in (1, 2):
            sh("ip", "-n", lab.container(i), "neigh", "flush", "all")
        ping(lab, src, lab.overlay_ip(dst))
        assert mac in neigh(lab, dst, lab.overlay_ip(src)), neigh(lab, dst, lab.overlay_ip(src))
    assert lab.ping(1, 2, count=5)["loss"] == 0
    assert lab.ping(2, 1, count=5)["loss"] == 0
    fdb = {(row["mac"], row.get("vlan")) for row in lab.ovl(1, "fdb") if row["remote"] == lab.underlay_ip(2)}
    assert (mac2, SEED_TAG) in fdb, fdb
    assert ovs_port_fdb(lab, 2, "tun0").get(mac1) == str(SEED_TAG), lab.ovs[2].appctl("fdb/show", "br-int")

    assert iperf_bytes(lab, 1, 2) > MIN_TRANSFER
    assert iperf_bytes(lab, 2, 1) > MIN_TRANSFER

    flows = lab.ovs[2].appctl("dpctl/dump-flows")
    assert "tnl_push(" in flows and "tnl_pop(" in flows, ovs_debug(lab, 2)
    snap = lab.ovl(1, "show")
    bad = {k: v for k, v in snap["drops"].items() if v}
    assert not bad, snap
    assert lab.stop(lab.daemons[1]) == 0


@OFFLOADS
@pytest.mark.parametrize("key", [None, 0x4D2], ids=["nokey", "key"])
def test_gre_with_ovs_native_gre_port(key: int | None, offload: str) -> None:
    """ovl-dp GRE <-> an Open vSwitch userspace native GRE port (type=gre), without and with a key.

    Host 1 is Open vSwitch too (br-int, vmX-style access port on VLAN 20, ovl-dp's
    TAP a trunk port): the lab builds both hosts with the same bridge kind, host 2
    must be OVS for its native tunnel, and this is the design's seed scenario with
    the kernel GRE port on one side replaced by ovl-dp. Both OVS tunnel and ovl-dp
    TAP are trunks, so frames cross tagged (VLAN 20).

    Checksums: lab.build(bridge="ovs") already turns tx checksum offload off in the
    containers (OVS's userspace datapath does not carry offload state); OVS itself
    fills every checksum it sends, so the underlay needs nothing else.
    """
    key_args = ("--key", str(key)) if key is not None else ()
    with Lab(2) as lab:
        lab.build(container_mtu("gre", tagged=True) - (4 if key is not None else 0), bridge="ovs", tag=SEED_TAG)
        lab.start(1, "--mode", "gre", "--remote", lab.underlay_ip(2), *key_args, f"--offload={offload}")
        ovs_underlay_bridge(lab, 2)
        ovs_tunnel_port(lab, 2, "gre", 1, *((f"options:key={key}",) if key is not None else ()))
        check_with_ovs_native_port(lab)


@OFFLOADS
@pytest.mark.parametrize("port", [None, PORT], ids=["port4789", f"port{PORT}"])
def test_vxlan_with_ovs_native_vxlan_port(port: int | None, offload: str) -> None:
    """ovl-dp VXLAN <-> an Open vSwitch userspace native VXLAN port (type=vxlan, options:key=VNI 5001).

    Same layout as the GRE test (OVS on both hosts, VLAN 20 access ports, frames
    cross tagged); with the IANA port and with a non-default one (options:dst_port).
    ovl-dp sends outer UDP checksum 0, which OVS accepts (a checksum left to offload
    by a UDP socket it would drop: notes/lab-wire.md).
    """
    port_args = ("--port", str(port)) if port is not None else ()
    with Lab(2) as lab:
        lab.build(container_mtu("vxlan", tagged=True), bridge="ovs", tag=SEED_TAG)
        lab.start(1, "--mode", "vxlan", "--remote", lab.underlay_ip(2), "--vni", str(VNI), *port_args,
                  f"--offload={offload}")  # fmt: skip
        ovs_underlay_bridge(lab, 2)
        dst_port = (f"options:dst_port={port}",) if port is not None else ()
        ovs_tunnel_port(lab, 2, "vxlan", 1, f"options:key={VNI}", *dst_port)
        check_with_ovs_native_port(lab)


# -- the capture test ------------------------------------------------------------------------

SPORT_RANGE = range(32768, 61000)  # the kernel's default ip_local_port_range, 32768-60999
IGNORED = {"ip.id", "ip.chksum", "udp.sport", "udp.chksum"}  # checked separately where it matters


def probe_frames(mac1: str) -> list[bytes]:
    """Inner frames container 1 sends, all flooded (broadcast, multicast, unknown unicast), each a fixed flow."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import ARP, Dot1Q, Ether

    bcast, ip1, ip1_bcast = "ff:ff:ff:ff:ff:ff", "172.20.1.1", "172.20.1.255"
    frames = [
        Ether(dst=bcast, src=mac1) / IP(src=ip1, dst=ip1_bcast) / UDP(sport=1111, dport=2222) / (b"a" * 64),
        # Unknown unicast, DSCP EF with ECN ECT(0).
        Ether(dst="02:00:00:00:00:99", src=mac1) / IP(src=ip1, dst="172.20.1.99", tos=0xB8 | 0x2) / TCP(dport=80),
        # IPv6 multicast, traffic class with ECN ECT(1).
        Ether(dst="33:33:00:00:00:01", src=mac1) / IPv6(src="fd00:20::1", dst="ff02::1", tc=0xB9) / UDP() / b"v6",
        Ether(dst=bcast, src=mac1) / Dot1Q(vlan=VLAN) / ARP(hwsrc=mac1, psrc="172.20.30.1", pdst="172.20.30.2"),
        # As big as the container MTU allows (1450 bytes of IP).
        Ether(dst=bcast, src=mac1) / IP(src=ip1, dst=ip1_bcast) / UDP(sport=1111, dport=2223) / (b"b" * 1422),
    ]
    return [bytes(f) for f in frames]


def inner_ecn(frame: bytes) -> int:
    """The ECN bits of an inner IPv4/IPv6 frame (0 for anything else), after an optional 802.1Q tag."""
    ethertype, off = int.from_bytes(frame[12:14], "big"), 14
    if ethertype == 0x8100:
        ethertype, off = int.from_bytes(frame[16:18], "big"), 18
    if ethertype == 0x0800:
        return frame[off + 1] & 3
    if ethertype == 0x86DD:
        return (int.from_bytes(frame[off : off + 2], "big") >> 4) & 3
    return 0


def dissect(pkt: bytes) -> dict[str, Any]:
    """The outer headers of a captured VXLAN packet as flat fields, and the inner frame."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN

    eth = Ether(pkt)
    ip, udp = eth[IP], eth[UDP]
    vx = VXLAN(bytes(udp.payload))  # decoded explicitly: scapy binds VXLAN to port 4789 only
    fields: dict[str, Any] = {"eth." + f: eth.getfieldval(f) for f in ("dst", "src", "type")}
    for layer, name in ((ip, "ip"), (udp, "udp"), (vx, "vxlan")):
        for f in layer.fields_desc:
            fields[f"{name}.{f.name}"] = layer.getfieldval(f.name)
    fields["ip.flags"] = int(ip.flags)
    fields["vxlan.flags"] = int(vx.flags)
    fields["inner"] = bytes(vx.payload)
    return fields


def udp_checksum_ok(pkt: bytes) -> bool:
    """Whether the outer UDP checksum of pkt is right (recomputed by scapy)."""
    from scapy.layers.inet import UDP
    from scapy.layers.l2 import Ether

    eth = Ether(pkt)
    sent = eth[UDP].chksum
    del eth[UDP].chksum
    return bool(Ether(bytes(eth))[UDP].chksum == sent)


def capture_vxlan(lab: Lab, name: str, frames: list[bytes]) -> dict[bytes, list[dict[str, Any]]]:
    """Send each frame twice from container 1; what host 1 put on the underlay, by inner frame."""
    cap = Capture(lab, lab.switch, "p1", f"udp dst port {PORT} and src host {lab.underlay_ip(1)}", name)
    send_frames(lab.container(1), "eth0", frames, count=2)
    got: dict[bytes, list[dict[str, Any]]] = {f: [] for f in frames}
    for pkt in cap.stop():
        d = dissect(pkt)
        d["csum_ok"] = udp_checksum_ok(pkt)
        if d["inner"] in got:  # not the containers' own IPv6 chatter
            got[d["inner"]].append(d)
    assert all(len(v) == 2 for v in got.values()), {f.hex(): len(v) for f, v in got.items()}
    return got


def test_vxlan_wire_format_against_the_kernel() -> None:
    """ovl-dp's VXLAN packets and the kernel vxlan device's, for the same inner frames, field by field.

    Host 1 runs ovl-dp (VNI 5001, port 8472), then ovl-dp --udp-csum, then instead
    a kernel vxlan device with the same VNI, port and remote (iproute2 defaults:
    `ttl auto`, `df unset`, `tos 0`, `udpcsum`); tcpdump on the switch's port of
    host 1 captures what each sends for the same crafted frames from container 1.

    Equal in all three: outer Ethernet, IP version/IHL/length/fragment offset/
    TTL (64 for both)/protocol/addresses, UDP destination port and length,
    VXLAN flags (0x08), reserved bits and VNI, and the inner frame byte for byte.
    UDP source ports: both in 32768-60999, the same for the same flow; IP ids differ.

    Equal since issue 11 (ecn), and checked here: DF (neither sets it by default: the
    kernel's `df unset`, ovl-dp's --df default for VXLAN); the outer TOS carries the inner
    packet's ECN bits in both (ECT(0) -> 0x02, ECT(1) -> 0x01) and no DSCP (`tos 0`, --tos 0).
    The other settings and the one ECN difference (inner CE) are in tests/netns/test_ecn.py.

    Found, and pinned here so that a change on either side shows up:
    - UDP checksum: this kernel's vxlan computes it by default (`udpcsum`), ovl-dp
      sends 0 ("not computed", valid over IPv4) unless --udp-csum, which makes it right.

    Checksum offload: the kernel's packets cross the veth with the UDP checksum left
    to offload (the captured field holds only the pseudo-header sum), so for the
    kernel phase host 1's ul0 fills checksums like a NIC (`ethtool -K ul0 tx off`).
    ovl-dp's phases run with the wire as it is: ovl-dp fills its own headers.
    """
    with Lab(2) as lab:
        lab.build(container_mtu("vxlan"))
        frames = probe_frames(mac_of(lab.container(1), "eth0"))
        remote = ("--mode", "vxlan", "--remote", lab.underlay_ip(2), "--vni", str(VNI), "--port", str(PORT))
        lab.start(1, *remote)
        ovl = capture_vxlan(lab, "ovl", frames)
        assert lab.stop(lab.daemons[1]) == 0
        lab.start(1, *remote, "--udp-csum")
        ovl_csum = capture_vxlan(lab, "ovl-csum", frames)
        assert lab.stop(lab.daemons[1]) == 0
        nsexec(lab.host(1), "ethtool", "-K", "ul0", "tx", "off")
        kernel_vxlan(lab, 1, 2, VNI, PORT)
        kern = capture_vxlan(lab, "kernel", frames)

    for frame in frames:
        for name, got in (("ovl-dp", ovl), ("ovl-dp --udp-csum", ovl_csum), ("kernel", kern)):
            a, b = got[frame]
            assert a["udp.sport"] in SPORT_RANGE and a["udp.sport"] == b["udp.sport"], (name, a, b)
            assert a["inner"] == frame, name
        o, oc, k = ovl[frame][0], ovl_csum[frame][0], kern[frame][0]
        # The findings (see the docstring), exactly as they are today.
        assert o["ip.flags"] == k["ip.flags"] == 0, "DF: neither sets it by default"
        assert o["ip.tos"] == k["ip.tos"] == inner_ecn(frame), "ECN: both copy it, no DSCP"
        assert o["udp.chksum"] == 0, o
        assert oc["udp.chksum"] != 0 and oc["csum_ok"], oc
        assert k["udp.chksum"] != 0 and k["csum_ok"], k
        # Everything else is equal.
        known = IGNORED | {"ip.flags", "ip.tos", "csum_ok"}
        diff = {f: (o[f], k[f]) for f in o if f not in known and o[f] != k[f]}
        assert not diff, f"ovl-dp vs kernel differ in {diff} for inner frame {frame.hex()}"
        diff = {f: (o[f], oc[f]) for f in o if f not in known and o[f] != oc[f]}
        assert not diff, f"--udp-csum changed more than the checksum: {diff}"
        assert o["ip.ttl"] == 64 and o["vxlan.vni"] == VNI and o["vxlan.flags"] == 0x08, o
