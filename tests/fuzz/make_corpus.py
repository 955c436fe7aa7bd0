"""Writes the fuzzers' seed corpus, tests/fuzz/corpus/<target>/, from real frames.

The frames are built with scapy and the test frame builders (tests/offload_frames.py);
outer headers with the pure-Python reference encapsulations (datapath/encap). The input
layout of each target is described at the top of its harness, tests/fuzz/fuzz_<target>.c.
Run from anywhere; output is deterministic (seeds other than these, e.g. crash inputs kept
as regression seeds, are left alone)::

    python3 tests/fuzz/make_corpus.py
"""

from __future__ import annotations

import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from scapy.layers.inet import IP, TCP, UDP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether  # noqa: E402
from scapy.packet import Raw  # noqa: E402

from datapath.encap import gre, ipv4, vxlan  # noqa: E402
from tests.offload_frames import (  # noqa: E402
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    NEEDS_CSUM,
    partial,
    segment_stream,
    super_frame,
    vnet,
)

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
A, B = "02:00:00:00:00:01", "02:00:00:00:00:02"
LOCAL, REMOTE0 = bytes([10, 0, 0, 100]), bytes([10, 0, 0, 1])
BASE, MAPPED = 42, 1000  # fuzz_common.h: base id 42, VLAN 10 * (k + 1) in 42 + 1000 + k


def frames() -> dict[str, bytes]:
    """Inner frames of many kinds, by name."""
    ip4 = IP(src="10.1.0.1", dst="10.1.0.2")
    ip6 = IPv6(src="2001:db8::1", dst="2001:db8::2")
    return {
        "udp4": bytes(Ether(src=A, dst=B) / ip4 / UDP(sport=1234, dport=53) / Raw(b"q" * 20)),
        "tcp4": bytes(Ether(src=A, dst=B) / ip4 / TCP(sport=40000, dport=80, flags="S")),
        "tcp6": bytes(Ether(src=A, dst=B) / ip6 / TCP(sport=40000, dport=80, flags="A") / Raw(b"x" * 30)),
        "arp": bytes(Ether(src=A, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="10.1.0.1", pdst="10.1.0.2")),
        "vlan10": bytes(Ether(src=A, dst=B) / Dot1Q(vlan=10) / ip4 / UDP() / Raw(b"v" * 10)),
        "vlan20-prio": bytes(Ether(src=A, dst=B) / Dot1Q(vlan=20, prio=5) / ip4 / UDP()),
        "vlan5": bytes(Ether(src=A, dst=B) / Dot1Q(vlan=5) / ip4 / UDP()),
        "qinq": bytes(Ether(src=A, dst=B) / Dot1AD(vlan=100) / Dot1Q(vlan=10) / ip6 / UDP()),
        "bad-src": bytes(Ether(src="01:00:5e:00:00:01", dst=B) / ip4 / UDP()),
        "runt": bytes(Ether(src=A, dst=B))[:13],
    }


def record(meta: int, data: bytes) -> bytes:
    """One record of a multi-packet input (fuzz_common.h): meta, 16-bit length, data."""
    return bytes([meta]) + struct.pack("!H", len(data)) + data


def vxlan_payload(frame: bytes, vni: int, flags: int = vxlan.VXLAN_FLAG_I) -> bytes:
    return struct.pack("!B3xI", flags, vni << 8) + frame


def gre_packet(frame: bytes, *, key: int | None, csum: bool = False, seq: bool = False, version: int = 0,
               proto: int = gre.ETH_P_TEB, options: bool = False) -> bytes:  # fmt: skip
    """An IPv4 GRE packet with the optional fields asked for (RFC 2784, RFC 2890)."""
    flags = (0x8000 if csum else 0) | (0x2000 if key is not None else 0) | (0x1000 if seq else 0) | version
    opts = (b"\0\0\0\0" if csum else b"") + (struct.pack("!I", key) if key is not None else b"")
    opts += struct.pack("!I", 77) if seq else b""
    g = struct.pack("!HH", flags, proto) + opts + frame
    if csum:
        g = g[:4] + struct.pack("!H", ipv4.checksum(g)) + g[6:]
    hdr = ipv4.build_header(REMOTE0, LOCAL, ipv4.IPPROTO_GRE, len(g))
    if options:  # a 24-byte IPv4 header (one NOP-padded option word)
        total = 24 + len(g)
        raw = bytearray(hdr)
        raw[0] = 0x46
        raw[2:4] = struct.pack("!H", total)
        raw[10:12] = b"\0\0"
        raw += b"\x01\x01\x01\x00"
        raw[10:12] = struct.pack("!H", ipv4.checksum(bytes(raw)))
        hdr = bytes(raw)
    return hdr + g


def corpus() -> dict[str, dict[str, bytes]]:
    """Seeds by target and name."""
    f = frames()
    targets = ("rx_vxlan", "rx_gre", "rx_plan", "rx_super", "offload", "tap_tx", "vlan", "pmtu", "mss")
    out: dict[str, dict[str, bytes]] = {t: {} for t in targets}

    # rx_vxlan: a context byte, then records of UDP payloads.
    rx = out["rx_vxlan"]
    rx["mixed"] = b"\0" + b"".join(record(i % 3, vxlan_payload(fr, BASE)) for i, fr in enumerate(f.values()))
    rx["mapped"] = b"\0" + record(0, vxlan_payload(f["udp4"], MAPPED)) + record(1, vxlan_payload(f["tcp6"], MAPPED + 2))
    rx["bad"] = b"\0" + b"".join(
        (
            record(0, vxlan_payload(f["udp4"], BASE, flags=0)),
            record(0, vxlan_payload(f["udp4"], 7)),
            record(3, vxlan_payload(f["udp4"], BASE)),
            record(4, vxlan_payload(f["udp4"], BASE)),
            record(0, vxlan_payload(f["udp4"], BASE)[:20]),
        )
    )
    rx["base0"] = b"\1" + record(0, vxlan_payload(f["arp"], 0)) + record(2, vxlan_payload(f["vlan10"], 0))

    # rx_gre: a context byte, then records of IPv4 packets.
    g = out["rx_gre"]
    g["keyed"] = b"\0" + b"".join(record(i % 3, gre_packet(fr, key=BASE)) for i, fr in enumerate(f.values()))
    g["options"] = b"\0" + b"".join(
        (
            record(0, gre_packet(f["tcp4"], key=BASE, csum=True)),
            record(1, gre_packet(f["tcp4"], key=BASE, seq=True)),
            record(2, gre_packet(f["vlan5"], key=MAPPED + 1, csum=True, seq=True)),
            record(0, gre_packet(f["udp4"], key=BASE, options=True)),
        )
    )
    g["bad"] = b"\0" + b"".join(
        (
            record(0, gre_packet(f["udp4"], key=BASE, version=1)),
            record(0, gre_packet(f["udp4"], key=BASE, proto=0x0800)),
            record(0, gre_packet(f["udp4"], key=9)),
            record(0, gre_packet(f["udp4"], key=None)),
            record(0, gre_packet(f["udp4"], key=BASE, csum=True)[:-1] + b"\xff"),
            record(3, gre_packet(f["udp4"], key=BASE)),
            record(0, gre_packet(f["udp4"], key=BASE)[:30]),
        )
    )
    g["unkeyed"] = (
        b"\1" + record(0, gre_packet(f["arp"], key=None)) + record(1, gre_packet(f["tcp6"], key=None, csum=True))
    )

    # rx_plan: a context byte (virtio header of 10 or 12), then records of inner frames.
    p = out["rx_plan"]
    for name, stream in {
        "v4": segment_stream(4, 1000),
        "v6-opts": segment_stream(4, 800, v6=True, opts=True),
        "tagged": segment_stream(3, 500, tags=(Dot1Q(vlan=5),)),
    }.items():
        p[name] = b"\0" + b"".join(record(0, s) for s in stream)
    two = zip(segment_stream(3, 600), segment_stream(3, 600, sport=41000), strict=True)
    p["two-flows"] = b"\1" + b"".join(record(0, a) + record(0, b) for a, b in two)
    short = segment_stream(3, 700)
    p["fix-mapped"] = b"\0" + b"".join(record(4 | 8, s) for s in short) + record(1, f["udp4"])

    # rx_super: a context byte (bit 0 plain TAP, bit 1 lengths and checksums fixed, bit 2 full checksum), the TAP
    # MTU - 256 (2 bytes), one inner frame: super-packets as a kernel peer sends them, and a few that are not.
    r = out["rx_super"]
    mtu = struct.pack("!H", 1450 - 256)
    for name, (frame, _) in {
        "v4": super_frame(bytes(range(256)) * 40),
        "v6-opts": super_frame(bytes(range(200)) * 30, v6=True, opts=True),
        "tagged-cwr": super_frame(b"t" * 9000, tags=(Dot1Q(vlan=10),), flags="CEA"),
        "qinq-fin": super_frame(b"q" * 4000, tags=(Dot1AD(vlan=5), Dot1Q(vlan=20)), flags="FPA"),
    }.items():
        r[name] = b"\2" + mtu + frame
        r[name + "-plain"] = b"\3" + mtu + frame
    big, _ = super_frame(bytes(60000), opts=True)
    r["big-full-csum"] = b"\6" + struct.pack("!H", 9000 - 256) + big
    r["small-seed"] = b"\2" + mtu + segment_stream(1, 100)[0]
    udp_big = Ether(src=A, dst=B) / IP(src="10.1.0.1", dst="10.1.0.2") / UDP() / Raw(bytes(5000))
    r["udp-big"] = b"\1" + mtu + bytes(udp_big)

    # offload: meta (room, slot), 10-byte virtio header, frame.
    o = out["offload"]
    sf4, l4 = super_frame(bytes(range(256)) * 16)
    sf6, l46 = super_frame(bytes(range(200)) * 15, v6=True, opts=True)
    sft, l4t = super_frame(b"t" * 3000, tags=(Dot1Q(vlan=10),), flags="FPA")
    hdrs4 = l4 + 20
    o["tcpv4"] = bytes([2 | (1 << 3)]) + vnet(NEEDS_CSUM, GSO_TCPV4, hdrs4, 1000, l4, 16) + sf4
    o["tcpv6"] = bytes([7 | (2 << 3)]) + vnet(NEEDS_CSUM, GSO_TCPV6, l46 + 32, 1200, l46, 16) + sf6
    o["tagged-ecn"] = bytes([0 | (1 << 3)]) + vnet(NEEDS_CSUM, GSO_TCPV4 | GSO_ECN, l4t + 20, 1400, l4t, 16) + sft
    udp = bytes(Ether(src=A, dst=B) / IP(src="10.1.0.1", dst="10.1.0.2") / UDP(sport=5, dport=6) / Raw(b"u" * 33))
    o["csum-udp"] = bytes([1 << 3]) + vnet(NEEDS_CSUM, GSO_NONE, 0, 0, 34, 6) + partial(udp, 34, 6, 17)
    o["plain"] = bytes([0]) + vnet() + f["tcp4"]

    # tap_tx: a context byte, then records of TAP reads (virtio header + frame).
    t = out["tap_tx"]
    sfm, l4m = super_frame(b"m" * 4000, tags=(Dot1Q(vlan=10),))
    t["vxlan"] = b"\0" + b"".join(
        (
            record(0, vnet(NEEDS_CSUM, GSO_TCPV4, hdrs4, 1400, l4, 16) + sf4),
            record(0, vnet(NEEDS_CSUM, GSO_NONE, 0, 0, 34, 6) + partial(udp, 34, 6, 17)),
            record(0, vnet() + f["arp"]),
            record(0, vnet(NEEDS_CSUM, GSO_TCPV4, l4m + 20, 1400, l4m, 16) + sfm),
        )
    )
    t["gre-vnet12"] = b"\3" + record(0, vnet(NEEDS_CSUM, GSO_TCPV6, l46 + 32, 1300, l46, 16) + b"\0\0" + sf6)
    t["many"] = b"\2" + b"".join(record(0, vnet() + fr) for fr in f.values())

    # vlan: meta (VXLAN or GRE), frame.
    v = out["vlan"]
    for name in ("vlan10", "vlan20-prio", "vlan5", "qinq", "udp4", "bad-src"):
        v[f"vxlan-{name}"] = b"\0" + f[name]
        v[f"gre-{name}"] = b"\1" + f[name]

    # pmtu (issue 11): meta (GRE, give a tag back, --df set), usable MTU, remote 1's path MTU, frame.
    p = out["pmtu"]
    big4 = bytes(Ether(src=A, dst=B) / IP(src="172.20.1.1", dst="172.20.1.2", flags="DF") / UDP() / Raw(bytes(1460)))
    nodf = bytes(Ether(src=A, dst=B) / IP(src="172.20.1.1", dst="172.20.1.2") / UDP() / Raw(bytes(1460)))
    big6 = bytes(Ether(src=A, dst=B) / IPv6(src="fd00::1", dst="fd00::2") / UDP() / Raw(bytes(1440)))
    tagged = bytes(
        Ether(src=A, dst=B) / Dot1Q(vlan=10) / IP(src="1.1.1.1", dst="2.2.2.2", flags="DF") / Raw(bytes(1470))
    )
    for name, fr in (("v4-df", big4), ("v4-nodf", nodf), ("v6", big6), ("tagged", tagged), ("arp", f["arp"])):
        p[f"vxlan-{name}"] = b"\0" + struct.pack("!HH", 1450, 1400) + fr
        p[f"gre-tag-{name}"] = b"\3" + struct.pack("!HH", 1462, 1300) + fr
        p[f"df-set-{name}"] = b"\4" + struct.pack("!HH", 600, 576) + fr
    # mss: meta (bit 0 GRE, bit 1 the checksum may be a seed), 16-bit limit, frame.
    ms = out["mss"]
    opts = [("MSS", 9000), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)]
    odd = [("NOP", None), ("MSS", 0xFFFF), ("NOP", None), ("NOP", None), ("NOP", None)]
    syns = {
        "v4": Ether(src=A, dst=B) / IP(src="10.1.0.1", dst="10.1.0.2") / TCP(flags="S", options=opts),
        "v6-synack": Ether(src=A, dst=B) / IPv6(src="2001:db8::1", dst="2001:db8::2") / TCP(flags="SA", options=opts),
        "vlan10-odd": Ether(src=A, dst=B) / Dot1Q(vlan=10) / IP(src="10.1.0.1", dst="10.1.0.2") / TCP(flags="S",
                                                                                                        options=odd),
        "qinq-v6": Ether(src=A, dst=B) / Dot1AD(vlan=100) / Dot1Q(vlan=20) / IPv6() / TCP(flags="S", options=odd),
    }  # fmt: skip
    for name, pkt in syns.items():
        raw = bytes(pkt)
        ms[f"vxlan-{name}"] = b"\0" + struct.pack("!H", 1200) + raw
        ms[f"gre-{name}"] = b"\1" + struct.pack("!H", 0xFFFF) + raw
        l4 = len(raw) - len(bytes(pkt[TCP]))
        ms[f"seed-{name}"] = b"\2" + struct.pack("!H", 536) + partial(raw, l4, 16, 6)
    return out


def main() -> None:
    """Write every seed (existing files of the same name are overwritten)."""
    for target, seeds in corpus().items():
        d = os.path.join(CORPUS, target)
        os.makedirs(d, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(d, name), "wb") as fh:
                fh.write(data)
        print(f"{target}: {len(seeds)} seeds, {sum(map(len, seeds.values()))} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
