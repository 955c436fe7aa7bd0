"""The C codecs (datapath.fast) byte for byte against the Python reference, and against scapy."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import GRE
from scapy.layers.vxlan import VXLAN

from datapath import ecn, ether, fast
from datapath.config import Config, Remote
from datapath.encap import gre, ipv4, vxlan
from tests.configs import datapath_config
from tests.unit.test_codec import SETTINGS, frames, keys, malformed_gre, malformed_vxlan, vnis

pytestmark = pytest.mark.skipif(not fast.available(), reason="C fast path not built")

ADDRS = st.tuples(st.integers(1, 223), st.integers(0, 255), st.integers(0, 255), st.integers(1, 254)).map(
    lambda t: ".".join(map(str, t))
)


def vxlan_cfg(vni: int = 77, udp_csum: bool = False, port: int = 4789, ttl: int = 64, remotes: int = 2) -> Config:
    rs = tuple(Remote(f"10.0.0.{i + 2}", "10.0.0.1") for i in range(remotes))
    return datapath_config(
        mode="vxlan", remotes=rs, underlay_mtu=1500, tap_mtu=1450, vni=vni, udp_csum=udp_csum, port=port, ttl=ttl
    )


def gre_cfg(key: int | None = None, ttl: int = 64) -> Config:
    rs = (Remote("192.168.1.2", "192.168.1.1"), Remote("192.168.1.3", "192.168.1.9"))
    return datapath_config(mode="gre", remotes=rs, underlay_mtu=1500, tap_mtu=1462, key=key, ttl=ttl)


@SETTINGS
@given(frame=frames)
def test_flow_hash(frame: bytes) -> None:
    assert fast.flow_hash(frame) == ether.flow_hash(frame)


@given(frame=st.binary(max_size=ether.ETH_HLEN - 1))
def test_flow_hash_refuses_runts_like_the_reference(frame: bytes) -> None:
    with pytest.raises(IndexError):
        ether.flow_hash(frame)
    with pytest.raises(ValueError):
        fast.flow_hash(frame)


@SETTINGS
@given(data=st.binary(max_size=3000), initial=st.integers(0, 2**40))
def test_checksum(data: bytes, initial: int) -> None:
    assert fast.checksum(data, initial) == ipv4.checksum(data, initial)
    assert fast.checksum(data) == ipv4.checksum(data)


@SETTINGS
@given(
    frame=frames,
    vni=vnis,
    udp_csum=st.booleans(),
    port=st.integers(1, 65535),  # a configuration refuses port 0
    ttl=st.integers(1, 255),
    addr=ADDRS,
    local=ADDRS,
)
def test_vxlan_encap(frame: bytes, vni: int, udp_csum: bool, port: int, ttl: int, addr: str, local: str) -> None:
    cfg = datapath_config(
        mode="vxlan",
        remotes=(Remote("10.9.9.9", "10.9.9.8"), Remote(addr, local)),
        underlay_mtu=1500,
        tap_mtu=1450,
        vni=vni,
        udp_csum=udp_csum,
        port=port,
        ttl=ttl,
    )
    r = cfg.remotes[1]
    tos, _, _ = ecn.outer_fields(frame, 0, ttl, "unset")  # the inner ECN field; VXLAN's default: no DF
    want = vxlan.encap(
        frame, vni=vni, src=r.local_bytes, dst=r.addr_bytes, dport=port, udp_csum=udp_csum, ttl=ttl, tos=tos, df=False
    )
    assert fast.encap(cfg, 1, frame) == want
    assert fast.decap(cfg, want[28:]) == vxlan.decap(want[28:], vni) == 8


@SETTINGS
@given(frame=st.one_of(frames, st.binary(max_size=20)), key=keys, ttl=st.integers(1, 255), addr=ADDRS, local=ADDRS)
def test_gre_encap(frame: bytes, key: int | None, ttl: int, addr: str, local: str) -> None:
    cfg = datapath_config(mode="gre", remotes=(Remote(addr, local),), underlay_mtu=1500, tap_mtu=1458, key=key, ttl=ttl)
    tos = ecn.outer_fields(frame, 0, ttl, "set")[0]  # the inner ECN field; GRE's default: DF
    want = gre.encap(frame, key=key, src=cfg.remotes[0].local_bytes, dst=cfg.remotes[0].addr_bytes, ttl=ttl, tos=tos)
    assert fast.encap(cfg, 0, frame) == want  # GRE does not need an Ethernet header, in either
    assert fast.decap(cfg, want) == gre.decap(want, key)


def test_vxlan_encap_checksum_valid_for_scapy() -> None:
    cfg = vxlan_cfg(udp_csum=True)
    frame = bytes(range(14)) + b"odd length payload!"
    p = IP(fast.encap(cfg, 0, frame))
    rebuilt = IP(bytes(p))
    del rebuilt[UDP].chksum, rebuilt[IP].chksum
    rebuilt = IP(bytes(rebuilt))
    assert p[UDP].chksum == rebuilt[UDP].chksum and p[IP].chksum == rebuilt[IP].chksum
    assert p[VXLAN].vni == 77 and bytes(p[VXLAN].payload) == frame


def test_gre_encap_scapy_key() -> None:
    p = IP(fast.encap(gre_cfg(key=0xDEADBEEF), 1, bytes(20)))
    assert p.src == "192.168.1.9" and p.dst == "192.168.1.3"
    assert p[GRE].key_present == 1 and p[GRE].key == 0xDEADBEEF and p[GRE].proto == 0x6558


def test_encap_errors() -> None:
    with pytest.raises(IndexError):
        fast.encap(vxlan_cfg(), 2, bytes(60))
    with pytest.raises(ValueError):
        fast.encap(vxlan_cfg(), 0, bytes(13))  # the reference raises IndexError from the flow hash
    with pytest.raises(ValueError):
        fast.encap(gre_cfg(), 0, bytes(65536))  # an IPv4 total length cannot say that


@pytest.mark.parametrize(("name", "payload", "vni", "expect"), list(malformed_vxlan()), ids=lambda v: "")
def test_vxlan_decap_malformed(name: str, payload: bytes, vni: int, expect: int) -> None:
    assert vxlan.decap(payload, vni) == expect
    assert fast.decap(vxlan_cfg(vni=vni), payload) == expect, name


@pytest.mark.parametrize(("name", "packet", "key", "expect"), list(malformed_gre()), ids=lambda v: "")
def test_gre_decap_malformed(name: str, packet: bytes, key: int | None, expect: int) -> None:
    assert gre.decap(packet, key) == expect
    assert fast.decap(gre_cfg(key=key), packet) == expect, name


@SETTINGS
@given(data=st.binary(max_size=80), vni=st.sampled_from([0, 77, vxlan.VNI_MAX]))
def test_vxlan_decap_random(data: bytes, vni: int) -> None:
    assert fast.decap(vxlan_cfg(vni=vni), data) == vxlan.decap(data, vni)


@st.composite
def mangled_gre(draw: st.DrawFn) -> bytes:
    """A GRE packet with random flag bits, version, protocol, IP header length, and a random cut."""
    flags = draw(st.integers(0, 0xFFFF))
    proto = draw(st.sampled_from([0x6558, 0x0800, draw(st.integers(0, 0xFFFF))]))
    ihl = draw(st.sampled_from([5, 5, 6, 4, 15]))
    ip = bytearray(ipv4.build_header(b"\1\1\1\1", b"\2\2\2\2", 47, 0))
    ip[0] = 0x40 | ihl
    body = bytes(ip) + bytes(max(0, ihl * 4 - 20)) + flags.to_bytes(2, "big") + proto.to_bytes(2, "big")
    body += draw(st.binary(max_size=40))
    return body[: draw(st.integers(0, len(body)))]


@SETTINGS
@given(pkt=st.one_of(mangled_gre(), st.binary(max_size=80)), key=st.sampled_from([None, 0, 1, 0xFFFFFFFF]))
def test_gre_decap_random(pkt: bytes, key: int | None) -> None:
    assert fast.decap(gre_cfg(key=key), pkt) == gre.decap(pkt, key)


def test_outer_len_matches_config() -> None:
    for cfg in (vxlan_cfg(), gre_cfg(), gre_cfg(key=5)):
        assert fast.lib.ovl_outer_len(fast._codec_config(cfg)) == cfg.outer_len


# -- the parse step (tunnel id handed to the forwarder) ----------------------------------


@SETTINGS
@given(data=st.one_of(st.binary(max_size=80), frames.map(lambda f: vxlan.header(77) + f)))
def test_vxlan_parse_random(data: bytes) -> None:
    assert fast.parse(vxlan_cfg(), data) == vxlan.parse(data)


@SETTINGS
@given(pkt=st.one_of(mangled_gre(), st.binary(max_size=80)), key=st.sampled_from([None, 7]))
def test_gre_parse_random(pkt: bytes, key: int | None) -> None:
    assert fast.parse(gre_cfg(key=key), pkt) == gre.parse(pkt)


@pytest.mark.parametrize(("name", "packet", "key", "expect"), list(malformed_gre()), ids=lambda v: "")
def test_gre_parse_malformed(name: str, packet: bytes, key: int | None, expect: int) -> None:
    assert fast.parse(gre_cfg(), packet) == gre.parse(packet), name


@pytest.mark.parametrize("fill", [0x00, 0xFF, 0x80, 0x01])
def test_checksum_word_at_a_time(fill: int) -> None:
    """The 8-bytes-at-a-time sum: every length and alignment, carries of long runs of 0xFF, odd last bytes."""
    from datapath.encap import ipv4

    rnd = random.Random(fill)
    for n in [*range(0, 70), 1499, 1500, 9000, 65535]:
        for data in (bytes([fill]) * n, rnd.randbytes(n)):
            for start in (0, 1, 3):
                chunk = data[start:]
                for initial in (0, 0xFFFF, 0x1FFFE, 6 + len(chunk)):
                    assert fast.checksum(chunk, initial) == ipv4.checksum(chunk, initial), (n, start, initial)
