"""The pure-Python codecs against scapy as an independent dissector, round trips, malformed input.

The strategies and the malformed-packet corpus here are reused by
tests/diff/test_codec.py to hold the C fast path to the same reference.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, IPOption_NOP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, GRE, Dot1AD, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, Raw
from scapy.utils import checksum as scapy_checksum

from datapath import ether
from datapath.counters import Drop
from datapath.encap import gre, ipv4, vxlan

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ipv4_addrs = st.binary(min_size=4, max_size=4)
macs = st.binary(min_size=6, max_size=6)
vnis = st.integers(0, vxlan.VNI_MAX)
keys = st.one_of(st.none(), st.integers(0, gre.KEY_MAX))
ports = st.integers(0, 65535)
payloads = st.binary(max_size=64)


@st.composite
def structured_frames(draw: st.DrawFn) -> bytes:
    """Ethernet frames scapy builds: IPv4/IPv6 with TCP/UDP, fragments, VLAN tags, ARP, odd lengths."""
    eth = Ether(dst=ether.format_mac(draw(macs)), src=ether.format_mac(draw(macs)))
    kind = draw(st.sampled_from(["ip_tcp", "ip_udp", "ip_frag", "ip_opts", "ip6_tcp", "ip6_other", "arp", "raw"]))
    a, b = socket.inet_ntoa(draw(ipv4_addrs)), socket.inet_ntoa(draw(ipv4_addrs))
    l4 = TCP(sport=draw(ports), dport=draw(ports)) if draw(st.booleans()) else UDP(sport=draw(ports), dport=draw(ports))
    inner: Packet
    if kind == "ip_tcp":
        inner = IP(src=a, dst=b) / TCP(sport=draw(ports), dport=draw(ports))
    elif kind == "ip_udp":
        inner = IP(src=a, dst=b) / UDP(sport=draw(ports), dport=draw(ports))
    elif kind == "ip_frag":
        inner = IP(src=a, dst=b, flags="MF" if draw(st.booleans()) else 0, frag=draw(st.integers(0, 100))) / l4
    elif kind == "ip_opts":
        inner = IP(src=a, dst=b, options=[IPOption_NOP()] * draw(st.integers(1, 8))) / l4
    elif kind == "ip6_tcp":
        inner = IPv6(src="2001:db8::1", dst="2001:db8::2") / l4
    elif kind == "ip6_other":
        inner = IPv6(src="2001:db8::1", dst="2001:db8::3", nh=draw(st.integers(0, 255)))
    elif kind == "arp":
        inner = ARP(psrc=a, pdst=b)
    else:
        inner = Raw(draw(payloads))
    vlan = draw(st.sampled_from([None, Dot1Q, Dot1AD]))
    frame = eth / vlan(vlan=draw(st.integers(0, 4095))) / inner if vlan else eth / inner
    data = bytes(frame) + draw(payloads)
    cut = draw(st.integers(ether.ETH_HLEN, len(data)))  # truncated headers must hash too
    return data[:cut]


frames = st.one_of(st.binary(min_size=ether.ETH_HLEN, max_size=200), structured_frames())


def fnv1a(data: bytes) -> int:
    h = 0x811C9DC5
    for c in data:
        h = ((h ^ c) * 0x01000193) % 2**32
    return h


# -- flow hash, against keys built from scapy's fields --------------------------------


@pytest.mark.parametrize("vlan", [False, True])
def test_flow_hash_ipv4_ports_from_scapy_fields(vlan: bool) -> None:
    l3 = IP(src="10.1.2.3", dst="10.4.5.6") / TCP(sport=1234, dport=80) / b"data"
    frame = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / (Dot1Q(vlan=20) / l3 if vlan else l3)
    p = Ether(bytes(frame))
    ip, tcp = p[IP], p[TCP]
    key = socket.inet_aton(ip.src) + socket.inet_aton(ip.dst) + bytes([ip.proto]) + struct.pack("!HH", tcp.sport, 80)
    assert ether.flow_hash(bytes(frame)) == fnv1a(key)
    # Same flow, other payload: same hash; other port: another hash.
    assert ether.flow_hash(bytes(frame) + b"more") == fnv1a(key)
    other = Ether(bytes(frame))
    other[TCP].dport = 81
    assert ether.flow_hash(bytes(other)) != fnv1a(key)


def test_flow_hash_fragment_ipv6_and_non_ip() -> None:
    frag = bytes(Ether() / IP(src="1.1.1.1", dst="2.2.2.2", frag=10) / UDP(sport=1, dport=2))
    assert ether.flow_hash(frag) == fnv1a(socket.inet_aton("1.1.1.1") + socket.inet_aton("2.2.2.2") + b"\x11")
    v6 = bytes(Ether() / IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=7, dport=9))
    key6 = socket.inet_pton(socket.AF_INET6, "2001:db8::1") + socket.inet_pton(socket.AF_INET6, "2001:db8::2")
    assert ether.flow_hash(v6) == fnv1a(key6 + b"\x11" + struct.pack("!HH", 7, 9))
    arp = bytes(Ether(src="02:00:00:00:00:01", dst="ff:ff:ff:ff:ff:ff") / ARP())
    assert ether.flow_hash(arp) == fnv1a(arp[:12] + b"\x08\x06")


# -- VXLAN encap against scapy --------------------------------------------------------


def assert_outer_ipv4(p: IP, raw: bytes, src: bytes, dst: bytes, proto: int, ttl: int) -> None:
    assert p.version == 4 and p.ihl == 5 and p.tos == 0
    assert p.len == len(raw)
    assert p.id == 0 and p.flags == "DF" and p.frag == 0
    assert p.ttl == ttl and p.proto == proto
    assert p.src == socket.inet_ntoa(src) and p.dst == socket.inet_ntoa(dst)
    assert scapy_checksum(raw[:20]) == 0  # header checksum valid


@SETTINGS
@given(
    frame=frames, vni=vnis, src=ipv4_addrs, dst=ipv4_addrs, dport=ports, udp_csum=st.booleans(), ttl=st.integers(1, 255)
)
def test_vxlan_encap_matches_scapy(
    frame: bytes, vni: int, src: bytes, dst: bytes, dport: int, udp_csum: bool, ttl: int
) -> None:
    pkt = vxlan.encap(frame, vni=vni, src=src, dst=dst, dport=dport, udp_csum=udp_csum, ttl=ttl)
    p = IP(pkt)
    assert_outer_ipv4(p, pkt, src, dst, 17, ttl)
    u = p[UDP]
    assert vxlan.SRC_PORT_MIN <= u.sport < vxlan.SRC_PORT_MAX
    assert u.dport == dport and u.len == len(pkt) - 20
    if udp_csum:
        rebuilt = IP(pkt)
        del rebuilt[UDP].chksum
        assert u.chksum != 0 and IP(bytes(rebuilt))[UDP].chksum == u.chksum
    else:
        assert u.chksum == 0
    v = VXLAN(bytes(u.payload))
    assert int(v.flags) == 0x08 and v.vni == vni
    assert bytes(u.payload)[1:4] == b"\0\0\0" and bytes(u.payload)[7] == 0  # reserved
    assert bytes(v.payload) == frame
    assert vxlan.decap(bytes(u.payload), vni) == vxlan.VXLAN_HLEN


def test_vxlan_default_port_dissects_inner_ethernet() -> None:
    frame = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP() / TCP())
    p = IP(vxlan.encap(frame, vni=5000, src=b"\x0a\0\0\x01", dst=b"\x0a\0\0\x02"))
    assert p[UDP].dport == 4789 and p[VXLAN].vni == 5000
    assert p[VXLAN].payload.src == "02:00:00:00:00:01"


def test_vxlan_src_port_follows_flow() -> None:
    def port(sport: int, tail: bytes = b"") -> int:
        frame = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=sport, dport=80)) + tail
        return int(IP(vxlan.encap(frame, vni=1, src=b"\1\1\1\1", dst=b"\2\2\2\2"))[UDP].sport)

    assert port(1000) == port(1000, b"payload")
    assert len({port(p) for p in range(1000, 1100)}) > 50  # flows spread over the range


def test_vxlan_udp_checksum_zero_becomes_ffff() -> None:
    # Search a frame whose UDP checksum computes to 0: it must be sent as 0xffff (RFC 768).
    for i in range(200000):
        frame = bytes(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01")) + struct.pack("!I", i)
        pkt = vxlan.encap(frame, vni=1, src=b"\1\1\1\1", dst=b"\2\2\2\2", udp_csum=True)
        if pkt[26:28] == b"\xff\xff":
            rebuilt = IP(pkt)
            del rebuilt[UDP].chksum
            assert IP(bytes(rebuilt))[UDP].chksum == 0xFFFF  # scapy maps a computed 0 to 0xffff too
            return
    pytest.fail("no frame with checksum 0xffff found")


# -- GRE encap against scapy ------------------------------------------------------------


@SETTINGS
@given(frame=frames, key=keys, src=ipv4_addrs, dst=ipv4_addrs, ttl=st.integers(1, 255))
def test_gre_encap_matches_scapy(frame: bytes, key: int | None, src: bytes, dst: bytes, ttl: int) -> None:
    pkt = gre.encap(frame, key=key, src=src, dst=dst, ttl=ttl)
    p = IP(pkt)
    assert_outer_ipv4(p, pkt, src, dst, 47, ttl)
    g = p[GRE]
    assert g.chksum_present == 0 and g.routing_present == 0 and g.seqnum_present == 0
    assert g.strict_route_source == 0 and g.recursion_control == 0 and g.flags == 0 and g.version == 0
    assert g.proto == 0x6558
    assert g.key_present == (key is not None)
    if key is not None:
        assert g.key == key
    assert bytes(g.payload) == frame
    off = gre.decap(pkt, key)
    assert off == 20 + gre.header_len(key) and pkt[off:] == frame


# -- decap: round trips and malformed input ----------------------------------------------

FRAME = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="1.1.1.1", dst="2.2.2.2") / UDP())
SRC, DST = b"\x0a\0\0\x01", b"\x0a\0\0\x02"


def gre_packet(frame: bytes = FRAME, ip_opts: int = 0, **gre_fields: int) -> bytes:
    """An IPv4/GRE packet built by scapy (it computes a checksum when chksum_present is set)."""
    fields: dict[str, Any] = {"proto": 0x6558, **gre_fields}
    ip = IP(src="10.0.0.1", dst="10.0.0.2", options=[IPOption_NOP()] * ip_opts) if ip_opts else IP(src="10.0.0.1")
    return bytes(ip / GRE(**fields) / Raw(frame))


@SETTINGS
@given(frame=frames, vni=vnis)
def test_vxlan_round_trip(frame: bytes, vni: int) -> None:
    pkt = vxlan.encap(frame, vni=vni, src=SRC, dst=DST)
    payload = pkt[28:]
    off = vxlan.decap(payload, vni)
    assert payload[off:] == frame
    assert vxlan.decap(payload, (vni + 1) % (vxlan.VNI_MAX + 1)) == -Drop.RX_BAD_VNI


@SETTINGS
@given(frame=frames, key=keys)
def test_gre_round_trip(frame: bytes, key: int | None) -> None:
    pkt = gre.encap(frame, key=key, src=SRC, dst=DST)
    off = gre.decap(pkt, key)
    assert pkt[off:] == frame


def malformed_vxlan() -> Iterator[tuple[str, bytes, int, int]]:
    """(name, UDP payload, configured VNI, expected decap result)."""
    good = vxlan.header(77) + FRAME
    for n in range(len(vxlan.header(77)) + ether.ETH_HLEN):
        yield f"truncated{n}", good[:n], 77, -Drop.RX_TRUNCATED
    yield "no_i_flag", b"\x00" + good[1:], 77, -Drop.RX_BAD_FLAGS
    yield "other_flags_only", b"\xf7" + good[1:], 77, -Drop.RX_BAD_FLAGS
    yield "wrong_vni", good, 78, -Drop.RX_BAD_VNI
    yield "no_i_and_wrong_vni", b"\x00" + good[1:], 78, -Drop.RX_BAD_FLAGS
    yield "reserved_bits_ignored", b"\xff\xff\xff\xff" + good[4:7] + b"\xff" + good[8:], 77, 8
    yield "vni_0", vxlan.header(0) + FRAME, 0, 8
    yield "exact_minimum", good[:22], 77, 8
    yield "scapy_gpe_flags", bytes(VXLAN(flags=0x0C, vni=77) / Raw(FRAME)), 77, 8


def malformed_gre() -> Iterator[tuple[str, bytes, int | None, int]]:
    """(name, IPv4/GRE packet, configured key, expected decap result)."""
    plain = gre_packet()
    for n in range(20 + 4 + ether.ETH_HLEN):
        yield f"truncated{n}", plain[:n], None, -Drop.RX_TRUNCATED
    keyed = gre_packet(key_present=1, key=9)
    for n in range(20 + 8 + ether.ETH_HLEN):
        yield f"keyed_truncated{n}", keyed[:n], 9, -Drop.RX_TRUNCATED
    yield "not_ipv4", b"\x65" + plain[1:], None, -Drop.RX_TRUNCATED
    yield "ihl_too_small", b"\x44" + plain[1:], None, -Drop.RX_TRUNCATED
    yield "ihl_beyond_packet", b"\x4f" + plain[1:40], None, -Drop.RX_TRUNCATED
    yield "ip_options", gre_packet(ip_opts=4), None, 28
    yield "version_1", gre_packet(version=1), None, -Drop.RX_BAD_VERSION
    yield "version_7", gre_packet(version=7), None, -Drop.RX_BAD_VERSION
    yield "routing", gre_packet(routing_present=1), None, -Drop.RX_BAD_FLAGS
    yield "routing_and_version", gre_packet(routing_present=1, version=1), None, -Drop.RX_BAD_VERSION
    yield "proto_ip", gre_packet(proto=0x0800), None, -Drop.RX_BAD_PROTO
    yield "proto_and_routing", gre_packet(proto=0x0800, routing_present=1), None, -Drop.RX_BAD_FLAGS
    yield "wrong_key", keyed, 10, -Drop.RX_BAD_KEY
    yield "key_missing", plain, 9, -Drop.RX_BAD_KEY
    yield "unexpected_key", keyed, None, -Drop.RX_BAD_KEY
    yield "key_0_without_config", gre_packet(key_present=1, key=0), None, 28
    yield "no_key_with_key_0", plain, 0, 24
    yield "csum_ok", gre_packet(chksum_present=1), None, 28
    yield "csum_bad", gre_packet(chksum_present=1, chksum=0x1234), None, -Drop.RX_BAD_CSUM
    yield "csum_key_ok", gre_packet(chksum_present=1, key_present=1, key=9), 9, 32
    yield "csum_bad_and_wrong_key", gre_packet(chksum_present=1, chksum=1, key_present=1, key=9), 8, -Drop.RX_BAD_CSUM
    yield "csum_ok_wrong_key", gre_packet(chksum_present=1, key_present=1, key=9), 8, -Drop.RX_BAD_KEY
    yield "seq", gre_packet(seqnum_present=1, sequence_number=5), None, 28
    yield "csum_key_seq", gre_packet(chksum_present=1, key_present=1, key=3, seqnum_present=1), 3, 36
    yield "seq_truncated", gre_packet(frame=FRAME[:10], seqnum_present=1), None, -Drop.RX_TRUNCATED
    yield "odd_length_csum", gre_packet(frame=FRAME + b"x", chksum_present=1), None, 28
    full = gre_packet(chksum_present=1, key_present=1, key=3, seqnum_present=1)
    for n in range(24, 36 + ether.ETH_HLEN):
        yield f"options_truncated{n}", full[:n], 3, -Drop.RX_TRUNCATED


@pytest.mark.parametrize(("name", "payload", "vni", "expect"), list(malformed_vxlan()), ids=lambda v: "")
def test_vxlan_decap_malformed(name: str, payload: bytes, vni: int, expect: int) -> None:
    assert vxlan.decap(payload, vni) == expect, name


@pytest.mark.parametrize(("name", "packet", "key", "expect"), list(malformed_gre()), ids=lambda v: "")
def test_gre_decap_malformed(name: str, packet: bytes, key: int | None, expect: int) -> None:
    assert gre.decap(packet, key) == expect, name
    if expect >= 0:
        assert packet[expect:] == bytes(IP(packet)[GRE].payload)


def test_scapy_gre_checksum_is_what_decap_verifies() -> None:
    # scapy's own GRE checksum passes; flipping one payload bit breaks it.
    pkt = bytearray(gre_packet(chksum_present=1))
    assert gre.decap(bytes(pkt), None) == 28
    pkt[-1] ^= 1
    assert gre.decap(bytes(pkt), None) == -Drop.RX_BAD_CSUM


def test_ipv4_checksum_matches_scapy() -> None:
    for data in (b"", b"\x01", b"\x12\x34\x56", bytes(range(255)), bytes(IP(src="1.2.3.4") / UDP())):
        assert ipv4.checksum(data) == scapy_checksum(data)


# -- 802.1Q tags (VLAN mapping) and the parse step --------------------------------------


@SETTINGS
@given(frame=frames)
def test_vlan_id_matches_scapy(frame: bytes) -> None:
    tpid = int.from_bytes(frame[12:14], "big")
    want = Ether(frame)[Dot1Q].vlan if tpid == ether.ETH_P_8021Q and len(frame) >= 18 else 0  # 802.1ad is not a VLAN
    assert ether.vlan_id(frame) == want


@SETTINGS
@given(frame=frames, vid=st.integers(1, 4094), prio=st.integers(0, 7))
def test_strip_and_insert_tag_match_scapy(frame: bytes, vid: int, prio: int) -> None:
    tagged = ether.insert_vlan(frame, vid)
    p = Ether(tagged)
    assert p.dst == ether.format_mac(frame[:6]) and p.src == ether.format_mac(frame[6:12])
    assert p.type == 0x8100 and p[Dot1Q].vlan == vid and p[Dot1Q].prio == 0 and p[Dot1Q].dei == 0
    assert p[Dot1Q].type == int.from_bytes(frame[12:14], "big") and tagged[18:] == frame[14:]
    assert ether.vlan_id(tagged) == vid and ether.strip_vlan(tagged) == frame
    # Stripping a tag scapy built (with a priority) gives scapy's untagged frame.
    dst, src, etype = ether.format_mac(frame[:6]), ether.format_mac(frame[6:12]), int.from_bytes(frame[12:14], "big")
    built = Ether(dst=dst, src=src) / Dot1Q(vlan=vid, prio=prio, type=etype) / Raw(frame[14:])
    assert ether.strip_vlan(bytes(built)) == bytes(Ether(dst=dst, src=src, type=etype) / Raw(frame[14:])) == frame


@SETTINGS
@given(frame=frames, vni=vnis)
def test_vxlan_parse_reads_the_vni_scapy_reads(frame: bytes, vni: int) -> None:
    payload = vxlan.encap(frame, vni=vni, src=SRC, dst=DST)[28:]
    assert vxlan.parse(payload) == (vxlan.VXLAN_HLEN, VXLAN(payload).vni)


@SETTINGS
@given(frame=frames, key=keys, csum=st.booleans(), seq=st.booleans())
def test_gre_parse_reads_the_key_scapy_reads(frame: bytes, key: int | None, csum: bool, seq: bool) -> None:
    fields: dict[str, int] = {"chksum_present": int(csum), "seqnum_present": int(seq)}
    if key is not None:
        fields.update(key_present=1, key=key)
    pkt = gre_packet(frame, **fields)
    g = IP(pkt)[GRE]
    off, got = gre.parse(pkt)
    assert got == (g.key if g.key_present else 0) == (key or 0)  # no key field reads as key 0
    assert pkt[off:] == bytes(g.payload) == frame


@pytest.mark.parametrize(("name", "payload", "vni", "expect"), list(malformed_vxlan()), ids=lambda v: "")
def test_vxlan_decap_is_parse_then_vni(name: str, payload: bytes, vni: int, expect: int) -> None:
    off, got = vxlan.parse(payload)
    assert (off if off < 0 or got == vni else -Drop.RX_BAD_VNI) == expect, name
    assert got == 0 or off >= 0


@pytest.mark.parametrize(("name", "packet", "key", "expect"), list(malformed_gre()), ids=lambda v: "")
def test_gre_decap_is_parse_then_key(name: str, packet: bytes, key: int | None, expect: int) -> None:
    off, got = gre.parse(packet)
    assert (off if off < 0 or got == (key or 0) else -Drop.RX_BAD_KEY) == expect, name
    assert got == 0 or off >= 0
