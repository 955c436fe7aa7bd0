"""Path MTU (issue 11, pmtu part): csrc/pmtu.c against datapath/pmtu.py against scapy.

- the ICMP / ICMPv6 reply to a frame too big for the path (ovl_pmtu_reply vs pmtu.reply): fields,
  checksums and the quoted packet as scapy dissects them, the kernel's exclusions;
- the outer fragments (ovl_ip4_fragment vs pmtu.fragment), reassembled by scapy;
- the forwarders: per-remote path MTU, one reply per frame (floods included) and per TCP
  super-frame, the rate limit, --df.
"""

from __future__ import annotations

import os
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import ICMP, IP, TCP, UDP, Dot1Q, Ether, ICMPv6PacketTooBig, IPv6, IPv6ExtHdrFragment, Raw, defragment
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6EchoRequest, in6_chksum
from scapy.utils import checksum as scapy_checksum

from datapath import fast, pmtu
from datapath.config import Config, Remote
from datapath.pypath import PyForwarder
from tests.configs import datapath_config, examples

pytestmark = pytest.mark.skipif(not fast.available(), reason="C fast path not built")

A, B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"  # inner sender (behind our TAP), inner receiver
E = Ether(src=A, dst=B)
S6 = {"src": "fd00::1", "dst": "fd00::2"}


def c_reply(frame: bytes, tci: int | None, mtu: int) -> bytes | None:
    out = fast.ffi.new("uint8_t[]", 2000)
    n = fast.lib.ovl_pmtu_reply(frame, len(frame), -1 if tci is None else tci, mtu, out, 2000)
    assert n >= 0
    return bytes(fast.ffi.buffer(out, n)) if n else None


def both(frame: bytes, tci: int | None, mtu: int) -> bytes | None:
    """The reply as C builds it, held equal to the Python reference."""
    got = c_reply(frame, tci, mtu)
    assert got == pmtu.reply(frame, tci, mtu)
    return got


def v4(size: int = 1514, flags: str = "DF", **ip: object) -> bytes:
    fields: dict[str, object] = {"src": "172.20.1.1", "dst": "172.20.1.2", "flags": flags, "ttl": 61, **ip}
    p = Ether(src=A, dst=B) / IP(**fields) / TCP(sport=5000)
    return bytes(p) + os.urandom(size - len(p))


def v6(size: int = 1514, **ip: object) -> bytes:
    fields: dict[str, object] = {"src": "fd00::1", "dst": "fd00::2", "hlim": 33, **ip}
    p = Ether(src=A, dst=B) / IPv6(**fields) / TCP(sport=5000)
    return bytes(p) + os.urandom(size - len(p))


# -- the reply, held against scapy ------------------------------------------------------------


def test_icmp_frag_needed_fields_checksums_quote() -> None:
    frame = v4()
    got = both(frame, None, 1450)
    assert got is not None
    p = Ether(got)
    assert (p.src, p.dst, p.type) == (B, A, 0x0800)
    ip = p[IP]
    assert (ip.src, ip.dst, ip.ttl, ip.proto, ip.flags, ip.id, ip.tos, ip.len) == (
        "172.20.1.2", "172.20.1.1", 61, 1, "DF", 0, 0, 576,
    )  # fmt: skip
    rebuilt = IP(bytes(ip))
    del rebuilt.chksum
    assert IP(bytes(rebuilt)).chksum == ip.chksum  # the header checksum scapy computes
    icmp = got[14 + 20 :]
    assert scapy_checksum(icmp) == 0  # the ICMP checksum over header and quote
    assert (icmp[0], icmp[1], struct.unpack("!H", icmp[6:8])[0]) == (3, 4, 1450)
    assert icmp[8:] == frame[14 : 14 + 548]  # the original packet, quoted up to 576 bytes in all


def test_icmpv6_packet_too_big_fields_checksum_quote() -> None:
    frame = v6()
    got = both(frame, None, 1430)
    assert got is not None
    p = Ether(got)
    assert (p.src, p.dst, p.type) == (B, A, 0x86DD)
    ip = p[IPv6]
    assert (ip.src, ip.dst, ip.hlim, ip.nh, ip.plen, ip.tc, ip.fl) == ("fd00::2", "fd00::1", 33, 58, 1240, 0, 0)
    tb = p[ICMPv6PacketTooBig]
    assert tb.mtu == 1430
    raw_icmp = got[14 + 40 :]
    assert in6_chksum(58, ip, raw_icmp[:2] + b"\0\0" + raw_icmp[4:]) == tb.cksum
    assert raw_icmp[8:] == frame[14 : 14 + 1232] and len(got) == 14 + 1280


def test_tags_come_back() -> None:
    """A trunk frame's own tag (QinQ too) is copied; a mapped VLAN's lost tag is put back with its PCP."""
    inner = v4()
    tagged = inner[:12] + struct.pack("!HH", 0x8100, 0xA014) + inner[12:]
    got = both(tagged, None, 1450)
    assert got is not None and Ether(got)[Dot1Q].vlan == 20 and Ether(got)[Dot1Q].prio == 5
    qinq = inner[:12] + struct.pack("!HHHH", 0x88A8, 7, 0x8100, 20) + inner[12:]
    got = both(qinq, None, 1450)
    assert got is not None and got[12:20] == qinq[12:20] and IP(got[22:]).proto == 1
    got = both(inner, 0xA014, 1450)  # the frame as sent, untagged; its tag given back
    assert got is not None and got[12:16] == b"\x81\x00\xa0\x14" and Ether(got)[IP].src == "172.20.1.2"


@pytest.mark.parametrize(
    "frame, mtu",
    [
        (v4(flags=""), 1450),  # no DF: may be fragmented, no reply
        (v4(flags="DF+MF"), 1450),  # a fragment
        (v4(frag=10, flags="DF"), 1450),
        (v4(), 575),  # below 576
        (v4(dst="224.0.0.9"), 1450),
        (v4(dst="255.255.255.255"), 1450),
        (v4(src="0.1.2.3"), 1450),
        (v4(src="127.0.0.1"), 1450),
        (v4(src="239.1.1.1"), 1450),
        (bytes(E / IP(src="1.1.1.1", dst="2.2.2.2", flags="DF") / ICMP(type=3, code=4)) + bytes(1400), 1450),
        (bytes(E / IP(src="1.1.1.1", dst="2.2.2.2", flags="DF") / ICMP(type=11)) + bytes(1400), 1450),
        (v6(), 1279),  # below 1280
        (v6(src="::"), 1450),
        (v6(src="::1"), 1450),
        (v6(src="ff02::1"), 1450),
        (bytes(E / IPv6(**S6) / IPv6ExtHdrFragment(offset=8) / Raw(bytes(1400))), 1450),
        (bytes(E / IPv6(**S6) / ICMPv6DestUnreach() / Raw(bytes(1400))), 1450),
        (bytes(E / IPv6(**S6, nh=59) / Raw(bytes(1400))), 1450),
        (bytes(Ether(src=A, dst=B, type=0x0806)) + bytes(1400), 1450),  # not IP
        (v4()[:30], 1450),  # cut short
    ],
)  # fmt: skip
def test_the_kernels_exclusions(frame: bytes, mtu: int) -> None:
    assert both(frame, None, mtu) is None


def test_replies_that_are_due() -> None:
    """What the exclusions leave: ICMP echo, a first IPv6 fragment, ICMPv6 echo, extension headers."""
    echo = bytes(E / IP(src="1.1.1.1", dst="2.2.2.2", flags="DF") / ICMP(type=8)) + bytes(1400)
    first = bytes(E / IPv6(**S6) / IPv6ExtHdrFragment(m=1, nh=6) / Raw(bytes(1400)))
    echo6 = bytes(E / IPv6(**S6) / ICMPv6EchoRequest() / Raw(bytes(1400)))
    for frame in (echo, first, echo6):
        assert both(frame, None, 1400) is not None


@settings(max_examples=examples(300), deadline=None)
@given(
    version=st.sampled_from([4, 6]),
    head=st.binary(min_size=0, max_size=80),
    size=st.integers(0, 1600),
    mtu=st.integers(0, 70000),
    tci=st.one_of(st.none(), st.integers(0, 0xFFFF)),
    tags=st.integers(0, 2),
)
def test_random_frames_c_equals_python(
    version: int, head: bytes, size: int, mtu: int, tci: int | None, tags: int
) -> None:
    """Any bytes behind an IPv4 / IPv6 EtherType (and tags): C and Python agree, and every reply scapy reads."""
    etype = 0x0800 if version == 4 else 0x86DD
    first = bytes([version << 4 | (5 if version == 4 else 0)])
    frame = bytes(12) + b"\x81\x00\x00\x01" * tags + etype.to_bytes(2, "big") + first + head + bytes(size)
    got = both(frame, tci, mtu)
    if got is not None:
        p = Ether(got)
        assert (IP if version == 4 else IPv6) in p


# -- the fragments ------------------------------------------------------------------------------


def c_fragments(pkt: bytes, mtu: int, ident: int) -> list[bytes]:
    out, frags, k = fast.ffi.new("uint8_t[]", 70000), [], 0
    while (n := fast.lib.ovl_ip4_fragment(pkt, len(pkt), mtu, ident, k, out, 70000)) > 0:
        frags.append(bytes(fast.ffi.buffer(out, n)))
        k += 1
    assert n == 0
    return frags


@settings(max_examples=examples(100), deadline=None)
@given(payload=st.integers(1, 9000), mtu=st.integers(576, 9000), ident=st.integers(1, 0xFFFF))
def test_fragments_reassemble(payload: int, mtu: int, ident: int) -> None:
    pkt = bytes(
        IP(src="10.0.0.1", dst="10.0.0.2", flags="DF", id=0) / UDP(sport=1, dport=4789) / Raw(os.urandom(payload))
    )
    frags = c_fragments(pkt, mtu, ident)
    assert frags == pmtu.fragment(pkt, mtu, ident)
    assert all(len(f) <= mtu for f in frags)
    for f in frags:
        ip = IP(f)
        assert ip.id == ident and "DF" not in ip.flags
        rebuilt = IP(f)
        del rebuilt.chksum
        assert IP(bytes(rebuilt)).chksum == ip.chksum
    whole = defragment([IP(f) for f in frags])
    assert len(whole) == 1 and bytes(whole[0][IP].payload) == pkt[20:]


# -- the forwarders -------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


REMOTES = (Remote("10.0.0.2", "10.0.0.1"), Remote("10.0.1.2", "10.0.1.1"))


def cfg_of(mode: str = "vxlan", **kw: object) -> Config:
    return datapath_config(mode=mode, remotes=REMOTES, underlay_mtu=1500, tap_mtu=1500, **kw)  # type: ignore[arg-type]


def pair(cfg: Config) -> tuple[Clock, fast.FastForwarder, PyForwarder]:
    clock = Clock()
    return clock, fast.FastForwarder(cfg, clock), PyForwarder(cfg, clock)


@pytest.mark.parametrize("mode", ["vxlan", "gre"])
def test_too_big_unicast_and_flood_one_reply_each(mode: str) -> None:
    cfg = cfg_of(mode)
    _, fp, pp = pair(cfg)
    usable = cfg.underlay_mtu - cfg.outer_len - 14
    for fwd in (fp, pp):
        fwd.fdb.learn(bytes.fromhex(B.replace(":", "")), 1)
        fits, big = v4(size=14 + usable), v4(size=14 + usable + 1)
        out = fwd.tx([fits, big])
        assert [r for r, _ in out] == [1]
        replies = fwd.pmtu_replies()
        assert len(replies) == 1 and struct.unpack("!H", replies[0][14 + 20 + 6 : 14 + 20 + 8])[0] == usable
        fwd.fdb.flush()
        assert fwd.tx([big]) == [] and len(fwd.pmtu_replies()) == 1  # a flood: one reply, not one per remote
    assert fp.snapshot() == pp.snapshot()
    s = fp.snapshot()
    assert s.drops["tx_too_big"] == 2 and s.stats["tx_pmtu_icmp"] == 2 and s.stats["tx_unicast"] == 1


def test_per_remote_path_mtu() -> None:
    """A flood: each copy against its remote's path; the copies that fit go, one reply for the tightest path."""
    cfg = cfg_of()
    _, fp, pp = pair(cfg)
    frame = v6(size=1420)
    for fwd in (fp, pp):
        fwd.set_remote_mtu(1, 1400)
        assert fwd.remote_mtu(1) == 1400 and fwd.remote_mtu(0) == 1500
        out = fwd.tx([frame])
        assert [r for r, _ in out] == [0]
        (reply,) = fwd.pmtu_replies()
        assert Ether(reply)[ICMPv6PacketTooBig].mtu == 1400 - cfg.outer_len - 14
        fwd.set_remote_mtu(1, 0)  # back to the underlay's
        assert [r for r, _ in fwd.tx([frame])] == [0, 1] and fwd.pmtu_replies() == []
        with pytest.raises(ValueError):
            fwd.set_remote_mtu(0, 67)
        with pytest.raises(KeyError):
            fwd.set_remote_mtu(7, 1400)
    assert fp.snapshot() == pp.snapshot()
    assert fp.snapshot().stats["tx_flooded"] == 2 and fp.snapshot().drops["tx_too_big"] == 1
    for fwd in (fp, pp):  # a slot taken again starts from the underlay MTU
        fwd.set_remote_mtu(1, 1300)
        fwd.remove_remote(1)
        fwd.add_remote(REMOTES[1])
        assert fwd.remote_mtu(1) == 1500


def test_rate_limit() -> None:
    cfg = cfg_of(pmtu_icmp_rate=100)
    clock, fp, pp = pair(cfg)
    big = v4(size=1514)
    for fwd in (fp, pp):
        fwd.tx([big] * 12)  # the bucket holds 10
        assert len(fwd.pmtu_replies()) == 10
    clock.now += 0.05  # 5 more tokens
    for fwd in (fp, pp):
        fwd.tx([big] * 8)
        assert len(fwd.pmtu_replies()) == 5
    assert fp.snapshot() == pp.snapshot()
    s = fp.snapshot().stats
    assert (s["tx_pmtu_icmp"], s["tx_pmtu_limited"]) == (15, 5) and fp.snapshot().drops["tx_too_big"] == 20
    _, fp, pp = pair(cfg_of(pmtu_icmp_rate=0))  # off: every reply suppressed
    for fwd in (fp, pp):
        fwd.tx([big] * 3)
        assert fwd.pmtu_replies() == [] and fwd.snapshot().stats["tx_pmtu_limited"] == 3


@pytest.mark.parametrize("mode", ["vxlan", "gre"])
@pytest.mark.parametrize("df", ["unset", "inherit", "set"])
def test_df_policy_fragments_inner_ipv4_without_df(mode: str, df: str) -> None:
    cfg = cfg_of(mode, df=df)
    _, fp, pp = pair(cfg)
    frame = v4(size=1514, flags="")
    out_c, out_p = fp.tx([frame]), pp.tx([frame])
    assert out_c == out_p
    assert fp.snapshot() == pp.snapshot()
    if df == "set":
        assert out_c == [] and fp.snapshot().drops["tx_too_big"] == 1
        assert fp.pmtu_replies() == []  # no DF inside: no ICMP either (as the kernel)
        return
    assert fp.snapshot().stats["tx_fragmented"] == 2  # one outer packet per remote (a flood)
    for r in (0, 1):
        frags = [IP(p) for rr, p in out_c if rr == r]
        assert len(frags) == 2 and all(len(bytes(f)) <= cfg.underlay_mtu for f in frags)
        assert len({f.id for f in frags}) == 1 and frags[0].id != 0
        whole = defragment(frags)[0]
        inner = bytes(whole[IP].payload)[cfg.outer_len - 20 :]
        assert inner == frame and whole[IP].dst == REMOTES[r].addr


def test_super_frame_one_reply() -> None:
    """From a TAP with a virtio header: a TCP super-frame whose segments do not fit gets ONE reply (virtio
    header zeroed in front), written back to the TAP; a socketpair stands in for the TAP."""
    cfg = datapath_config(mode="vxlan", remotes=REMOTES, underlay_mtu=1500, tap_mtu=1450)
    fp = fast.FastForwarder(cfg, Clock(), tap_vnet=10)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    send = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # never used: nothing fits
    try:
        a.setblocking(False)
        seg = 1448
        sup = bytes(Ether(src=A, dst=B) / IP(src="172.20.1.1", dst="172.20.1.2", flags="DF") / TCP(flags="A"))
        sup += os.urandom(seg * 5)
        vnet = struct.pack("=BBHHHH", 0, 1, 54, seg, 0, 0)  # GSO TCPV4, gso_size 1448
        b.send(vnet + sup)
        b.send(vnet + sup)
        assert fp.from_tap(a.fileno(), send) == 2
        got = [b.recv(4096), b.recv(4096)]
        assert all(g[:10] == bytes(10) for g in got)
        assert [Ether(g[10:])[ICMP].nexthopmtu for g in got] == [
            1500 - 50
        ] * 2  # outer_len 36 + the inner Ethernet header
        s = fp.snapshot()
        assert s.stats["tx_pmtu_icmp"] == 2 and s.drops["tx_too_big"] == 10 and s.stats["tap_rx_gso"] == 2
    finally:
        for s_ in (a, b, send):
            s_.close()


@st.composite
def pmtu_frames(draw: st.DrawFn) -> bytes:
    """IPv4 (DF or not, ICMP errors among them) / IPv6 / other frames, tagged or not, of sizes around the path."""
    kind = draw(st.sampled_from(["v4", "v4df", "icmp_err", "v6", "arp"]))
    size = draw(st.one_of(st.integers(60, 1600), st.integers(1300, 1600)))
    dst = draw(st.sampled_from([B, "ff:ff:ff:ff:ff:ff", "02:00:00:00:00:0c"]))
    eth = Ether(src=A, dst=dst)
    if draw(st.booleans()):
        eth = eth / Dot1Q(vlan=draw(st.sampled_from([10, 30])), prio=draw(st.integers(0, 7)))
    if kind in ("v4", "v4df"):
        p = eth / IP(src="172.20.1.1", dst="172.20.1.2", flags="DF" if kind == "v4df" else 0) / UDP()
    elif kind == "icmp_err":
        p = eth / IP(src="172.20.1.1", dst="172.20.1.2", flags="DF") / ICMP(type=3, code=3)
    elif kind == "v6":
        p = eth / IPv6(src="fd00::1", dst="fd00::2") / UDP()
    else:
        p = eth / Raw(b"\x08\x06")
        p = Ether(bytes(p)[:12] + b"\x08\x06" + bytes(28)) if Dot1Q not in p else p
    raw = bytes(p)
    return raw + bytes(max(0, size - len(raw)))


@settings(max_examples=examples(60), deadline=None)
@given(
    mode=st.sampled_from(["vxlan", "gre"]),
    df=st.sampled_from(["unset", "set", "inherit"]),
    mtus=st.lists(st.sampled_from([0, 576, 1300, 1400, 1480]), min_size=2, max_size=2),
    batches=st.lists(st.tuples(st.lists(pmtu_frames(), max_size=20), st.floats(0, 0.05)), min_size=1, max_size=4),
    learn=st.booleans(),
)
def test_forwarders_agree_on_pmtu_traffic(
    mode: str, df: str, mtus: list[int], batches: list[tuple[list[bytes], float]], learn: bool
) -> None:
    """Random frames against random per-remote paths: C and Python send the same packets and fragments,
    build the same replies and count the same."""
    cfg = datapath_config(
        mode=mode, remotes=REMOTES, underlay_mtu=1500, tap_mtu=1500, df=df, vlan_map=((10, 5010),), batch=8
    )
    clock, fp, pp = pair(cfg)
    for fwd in (fp, pp):
        for slot, mtu in enumerate(mtus):
            fwd.set_remote_mtu(slot, mtu)
        if learn:
            fwd.fdb.learn(bytes.fromhex(B.replace(":", "")), 1)
    for frames, step in batches:
        assert fp.tx(frames) == pp.tx(frames)
        assert fp.pmtu_replies() == pp.pmtu_replies()
        clock.now += step
    assert fp.snapshot() == pp.snapshot()
