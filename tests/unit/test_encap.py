"""datapath/encap/: the Encap type, its two subclasses and the lookup table.

The module-level codecs (vxlan.encap/parse/decap, gre.encap/parse/decap) are
held against scapy in tests/unit/test_codec.py; here the classes are tested: their
lengths per mode and for a mapped VLAN, that build() is the codec with the
tunnel's settings, parse/decap with the tunnel's id, describe(), the table,
and the receiving socket.
"""

from __future__ import annotations

import os
import select
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datapath import ecn
from datapath.counters import Drop
from datapath.encap import ENCAPS, MODES, Encap, gre, ipv4, lookup, vxlan
from datapath.encap.gre import Gre
from datapath.encap.vxlan import Vxlan

SRC, DST = bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2])
FRAME = bytes.fromhex("ffffffffffff020000000001") + b"\x08\x06" + bytes(28)

frames = st.binary(min_size=14, max_size=120)
addrs = st.binary(min_size=4, max_size=4)
vnis = st.integers(0, vxlan.VNI_MAX)
keys = st.integers(0, gre.KEY_MAX)
ttls = st.integers(1, 255)


def gre_packet(flags: int, proto: int = gre.ETH_P_TEB, opts: bytes = b"", frame: bytes = FRAME) -> bytes:
    """An IPv4/GRE packet with the given GRE flags word, protocol and option words."""
    body = struct.pack("!HH", flags, proto) + opts + frame
    return ipv4.build_header(SRC, DST, ipv4.IPPROTO_GRE, len(body)) + body


# -- the table --------------------------------------------------------------------


def test_lookup_table() -> None:
    assert MODES == ("vxlan", "gre")
    assert dict(ENCAPS) == {"vxlan": Vxlan, "gre": Gre}
    assert lookup("vxlan") is Vxlan and lookup("gre") is Gre
    with pytest.raises(KeyError):
        lookup("geneve")
    for mode, cls in ENCAPS.items():
        assert cls.name == mode and issubclass(cls, Encap)


def test_class_attributes() -> None:
    assert (Vxlan.title, Vxlan.id_name, Vxlan.id_key, Vxlan.id_max) == ("VXLAN", "VNI", "vni", (1 << 24) - 1)
    assert (Gre.title, Gre.id_name, Gre.id_key, Gre.id_max) == ("GRE", "GRE key", "key", (1 << 32) - 1)
    assert Vxlan.udp and not Gre.udp
    assert (Vxlan.ip_proto, Gre.ip_proto) == (socket.IPPROTO_UDP, 47)
    assert (Vxlan.default_port, Gre.default_port) == (4789, 0)
    assert Vxlan.bad_id is Drop.RX_BAD_VNI and Gre.bad_id is Drop.RX_BAD_KEY
    for cls in (Vxlan, Gre):
        assert cls.bad_id not in cls.drops and Drop.RX_TRUNCATED in cls.drops
    assert set(Gre.drops) == {Drop.RX_TRUNCATED, Drop.RX_BAD_VERSION, Drop.RX_BAD_FLAGS, Drop.RX_BAD_PROTO,
                              Drop.RX_BAD_CSUM}  # fmt: skip
    assert set(Vxlan.drops) == {Drop.RX_TRUNCATED, Drop.RX_BAD_FLAGS}


def test_encap_is_abstract() -> None:
    with pytest.raises(TypeError):
        Encap(0)  # type: ignore[abstract]


def test_instance_settings_and_base_id() -> None:
    e = Vxlan(None)
    assert (e.tunnel_id, e.port, e.udp_csum, e.ttl, e.base_id) == (None, 0, False, 64, 0)
    g = Gre(7, ttl=9)
    assert (g.tunnel_id, g.ttl, g.base_id) == (7, 9, 7)
    assert Gre(0).base_id == 0 and Gre(None).base_id == 0


# -- lengths ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("enc", "header", "mapped_header"),
    [
        (Vxlan(None, port=4789), 16, 16),
        (Vxlan(5, port=8472, udp_csum=True), 16, 16),
        (Gre(None), 4, 8),
        (Gre(0), 8, 8),
        (Gre(gre.KEY_MAX), 8, 8),
    ],
)
def test_lengths(enc: Encap, header: int, mapped_header: int) -> None:
    assert enc.header_len() == enc.header_len(mapped=False) == header
    assert enc.header_len(mapped=True) == mapped_header
    for mapped, h in ((False, header), (True, mapped_header)):
        assert enc.outer_len(mapped) == 20 + h
        assert enc.overhead(mapped) == 20 + h + 14


def test_overheads_match_the_design() -> None:
    """VXLAN 50 bytes over IPv4, GRE+TEB 38, plus 4 for a key."""
    assert Vxlan(1).overhead() == vxlan.VXLAN_OVERHEAD == 50
    assert Gre(None).overhead() == gre.overhead(None) == 38
    assert Gre(1).overhead() == gre.overhead(1) == 42


@settings(max_examples=60)
@given(frames, addrs, addrs, st.integers(1, 65535), st.booleans(), ttls, vnis, st.one_of(st.none(), vnis))
def test_lengths_are_what_build_puts_in_front(
    frame: bytes, src: bytes, dst: bytes, port: int, csum: bool, ttl: int, vni: int, mapped: int | None
) -> None:
    enc = Vxlan(vni, port=port, udp_csum=csum, ttl=ttl)
    assert len(enc.build(frame, src, dst, mapped)) == enc.outer_len(mapped is not None) + len(frame)
    g = Gre(None, ttl=ttl)
    assert len(g.build(frame, src, dst)) == g.outer_len() + len(frame)
    assert len(g.build(frame, src, dst, vni)) == g.outer_len(mapped=True) + len(frame)


# -- build is the codec with the tunnel's settings ----------------------------------


@settings(max_examples=80)
@given(frames, addrs, addrs, st.one_of(st.none(), vnis), st.integers(1, 65535), st.booleans(), ttls)
def test_vxlan_build_is_the_codec(
    frame: bytes, src: bytes, dst: bytes, vni: int | None, port: int, csum: bool, ttl: int
) -> None:
    enc = Vxlan(vni, port=port, udp_csum=csum, ttl=ttl)
    tos, out_ttl, df = ecn.outer_fields(frame, 0, ttl, "unset")  # VXLAN's default --df: unset, as the kernel's
    want = vxlan.encap(frame, vni=vni or 0, src=src, dst=dst, dport=port, udp_csum=csum, ttl=out_ttl, tos=tos, df=df)
    assert out_ttl == ttl and not df
    assert enc.build(frame, src, dst) == want


@settings(max_examples=80)
@given(frames, addrs, addrs, vnis, vnis, st.integers(1, 65535), ttls)
def test_vxlan_build_in_a_mapped_vni(
    frame: bytes, src: bytes, dst: bytes, base: int, mapped: int, port: int, ttl: int
) -> None:
    enc = Vxlan(base, port=port, ttl=ttl)
    tos = ecn.outer_fields(frame, 0, ttl, "unset")[0]
    want = vxlan.encap(frame, vni=mapped, src=src, dst=dst, dport=port, ttl=ttl, tos=tos, df=False)
    assert enc.build(frame, src, dst, mapped) == want


@settings(max_examples=80)
@given(frames, addrs, addrs, st.one_of(st.none(), keys), st.one_of(st.none(), keys), ttls)
def test_gre_build_is_the_codec(
    frame: bytes, src: bytes, dst: bytes, key: int | None, mapped: int | None, ttl: int
) -> None:
    enc = Gre(key, ttl=ttl)
    tos = ecn.outer_fields(frame, 0, ttl, "set")[0]  # GRE's default --df: set, as the kernel's gretap
    assert enc.build(frame, src, dst) == gre.encap(frame, key=key, src=src, dst=dst, ttl=ttl, tos=tos)
    want_key = key if mapped is None else mapped
    assert enc.build(frame, src, dst, mapped) == gre.encap(frame, key=want_key, src=src, dst=dst, ttl=ttl, tos=tos)


def test_build_fields() -> None:
    """The settings land where they belong: TTL, protocol, addresses, port, VNI/key."""
    pkt = Vxlan(0x123456, port=8472, ttl=7).build(FRAME, SRC, DST)
    assert pkt[8] == 7 and pkt[9] == socket.IPPROTO_UDP and pkt[12:16] == SRC and pkt[16:20] == DST
    assert struct.unpack("!H", pkt[22:24])[0] == 8472
    assert pkt[28:36] == bytes.fromhex("0800000012345600") and pkt[36:] == FRAME
    pkt = Gre(0xDEADBEEF, ttl=200).build(FRAME, SRC, DST)
    assert pkt[8] == 200 and pkt[9] == 47
    assert pkt[20:28] == bytes.fromhex("20006558deadbeef") and pkt[28:] == FRAME
    assert Gre(None).build(FRAME, SRC, DST)[20:24] == bytes.fromhex("00006558")


# -- parse / decap with the tunnel's id ---------------------------------------------


@settings(max_examples=60)
@given(frames, vnis, vnis)
def test_vxlan_parse_and_decap(frame: bytes, vni: int, other: int) -> None:
    enc = Vxlan(vni, port=4789)
    payload = enc.build(frame, SRC, DST)[28:]  # what the UDP socket delivers
    assert enc.parse(payload) == (8, vni)
    assert enc.decap(payload) == 8 and payload[8:] == frame
    foreign = Vxlan(other, port=4789).build(frame, SRC, DST)[28:]
    assert enc.decap(foreign) == (8 if other == vni else -Drop.RX_BAD_VNI)


@settings(max_examples=60)
@given(frames, st.one_of(st.none(), keys), keys)
def test_gre_parse_and_decap(frame: bytes, key: int | None, other: int) -> None:
    enc = Gre(key)
    packet = enc.build(frame, SRC, DST)  # a raw GRE socket delivers the outer IPv4 header too
    off = 20 + enc.header_len()
    assert enc.parse(packet) == (off, key or 0)
    assert enc.decap(packet) == off and packet[off:] == frame
    foreign = Gre(other).build(frame, SRC, DST)
    assert enc.decap(foreign) == (28 if other == (key or 0) else -Drop.RX_BAD_KEY)


def test_gre_without_a_key_accepts_no_key_and_key_zero_only() -> None:
    enc = Gre(None)
    assert enc.decap(gre_packet(0)) == 24
    assert enc.decap(gre_packet(gre.GRE_KEY, opts=struct.pack("!I", 0))) == 28
    assert enc.decap(gre_packet(gre.GRE_KEY, opts=struct.pack("!I", 1))) == -Drop.RX_BAD_KEY
    assert Gre(1).decap(gre_packet(0)) == -Drop.RX_BAD_KEY


def test_vxlan_mapped_vni_parses_but_does_not_decap() -> None:
    enc = Vxlan(10, port=4789)
    payload = enc.build(FRAME, SRC, DST, 20)[28:]
    assert enc.parse(payload) == (8, 20) and enc.decap(payload) == -enc.bad_id


@pytest.mark.parametrize(
    ("packet", "drop"),
    [
        (gre_packet(0)[:23], Drop.RX_TRUNCATED),
        (gre_packet(1), Drop.RX_BAD_VERSION),
        (gre_packet(gre.GRE_ROUTING), Drop.RX_BAD_FLAGS),
        (gre_packet(0, proto=0x0800), Drop.RX_BAD_PROTO),
        (gre_packet(gre.GRE_CSUM, opts=b"\x12\x34\x00\x00"), Drop.RX_BAD_CSUM),
    ],
)
def test_gre_refusals_are_its_drops(packet: bytes, drop: Drop) -> None:
    enc = Gre(None)
    assert enc.parse(packet) == (-drop, 0) and enc.decap(packet) == -drop
    assert drop in enc.drops


@pytest.mark.parametrize(
    ("payload", "drop"),
    [(vxlan.header(5) + FRAME[:13], Drop.RX_TRUNCATED), (b"\x00" * 8 + FRAME, Drop.RX_BAD_FLAGS)],
)
def test_vxlan_refusals_are_its_drops(payload: bytes, drop: Drop) -> None:
    enc = Vxlan(5, port=4789)
    assert enc.parse(payload) == (-drop, 0) and enc.decap(payload) == -drop
    assert drop in enc.drops


# -- describe ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("enc", "text"),
    [
        (Vxlan(None, port=4789), "vni 0 port 4789"),
        (Vxlan(5001, port=8472), "vni 5001 port 8472"),
        (Gre(None), "key none"),
        (Gre(0), "key 0"),
        (Gre(4242), "key 4242"),
    ],
)
def test_describe(enc: Encap, text: str) -> None:
    assert enc.describe() == text


# -- the receiving socket -----------------------------------------------------------


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_vxlan_recv_socket_on_loopback() -> None:
    port = free_udp_port()
    enc = Vxlan(5, port=port)
    with enc.open_recv_socket("127.0.0.1") as sock:
        assert sock.type == socket.SOCK_DGRAM and sock.getsockname() == ("127.0.0.1", port)
        assert not sock.getblocking()
        with pytest.raises(BlockingIOError):
            sock.recv(100)
        payload = enc.build(FRAME, SRC, DST)[28:]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            tx.sendto(payload, ("127.0.0.1", port))
        assert select.select([sock], [], [], 30)[0]
        got = sock.recv(2048)
    assert got == payload and enc.decap(got) == 8


@pytest.mark.skipif(os.geteuid() != 0, reason="a raw GRE socket needs CAP_NET_RAW")
def test_gre_recv_socket_on_loopback() -> None:
    with Gre(None).open_recv_socket("127.0.0.1") as sock:
        assert sock.type == socket.SOCK_RAW and sock.proto == 47
        assert sock.getsockname()[0] == "127.0.0.1" and not sock.getblocking()
