"""The outer DS field, TTL and DF on the wire (--tos, --ttl, --df), and ECN decapsulation (RFC 6040).

Encapsulation: container 1 sends the same crafted frames (IPv4 with every ECN codepoint, DSCPs, TTLs,
DF or not; IPv6 with traffic classes and hop limits; an 802.1Q-tagged IPv4 frame; ARP) through
host 1, which runs ovl-dp (the C path, --no-fast-path, the C path with --udp-gso --tx-ring off: a lone
packet leaves through a UDP socket, its TOS and TTL as cmsgs; two copies caught in one batch in one
UDP_SEGMENT send; test_udp_gso_sends_carry_the_outer_fields makes sure of the latter), then the
kernel's vxlan device configured the same way (`tos`, `ttl`, `df`); tcpdump on the switch's port
of host 1 captures what each puts on the underlay, and the outer IPv4 headers are compared field
by field, and with datapath/ecn.py's outer_fields. GRE (this kernel has no gretap) is held against
the reference only, both datapaths.

The differences from the kernel found here, pinned (see README, "ECN, TOS, TTL, DF"):
- an inner CE goes out as CE (RFC 6040 normal mode copies the ECN field); the kernel's
  INET_ECN_encapsulate sends ECT(0) for it.

Decapsulation: host 2 sends hand-made VXLAN / GRE packets with an outer CE / ECT(1) from a raw
socket (the kernel's vxlan never sends CE itself: it encapsulates CE as ECT(0)), and what reaches
container 1 is captured: ECT inner packets arrive marked CE (IPv4 checksum right), a Not-ECT one is
dropped and counted (rx_ecn), rx_ecn_ce counts the marks. End to end: TCP with ECN between the
containers while host 2's underlay marks CE like a congested router (nftables; this kernel has no
marking qdisc): the marks reach container 2, whose ECE comes back, and the transfer goes on.
"""

from __future__ import annotations

import select
import socket
import sys
import time
from typing import Any

import pytest

from control.lab.hosts import Lab, container_mtu
from control.lab.peers import kernel_vxlan
from control.lab.shell import mac_of, nsexec
from datapath import ecn, fast
from tests.interop_util import Capture, send_frames
from tests.isolated import run_isolated

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("no_leftovers")]

VNI = 5001
PORT = 8472
KEY = 77


def probe_frames(mac1: str) -> list[bytes]:
    """Flooded inner frames from container 1 that cross every branch of the outer fields."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import ARP, Dot1Q, Ether

    b, ip1, dst = "ff:ff:ff:ff:ff:ff", "172.20.1.1", "172.20.1.255"
    frames = [
        Ether(dst=b, src=mac1) / IP(src=ip1, dst=dst, tos=0xB8 | ecn.ECT_0, ttl=33, flags="DF") / UDP() / b"ef",
        Ether(dst=b, src=mac1) / IP(src=ip1, dst=dst, tos=0x28 | ecn.CE, ttl=200) / TCP(dport=80),
        Ether(dst=b, src=mac1) / IP(src=ip1, dst=dst, tos=ecn.ECT_1, ttl=1, flags="DF") / UDP(dport=7) / b"l4s",
        Ether(dst=b, src=mac1) / IP(src=ip1, dst=dst, tos=0x20, ttl=64) / UDP(dport=9) / b"not-ect",
        Ether(dst="33:33:00:00:00:01", src=mac1) / IPv6(src="fd00:20::1", dst="ff02::1", tc=0xB9, hlim=7) / UDP(),
        Ether(dst="33:33:00:00:00:02", src=mac1) / IPv6(src="fd00:20::1", dst="ff02::2", tc=ecn.CE, hlim=255) / UDP(),
        Ether(dst=b, src=mac1) / Dot1Q(vlan=30) / IP(src="172.20.30.1", dst="172.20.30.255", tos=0x48 | ecn.ECT_0,
                                                        ttl=9, flags="DF") / UDP(dport=30),
        Ether(dst=b, src=mac1) / ARP(hwsrc=mac1, psrc=ip1, pdst="172.20.1.2"),
    ]  # fmt: skip
    return [bytes(f) for f in frames]


def outer(pkt: bytes, mode: str) -> dict[str, Any]:
    """The outer IPv4 fields of a captured tunnel packet, whether its header checksum is right, the inner frame."""
    from scapy.layers.inet import IP
    from scapy.layers.l2 import Ether

    ip = Ether(pkt)[IP]
    again = IP(bytes(ip))
    del again.chksum
    raw = bytes(ip.payload)
    # behind UDP + VXLAN, or GRE with or without the key
    inner = raw[16:] if mode == "vxlan" else raw[8:] if raw[0] & 0x20 else raw[4:]
    return {"tos": ip.tos, "ttl": ip.ttl, "df": bool(int(ip.flags) & 2), "frag": ip.frag, "proto": ip.proto,
            "csum_ok": IP(bytes(again)).chksum == ip.chksum, "inner": inner}  # fmt: skip


def capture(lab: Lab, mode: str, name: str, frames: list[bytes]) -> dict[bytes, dict[str, Any]]:
    """Send each frame twice from container 1; the outer fields host 1 sent each with (both copies the same)."""
    bpf = f"src host {lab.underlay_ip(1)} and " + (f"udp dst port {PORT}" if mode == "vxlan" else "ip proto 47")
    cap = Capture(lab, lab.switch, "p1", bpf, name)
    send_frames(lab.container(1), "eth0", frames, count=2)
    got: dict[bytes, list[dict[str, Any]]] = {f: [] for f in frames}
    for pkt in cap.stop():
        d = outer(pkt, mode)
        if d["inner"] in got:
            got[d["inner"]].append(d)
    assert all(len(v) == 2 for v in got.values()), (name, {f.hex(): len(v) for f, v in got.items()})
    for v in got.values():
        assert v[0] == v[1], (name, v)
    return {f: v[0] for f, v in got.items()}


def fields(d: dict[str, Any]) -> tuple[int, int, bool]:
    return d["tos"], d["ttl"], d["df"]


# (name, ovl-dp options, kernel vxlan options, (tos, ttl, df) for the reference)
SETTINGS = [
    ("inherit", ("--tos", "inherit", "--ttl", "inherit", "--df", "inherit"),
     ("tos", "inherit", "ttl", "inherit", "df", "inherit"), ("inherit", "inherit", "inherit")),
    ("fixed", ("--tos", "0xb8", "--ttl", "17", "--df", "set"), ("tos", "0xb8", "ttl", "17", "df", "set"),
     (0xB8, 17, "set")),
    ("defaults", (), (), (0, 64, "unset")),
]  # fmt: skip


@pytest.mark.parametrize("name,ovl_opts,kernel_opts,ref", SETTINGS, ids=[s[0] for s in SETTINGS])
def test_vxlan_outer_fields_against_the_kernel(
    name: str, ovl_opts: tuple[str, ...], kernel_opts: tuple[str, ...], ref: tuple[Any, Any, str]
) -> None:
    """ovl-dp (C, C with --udp-gso, Python) and the kernel's vxlan, configured alike, put the same outer
    DS field, TTL and DF on the wire for the same inner frames, but for the pinned CE difference."""
    with Lab(2) as lab:
        lab.build(container_mtu("vxlan"))
        frames = probe_frames(mac_of(lab.container(1), "eth0"))
        base = ("--mode", "vxlan", "--remote", lab.underlay_ip(2), "--vni", str(VNI), "--port", str(PORT))
        runs: dict[str, dict[bytes, dict[str, Any]]] = {}
        for run, extra in (("c", ()), ("python", ("--no-fast-path",)), ("c-gso", ("--udp-gso", "--tx-ring", "off"))):
            if run == "c-gso":  # the kernel segments the UDP_SEGMENT sends before the veth (it would pass them
                nsexec(lab.host(1), "ethtool", "-K", "ul0", "tx-udp-segmentation", "off")  # whole): one per frame
            lab.start(1, *base, *ovl_opts, *extra)
            runs[run] = capture(lab, "vxlan", f"{name}-{run}", frames)
            assert lab.stop(lab.daemons[1]) == 0
        nsexec(lab.host(1), "ethtool", "-K", "ul0", "tx", "off")
        kernel_vxlan(lab, 1, 2, VNI, PORT, *kernel_opts)
        kern = capture(lab, "vxlan", f"{name}-kernel", frames)

    tos, ttl, df = ref
    for frame in frames:
        want = ecn.outer_fields(frame, tos, ttl, df)
        for run, got in runs.items():
            o = got[frame]
            assert fields(o) == want, (run, frame.hex(), o)
            assert o["csum_ok"] and o["frag"] == 0, (run, o)
        k = fields(kern[frame])
        o = fields(runs["c"][frame])
        if ecn.inner_ip(frame)[2] & ecn.ECN_MASK == ecn.CE:  # pinned: CE copied as CE; the kernel sends ECT(0)
            assert (o[0] & ecn.ECN_MASK, k[0] & ecn.ECN_MASK) == (ecn.CE, ecn.ECT_0), (frame.hex(), o, k)
            o = (o[0] & ~ecn.ECN_MASK | ecn.ECT_0, *o[1:])
        assert o == k, f"{name}: ovl-dp {o} vs kernel {k} for inner frame {frame.hex()}"


@pytest.mark.parametrize("fast", [True, False], ids=["c", "python"])
def test_gre_outer_fields(fast: bool) -> None:
    """GRE (key 77): each setting's outer fields on the wire are the reference's, header checksums right."""
    with Lab(2) as lab:
        lab.build(container_mtu("gre", tagged=False))
        frames = probe_frames(mac_of(lab.container(1), "eth0"))
        base = ("--mode", "gre", "--remote", lab.underlay_ip(2), "--key", str(KEY))
        for name, opts, _, ref in SETTINGS:
            lab.start(1, *base, *opts, *(() if fast else ("--no-fast-path",)))
            got = capture(lab, "gre", f"gre-{name}", frames)
            assert lab.stop(lab.daemons[1]) == 0
            tos, ttl, df = ref
            if name == "defaults":
                df = "set"  # GRE's default, as the kernel's gretap
            for frame in frames:
                o = got[frame]
                assert fields(o) == ecn.outer_fields(frame, tos, ttl, df), (name, frame.hex(), o)
                assert o["csum_ok"] and o["proto"] == 47, o


# -- decapsulation ------------------------------------------------------------------------

SEND_RAW = """
import socket, sys
with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
    for pkt in sys.argv[2:]:
        s.sendto(bytes.fromhex(pkt), (sys.argv[1], 0))
"""


def decap_frames(mac1: str, mac2: str) -> list[tuple[bytes, int]]:
    """(inner frame from container 2's MAC to container 1, outer DS field) pairs."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    def v4(tos: int, port: int) -> bytes:
        return bytes(Ether(dst=mac1, src=mac2) / IP(src="172.20.1.2", dst="172.20.1.1", tos=tos) / UDP(dport=port))

    def v6(tc: int, port: int) -> bytes:
        return bytes(Ether(dst=mac1, src=mac2) / IPv6(src="fd00:20::2", dst="fd00:20::1", tc=tc) / UDP(dport=port))

    return [
        (v4(0xB8 | ecn.ECT_0, 1001), 0x20 | ecn.CE),  # -> CE
        (v4(ecn.ECT_1, 1002), ecn.CE),  # -> CE
        (v4(0x48, 1003), ecn.CE),  # Not-ECT under CE: dropped
        (v4(ecn.ECT_0, 1004), ecn.ECT_1),  # -> ECT(1)
        (v4(0x10, 1005), ecn.ECT_0),  # Not-ECT under ECT: as it is
        (v6(0xB8 | ecn.ECT_0, 1006), ecn.CE),  # -> CE
        (v6(0, 1007), ecn.CE),  # dropped
    ]


def tunnel_packet(mode: str, frame: bytes, tos: int, src: str, dst: str) -> bytes:
    """The outer IPv4 packet (DS field tos) carrying frame in VXLAN (VNI, PORT) or GRE (KEY)."""
    from scapy.layers.inet import GRE, IP, UDP
    from scapy.layers.vxlan import VXLAN

    if mode == "vxlan":
        pkt = IP(src=src, dst=dst, tos=tos) / UDP(sport=40000, dport=PORT, chksum=0) / VXLAN(vni=VNI, flags=0x08)
        return bytes(pkt / frame)
    return bytes(IP(src=src, dst=dst, tos=tos) / GRE(key_present=1, key=KEY, proto=0x6558) / frame)


@pytest.mark.parametrize("mode", ["vxlan", "gre"])
@pytest.mark.parametrize("fast", [True, False], ids=["c", "python"])
def test_ecn_decapsulation(mode: str, fast: bool) -> None:
    """Outer CE marks ECT inner packets CE, drops Not-ECT ones (counted); outer ECT(1) makes ECT(0) ECT(1)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    with Lab(2) as lab:
        lab.build(container_mtu(mode))
        mac1, mac2 = mac_of(lab.container(1), "eth0"), mac_of(lab.container(2), "eth0")
        extra = ("--vni", str(VNI), "--port", str(PORT)) if mode == "vxlan" else ("--key", str(KEY))
        lab.start(1, "--mode", mode, "--remote", lab.underlay_ip(2), *extra, *(() if fast else ("--no-fast-path",)))
        cases = decap_frames(mac1, mac2)
        pkts = [tunnel_packet(mode, f, tos, lab.underlay_ip(2), lab.underlay_ip(1)).hex() for f, tos in cases]
        cap = Capture(lab, lab.container(1), "eth0", f"ether src {mac2} and udp", f"decap-{mode}")
        nsexec(lab.host(2), sys.executable, "-c", SEND_RAW, lab.underlay_ip(1), *pkts)
        got = cap.stop()
        show = lab.ovl(1, "show")

    def ecn_of(frame: bytes) -> int:
        return ecn.inner_ip(frame)[2] & ecn.ECN_MASK

    def port_of(frame: bytes) -> int:
        return int(Ether(frame)[UDP].dport)

    by_port = {port_of(f): f for f in got}
    sent = {port_of(f): f for f, _ in cases}
    want = {1001: ecn.CE, 1002: ecn.CE, 1004: ecn.ECT_1, 1005: ecn.NOT_ECT, 1006: ecn.CE}
    assert sorted(by_port) == sorted(want), [f.hex() for f in got]
    for port, mark in want.items():
        f, s = by_port[port], Ether(sent[port])
        assert ecn_of(f) == mark, (port, f.hex())
        eth = Ether(f)
        if IP in eth:  # the header checksum follows the change
            again = IP(bytes(eth[IP]))
            del again.chksum
            assert IP(bytes(again)).chksum == eth[IP].chksum, f.hex()
            eth[IP].tos, eth[IP].chksum = s[IP].tos, s[IP].chksum
        else:
            eth[IPv6].tc = s[IPv6].tc
        assert bytes(eth) == bytes(s), (port, f.hex())  # nothing else changed (the DSCP neither)
    assert show["drops"]["rx_ecn"] == 2, show
    assert show["stats"]["rx_ecn_ce"] == 3, show


# -- UDP GSO sends: the kernel builds the outer header from the socket and the cmsgs --------------------


def test_udp_gso_sends_carry_the_outer_fields() -> None:
    """--tos/--ttl/--df inherit with UDP_SEGMENT sends: each run's TOS and TTL reach the wire as IP_TOS /
    IP_TTL cmsgs and DF comes from the socket; a super-frame without DF (which the DF sockets cannot send)
    leaves through the raw socket with the same fields. Checked on loopback with an AF_PACKET socket."""

    def body() -> None:
        from scapy.layers.inet import IP

        from datapath.io import underlay
        from tests.offload_frames import GSO_TCPV4, GSO_TCPV6, NEEDS_CSUM, _cfg, super_frame, vnet

        cfg = _cfg(batch=64, udp_gso=True, tos="inherit", ttl="inherit", df="inherit")
        port = cfg.encap.port
        socks = underlay.open_gso_sockets(cfg.bind, 64, df=True)
        fwd = fast.FastForwarder(cfg, tap_vnet=10, gso_socks=socks)
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        b.setblocking(False)
        send = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        recv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        recv.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE
        recv.bind((cfg.bind, port))
        sniff = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
        sniff.bind(("lo", 0))
        sniff.setblocking(False)

        v4, l4 = super_frame(bytes(range(256)) * 40)  # DF, TTL 61, DS 0x2A (DSCP 10, ECT(0))
        v6, l6 = super_frame(bytes(range(256)) * 40, v6=True)  # hop limit 61, class 0x28
        nodf = bytearray(v4)
        nodf[14 + 6] &= ~0x40  # no DF (tso_prepare does not mind; each segment's header checksum is made anew)
        nodf[14 + 8] = 5  # TTL 5
        cases = [(v4, l4, GSO_TCPV4, (0x2A, 61, True), True), (v6, l6, GSO_TCPV6, (0x28, 61, True), True),
                 (bytes(nodf), l4, GSO_TCPV4, (0x2A, 5, False), False)]  # fmt: skip
        for frame, off, gso, want, via_gso in cases:
            before, packets = fwd.snapshot().stats["tx_gso"], fwd.snapshot().remotes[0]["tx_packets"]
            a.send(vnet(NEEDS_CSUM, gso, 0, 1300, off, 16) + frame)
            select.select([b], [], [], 1)
            assert fwd.from_tap(b.fileno(), send) == 1
            sent = fwd.snapshot().remotes[0]["tx_packets"] - packets
            assert (fwd.snapshot().stats["tx_gso"] > before) == via_gso
            seen = []
            end = time.monotonic() + 5
            while len(seen) < 1 and time.monotonic() < end:
                select.select([sniff], [], [], 0.1)
                while True:
                    try:
                        pkt, addr = sniff.recvfrom(1 << 17)
                    except BlockingIOError:
                        break
                    ip = IP(pkt)
                    if addr[2] == 0 and ip.proto == 17 and ip.dport == port:  # PACKET_HOST: the looped-back copy
                        seen.append((ip.tos, ip.ttl, bool(int(ip.flags) & 2)))
            assert seen and all(s == want for s in seen), (want, seen)
            n = 0
            while select.select([recv], [], [], 0.5)[0] and n < sent:
                recv.recv(65536)
                n += 1
            assert n == sent, (n, sent)  # every segment arrived
            while True:  # what the sniffer has left of this frame
                try:
                    sniff.recv(1 << 17)
                except BlockingIOError:
                    break

    run_isolated(body)


# -- end to end: a router on the underlay marks CE ------------------------------------------------------


@pytest.mark.parametrize("mode", ["vxlan", "gre"])
@pytest.mark.parametrize("fast", [True, False], ids=["c", "python"])
def test_ecn_end_to_end_through_a_marking_router(mode: str, fast: bool) -> None:
    """TCP with ECN between the containers, over ovl-dp on both hosts; 1 in 20 ECT(0) packets reaching host 2
    is marked CE as a congested router would (an nftables netdev ingress rule on host 2's underlay: this
    kernel has no marking qdisc, no netem, fq_codel or red). The outer packets are ECT(0) because the
    inner ones are (copied), host 2's ovl-dp passes the mark on (rx_ecn_ce), container 2 sees CE and
    answers with ECE, and the transfer completes."""
    with Lab(2) as lab:
        lab.build(container_mtu(mode))
        for i in (1, 2):
            nsexec(lab.container(i), "sysctl", "-qw", "net.ipv4.tcp_ecn=1")
        ids = ("--vni", str(VNI)) if mode == "vxlan" else ()  # GRE without a key: container_mtu's overhead
        lab.start_mesh(mode, *ids, *(() if fast else ("--no-fast-path",)))
        lab.ping(1, 2, count=2)  # ARP and learning before any loss
        h2 = lab.host(2)
        nsexec(h2, "nft", "add table netdev ecnmark")
        nsexec(h2, "nft", "add chain netdev ecnmark in { type filter hook ingress device ul0 priority 0; }")
        nsexec(h2, "nft", "add rule netdev ecnmark in ip ecn ect0 numgen random mod 20 0 ip ecn set ce")
        ce = Capture(lab, lab.container(2), "eth0", "tcp and (ip[1] & 3) == 3", f"ce-{mode}")
        ece = Capture(lab, lab.container(1), "eth0", "tcp and (tcp[13] & 0x40) != 0", f"ece-{mode}")
        result = lab.iperf3(1, 2, 2)
        marked, echoed = ce.stop(), ece.stop()
        show = lab.ovl(2, "show")
    assert "error" not in result, result
    assert result["end"]["sum_received"]["bytes"] > 100_000, result["end"]["sum_received"]
    assert show["stats"]["rx_ecn_ce"] > 0 and show["drops"]["rx_ecn"] == 0, show
    assert marked and echoed, (len(marked), len(echoed))
