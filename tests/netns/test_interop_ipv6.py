"""IPv6 underlay interop: ovl-dp against the kernel's vxlan and Open vSwitch's native tunnels, over IPv6.

Each lab (control.lab.hosts.Lab with underlay="ipv6": ul0 = fd00:192:2::I/64, no
DAD) has two hosts. First the peers are checked among themselves (the kernel's
vxlan with an IPv6 remote/local on both hosts; OVS userspace ``type=vxlan`` and
``type=ip6gre`` on both hosts) and what they put on the wire is pinned: these
tests need nothing from ovl-dp and always run. Then ovl-dp runs on host 1 against
each peer on host 2, both ways: broadcast ARP and neighbour discovery, inner IPv4
and IPv6 ping, iperf3 TCP, learning on both sides; the same inner frames sent by
ovl-dp and by the peer are captured on the underlay switch and compared field by
field; the zero-UDP-checksum options are held against the kernel's
udp6zerocsumtx/udp6zerocsumrx.

The ovl-dp tests skip only when this ovl-dp does not take an IPv6 remote (its own
configuration check refuses one, :func:`ovl_ipv6_missing`), never otherwise.

Checksum offload (notes/lab-wire.md): where the kernel's vxlan sends towards a
userspace receiver, its host's ul0 sends with ``tx off`` (a NIC would fill the
checksums the veth leaves unfilled); OVS hosts' containers send with ``tx off``
(the lab does it), and OVS fills every checksum it puts on the underlay.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

from control.lab.hosts import SEED_TAG, Lab, container_mtu
from control.lab.peers import kernel_vxlan, kernel_vxlan_fdb, ovs_debug, ovs_tunnel_port, ovs_underlay_bridge
from control.lab.shell import mac_of, nsexec, sh
from tests.interop_util import Capture, iperf_bytes, ovl_ipv6_missing, send_frames

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("no_leftovers")]

VNI = 5001
PORT = 8472  # the kernel's historical port, not ovl-dp's default
GRE_KEY = 0x4D2
GRE_KEY_LEN = 4  # the key field (RFC 2890)
MIN_TRANSFER = 1_000_000  # bytes an iperf3 -t 2 must move at the least
SPORT_RANGE = range(32768, 61000)  # the kernel's default ip_local_port_range, 32768-60999
DEFAULT_HOP_LIMIT = 64  # the kernel's (ip6_default_hop_limit) and ovl-dp's default
NH_UDP, NH_GRE = 17, 47  # IPv6 next header values (IANA protocol numbers)
ETH_P_TEB = 0x6558  # transparent Ethernet bridging, the GRE protocol of an L2 tunnel
ECN_ECT0, ECN_CE = 0b10, 0b11  # RFC 3168 codepoints


def inner6(i: int) -> str:
    """Container i's inner IPv6 address (the overlay, not the underlay)."""
    return f"fd00:20::{i}"


# -- probes --------------------------------------------------------------------------------


def require_ovl_ipv6(mode: str, *keys: str) -> None:
    """Skip the test when this ovl-dp has no IPv6 underlay in mode (see ovl_ipv6_missing)."""
    if missing := ovl_ipv6_missing(mode, *keys):
        pytest.skip(missing)


def ovl_has_ecn() -> bool:
    """Whether this ovl-dp has the ECN/TOS part of issue 11 (the tunnel.tos key, RFC 6040 on encapsulation)."""
    from datapath.config import ConfigError, from_keys

    try:
        from_keys({"tunnel.mode": "vxlan", "remotes": ["192.0.2.2"], "tunnel.tos": "inherit"})
    except (ConfigError, TypeError):
        return False
    return True


# -- traffic -------------------------------------------------------------------------------


def add_inner6(lab: Lab, i: int) -> None:
    """Container i gets fd00:20::i/64 on eth0 (no DAD: usable at once)."""
    sh("ip", "-n", lab.container(i), "addr", "add", f"{inner6(i)}/64", "dev", "eth0", "nodad")


def ping(lab: Lab, src: int, addr: str, count: int = 3) -> None:
    """Ping addr (IPv4 or IPv6) from container src; every echo must come back."""
    res = nsexec(lab.container(src), "ping", "-n", "-c", str(count), "-i", "0.2", "-W", "2", addr, check=False)
    assert res.returncode == 0 and " 0% packet loss" in res.stdout, res.stdout + res.stderr


def neigh(lab: Lab, i: int, addr: str) -> str:
    """Container i's neighbour entry for addr."""
    return sh("ip", "-n", lab.container(i), "neigh", "show", addr, "dev", "eth0").stdout


def check_both_ways(lab: Lab) -> None:
    """Container 1 <-> container 2: broadcast ARP and ND from empty neighbour tables each way (the first
    ping of each resolves its address across the tunnel), inner IPv4 and IPv6 ping, iperf3 TCP each way."""
    macs = {i: mac_of(lab.container(i), "eth0") for i in (1, 2)}
    for src, dst in ((1, 2), (2, 1)):
        for addr_of in (lab.overlay_ip, inner6):
            for i in (1, 2):
                sh("ip", "-n", lab.container(i), "neigh", "flush", "all")
            ping(lab, src, addr_of(dst))
            entry = neigh(lab, dst, addr_of(src))
            assert macs[src] in entry, (addr_of(src), entry)  # the far side resolved us (ARP / ND) too
    assert iperf_bytes(lab, 1, 2) > MIN_TRANSFER
    assert iperf_bytes(lab, 2, 1) > MIN_TRANSFER


def peer_lab(bridge: str, mode: str, keyed: bool = False) -> Lab:
    """A two-host IPv6-underlay lab, built: Linux bridges, or OVS br-int with the containers on VLAN 20.

    The containers' MTU fits the tunnel of mode over IPv6 (keyed: GRE with a key, 4 bytes more).
    """
    lab = Lab(2, underlay="ipv6")
    try:
        less = GRE_KEY_LEN if keyed else 0
        if bridge == "ovs":
            lab.build(container_mtu(mode, tagged=True, family=6) - less, bridge="ovs", tag=SEED_TAG)
        else:
            lab.build(container_mtu(mode, family=6) - less)
        for i in (1, 2):
            add_inner6(lab, i)
    except BaseException:
        lab.close()
        raise
    return lab


# -- the wire --------------------------------------------------------------------------------


def udp6_checksum_ok(ip6: Any) -> bool:
    """Whether the UDP checksum in scapy IPv6 packet ip6 is right (scapy's in6_chksum over the pseudo-header)."""
    from scapy.layers.inet6 import in6_chksum

    raw = bytearray(bytes(ip6.payload))
    sent = int.from_bytes(raw[6:8], "big")
    raw[6:8] = b"\0\0"
    want = in6_chksum(socket.IPPROTO_UDP, ip6.payload, bytes(raw)) or 0xFFFF  # the UDP layer, over ip6
    return bool(sent == want)


def dissect6(pkt: bytes) -> dict[str, Any]:
    """A captured VXLAN-over-UDP/IPv6 or GRE-over-IPv6 packet as flat fields (scapy), and its inner frame."""
    from scapy.layers.inet import UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import GRE, Ether
    from scapy.layers.vxlan import VXLAN

    eth = Ether(pkt)
    ip6 = eth[IPv6]
    fields: dict[str, Any] = {"eth." + f: eth.getfieldval(f) for f in ("dst", "src", "type")}
    for f in ip6.fields_desc:
        fields[f"ip6.{f.name}"] = ip6.getfieldval(f.name)
    body = bytes(ip6.payload)
    if ip6.nh == NH_UDP:
        udp = UDP(body)
        for f in udp.fields_desc:
            fields[f"udp.{f.name}"] = udp.getfieldval(f.name)
        fields["udp.csum_ok"] = udp.chksum == 0 or udp6_checksum_ok(ip6)
        vx = VXLAN(bytes(udp.payload))  # decoded explicitly: scapy binds VXLAN to port 4789 only
        for f in vx.fields_desc:
            fields[f"vxlan.{f.name}"] = vx.getfieldval(f.name)
        fields["vxlan.flags"] = int(vx.flags)
        fields["inner"] = bytes(vx.payload)
    else:
        gre = GRE(body)
        for f in gre.fields_desc:
            fields[f"gre.{f.name}"] = gre.getfieldval(f.name)
        fields["inner"] = bytes(gre.payload)
    return fields


def probe_frames(mac1: str) -> list[bytes]:
    """Inner frames container 1 sends, all flooded (broadcast, multicast, unknown unicast), each a fixed flow.

    With ECN and DSCP bits and an inner IPv6 flow label set, to see which of them reach the outer header.
    """
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    bcast, ip1, ip1_bcast = "ff:ff:ff:ff:ff:ff", "172.20.1.1", "172.20.1.255"
    frames = [
        Ether(dst=bcast, src=mac1) / IP(src=ip1, dst=ip1_bcast) / UDP(sport=1111, dport=2222) / (b"a" * 64),
        # Unknown unicast, DSCP EF with ECN ECT(0).
        Ether(dst="02:00:00:00:00:99", src=mac1) / IP(src=ip1, dst="172.20.1.99", tos=0xB8 | 0x2) / TCP(dport=80),
        # IPv6 multicast, traffic class with ECN ECT(1), a flow label.
        Ether(dst="33:33:00:00:00:01", src=mac1) / IPv6(src=inner6(1), dst="ff02::1", tc=0xB9, fl=0x12345)
        / UDP(sport=3333, dport=4444) / b"v6",
        # ECN CE: encapsulators per RFC 6040 / the kernel's INET_ECN_encapsulate put ECT(0) outside, not CE.
        Ether(dst=bcast, src=mac1) / IP(src=ip1, dst=ip1_bcast, tos=0x03) / UDP(sport=1111, dport=2224) / b"ce",
        # Big: 1,200 bytes of IP (fits every tunnel's container MTU here).
        Ether(dst=bcast, src=mac1) / IP(src=ip1, dst=ip1_bcast) / UDP(sport=1111, dport=2223) / (b"b" * 1172),
    ]  # fmt: skip
    return [bytes(f) for f in frames]


def inner_ecn(frame: bytes) -> int:
    """The ECN bits of an untagged inner IPv4/IPv6 frame (0 for anything else)."""
    ethertype = int.from_bytes(frame[12:14], "big")
    if ethertype == 0x0800:
        return frame[15] & 3
    if ethertype == 0x86DD:
        return (int.from_bytes(frame[14:16], "big") >> 4) & 3
    return 0


def outer_ecn(frame: bytes) -> int:
    """The ECN bits an RFC 6040 encapsulator puts in the outer header for frame: the inner ones, but ECT(0)
    for CE (so that a CE mark never starts outside: the kernel's INET_ECN_encapsulate, OVS alike)."""
    ecn = inner_ecn(frame)
    return ECN_ECT0 if ecn == ECN_CE else ecn


def ovl_outer_ecn(frame: bytes, ecn: bool) -> int:
    """The traffic class ovl-dp sends for frame: 0 without the ECN part of issue 11 (ecn false); with it
    (default --tos) the inner ECN bits copied as RFC 6040's normal mode says, CE included, where the
    kernel and OVS send ECT(0) for CE (the ECN part's documented choice, datapath/ecn.py)."""
    return inner_ecn(frame) if ecn else 0


def untag(frame: bytes) -> bytes:
    """frame without its 802.1Q tag (OVS trunks carry the containers' VLAN 20 inside the tunnel)."""
    if frame[12:14] == b"\x81\x00":
        return frame[:12] + frame[16:]
    return frame


def capture6(lab: Lab, name: str, bpf: str, frames: list[bytes]) -> dict[bytes, list[dict[str, Any]]]:
    """Send each frame twice from container 1; what host 1 put on the underlay (switch port p1), by inner frame.

    Inner frames are matched without an 802.1Q tag (an OVS trunk adds VLAN 20), the tag kept in "inner".
    """
    cap = Capture(lab, lab.switch, "p1", f"ip6 and src host {lab.underlay_ip(1)} and ({bpf})", name)
    send_frames(lab.container(1), "eth0", frames, count=2)
    got: dict[bytes, list[dict[str, Any]]] = {f: [] for f in frames}
    for pkt in cap.stop():
        d = dissect6(pkt)
        if untag(d["inner"]) in got:  # not the containers' own IPv6 chatter
            got[untag(d["inner"])].append(d)
    assert all(len(v) == 2 for v in got.values()), {f.hex(): len(v) for f, v in got.items()}
    return got


VXLAN_BPF = f"udp dst port {PORT}"
GRE_BPF = "ip6 proto 47"


def check_ipv6_header(d: dict[str, Any], lab: Lab, next_header: int) -> None:
    """What every peer here and ovl-dp put in the outer IPv6 header: version 6, the payload length of
    what follows, next header, hop limit 64, host 1 to host 2."""
    assert d["ip6.version"] == 6 and d["ip6.nh"] == next_header and d["ip6.hlim"] == DEFAULT_HOP_LIMIT, d
    assert (d["ip6.src"], d["ip6.dst"]) == (lab.underlay_ip(1), lab.underlay_ip(2)), d
    header = 8 + 8 if next_header == NH_UDP else 4 + (4 if d.get("gre.key_present") else 0)
    assert d["ip6.plen"] == header + len(d["inner"]), d


# -- the peers among themselves (no ovl-dp) --------------------------------------------------


@pytest.mark.parametrize("underlay", ["ipv6", "dual"])
def test_lab_underlay_addresses(underlay: str) -> None:
    """The lab's IPv6 (and dual-stack) underlay: the addresses on ul0, usable at once (no DAD), hosts reach
    each other in every family the lab has, and a family it lacks is an error, not an address."""
    from control.lab.peers import ping_underlay
    from control.lab.shell import LabError

    with Lab(2, underlay=underlay) as lab:
        lab.build()
        assert lab.families == ((6,) if underlay == "ipv6" else (4, 6))
        assert lab.underlay_ip(1) == ("fd00:192:2::1" if underlay == "ipv6" else "192.0.2.1")
        shown = sh("ip", "-n", lab.host(1), "addr", "show", "dev", "ul0").stdout
        assert "inet6 fd00:192:2::1/64 scope global nodad" in shown, shown
        assert ("inet 192.0.2.1/24" in shown) == (underlay == "dual"), shown
        for family in lab.families:
            ping_underlay(lab, 1, 2, family)
            ping_underlay(lab, 2, 1, family)
        if underlay == "ipv6":
            with pytest.raises(LabError, match="no IPv4 address"):
                lab.underlay_ip(1, 4)


def test_kernel_vxlan_over_ipv6_among_themselves() -> None:
    """The kernel's vxlan with IPv6 remote/local on both hosts (VNI 5001, port 8472): the peer works.

    And what it sends (pinned, to compare ovl-dp with): hop limit 64, flow label 0,
    traffic class = the inner ECN bits only (RFC 6040, CE as ECT(0); DSCP not copied
    without `tos inherit`), a computed UDP checksum (`noudp6zerocsumtx`), source port 32768-60999
    per flow, VXLAN flags 0x08.
    """
    with peer_lab("linux", "vxlan") as lab:
        for i, j in ((1, 2), (2, 1)):
            kernel_vxlan(lab, i, j, VNI, PORT)
            nsexec(lab.host(i), "ethtool", "-K", "ul0", "tx", "off")  # the capture sees filled checksums
        details = sh("ip", "-n", lab.host(1), "-d", "link", "show", "vx0").stdout
        assert f"remote {lab.underlay_ip(2)} local {lab.underlay_ip(1)}" in details, details
        assert "udpcsum noudp6zerocsumtx noudp6zerocsumrx" in details, details  # iproute2 defaults
        check_both_ways(lab)
        frames = probe_frames(mac_of(lab.container(1), "eth0"))
        got = capture6(lab, "kernel", VXLAN_BPF, frames)
    for frame in frames:
        a, b = got[frame]
        check_ipv6_header(a, lab, NH_UDP)
        assert a["ip6.fl"] == 0 and a["ip6.tc"] == outer_ecn(frame), a
        assert a["udp.sport"] in SPORT_RANGE and a["udp.sport"] == b["udp.sport"], (a, b)
        assert a["udp.dport"] == PORT and a["udp.chksum"] != 0 and a["udp.csum_ok"], a
        assert a["vxlan.flags"] == 0x08 and a["vxlan.vni"] == VNI and a["inner"] == frame, a


OVS_KINDS = pytest.mark.parametrize(
    "kind,options",
    [
        ("vxlan", (f"options:key={VNI}", f"options:dst_port={PORT}")),
        ("ip6gre", ()),
        ("ip6gre", (f"options:key={GRE_KEY}",)),
    ],
    ids=["vxlan", "ip6gre-nokey", "ip6gre-key"],
)


@OVS_KINDS
def test_ovs_ipv6_tunnels_among_themselves(kind: str, options: tuple[str, ...]) -> None:
    """OVS userspace native tunnels with IPv6 remote_ip on both hosts (type=vxlan, type=ip6gre): the peer works.

    The setup OVS needs over IPv6 (control.lab.peers.ovs_underlay_bridge): the IPv6
    address on br-phy (IPv6 enabled there, no DAD), ul0's IPv6 off; OVS routes by its
    copy of the kernel's IPv6 routes and resolves the remote by neighbour discovery
    (snooped advertisements, tnl/neigh). Pinned, what OVS 3.1 sends: hop limit 64,
    flow label 0, traffic class = the inner ECN bits (CE as ECT(0)), DSCP not copied; VXLAN with a computed UDP
    checksum (over IPv4 it sends none); ip6gre: GRE version 0, protocol 0x6558, no
    checksum or sequence, the key (K bit) only with options:key.
    """
    mode = "vxlan" if kind == "vxlan" else "gre"
    keyed = mode == "gre" and any(o.startswith("options:key=") for o in options)
    with peer_lab("ovs", mode, keyed) as lab:
        for i in (1, 2):
            ovs_underlay_bridge(lab, i)
        for i, j in ((1, 2), (2, 1)):
            ovs_tunnel_port(lab, i, kind, j, *options)
        assert "dev br-phy" in lab.ovs[1].appctl("ovs/route/show")
        assert lab.underlay_ip(2) in lab.ovs[1].appctl("tnl/neigh/show")
        check_both_ways(lab)
        flows = lab.ovs[1].appctl("dpctl/dump-flows")
        assert "tnl_push(" in flows and "tnl_pop(" in flows and f"ipv6(src={lab.underlay_ip(1)}" in flows, flows
        frames = probe_frames(mac_of(lab.container(1), "eth0"))
        got = capture6(lab, f"ovs-{kind}", VXLAN_BPF if kind == "vxlan" else GRE_BPF, frames)
    keyed = any(o.startswith("options:key=") for o in options)
    for frame in frames:
        a, b = got[frame]
        check_ipv6_header(a, lab, NH_UDP if kind == "vxlan" else NH_GRE)
        assert a["ip6.fl"] == 0 and a["ip6.tc"] == outer_ecn(frame), a
        assert untag(a["inner"]) == frame and a["inner"][12:16] == bytes.fromhex("8100") + SEED_TAG.to_bytes(2), a
        if kind == "vxlan":
            assert a["udp.sport"] in SPORT_RANGE and a["udp.sport"] == b["udp.sport"], (a, b)
            assert a["udp.chksum"] != 0 and a["udp.csum_ok"], a
            assert a["vxlan.flags"] == 0x08 and a["vxlan.vni"] == VNI, a
        else:
            assert (a["gre.chksum_present"], a["gre.seqnum_present"], a["gre.version"]) == (0, 0, 0), a
            assert a["gre.key_present"] == keyed and a["gre.key"] == (GRE_KEY if keyed else None), a
            assert a["gre.proto"] == ETH_P_TEB, a


# -- ovl-dp against the kernel's vxlan -------------------------------------------------------

# ovl-dp's paths: the C path with TAP offloads, without, and the pure-Python reference.
PATHS = {"offload-auto": ("--offload=auto",), "offload-off": ("--offload=off",), "python": ("--no-fast-path",)}
OFFLOADS = pytest.mark.parametrize("offload", list(PATHS))


@OFFLOADS
def test_vxlan6_with_the_kernels_vxlan_device(offload: str) -> None:
    """ovl-dp VXLAN over IPv6 (host 1, Linux bridge) <-> the kernel's vxlan with IPv6 remote/local (host 2).

    On each of ovl-dp's paths (C with and without TAP offloads, Python reference).
    VNI 5001, port 8472, checksums computed both ways (the defaults of both). Broadcast
    ARP and ND each way, inner IPv4 and IPv6 ping, iperf3 each way; the kernel learns
    container 1's MAC behind fd00:192:2::1, ovl-dp container 2's behind fd00:192:2::2.
    """
    require_ovl_ipv6("vxlan")
    with peer_lab("linux", "vxlan") as lab:
        lab.start(1, "--mode", "vxlan", "--remote", lab.underlay_ip(2), "--vni", str(VNI), "--port", str(PORT),
                  *PATHS[offload])  # fmt: skip
        kernel_vxlan(lab, 2, 1, VNI, PORT)
        nsexec(lab.host(2), "ethtool", "-K", "ul0", "tx", "off")  # the kernel sends to userspace: fill checksums
        check_both_ways(lab)
        mac1, mac2 = mac_of(lab.container(1), "eth0"), mac_of(lab.container(2), "eth0")
        kfdb = kernel_vxlan_fdb(lab, 2)
        assert f"{mac1} dst {lab.underlay_ip(1)}" in kfdb, kfdb
        ofdb = {row["mac"]: row["remote"] for row in lab.ovl(1, "fdb")}
        assert ofdb.get(mac2) == lab.underlay_ip(2), ofdb
        snap = lab.ovl(1, "show")
        assert not {k: v for k, v in snap["drops"].items() if v}, snap
        assert snap["remotes"][0]["rx_packets"] > 1000 and snap["remotes"][0]["tx_packets"] > 1000, snap
        assert lab.stop(lab.daemons[1]) == 0


def test_vxlan6_wire_format_against_the_kernel() -> None:
    """ovl-dp's VXLAN-over-IPv6 packets and the kernel vxlan's, for the same inner frames, field by field.

    Host 1 runs ovl-dp (VNI 5001, port 8472, remote fd00:192:2::2), then ovl-dp
    --udp6-zero-csum-tx, then instead the kernel's vxlan with the same VNI, port and
    remote/local (iproute2 defaults: `ttl auto`, `tos 0`, flow label 0, a computed
    checksum), then the kernel's with udp6zerocsumtx; tcpdump on the switch's port of
    host 1 captures each. Compared: outer Ethernet; IPv6 version, payload length,
    next header 17, hop limit, addresses, traffic class, flow label; UDP ports,
    length, checksum (valid, or zero with the zero-checksum options); VXLAN flags,
    VNI, reserved bits; the inner frame byte for byte. The differences are pinned
    here and listed in the README's interop table.
    """
    require_ovl_ipv6("vxlan", "tunnel.udp6_zero_csum_tx")
    with peer_lab("linux", "vxlan") as lab:
        remote_args = ("--mode", "vxlan", "--remote", lab.underlay_ip(2), "--vni", str(VNI), "--port", str(PORT))
        frames = probe_frames(mac_of(lab.container(1), "eth0"))
        lab.start(1, *remote_args)
        ovl = capture6(lab, "ovl", VXLAN_BPF, frames)
        assert lab.stop(lab.daemons[1]) == 0
        lab.start(1, *remote_args, "--udp6-zero-csum-tx")
        ovl_zero = capture6(lab, "ovl-zero", VXLAN_BPF, frames)
        assert lab.stop(lab.daemons[1]) == 0
        nsexec(lab.host(1), "ethtool", "-K", "ul0", "tx", "off")  # the capture sees the checksums filled
        kernel_vxlan(lab, 1, 2, VNI, PORT)
        kern = capture6(lab, "kernel", VXLAN_BPF, frames)
        sh("ip", "-n", lab.host(1), "link", "del", "vx0")
        kernel_vxlan(lab, 1, 2, VNI, PORT, "udp6zerocsumtx")
        kern_zero = capture6(lab, "kernel-zero", VXLAN_BPF, frames)
    ecn = ovl_has_ecn()
    for frame in frames:
        runs = (("ovl-dp", ovl), ("ovl-dp zero", ovl_zero), ("kernel", kern), ("kernel zero", kern_zero))
        for name, got in runs:
            a, b = got[frame]
            check_ipv6_header(a, lab, NH_UDP)
            assert a["udp.sport"] in SPORT_RANGE and a["udp.sport"] == b["udp.sport"], (name, a, b)
            assert a["inner"] == frame and a["vxlan.flags"] == 0x08 and a["vxlan.vni"] == VNI, (name, a)
        o, oz, k, kz = ovl[frame][0], ovl_zero[frame][0], kern[frame][0], kern_zero[frame][0]
        assert o["udp.chksum"] != 0 and o["udp.csum_ok"], o
        assert k["udp.chksum"] != 0 and k["udp.csum_ok"], k
        assert oz["udp.chksum"] == 0 and kz["udp.chksum"] == 0, (oz, kz)
        assert k["ip6.fl"] == 0 and k["ip6.tc"] == outer_ecn(frame), k
        # The differences, exactly as they are today.
        assert o["ip6.fl"] == 0, "flow label: the kernel sends 0 by default, so does ovl-dp"
        assert o["ip6.tc"] == ovl_outer_ecn(frame, ecn), "traffic class: see ovl_outer_ecn"
        known = {"udp.sport", "udp.chksum", "udp.csum_ok", "ip6.tc"}
        diff = {f: (o[f], k[f]) for f in o if f not in known and o[f] != k[f]}
        assert not diff, f"ovl-dp vs kernel differ in {diff} for inner frame {frame.hex()}"
        diff = {f: (o[f], oz[f]) for f in o if f not in known | {"ip6.tc"} and o[f] != oz[f]}
        assert not diff, f"--udp6-zero-csum-tx changed more than the checksum: {diff}"


def udp6_csum_errors(lab: Lab, i: int) -> int:
    """Host i's Udp6InCsumErrors (the kernel's count of UDP/IPv6 datagrams dropped for their checksum,
    a zero one on a socket without UDP_NO_CHECK6_RX included), from /proc/net/snmp6 of its namespace."""
    for line in nsexec(lab.host(i), "cat", "/proc/net/snmp6").stdout.splitlines():
        name, _, value = line.partition(" ")
        if name == "Udp6InCsumErrors":
            return int(value)
    raise AssertionError("no Udp6InCsumErrors in /proc/net/snmp6")


def test_udp6_zero_checksum_options_against_the_kernel() -> None:
    """--udp6-zero-csum-tx/-rx against the kernel vxlan's udp6zerocsumtx/udp6zerocsumrx (RFC 6935/6936).

    A zero UDP checksum over IPv6 is accepted only where it was allowed: the kernel
    sending zero (udp6zerocsumtx) reaches ovl-dp's containers only with
    --udp6-zero-csum-rx, and is otherwise dropped by host 1's kernel before ovl-dp
    reads it (Udp6InCsumErrors); ovl-dp sending zero (--udp6-zero-csum-tx) reaches
    the kernel's vxlan only with udp6zerocsumrx, else host 2 drops it the same way.
    """
    require_ovl_ipv6("vxlan", "tunnel.udp6_zero_csum_tx", "tunnel.udp6_zero_csum_rx")

    def fails(lab: Lab, src: int, dst: int, host: int) -> None:
        """A ping from container src to dst gets nothing through; host's kernel counted the zero checksums."""
        before = udp6_csum_errors(lab, host)
        res = nsexec(lab.container(src), "ping", "-n", "-c", "3", "-i", "0.2", "-W", "1", lab.overlay_ip(dst),
                     check=False)  # fmt: skip
        assert res.returncode != 0, res.stdout
        assert udp6_csum_errors(lab, host) - before >= 3, res.stdout

    with peer_lab("linux", "vxlan") as lab:
        base = ("--mode", "vxlan", "--remote", lab.underlay_ip(2), "--vni", str(VNI), "--port", str(PORT))
        nsexec(lab.host(2), "ethtool", "-K", "ul0", "tx", "off")
        # The kernel sends zero checksums; ovl-dp without --udp6-zero-csum-rx never gets them.
        kernel_vxlan(lab, 2, 1, VNI, PORT, "udp6zerocsumtx")
        lab.start(1, *base)
        for i in (1, 2):  # static neighbours: the test is about the checksums, not about which ARP got lost
            j = 3 - i
            sh("ip", "-n", lab.container(i), "neigh", "replace", lab.overlay_ip(j), "lladdr",
               mac_of(lab.container(j), "eth0"), "dev", "eth0")  # fmt: skip
        fails(lab, 2, 1, host=1)
        assert lab.stop(lab.daemons[1]) == 0
        lab.start(1, *base, "--udp6-zero-csum-rx")
        ping(lab, 2, lab.overlay_ip(1))
        ping(lab, 1, lab.overlay_ip(2))
        assert lab.stop(lab.daemons[1]) == 0
        # ovl-dp sends zero checksums; the kernel takes them only with udp6zerocsumrx.
        sh("ip", "-n", lab.host(2), "link", "del", "vx0")
        kernel_vxlan(lab, 2, 1, VNI, PORT)
        lab.start(1, *base, "--udp6-zero-csum-tx")
        fails(lab, 1, 2, host=2)
        sh("ip", "-n", lab.host(2), "link", "del", "vx0")
        kernel_vxlan(lab, 2, 1, VNI, PORT, "udp6zerocsumrx")
        ping(lab, 1, lab.overlay_ip(2))
        ping(lab, 2, lab.overlay_ip(1))
        assert lab.stop(lab.daemons[1]) == 0


# -- ovl-dp against Open vSwitch's native tunnels ---------------------------------------------


def ovs_port_fdb(lab: Lab, i: int, port: str) -> dict[str, str]:
    """OVS host i's br-int MAC table: MAC -> VLAN, for the MACs learned on port."""
    ofport = lab.ovs[i].vsctl("get", "interface", port, "ofport").strip()
    rows = [line.split() for line in lab.ovs[i].appctl("fdb/show", "br-int").splitlines()[1:]]
    return {row[2]: row[1] for row in rows if len(row) == 4 and row[0] == ofport}


def check_with_ovs_native_port(lab: Lab) -> None:
    """ovl-dp on host 1 and OVS's native tunnel port tun0 on host 2 are up: traffic both ways, learning on
    both sides (frames cross tagged VLAN 20: both ends are trunks of OVS br-int), OVS tunnelled natively."""
    check_both_ways(lab)
    mac1, mac2 = mac_of(lab.container(1), "eth0"), mac_of(lab.container(2), "eth0")
    fdb = {(row["mac"], row.get("vlan")) for row in lab.ovl(1, "fdb") if row["remote"] == lab.underlay_ip(2)}
    assert (mac2, SEED_TAG) in fdb, fdb
    assert ovs_port_fdb(lab, 2, "tun0").get(mac1) == str(SEED_TAG), lab.ovs[2].appctl("fdb/show", "br-int")
    flows = lab.ovs[2].appctl("dpctl/dump-flows")
    assert "tnl_push(" in flows and "tnl_pop(" in flows, ovs_debug(lab, 2)
    snap = lab.ovl(1, "show")
    assert not {k: v for k, v in snap["drops"].items() if v}, snap
    assert lab.stop(lab.daemons[1]) == 0


@OFFLOADS
@pytest.mark.parametrize("zero", [False, True], ids=["csum", "zero-csum-tx"])
def test_vxlan6_with_ovs_native_vxlan_port(zero: bool, offload: str) -> None:
    """ovl-dp VXLAN over IPv6 <-> an OVS userspace native VXLAN port with an IPv6 remote_ip (key 5001, port 8472).

    OVS sends computed UDP checksums over IPv6 and takes zero ones as "not computed",
    so ovl-dp's --udp6-zero-csum-tx works towards it too.
    """
    require_ovl_ipv6("vxlan", *(("tunnel.udp6_zero_csum_tx",) if zero else ()))
    with peer_lab("ovs", "vxlan") as lab:
        lab.start(1, "--mode", "vxlan", "--remote", lab.underlay_ip(2), "--vni", str(VNI), "--port", str(PORT),
                  *PATHS[offload], *(("--udp6-zero-csum-tx",) if zero else ()))  # fmt: skip
        ovs_underlay_bridge(lab, 2)
        ovs_tunnel_port(lab, 2, "vxlan", 1, f"options:key={VNI}", f"options:dst_port={PORT}")
        check_with_ovs_native_port(lab)


@OFFLOADS
@pytest.mark.parametrize("key", [None, GRE_KEY], ids=["nokey", "key"])
def test_gre6_with_ovs_native_ip6gre_port(key: int | None, offload: str) -> None:
    """ovl-dp GRE over IPv6 <-> an OVS userspace native ip6gre port (type=ip6gre, IPv6 remote_ip),
    without and with a key. (This kernel has no ip6gretap, so OVS is the only GRE-over-IPv6 peer here.)"""
    require_ovl_ipv6("gre")
    key_args = ("--key", str(key)) if key is not None else ()
    with peer_lab("ovs", "gre", keyed=key is not None) as lab:
        lab.start(1, "--mode", "gre", "--remote", lab.underlay_ip(2), *key_args, *PATHS[offload])
        ovs_underlay_bridge(lab, 2)
        ovs_tunnel_port(lab, 2, "ip6gre", 1, *((f"options:key={key}",) if key is not None else ()))
        check_with_ovs_native_port(lab)


@pytest.mark.parametrize("kind,keyed", [("vxlan", True), ("ip6gre", False), ("ip6gre", True)],
                         ids=["vxlan", "ip6gre-nokey", "ip6gre-key"])  # fmt: skip
def test_ipv6_wire_format_against_ovs(kind: str, keyed: bool) -> None:
    """ovl-dp's packets and OVS's native tunnel's (type=vxlan with a key / ip6gre without and with one),
    same inner frames, field by field.

    Host 1 (OVS br-int, container on VLAN 20) runs ovl-dp (trunk TAP), then instead an
    OVS native tunnel port towards host 2 (the underlay moved onto br-phy); tcpdump on
    the switch's port of host 1 captures both. Equal: IPv6 version, payload length,
    next header, hop limit, addresses, flow label; UDP destination port, length,
    a valid checksum; VXLAN flags/VNI; GRE flags, version, protocol, key; the inner
    frame with its VLAN 20 tag; outer Ethernet addresses too (br-phy takes ul0's MAC).
    Pinned difference: traffic class (OVS copies the inner ECN bits, CE as ECT(0);
    ovl-dp: see ovl_outer_ecn).
    """
    mode = "vxlan" if kind == "vxlan" else "gre"
    require_ovl_ipv6(mode)
    if mode == "vxlan":
        tun: tuple[str, ...] = ("--vni", str(VNI), "--port", str(PORT))
        options: tuple[str, ...] = (f"options:key={VNI}", f"options:dst_port={PORT}")
    else:
        tun = ("--key", str(GRE_KEY)) if keyed else ()
        options = (f"options:key={GRE_KEY}",) if keyed else ()
    bpf = VXLAN_BPF if mode == "vxlan" else GRE_BPF
    with peer_lab("ovs", mode, keyed=mode == "gre" and keyed) as lab:
        frames = probe_frames(mac_of(lab.container(1), "eth0"))
        lab.start(1, "--mode", mode, "--remote", lab.underlay_ip(2), *tun)
        ovl = capture6(lab, "ovl", bpf, frames)
        assert lab.stop(lab.daemons[1]) == 0
        ovs_underlay_bridge(lab, 1)
        ovs_tunnel_port(lab, 1, kind, 2, *options)
        native = capture6(lab, f"ovs-{kind}", bpf, frames)
    ecn = ovl_has_ecn()
    for frame in frames:
        for name, got in (("ovl-dp", ovl), ("ovs", native)):
            a, b = got[frame]
            check_ipv6_header(a, lab, NH_UDP if mode == "vxlan" else NH_GRE)
            assert untag(a["inner"]) == frame and a["inner"][14:16] == SEED_TAG.to_bytes(2), (name, a)
            if mode == "vxlan":
                assert a["udp.sport"] in SPORT_RANGE and a["udp.sport"] == b["udp.sport"], (name, a, b)
                assert a["udp.chksum"] != 0 and a["udp.csum_ok"], (name, a)
        o, n = ovl[frame][0], native[frame][0]
        assert n["ip6.tc"] == outer_ecn(frame) and o["ip6.tc"] == ovl_outer_ecn(frame, ecn), (o, n)
        known = {"udp.sport", "udp.chksum", "udp.csum_ok", "ip6.tc"}
        diff = {f: (o[f], n[f]) for f in o if f not in known and o[f] != n[f]}
        assert not diff, f"ovl-dp vs OVS {kind} differ in {diff} for inner frame {frame.hex()}"
        if mode == "gre":
            assert (o["gre.key_present"], o["gre.key"]) == ((1, GRE_KEY) if keyed else (0, None)), o
            assert (o["gre.chksum_present"], o["gre.seqnum_present"], o["gre.proto"]) == (0, 0, ETH_P_TEB), o
