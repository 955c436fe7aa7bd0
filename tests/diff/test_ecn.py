"""ECN (RFC 6040), --tos, --ttl, --df: csrc/ecn.c against datapath/ecn.py against scapy and the RFC's tables.

Encapsulation: for every inner ECN codepoint, DSCPs, TTLs / hop limits, DF or not, IPv4 / IPv6 /
802.1Q-tagged / non-IP frames and every setting, the outer IPv4 header the C path builds
(ovl_encap, the step every packet takes: template + ecn_outer) is what scapy reads as the expected
fields (written out here from the rules, not from datapath/ecn.py), with a valid header checksum,
and byte for byte what the Python reference builds. ovl_ecn_outer on an IPv6 outer header (the v6
part's) sets traffic class and hop limit. Decapsulation: RFC 6040's table (section 4.2, Figure 4)
written out, for IPv4 / IPv6 / tagged inner packets, through FastForwarder.rx and PyForwarder.rx:
the same frames and counters. Coalescing towards the TAP never merges a CE-marked segment with
unmarked ones.
"""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet, Raw

from datapath import ecn, fast
from datapath.config import Config, ConfigError, Remote, TunnelConfig
from datapath.encap import gre, vxlan
from datapath.pypath import PyForwarder
from tests.configs import datapath_config
from tests.offload_frames import LO, _cfg, _resegment, segment_stream

pytestmark = pytest.mark.skipif(not fast.available(), reason="C fast path not built")

LOCAL, REMOTE = "10.1.0.1", "10.1.0.2"
MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
NOT_ECT, ECT_1, ECT_0, CE = 0, 1, 2, 3


def cfg_of(mode: str, tos: int | str, ttl: int | str, df: str | None, **kw: object) -> Config:
    ids: dict[str, object] = {"vni": 5001} if mode == "vxlan" else {"key": 9}
    return datapath_config(
        mode=mode, remotes=(Remote(REMOTE, LOCAL),), underlay_mtu=1500, tap_mtu=1400, tos=tos, ttl=ttl, df=df,
        **ids, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def inner_frames() -> list[Packet]:
    """Inner frames over the branches: IPv4 (every ECN codepoint, DSCPs, TTLs, DF or not), IPv6, tagged, non-IP."""
    out: list[Packet] = []
    for ds, ttl, df in itertools.product((0x00, 0x01, 0x02, 0x03, 0xB8, 0xBB, 0x29), (1, 64, 255), (True, False)):
        ip = IP(src="172.20.1.1", dst="172.20.1.2", tos=ds, ttl=ttl, flags="DF" if df else 0)
        out.append(Ether(src=MAC_A, dst=MAC_B) / ip / UDP(dport=ds) / b"x")
    for tc, hlim in itertools.product((0x00, 0x01, 0x02, 0x03, 0xB8, 0x4B), (1, 77)):
        out.append(Ether(src=MAC_A, dst=MAC_B) / IPv6(src="fd00::1", dst="fd00::2", tc=tc, hlim=hlim) / UDP())
    out.append(Ether(src=MAC_A, dst=MAC_B) / Dot1Q(vlan=30) / IP(tos=0xB9, ttl=9, flags="DF") / UDP())
    out.append(Ether(src=MAC_A, dst=MAC_B) / Dot1Q(vlan=30) / Dot1Q(vlan=4) / IPv6(tc=0x23, hlim=3) / UDP())
    out.append(Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff") / ARP())
    out.append(Ether(src=MAC_A, dst=MAC_B, type=0x0800) / Raw(b"\x45\x03short"))  # cut short: not IP
    out.append(Ether(src=MAC_A, dst=MAC_B, type=0x86DD) / Raw(b"\x45" + bytes(50)))  # IPv6 type, version 4
    return out


def expected(p: Packet, tos: int | str, ttl: int | str, df: str) -> tuple[int, int, bool]:
    """The outer (DS field, TTL, DF) by the rules (ecn.py's docstring, the kernel's vxlan), read with scapy."""
    l3 = p.getlayer(IP) or p.getlayer(IPv6)
    raw = bytes(p)
    if l3 is not None and len(raw) >= 14 + (20 if isinstance(l3, IP) else 40):
        ds = int(l3.tos) if isinstance(l3, IP) else int(l3.tc)
        inner_ttl = int(l3.ttl) if isinstance(l3, IP) else int(l3.hlim)
        untagged = Dot1Q not in p
        inner_df = untagged and (isinstance(l3, IPv6) or bool(int(l3.flags) & 2))
        out_tos = ((ds if tos == "inherit" else int(tos)) & 0xFC) | (ds & 3)
    else:
        inner_ttl, inner_df = 0, False
        out_tos = 0 if tos == "inherit" else int(tos) & 0xFC
    out_ttl = int(ttl) if ttl != "inherit" else (inner_ttl or 64)
    return out_tos, out_ttl, df == "set" or (df == "inherit" and inner_df)


SETTINGS = list(itertools.product(("vxlan", "gre"), (0, 0xB8, 0x47, "inherit"), (17, "inherit"),
                                  ("set", "unset", "inherit")))  # fmt: skip


@pytest.mark.parametrize("mode,tos,ttl,df", SETTINGS)
def test_outer_fields_table(mode: str, tos: int | str, ttl: int | str, df: str) -> None:
    cfg = cfg_of(mode, tos, ttl, df)
    for p in inner_frames():
        frame = bytes(p)
        pkt = fast.encap(cfg, 0, frame)
        assert pkt == cfg.encap.build(frame, cfg.remotes[0].local_bytes, cfg.remotes[0].addr_bytes), p.summary()
        ip = IP(pkt)
        got = (ip.tos, ip.ttl, bool(int(ip.flags) & 2))
        assert got == expected(p, tos, ttl, df) == ecn.outer_fields(frame, tos, ttl, df), (p.summary(), got)
        again = IP(pkt)
        del again.chksum
        assert IP(bytes(again)).chksum == ip.chksum, p.summary()  # header checksum right after the patch
        assert ip.frag == 0 and ip.id == 0 and ip.src == LOCAL and ip.dst == REMOTE


def test_mode_defaults() -> None:
    """--df by default: VXLAN unset (the kernel's vxlan), GRE set (gretap, OVS); --tos 0, --ttl 64."""
    frame = bytes(Ether() / IP(tos=0xB9, ttl=5, flags="DF") / UDP())
    for mode, want_df in (("vxlan", 0), ("gre", 2)):
        cfg = cfg_of(mode, 0, 64, None)
        ip = IP(fast.encap(cfg, 0, frame))
        assert (ip.tos, ip.ttl, int(ip.flags)) == (ECT_1, 64, want_df), mode


def test_ipv6_outer_header() -> None:
    """ovl_ecn_outer on an IPv6 outer header: traffic class (DSCP of --tos or inherited, ECN copied), hop
    limit; version, flow label and the rest untouched."""
    hdr = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2", fl=0xABCDE, tc=0, hlim=64, nh=17, plen=100))
    for tos, ttl in itertools.product((0, 0xB8, "inherit"), (17, "inherit")):
        cfg = cfg_of("vxlan", tos, ttl, "inherit")
        for p in inner_frames():
            out = IPv6(fast.ecn_outer(cfg, hdr, bytes(p)))
            want = expected(p, tos, ttl, "inherit")
            assert (out.tc, out.hlim) == want[:2], p.summary()
            assert (out.version, out.fl, out.plen, out.nh, out.src, out.dst) == (6, 0xABCDE, 100, 17, "2001:db8::1",
                                                                                 "2001:db8::2")  # fmt: skip
    with pytest.raises(ValueError):
        fast.ecn_outer(cfg_of("vxlan", 0, 64, None), hdr[:39], b"")
    with pytest.raises(ValueError):
        fast.ecn_outer(cfg_of("vxlan", 0, 64, None), bytes(IP())[:19], b"")


def test_config_checks() -> None:
    for bad, key in (({"tos": 256}, "tunnel.tos"), ({"tos": "auto"}, "tunnel.tos"), ({"ttl": 0}, "tunnel.ttl"),
                     ({"ttl": "inherits"}, "tunnel.ttl"), ({"df": "yes"}, "tunnel.df")):  # fmt: skip
        with pytest.raises(ConfigError) as exc:
            TunnelConfig("vxlan", **bad)  # type: ignore[arg-type]
        assert exc.value.keys == [key]
    t = TunnelConfig("gre", tos="inherit", ttl="inherit", df="inherit")
    assert (t.encap.tos, t.encap.ttl, t.encap.df) == ("inherit", "inherit", "inherit")
    assert TunnelConfig("gre").encap.df == "set" and TunnelConfig("vxlan").encap.df == "unset"


# -- decapsulation ---------------------------------------------------------------------------------------

# RFC 6040 section 4.2, Figure 4: [inner][outer] -> the inner ECN field delivered, or None (dropped).
RFC6040 = {
    NOT_ECT: {NOT_ECT: NOT_ECT, ECT_0: NOT_ECT, ECT_1: NOT_ECT, CE: None},
    ECT_0: {NOT_ECT: ECT_0, ECT_0: ECT_0, ECT_1: ECT_1, CE: CE},
    ECT_1: {NOT_ECT: ECT_1, ECT_0: ECT_1, ECT_1: ECT_1, CE: CE},
    CE: {NOT_ECT: CE, ECT_0: CE, ECT_1: CE, CE: CE},
}


def decap_inner(kind: str, ecn_field: int, dscp: int) -> Packet:
    ds = dscp << 2 | ecn_field
    eth = Ether(src=MAC_B, dst=MAC_A)
    if kind == "v4":
        return eth / IP(src="172.20.1.2", dst="172.20.1.1", tos=ds) / UDP(dport=7) / b"ecn"
    if kind == "v6":
        return eth / IPv6(src="fd00::2", dst="fd00::1", tc=ds) / UDP() / b"ecn"
    return eth / Dot1Q(vlan=7) / IP(tos=ds) / TCP()


def arrive(cfg: Config, frame: bytes, tos: int) -> bytes:
    """What the remote sends us carrying frame, as the socket hands it over."""
    r = cfg.remotes[0]
    if cfg.tunnel.mode == "vxlan":
        return vxlan.encap(frame, vni=5001, src=r.addr_bytes, dst=r.local_bytes, dport=4789)[28:]
    return gre.encap(frame, key=9, src=r.addr_bytes, dst=r.local_bytes, tos=tos)


@pytest.mark.parametrize("mode", ["vxlan", "gre"])
@pytest.mark.parametrize("kind", ["v4", "v6", "tagged"])
def test_decapsulation_table(mode: str, kind: str) -> None:
    cfg = cfg_of(mode, 0, 64, None)
    fp, pp = fast.FastForwarder(cfg), PyForwarder(cfg)
    drops = marks = 0
    for inner, outer in itertools.product(range(4), range(4)):
        p = decap_inner(kind, inner, 0x2E)
        packets = [(arrive(cfg, bytes(p), 0x80 | outer), REMOTE, 0x80 | outer)]
        got_c, got_py = fp.rx(packets), pp.rx(packets)
        assert got_c == got_py, (inner, outer)
        want = RFC6040[inner][outer]
        if want is None:
            assert got_c == []
            drops += 1
            continue
        marks += want == CE and inner != CE
        (_, frame), = got_c  # fmt: skip
        q = Ether(frame)
        l3 = q[IP] if IP in q else q[IPv6]
        ds = int(l3.tos) if IP in q else int(l3.tc)
        assert (ds >> 2, ds & 3) == (0x2E, want), (inner, outer, frame.hex())
        if IP in q:
            again = IP(bytes(q[IP]))
            del again.chksum
            assert IP(bytes(again)).chksum == q[IP].chksum  # RFC 1624 update is the full checksum
            q[IP].tos, q[IP].chksum = p[IP].tos, p[IP].chksum
        else:
            q[IPv6].tc = p[IPv6].tc
        assert bytes(q) == bytes(p)  # nothing else changed
    assert fp.snapshot() == pp.snapshot()
    snap = fp.snapshot()
    assert (snap.drops["rx_ecn"], snap.stats["rx_ecn_ce"]) == (drops, marks) == (1, 2)


def test_non_ip_inner_is_never_dropped() -> None:
    cfg = cfg_of("vxlan", 0, 64, None)
    fp, pp = fast.FastForwarder(cfg), PyForwarder(cfg)
    arp = bytes(Ether(src=MAC_B, dst="ff:ff:ff:ff:ff:ff") / ARP())
    packets = [(arrive(cfg, arp, 0), REMOTE, CE)]
    assert fp.rx(packets) == pp.rx(packets) == [(0, arp)]
    assert fp.snapshot() == pp.snapshot()


ecn_frames = st.one_of(
    st.binary(min_size=14, max_size=90),
    st.tuples(st.binary(min_size=12, max_size=12), st.sampled_from([b"\x08\x00", b"\x86\xdd", b"\x81\x00"]),
              st.binary(max_size=80)).map(lambda t: t[0] + t[1] + t[2]),
    st.builds(lambda ds, ttl, df, v6: bytes(Ether() / (IPv6(tc=ds, hlim=ttl) if v6 else
                                                       IP(tos=ds, ttl=ttl, flags=2 if df else 0)) / UDP()),
              st.integers(0, 255), st.integers(0, 255), st.booleans(), st.booleans()),
)  # fmt: skip
tos_values = st.one_of(st.just("inherit"), st.integers(0, 255))
ttl_values = st.one_of(st.just("inherit"), st.integers(1, 255))


@settings(max_examples=300, deadline=None)
@given(ecn_frames, st.sampled_from(["vxlan", "gre"]), tos_values, ttl_values, st.sampled_from(ecn.DF_POLICIES))
def test_encap_c_is_python(frame: bytes, mode: str, tos: int | str, ttl: int | str, df: str) -> None:
    cfg = cfg_of(mode, tos, ttl, df)
    r = cfg.remotes[0]
    assert fast.encap(cfg, 0, frame) == cfg.encap.build(frame, r.local_bytes, r.addr_bytes)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(ecn_frames, st.integers(0, 255)), max_size=8), st.sampled_from(["vxlan", "gre"]))
def test_decap_c_is_python(items: list[tuple[bytes, int]], mode: str) -> None:
    cfg = cfg_of(mode, 0, 64, None)
    fp, pp = fast.FastForwarder(cfg), PyForwarder(cfg)
    packets = [(arrive(cfg, f, tos), REMOTE, tos) for f, tos in items]
    assert fp.rx(packets) == pp.rx(packets)
    assert fp.snapshot() == pp.snapshot()


# -- coalescing towards the TAP ----------------------------------------------------------------------------


def test_coalescing_keeps_ce_apart() -> None:
    """Segments of one flow (ECT(0)) whose 4th arrived under an outer CE: it alone carries CE; the others
    coalesce around it (as the kernel's GRO flushes on a TOS difference), every segment written once."""
    segs = []
    for s in segment_stream(10, 1000):
        p = Ether(s)
        p[IP].tos = ECT_0
        del p[IP].chksum
        segs.append(bytes(p))
    fwd = fast.FastForwarder(_cfg(batch=64, rx_coalesce=True), tap_vnet=10)
    plan = fwd.rx_plan([(vxlan.header(99) + f, LO, CE if i == 3 else ECT_0) for i, f in enumerate(segs)])
    assert len(plan) == 3, [len(f) for _, f, _ in plan]
    out = [seg for v, f, _ in plan for seg in _resegment(v, f)]
    want = list(segs)
    p = Ether(want[3])
    p[IP].tos = CE
    del p[IP].chksum
    want[3] = bytes(p)
    assert out == want
    assert fwd.snapshot().stats["rx_ecn_ce"] == 1
    assert struct.unpack("=BBHHHH", plan[1][0])[1] == 0  # the CE one alone, no GSO
