"""Issue 11, v6: the outer IPv6 header, C (datapath.fast) byte for byte against the Python reference
(datapath/encap/ipv6.py, vxlan.encap6, gre.encap6) and against scapy's dissectors."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import GRE
from scapy.layers.vxlan import VXLAN

from datapath import fast
from datapath.config import Config, Remote
from datapath.counters import Drop
from datapath.encap import gre, ipv4, ipv6, vxlan
from tests.configs import datapath_config
from tests.unit.test_codec import SETTINGS, frames, keys, malformed_gre, vnis

pytestmark = pytest.mark.skipif(not fast.available(), reason="C fast path not built")

# Global unicast IPv6 addresses (2001:db8::/32 and fd00::/8 alike: not link-local, not mapped).
ADDRS6 = st.tuples(st.sampled_from([0x2001, 0xFD00, 0x2A02]), st.binary(min_size=14, max_size=14)).map(
    lambda t: str(ipaddress.IPv6Address(t[0].to_bytes(2, "big") + t[1]))
)


def vxlan6_cfg(vni: int = 77, zero_csum: bool = False, port: int = 4789, ttl: int = 64) -> Config:
    rs = (Remote("2001:db8::2", "2001:db8::1"), Remote("10.0.0.2", "10.0.0.1"), Remote("fd00::3", "fd00::9"))
    return datapath_config(
        mode="vxlan", remotes=rs, underlay_mtu=1500, tap_mtu=1430, vni=vni, port=port, ttl=ttl,
        udp6_zero_csum_tx=zero_csum,
    )  # fmt: skip


def gre6_cfg(key: int | None = None, ttl: int = 64) -> Config:
    rs = (Remote("2001:db8:1::2", "2001:db8:1::1"), Remote("192.168.1.3", "192.168.1.9"))
    return datapath_config(mode="gre", remotes=rs, underlay_mtu=1500, tap_mtu=1442, key=key, ttl=ttl)


@SETTINGS
@given(
    frame=frames,
    vni=vnis,
    zero=st.booleans(),
    port=st.integers(1, 65535),
    ttl=st.integers(1, 255),
    addr=ADDRS6,
    local=ADDRS6,
)
def test_vxlan6_encap(frame: bytes, vni: int, zero: bool, port: int, ttl: int, addr: str, local: str) -> None:
    cfg = datapath_config(
        mode="vxlan", remotes=(Remote("10.9.9.9", "10.9.9.8"), Remote(addr, local)), underlay_mtu=1500,
        tap_mtu=1430, vni=vni, port=port, ttl=ttl, udp6_zero_csum_tx=zero,
    )  # fmt: skip
    r = cfg.remotes[1]
    want = vxlan.encap6(frame, vni=vni, src=r.local_bytes, dst=r.addr_bytes, dport=port, zero_csum=zero, hop_limit=ttl)
    assert fast.encap(cfg, 1, frame) == want
    assert len(want) == vxlan.VXLAN6_OUTER_LEN + len(frame)
    assert fast.decap(cfg, want[48:]) == vxlan.decap(want[48:], vni) == 8
    p = IPv6(want)
    assert (p.version, p.tc, p.fl, p.nh, p.hlim, p.plen) == (6, 0, 0, 17, ttl, len(want) - 40)
    assert (p.src, p.dst) == (local, addr)
    assert p[UDP].dport == port and p[UDP].len == len(want) - 40
    assert vxlan.SRC_PORT_MIN <= p[UDP].sport < vxlan.SRC_PORT_MAX
    if zero:
        assert p[UDP].chksum == 0
    else:
        rebuilt = IPv6(bytes(p))
        del rebuilt[UDP].chksum
        assert IPv6(bytes(rebuilt))[UDP].chksum == p[UDP].chksum != 0


@SETTINGS
@given(frame=st.one_of(frames, st.binary(max_size=20)), key=keys, ttl=st.integers(1, 255), addr=ADDRS6, local=ADDRS6)
def test_gre6_encap(frame: bytes, key: int | None, ttl: int, addr: str, local: str) -> None:
    cfg = datapath_config(mode="gre", remotes=(Remote(addr, local),), underlay_mtu=1500, tap_mtu=1438, key=key, ttl=ttl)
    r = cfg.remotes[0]
    want = gre.encap6(frame, key=key, src=r.local_bytes, dst=r.addr_bytes, hop_limit=ttl)
    assert fast.encap(cfg, 0, frame) == want
    assert len(want) == cfg.encap.outer_len(family=6) + len(frame)
    body = want[ipv6.IPV6_HLEN :]  # what an IPv6 raw socket hands over
    want_parse = (gre.header_len(key), key or 0) if len(frame) >= 14 else (-Drop.RX_TRUNCATED, 0)
    assert fast.parse(cfg, body, 6) == gre.parse(body, 6) == want_parse
    p = IPv6(want)
    assert (p.nh, p.hlim, p.plen, p.src, p.dst) == (47, ttl, len(want) - 40, local, addr)
    assert p[GRE].proto == 0x6558 and p[GRE].key_present == (key is not None)
    if key is not None:
        assert p[GRE].key == key


def test_vxlan6_checksum_of_an_odd_frame_for_scapy() -> None:
    frame = bytes(range(14)) + b"odd length payload!"
    p = IPv6(fast.encap(vxlan6_cfg(), 0, frame))
    rebuilt = IPv6(bytes(p))
    del rebuilt[UDP].chksum
    assert IPv6(bytes(rebuilt))[UDP].chksum == p[UDP].chksum
    assert p[VXLAN].vni == 77 and bytes(p[VXLAN].payload) == frame


def test_vxlan6_checksum_that_folds_to_zero_is_sent_as_ffff() -> None:
    """RFC 8200 8.1: a computed checksum of 0 goes out as 0xFFFF (0 would mean "none")."""
    cfg = vxlan6_cfg()
    r = cfg.remotes[0]
    base = bytes(14) + bytes(2)
    for x in range(0x10000):  # the last two bytes move the sum through every value
        frame = base[:-2] + struct.pack("!H", x)
        pkt = vxlan.encap6(frame, vni=77, src=r.local_bytes, dst=r.addr_bytes)
        if struct.unpack_from("!H", pkt, 46)[0] == 0xFFFF:
            break
    else:
        pytest.fail("no frame whose checksum folds to 0")
    assert fast.encap(cfg, 0, frame) == pkt


def test_mixed_mesh_outer_lengths() -> None:
    cfg = vxlan6_cfg()
    assert [len(fast.encap(cfg, i, bytes(60))) - 60 for i in range(3)] == [70 - 14, 50 - 14, 70 - 14]
    g = gre6_cfg(key=9)
    assert [len(fast.encap(g, i, bytes(60))) - 60 for i in range(2)] == [40 + 8, 20 + 8]
    assert cfg.overhead == vxlan.VXLAN6_OVERHEAD == 70 and g.overhead == 58 + 4
    fwd = fast.FastForwarder(cfg)
    assert [fwd.remote_outer_len(i, False) for i in (0, 1, 2, 3)] == [56, 36, 56, 0]
    gf = fast.FastForwarder(gre6_cfg())
    assert [gf.remote_outer_len(i, k) for i in (0, 1) for k in (False, True)] == [44, 48, 24, 28]


@pytest.mark.parametrize(("name", "packet", "key", "expect"), list(malformed_gre()), ids=lambda v: "")
def test_gre6_parse_malformed(name: str, packet: bytes, key: int | None, expect: int) -> None:
    """The IPv4 cases without their IPv4 header: what an IPv6 raw socket would hand over."""
    ihl = ipv4.header_len(packet)
    body = packet[ihl:] if ihl > 0 else packet
    assert fast.parse(gre6_cfg(key=key), body, 6) == gre.parse(body, 6), name


@SETTINGS
@given(data=st.binary(max_size=80), key=st.sampled_from([None, 7]))
def test_gre6_parse_random(data: bytes, key: int | None) -> None:
    flags = data[:2] if len(data) > 1 else b""
    for pkt in (data, flags + b"\x65\x58" + data[2:]):
        assert fast.parse(gre6_cfg(key=key), pkt, 6) == gre.parse(pkt, 6)


def test_ipv6_helpers() -> None:
    assert ipv6.to16("10.1.2.3") == ipv6.V4_MAPPED_PREFIX + bytes([10, 1, 2, 3])
    assert ipv6.from16(ipv6.to16("10.1.2.3")) == "10.1.2.3"
    assert ipv6.from16(ipv6.to16("2001:db8::7")) == "2001:db8::7"
    h = ipv6.build_header(bytes(15) + b"\1", bytes(15) + b"\2", 47, 100, 9, flow_label=0x12345)
    p = IPv6(h + bytes(100))
    assert (p.fl, p.plen, p.nh, p.hlim, p.src, p.dst) == (0x12345, 100, 47, 9, "::1", "::2")
    with pytest.raises(ValueError):
        ipv6.build_header(bytes(4), bytes(16), 17, 0, 64)
