"""TAP offloads in C: TSO super-frames cut into segments, partial checksums completed.

The C function (``fast.offload_frame`` = ``ovl_offload_frame``) is held against
scapy as an independent dissector: every segment's IPv4 header checksum and TCP
checksum are what scapy computes, lengths, IPv4 ids and sequence numbers run on,
the payload is the super-frame's, FIN/PSH sit only on the last segment and CWR
only on the first, everything else is copied. Malformed virtio headers and
truncated frames are refused (the datapath counts them as ``tx_bad_offload``),
never a crash. The I/O path (``from_tap`` with a virtio header) is tested in a
private namespace: through a unix datagram socket standing in for the TAP (any
virtio header, chunked sending), and through a real TAP opened with
IFF_VNET_HDR and TSO, to which the kernel hands a TSO super-frame injected with
an AF_PACKET socket (PACKET_VNET_HDR).
"""

from __future__ import annotations

import random
import select
import socket
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw

from datapath import fast
from datapath.config import Config, Remote
from datapath.counters import Drop
from datapath.encap import vxlan
from datapath.io import tap
from tests.configs import datapath_config
from tests.isolated import run_isolated

needs_module = pytest.mark.skipif(not fast.available(), reason="C fast path not built")

NEEDS_CSUM = 1
GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4, GSO_ECN = 0, 1, 3, 4, 5, 0x80
SRC_MAC, DST_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
TS_OPTS = [("NOP", None), ("NOP", None), ("Timestamp", (12345, 67890))]


def vnet(flags: int = 0, gso_type: int = 0, hdr_len: int = 0, gso_size: int = 0, start: int = 0, off: int = 0) -> bytes:
    return struct.pack("=BBHHHH", flags, gso_type, hdr_len, gso_size, start, off)


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def l3_offset(frame: bytes) -> int:
    off = 12
    while frame[off : off + 2] in (b"\x81\x00", b"\x88\xa8"):
        off += 4
    return off + 2


def partial(frame: bytes, l4: int, field: int, proto: int) -> bytes:
    """frame with the pseudo-header sum in the checksum field at l4 + field, as the kernel leaves it."""
    l3 = l3_offset(frame)
    addrs = frame[l3 + 8 : l3 + 40] if frame[l3] >> 4 == 6 else frame[l3 + 12 : l3 + 20]
    ps = _sum16(addrs + struct.pack("!HH", proto, len(frame) - l4))
    return frame[: l4 + field] + struct.pack("!H", ps) + frame[l4 + field + 2 :]


def super_frame(
    payload: bytes,
    *,
    v6: bool = False,
    tags: tuple[Packet, ...] = (),
    opts: bool = False,
    flags: str = "PA",
    seq: int = 1000,
    ipid: int = 7,
) -> tuple[bytes, int]:
    """A TCP super-frame as a TAP hands it over (pseudo-header sum in the TCP checksum); (frame, l4 offset)."""
    l3: Packet = (
        IPv6(src="2001:db8::1", dst="2001:db8::2", hlim=61, tc=0x28)
        if v6
        else IP(src="10.0.0.1", dst="10.0.0.2", id=ipid, flags="DF", ttl=61, tos=0x2A)
    )
    pkt: Packet = Ether(src=SRC_MAC, dst=DST_MAC)
    for t in tags:
        pkt = pkt / t
    tcp = TCP(sport=40000, dport=5201, seq=seq, ack=99, flags=flags, window=512, options=TS_OPTS if opts else [])
    pkt = pkt / l3 / tcp / Raw(payload)
    raw = bytes(pkt)
    l4 = len(raw) - len(payload) - len(bytes(tcp))  # tcp alone: the header (the / above copied it)
    return partial(raw, l4, 16, 6), l4


def check_segments(frame: bytes, l4: int, segs: list[bytes], mss: int) -> None:
    """segs are frame cut at mss the way the kernel's tcp_gso_segment does it."""
    orig = Ether(frame)
    v6 = IPv6 in orig
    ip0 = orig[IPv6] if v6 else orig[IP]
    t0 = orig[TCP]
    hdrs = l4 + t0.dataofs * 4
    payload = frame[hdrs:]
    assert len(segs) == -(-len(payload) // mss)
    got = b""
    for i, seg in enumerate(segs):
        last = i == len(segs) - 1
        p = Ether(seg)
        ip, t = (p[IPv6] if v6 else p[IP]), p[TCP]
        # Checksums: scapy recomputes them over the segment as it is.
        again = Ether(seg)
        del again[TCP].chksum
        if not v6:
            del again[IP].chksum
        assert bytes(again) == seg, f"segment {i}: bad checksum"
        if v6:
            assert ip.plen == len(seg) - l3_offset(frame) - 40
            assert (ip.tc, ip.hlim, ip.src, ip.dst) == (ip0.tc, ip0.hlim, ip0.src, ip0.dst)
        else:
            assert ip.len == len(seg) - l3_offset(frame)
            assert ip.id == (ip0.id + i) & 0xFFFF
            assert (ip.tos, ip.ttl, ip.flags, ip.src, ip.dst) == (ip0.tos, ip0.ttl, ip0.flags, ip0.src, ip0.dst)
        assert seg[: l3_offset(frame)] == frame[: l3_offset(frame)]  # Ethernet and tags
        assert t.seq == (t0.seq + i * mss) & 0xFFFFFFFF
        assert (t.sport, t.dport, t.ack, t.window, t.options, t.dataofs) == (
            t0.sport,
            t0.dport,
            t0.ack,
            t0.window,
            t0.options,
            t0.dataofs,
        )
        want = int(t0.flags)
        if not last:
            want &= ~(0x01 | 0x08)  # FIN, PSH only on the last
        if i:
            want &= ~0x80  # CWR only on the first
        assert int(t.flags) == want, (i, t.flags)
        body = seg[hdrs:]
        assert len(body) == (len(payload) - i * mss if last else mss)
        got += body
    assert got == payload


pytestmark = needs_module


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("opts", [False, True])
@pytest.mark.parametrize(
    "tags", [(), (Dot1Q(vlan=20),), (Dot1AD(vlan=5), Dot1Q(vlan=20))], ids=["untagged", "vlan", "qinq"]
)
@pytest.mark.parametrize(
    ("size", "mss"), [(14480, 1448), (14481, 1448), (65000, 1398), (100, 1), (3000, 7), (10, 1448)]
)
def test_segments_against_scapy(v6: bool, opts: bool, tags: tuple[Packet, ...], size: int, mss: int) -> None:
    payload = random.Random(size * mss).randbytes(size)
    frame, l4 = super_frame(payload, v6=v6, tags=tags, opts=opts, flags="FPA" if size % 2 else "PA")
    if len(frame) > 65535 + 18 + 14:
        pytest.skip("bigger than a TAP hands over")
    gso = GSO_TCPV6 if v6 else GSO_TCPV4
    segs = fast.offload_frame(vnet(NEEDS_CSUM, gso, 0, mss, l4, 16), frame)
    check_segments(frame, l4, segs, mss)


def test_sequence_and_id_wrap_ecn_and_cwr() -> None:
    payload = bytes(range(256)) * 20
    frame, l4 = super_frame(payload, flags="CEFPA", seq=0xFFFFF000, ipid=0xFFFE)
    segs = fast.offload_frame(vnet(NEEDS_CSUM, GSO_TCPV4 | GSO_ECN, 66, 1000, l4, 16), frame)
    check_segments(frame, l4, segs, 1000)
    assert [Ether(s)[IP].id for s in segs[:3]] == [0xFFFE, 0xFFFF, 0]
    assert Ether(segs[0])[TCP].flags == "CEA" and Ether(segs[-1])[TCP].flags == "EFPA"


def test_hdr_len_is_not_trusted() -> None:
    frame, l4 = super_frame(bytes(5000), opts=True)
    for hdr_len in (0, 1, 54, 9999, 0xFFFF):
        segs = fast.offload_frame(vnet(NEEDS_CSUM, GSO_TCPV4, hdr_len, 1400, l4, 16), frame)
        check_segments(frame, l4, segs, 1400)


@given(
    size=st.integers(1, 20000),
    mss=st.integers(1, 3000),
    v6=st.booleans(),
    opts=st.booleans(),
    tagged=st.booleans(),
    flags=st.sampled_from(["A", "PA", "FA", "FPA", "CA", "CEPA", "SA"]),
    seq=st.integers(0, 2**32 - 1),
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_super_frames(size: int, mss: int, v6: bool, opts: bool, tagged: bool, flags: str, seq: int) -> None:
    if size // mss > 2000:
        mss = size // 2000 + 1
    frame, l4 = super_frame(
        random.Random(seq).randbytes(size),
        v6=v6,
        opts=opts,
        tags=(Dot1Q(vlan=7),) if tagged else (),
        flags=flags,
        seq=seq,
    )
    segs = fast.offload_frame(vnet(NEEDS_CSUM, GSO_TCPV6 if v6 else GSO_TCPV4, 0, mss, l4, 16), frame)
    check_segments(frame, l4, segs, mss)


@pytest.mark.parametrize("kind", ["tcp4", "udp4", "tcp6", "udp6", "tcp4_vlan", "udp_odd"])
def test_partial_checksum_completed(kind: str) -> None:
    v6 = "6" in kind
    l3p: Packet = IPv6(src="2001:db8::1", dst="2001:db8::2") if v6 else IP(src="10.1.2.3", dst="10.3.2.1")
    l4p: Packet = UDP(sport=1, dport=2) if "udp" in kind else TCP(sport=1, dport=2, flags="PA")
    size = 101 if kind == "udp_odd" else 300
    pkt = Ether(src=SRC_MAC, dst=DST_MAC)
    if "vlan" in kind:
        pkt = pkt / Dot1Q(vlan=3)
    full = bytes(pkt / l3p / l4p / Raw(random.Random(1).randbytes(size)))
    l4 = len(full) - len(l4p) - size
    field = 6 if "udp" in kind else 16
    frame = partial(full, l4, field, 17 if "udp" in kind else 6)
    assert frame != full or "udp" in kind
    [out] = fast.offload_frame(vnet(NEEDS_CSUM, GSO_NONE, 0, 0, l4, field), frame)
    assert out == full
    # Without NEEDS_CSUM the frame passes as it is.
    assert fast.offload_frame(vnet(), frame) == [frame]


def bad(v: bytes, frame: bytes) -> None:
    with pytest.raises(ValueError, match="tx_bad_offload"):
        fast.offload_frame(v, frame)


def test_malformed_is_refused() -> None:
    frame4, l4 = super_frame(bytes(3000), opts=True)
    frame6, l46 = super_frame(bytes(3000), v6=True)
    ok4 = vnet(NEEDS_CSUM, GSO_TCPV4, 0, 1000, l4, 16)
    bad(vnet(NEEDS_CSUM, GSO_TCPV4, 0, 0, l4, 16), frame4)  # gso_size 0
    bad(vnet(NEEDS_CSUM, GSO_TCPV6, 0, 1000, l4, 16), frame4)  # gso type does not match the EtherType
    bad(vnet(NEEDS_CSUM, GSO_TCPV4, 0, 1000, l46, 16), frame6)
    bad(vnet(NEEDS_CSUM, GSO_UDP, 0, 1000, l4, 16), frame4)  # not offered
    bad(vnet(NEEDS_CSUM, GSO_UDP_L4, 0, 1000, l4, 16), frame4)
    bad(vnet(NEEDS_CSUM, 0x42, 0, 1000, l4, 16), frame4)
    bad(vnet(NEEDS_CSUM, 0, 0, 0, len(frame4), 0), frame4)  # csum_start beyond the frame
    bad(vnet(NEEDS_CSUM, 0, 0, 0, len(frame4) - 1, 0), frame4)  # field beyond the frame
    bad(vnet(NEEDS_CSUM, 0, 0, 0, 0, 0xFFFF), frame4)
    # An IPv4 fragment, a UDP packet, an IPv6 extension header, no payload.
    frag = bytearray(frame4)
    frag[14 + 6] |= 0x20
    bad(ok4, bytes(frag))
    udp = bytearray(frame4)
    udp[14 + 9] = 17
    bad(ok4, bytes(udp))
    ext = bytearray(frame6)
    ext[14 + 6] = 0  # hop-by-hop
    bad(vnet(NEEDS_CSUM, GSO_TCPV6, 0, 1000, l46, 16), bytes(ext))
    bad(ok4, frame4[: l4 + 32])  # headers only
    bad(ok4, frame4[:l4] + bytes([0] * 12) + b"\x40" + bytes(7))  # data offset 4 words
    # Every truncation of a super-frame: refused or cut consistently, never a crash.
    for cut in range(0, l4 + 40):
        try:
            segs = fast.offload_frame(ok4, frame4[:cut])
        except ValueError as exc:
            assert "tx_bad_offload" in str(exc)
        else:
            assert b"".join(s[l4 + 32 :] for s in segs) == frame4[l4 + 32 : cut]
    with pytest.raises(ValueError):
        fast.offload_frame(b"\0" * 9, frame4)


@given(st.binary(min_size=10, max_size=10), st.binary(max_size=400))
@settings(max_examples=500, deadline=None)
def test_random_bytes_never_crash(v: bytes, frame: bytes) -> None:
    try:
        segs = fast.offload_frame(v, frame)
    except ValueError as exc:
        assert "tx_bad_offload" in str(exc)
    else:
        assert segs and all(len(s) <= max(len(frame), 1) for s in segs)


# -- the I/O path -----------------------------------------------------------------

LO = "127.0.0.1"
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
SO_RCVBUFFORCE = 33


def _cfg(batch: int = 64, **kw: object) -> Config:
    """VXLAN VNI 99 over loopback, unless kw says otherwise."""
    fields: dict[str, object] = {"mode": "vxlan", "remotes": (Remote(LO, LO),), "underlay_mtu": 1500,
                                 "tap_mtu": 1450, "vni": 99, "batch": batch}  # fmt: skip
    fields.update(kw)
    return datapath_config(**fields)  # type: ignore[arg-type]


def _catch(sock: socket.socket, want: int, timeout: float = 5.0) -> list[bytes]:
    got: list[bytes] = []
    end = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < end:
        if select.select([sock], [], [], 0.1)[0]:
            got.append(sock.recv(65536))
    return got


def _recv_socket(port: int) -> socket.socket:
    recv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    recv.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
    recv.bind((LO, port))
    recv.setblocking(False)
    return recv


def _inner(packets: list[bytes]) -> list[bytes]:
    out = []
    for p in packets:
        off, vni = vxlan.parse(p)
        assert off >= 0 and vni == 99
        out.append(p[off:])
    return out


@pytest.mark.netns
def test_from_tap_with_virtio_headers() -> None:
    """from_tap on a virtio-header stream: segments, completed checksums, chunked sends, counted drops."""

    def body() -> None:
        cfg = _cfg(batch=4, udp_csum=True)
        fwd = fast.FastForwarder(cfg, tap_vnet=10)
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        b.setblocking(False)
        send = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        recv = _recv_socket(cfg.encap.port)
        big, l4 = super_frame(random.Random(3).randbytes(60000), opts=True, flags="FPA")
        small, sl4 = super_frame(b"x" * 500)
        expect_big = fast.offload_frame(vnet(NEEDS_CSUM, GSO_TCPV4, 0, 1000, l4, 16), big)
        check_segments(big, l4, expect_big, 1000)
        full_small = fast.offload_frame(vnet(NEEDS_CSUM, 0, 0, 0, sl4, 16), small)[0]
        plain = bytes(Ether(src=SRC_MAC, dst="ff:ff:ff:ff:ff:ff") / IP() / UDP() / Raw(b"p" * 50))
        msgs = [
            vnet(NEEDS_CSUM, GSO_TCPV4, 54, 1000, l4, 16) + big,  # 60 segments through a batch of 4
            vnet(NEEDS_CSUM, 0, 0, 0, sl4, 16) + small,
            vnet() + plain,
            b"\0" * 5,  # shorter than the virtio header
            vnet(NEEDS_CSUM, GSO_TCPV4, 0, 0, l4, 16) + big,  # gso_size 0
            vnet(NEEDS_CSUM, GSO_UDP_L4, 0, 1000, l4, 16) + big,  # not offered
            vnet(NEEDS_CSUM, 0, 0, 0, 4000, 16) + small,  # csum_start beyond the frame
            vnet(NEEDS_CSUM, GSO_TCPV4, 0, 1460, l4, 16) + big,  # segments too big for the underlay: each dropped
            vnet(NEEDS_CSUM, GSO_TCPV4, 0, 4000, l4, 16) + big,  # too big for a ring slot: dropped whole
        ]
        segs1460 = fast.offload_frame(vnet(NEEDS_CSUM, GSO_TCPV4, 0, 1460, l4, 16), big)
        fits = [f for f in segs1460 if cfg.outer_len + len(f) <= cfg.underlay_mtu]  # the short last one
        too_big = len(segs1460) - len(fits)
        for m in msgs:
            a.send(m)
        n = 0
        while n < len(msgs):
            select.select([b], [], [], 1)
            n += fwd.from_tap(b.fileno(), send)
        assert n == len(msgs)
        got = _inner(_catch(recv, len(expect_big) + 2 + len(fits)))
        assert got == [*expect_big, full_small, plain, *fits]
        snap = fwd.snapshot()
        drops = {k: v for k, v in snap.drops.items() if v}
        assert drops == {"tx_bad_offload": 4, "tx_too_big": too_big + 1}, drops
        assert snap.stats["tap_rx"] == len(expect_big) + 2 + 4 + len(segs1460) + 1
        assert snap.stats["tx_flooded"] == len(expect_big) + 2 + len(fits)
        assert snap.stats["tap_rx_gso"] == 2  # the 4000-byte one is dropped before it is cut
        assert snap.remotes[0]["tx_packets"] == len(expect_big) + 2 + len(fits)
        assert _catch(recv, 1, timeout=0.2) == []

    run_isolated(body)


@pytest.mark.netns
def test_many_remotes_chunked() -> None:
    """A super-frame flooded to many remotes: more packets than tx_out holds, every one sent."""

    def body() -> None:
        import subprocess

        addrs = [f"127.0.0.{i}" for i in range(1, 9)]
        cfg = datapath_config(
            mode="vxlan",
            remotes=tuple(Remote(a, LO) for a in addrs),
            underlay_mtu=1500,
            tap_mtu=1450,
            vni=99,
            batch=16,
        )
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        fwd = fast.FastForwarder(cfg, tap_vnet=10)
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        b.setblocking(False)
        send = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        recv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        recv.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
        recv.bind(("0.0.0.0", cfg.encap.port))
        recv.setblocking(False)
        big, l4 = super_frame(random.Random(4).randbytes(40000))
        expect = fast.offload_frame(vnet(NEEDS_CSUM, GSO_TCPV4, 0, 1400, l4, 16), big)
        a.send(vnet(NEEDS_CSUM, GSO_TCPV4, 0, 1400, l4, 16) + big)
        select.select([b], [], [], 1)
        assert fwd.from_tap(b.fileno(), send) == 1
        got = _catch(recv, len(expect) * len(addrs))
        assert len(got) == len(expect) * len(addrs)
        inner = _inner(got)
        for seg in expect:
            assert inner.count(seg) == len(addrs)
        snap = fwd.snapshot()
        assert [r["tx_packets"] for r in snap.remotes] == [len(expect)] * len(addrs)
        assert sum(snap.drops.values()) == 0

    run_isolated(body)


@pytest.mark.netns
def test_real_tap_tso_super_frame() -> None:
    """The kernel hands a TSO super-frame to a TAP opened with offloads; it leaves as intact segments.

    The super-frame is injected with an AF_PACKET socket with PACKET_VNET_HDR (a GSO skb
    transmitted on the TAP, as a bridge forwards one from a container's TCP socket).
    Back from the tunnel, frames are written with a zeroed virtio header and arrive intact.
    """

    def body() -> None:
        import subprocess

        t = tap.Tap("ovlts0", bytes.fromhex("020000aa0001"), 1450, offloads=True)
        assert t.vnet_hdr_len == 10
        assert t.offloads & (tap.TUN_F_CSUM | tap.TUN_F_TSO4 | tap.TUN_F_TSO6) == 7, t.describe()
        assert "tso4" in t.describe()
        features = subprocess.run(["ethtool", "-k", "ovlts0"], capture_output=True, text=True).stdout
        assert "tcp-segmentation-offload: on" in features, features
        cfg = _cfg(batch=8)
        fwd = fast.FastForwarder(cfg, tap_vnet=t.vnet_hdr_len)
        send = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        recv = _recv_socket(cfg.encap.port)
        pkt = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        pkt.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        pkt.bind(("ovlts0", 0))
        done = []
        for v6 in (False, True):
            big, l4 = super_frame(random.Random(5).randbytes(30000), v6=v6, opts=True)
            gso = GSO_TCPV6 if v6 else GSO_TCPV4
            hdr = vnet(NEEDS_CSUM, gso, l4 + 32, 1368, l4, 16)  # 1368 + 32 + 40 + 14 fits 1450
            expect = fast.offload_frame(hdr, big)
            check_segments(big, l4, expect, 1368)
            pkt.send(hdr + big)
            n, end = 0, time.monotonic() + 5
            while n < 1 and time.monotonic() < end:
                select.select([t.fileno()], [], [], 0.1)
                n += fwd.from_tap(t.fileno(), send)
            assert n == 1, "the TAP did not hand over one super-frame"
            got = _inner(_catch(recv, len(expect)))
            assert got == expect
            done.append(len(expect))
        snap = fwd.snapshot()
        assert sum(snap.drops.values()) == 0 and snap.stats["tap_rx"] == sum(done)

        # Back: from_tunnel writes with a zeroed virtio header; the kernel side sees the frame as it is.
        pkt.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 0)
        pkt.setblocking(False)
        frame = bytes(Ether(src="02:00:00:00:00:09", dst="ff:ff:ff:ff:ff:ff") / IP() / UDP() / Raw(b"back" * 50))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(vxlan.header(99) + frame, (LO, cfg.encap.port))
        n, end = 0, time.monotonic() + 5
        while n < 1 and time.monotonic() < end:
            select.select([recv], [], [], 0.1)
            n += fwd.from_tunnel(recv, t.fileno())
        seen, end = [], time.monotonic() + 2
        while not seen and time.monotonic() < end:
            if select.select([pkt], [], [], 0.1)[0]:
                data = pkt.recv(65536)
                if data[6:12] == bytes.fromhex("020000000009"):
                    seen.append(data)
        assert seen == [frame]
        assert fwd.snapshot().stats["tap_tx"] == 1
        t.close()

    run_isolated(body)


@pytest.mark.netns
@pytest.mark.parametrize("fast_path", [True, False])
def test_engine_picks_tap_flags_by_forwarder(fast_path: bool) -> None:
    """The C path gets the virtio header and offloads; the Python path a plain TAP; tap_offloads=False too."""

    def body() -> None:
        from datapath.engine import Engine

        for offloads in (True, False):
            cfg = _cfg(mode="gre", vni=None, tap_mtu=1462, tap_name="ovleng0", tap_offloads=offloads, fast=fast_path)
            eng = Engine(cfg)
            try:
                on = fast_path and offloads
                assert eng.fast == fast_path
                assert eng.tap.vnet_hdr_len == (10 if on else 0)
                assert bool(eng.tap.offloads & tap.TUN_F_TSO4) == on
                assert getattr(eng.forwarder, "tap_vnet", 0) == eng.tap.vnet_hdr_len
            finally:
                eng.close()

    run_isolated(body)


def test_drop_reason_value() -> None:
    assert Drop.TX_BAD_OFFLOAD == fast.lib.OVL_DROP_TX_BAD_OFFLOAD


# -- RX coalescing ------------------------------------------------------------------


def segment_stream(
    n: int, mss: int, *, v6: bool = False, tags: tuple[Packet, ...] = (), opts: bool = False, sport: int = 40000
) -> list[bytes]:
    """n consecutive TCP segments of one flow with valid checksums (IPv4 ids running on), PSH on the last."""
    out = []
    rnd = random.Random(n * mss + sport)
    for i in range(n):
        l3: Packet = (
            IPv6(src="2001:db8::1", dst="2001:db8::2", hlim=61)
            if v6
            else IP(src="10.0.0.1", dst="10.0.0.2", id=100 + i, flags="DF", ttl=61)
        )
        pkt: Packet = Ether(src=SRC_MAC, dst=DST_MAC)
        for t in tags:
            pkt = pkt / t
        tcp = TCP(
            sport=sport,
            dport=5201,
            seq=5000 + i * mss,
            ack=77,
            flags="PA" if i == n - 1 else "A",
            window=1000,
            options=TS_OPTS if opts else [],
        )
        out.append(bytes(pkt / l3 / tcp / Raw(rnd.randbytes(mss))))
    return out


def _coalesce(frames: list[bytes], batch: int = 64) -> tuple[list[tuple[bytes, bytes]], fast.FastForwarder]:
    """frames through from_tunnel with rx_coalesce, in one batch, onto a socketpair: [(virtio header, frame)]."""
    cfg = _cfg(batch=batch, rx_coalesce=True)
    fwd = fast.FastForwarder(cfg, tap_vnet=10)
    recv = _recv_socket(cfg.encap.port)
    tap_end, reader = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    tap_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    reader.setblocking(False)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for f in frames:
            s.sendto(vxlan.header(99) + f, (LO, cfg.encap.port))
    select.select([recv], [], [], 1)
    assert fwd.from_tunnel(recv, tap_end.fileno()) == len(frames)
    out = []
    while True:
        try:
            d = reader.recv(1 << 17)
        except BlockingIOError:
            break
        out.append((d[:10], d[10:]))
    for s in (recv, tap_end, reader):
        s.close()
    return out, fwd


def _resegment(v: bytes, frame: bytes) -> list[bytes]:
    """What the kernel makes of a written super-frame: checked header fields, then cut as TSO would."""
    flags, gso, hdr_len, gso_size, start, off = struct.unpack("=BBHHHH", v)
    assert gso_size >= 1 or gso == GSO_NONE
    if gso == GSO_NONE:
        assert v == bytes(10)
        return [frame]
    assert flags == NEEDS_CSUM and off == 16
    l3 = l3_offset(frame)
    assert start == l3 + (40 if gso == GSO_TCPV6 else 20)
    assert hdr_len == start + (frame[start + 12] >> 4) * 4
    # The checksum field holds the pseudo-header sum: completing it gives a valid checksum.
    [full] = fast.offload_frame(vnet(NEEDS_CSUM, GSO_NONE, 0, 0, start, off), frame)
    again = Ether(full)
    del again[TCP].chksum
    assert bytes(again) == full
    if gso == GSO_TCPV4:
        again = Ether(full)
        del again[IP].chksum
        assert bytes(again) == full and again[IP].len == len(full) - l3
    return fast.offload_frame(v, frame)


@pytest.mark.netns
@pytest.mark.parametrize(
    "variant", ["v4", "v6", "v4_opts_vlan", "v6_qinq", "short_last", "mss_1"], ids=lambda v: str(v)
)
def test_coalesce_one_flow(variant: str) -> None:
    """Segments of one flow -> one super-frame that, cut again as the kernel would, gives them back byte for byte."""

    def body() -> None:
        v6 = "v6" in variant
        tags: tuple[Packet, ...] = ()
        if "vlan" in variant:
            tags = (Dot1Q(vlan=20),)
        if "qinq" in variant:
            tags = (Dot1AD(vlan=5), Dot1Q(vlan=20))
        mss = 1 if variant == "mss_1" else 1000
        segs = segment_stream(20, mss, v6=v6, tags=tags, opts="opts" in variant)
        if variant == "short_last":
            segs[-1] = segs[-1][:-300]
            p = Ether(segs[-1])
            del p[TCP].chksum
            if IP in p:
                del p[IP].len, p[IP].chksum
            segs[-1] = bytes(p)
        out, fwd = _coalesce(segs)
        assert len(out) == 1
        v, frame = out[0]
        assert struct.unpack("=BBHHHH", v)[1] == (GSO_TCPV6 if v6 else GSO_TCPV4)
        assert struct.unpack("=BBHHHH", v)[3] == mss
        assert _resegment(v, frame) == segs
        snap = fwd.snapshot()
        assert snap.stats["tap_tx"] == 20 and snap.stats["tap_tx_gso"] == 1
        assert snap.remotes[0]["rx_packets"] == 20 and snap.remotes[0]["rx_bytes"] == sum(map(len, segs))

    run_isolated(body)


@pytest.mark.netns
def test_coalesce_mixed_batch() -> None:
    """Interleaved flows, other traffic, and every reason to end a super-frame; each flow's order is kept."""

    def body() -> None:
        a = segment_stream(12, 1000)
        b = segment_stream(6, 500, sport=40001)
        c6 = segment_stream(4, 800, v6=True, sport=40002)
        arp = bytes(Ether(src="02:00:00:00:00:05", dst="ff:ff:ff:ff:ff:ff", type=0x0806) / Raw(bytes(28)))
        pure_ack = bytes(
            Ether(src=SRC_MAC, dst=DST_MAC)
            / IP(src="10.0.0.1", dst="10.0.0.2")
            / TCP(sport=40000, dport=5201, flags="A")
        )
        bad_sum = bytearray(a[7])
        bad_sum[-1] ^= 0xFF  # payload damaged: TCP checksum wrong
        udp = bytes(Ether(src=SRC_MAC, dst=DST_MAC) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / Raw(b"u" * 900))
        gap = a[10]  # a[9] missing: not consecutive
        syn = bytes(
            Ether(src=SRC_MAC, dst=DST_MAC)
            / IP(src="10.0.0.1", dst="10.0.0.2")
            / TCP(sport=40003, dport=5201, flags="S", seq=1)
        )
        ttl = Ether(b[5])
        ttl[IP].ttl = 9
        del ttl[IP].chksum
        ttl_b5 = bytes(ttl)  # different TTL: does not join
        frames = [
            a[0], b[0], a[1], arp, a[2], b[1], c6[0], a[3], pure_ack,  # pure ACK of flow a ends a[0..3]
            a[4], a[5], b[2], b[3], udp, a[6], bytes(bad_sum), a[8], gap, c6[1], c6[2], c6[3],
            b[4], syn, ttl_b5, a[11],
        ]  # fmt: skip
        out, fwd = _coalesce(frames)
        written: list[list[bytes]] = [_resegment(v, f) for v, f in out]
        flat = [f for group in written for f in group]
        assert sorted(flat) == sorted(frames)  # everything delivered once, identical

        def order(flow: list[bytes]) -> list[int]:
            return [flat.index(f) for f in flow]

        for flow in ([a[0], a[1], a[2], a[3], pure_ack, a[4], a[5], a[6], bytes(bad_sum), a[8], gap, a[11]], b, c6):
            positions = order([f for f in flow if f in flat and f != ttl_b5] if flow is b else flow)
            assert positions == sorted(positions), "a flow's order changed"
        groups = [g for g in written if len(g) > 1]
        assert [a[0], a[1], a[2], a[3]] in groups
        assert [a[4], a[5], a[6]] in groups
        assert [b[0], b[1], b[2], b[3], b[4]] in groups
        assert [c6[0], c6[1], c6[2], c6[3]] in groups
        assert [bytes(bad_sum)] in written and [pure_ack] in written and [syn] in written
        assert fwd.snapshot().stats["tap_tx"] == len(frames)
        assert fwd.snapshot().stats["tap_tx_gso"] == len(groups)

    run_isolated(body)


@pytest.mark.netns
def test_coalesce_off_without_flag_or_virtio() -> None:
    """rx_coalesce needs the virtio header; without the flag every frame is written alone with a zero header."""

    def body() -> None:
        segs = segment_stream(5, 1000)
        cfg = _cfg(batch=64)
        assert not cfg.offload.coalesce
        fwd = fast.FastForwarder(cfg, tap_vnet=10)
        recv = _recv_socket(cfg.encap.port)
        tap_end, reader = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for f in segs:
                s.sendto(vxlan.header(99) + f, (LO, cfg.encap.port))
        select.select([recv], [], [], 1)
        assert fwd.from_tunnel(recv, tap_end.fileno()) == 5
        assert [reader.recv(65536) for _ in segs] == [bytes(10) + f for f in segs]
        assert not fast.lib.ovl_dp_coalescing(fast.FastForwarder(_cfg(batch=4, rx_coalesce=True), tap_vnet=0)._dp)

    run_isolated(body)


@pytest.mark.netns
def test_coalesced_super_frame_into_a_real_tcp_socket() -> None:
    """A super-frame written to a real TAP is accepted by the kernel's TCP: the data arrives intact."""

    def body() -> None:
        import os
        import subprocess

        mac = bytes.fromhex("020000aa0002")
        t = tap.Tap("ovlco0", mac, 1500, offloads=True)
        subprocess.run(["ip", "addr", "add", "10.9.0.2/24", "dev", "ovlco0"], check=True)
        subprocess.run(
            ["ip", "neigh", "add", "10.9.0.1", "lladdr", SRC_MAC, "dev", "ovlco0", "nud", "permanent"], check=True
        )
        cfg = _cfg(batch=64, rx_coalesce=True)
        fwd = fast.FastForwarder(cfg, tap_vnet=t.vnet_hdr_len)
        recv = _recv_socket(cfg.encap.port)
        lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lst.bind(("10.9.0.2", 5555))
        lst.listen()
        eth = Ether(src=SRC_MAC, dst="02:00:00:aa:00:02")
        ip = IP(src="10.9.0.1", dst="10.9.0.2", flags="DF")

        def to_tap(frame: bytes) -> None:
            os.write(t.fileno(), bytes(10) + frame)

        to_tap(bytes(eth / ip / TCP(sport=40000, dport=5555, flags="S", seq=1000, window=65535)))
        isn = None
        end = time.monotonic() + 5
        while isn is None and time.monotonic() < end:
            if select.select([t.fileno()], [], [], 0.1)[0]:
                p = Ether(os.read(t.fileno(), 70000)[10:])
                if TCP in p and p[TCP].flags == "SA":
                    isn = p[TCP].seq
        assert isn is not None, "no SYN-ACK"
        to_tap(bytes(eth / ip / TCP(sport=40000, dport=5555, flags="A", seq=1001, ack=isn + 1, window=65535)))
        conn, _ = lst.accept()
        data = random.Random(9).randbytes(30 * 1000)
        segs = [
            bytes(
                eth
                / IP(src="10.9.0.1", dst="10.9.0.2", flags="DF", id=i)
                / TCP(
                    sport=40000,
                    dport=5555,
                    flags="PA" if i == 29 else "A",
                    seq=1001 + i * 1000,
                    ack=isn + 1,
                    window=65535,
                )
                / Raw(data[i * 1000 : (i + 1) * 1000])
            )
            for i in range(30)
        ]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for f in segs:
                s.sendto(vxlan.header(99) + f, (LO, cfg.encap.port))
        n, end = 0, time.monotonic() + 5
        while n < 30 and time.monotonic() < end:
            select.select([recv], [], [], 0.1)
            n += fwd.from_tunnel(recv, t.fileno())
        snap = fwd.snapshot()
        assert snap.stats["tap_tx_gso"] >= 1 and snap.stats["tap_tx"] == 30 and sum(snap.drops.values()) == 0, snap
        got = b""
        conn.settimeout(5)
        while len(got) < len(data):
            chunk = conn.recv(65536)
            assert chunk
            got += chunk
        assert got == data
        conn.close()
        lst.close()
        t.close()

    run_isolated(body)


# -- UDP GSO / GRO (VXLAN underlay) ----------------------------------------------------

SOL_UDP, UDP_SEGMENT = 17, 103


def _marked(i: int, size: int) -> bytes:
    body = b"\x88\xb5" + f"gro {i} ".encode()
    return bytes.fromhex("ffffffffffff020000000007") + body + bytes(size - 12 - len(body))


def _gro_rig(cfg: Config) -> tuple[fast.FastForwarder, socket.socket, socket.socket, socket.socket]:
    """A C forwarder with UDP_GRO on its receiving socket, and a datagram socketpair standing in for the TAP."""
    from datapath.io import underlay

    fwd = fast.FastForwarder(cfg, tap_vnet=10, udp_gro=True)
    recv = _recv_socket(cfg.encap.port)
    assert underlay.enable_udp_gro(recv)
    tap_end, reader = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    reader.setblocking(False)
    return fwd, recv, tap_end, reader


@pytest.mark.netns
def test_udp_gro_buffers_are_split() -> None:
    """A UDP_GRO buffer of many VXLAN datagrams (the last shorter) becomes the frames it holds, in order."""

    def body() -> None:
        cfg = _cfg(batch=4)
        fwd, recv, tap_end, reader = _gro_rig(cfg)
        tap_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        frames = [_marked(i, 1000) for i in range(30)] + [_marked(30, 400)]
        payload = b"".join(vxlan.header(99) + f for f in frames)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((LO, 0))
            s.sendmsg([payload], [(SOL_UDP, UDP_SEGMENT, struct.pack("H", 1008))], 0, (LO, cfg.encap.port))
            s.sendto(vxlan.header(99) + _marked(99, 300), (LO, cfg.encap.port))  # and a plain one
        n, end = 0, time.monotonic() + 5
        while n < 32 and time.monotonic() < end:
            select.select([recv], [], [], 0.1)
            n += fwd.from_tunnel(recv, tap_end.fileno())
        assert n == 32
        got = []
        while True:
            try:
                got.append(reader.recv(65536))
            except BlockingIOError:
                break
        assert got == [bytes(10) + f for f in [*frames, _marked(99, 300)]]
        snap = fwd.snapshot()
        assert snap.stats["rx_gro"] == 1 and snap.stats["tap_tx"] == 32 and sum(snap.drops.values()) == 0, snap
        assert snap.remotes[0]["rx_packets"] == 32

    run_isolated(body)


@pytest.mark.netns
@pytest.mark.parametrize("gro", [False, True])
def test_udp_gso_send(gro: bool) -> None:
    """Segments of a super-frame leave in UDP_SEGMENT sends from the socket pool; a plain or a GRO receiver
    (coalescing again) gets exactly the segments."""

    def body() -> None:
        from datapath.io import underlay

        cfg = _cfg(batch=64, udp_gso=True, rx_coalesce=True)
        socks = underlay.open_gso_sockets(cfg.bind, cfg.tunnel.ttl)
        assert len(socks) == underlay.UDP_GSO_SOCKETS
        ports = {s.getsockname()[1] for s in socks}
        assert all(underlay.SRC_PORT_MIN <= p < underlay.SRC_PORT_MAX for p in ports)
        fwd = fast.FastForwarder(cfg, tap_vnet=10, gso_socks=socks)
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        b.setblocking(False)
        send = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        recv = _recv_socket(cfg.encap.port)
        if gro:  # before the packets arrive: the kernel decides when it queues them
            assert underlay.enable_udp_gro(recv)
        big, l4 = super_frame(random.Random(6).randbytes(50000), opts=True)
        hdr = vnet(NEEDS_CSUM, GSO_TCPV4, 0, 1300, l4, 16)
        expect = fast.offload_frame(hdr, big)
        a.send(hdr + big)
        select.select([b], [], [], 1)
        assert fwd.from_tap(b.fileno(), send) == 1
        snap = fwd.snapshot()
        assert snap.stats["tx_gso"] >= 1 and snap.remotes[0]["tx_packets"] == len(expect), snap
        if not gro:
            got = []
            end = time.monotonic() + 5
            while len(got) < len(expect) and time.monotonic() < end:
                if select.select([recv], [], [], 0.1)[0]:
                    data, addr = recv.recvfrom(65536)
                    assert addr[1] in ports
                    got.append(data)
            assert _inner(got) == expect
            return
        rx = fast.FastForwarder(_cfg(batch=64, rx_coalesce=True), tap_vnet=10, udp_gro=True)
        tap_end, reader = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        tap_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        reader.setblocking(False)
        n = _receive(rx, recv, tap_end, len(expect))
        assert n == len(expect)
        assert _resegment_all(reader) == expect
        snap = rx.snapshot()
        assert snap.stats["rx_gro"] >= 1 and snap.stats["tap_tx_gso"] >= 1, snap

    run_isolated(body)


def _receive(fwd: fast.FastForwarder, recv: socket.socket, tap_end: socket.socket, want: int) -> int:
    """from_tunnel until want packets are in (or 5 s passed); returns how many."""
    n, end = 0, time.monotonic() + 5
    while n < want and time.monotonic() < end:
        select.select([recv], [], [], 0.1)
        n += fwd.from_tunnel(recv, tap_end.fileno())
    return n


def _resegment_all(reader: socket.socket) -> list[bytes]:
    """Everything written to the TAP stand-in, cut back into segments as the kernel would."""
    out = []
    while True:
        try:
            d = reader.recv(1 << 17)
        except BlockingIOError:
            return out
        out.extend(_resegment(d[:10], d[10:]))


@pytest.mark.netns
def test_coalescing_stays_within_iov_max() -> None:
    """More tiny segments of one flow in a batch than writev takes iovecs (1024): several super-frames, none lost."""

    def body() -> None:
        expect = segment_stream(1100, 40)
        fwd, recv, tap_end, reader = _gro_rig(_cfg(batch=64, rx_coalesce=True))
        tap_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 << 20)
        size = len(vxlan.header(99) + expect[0])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((LO, 0))
            for i in range(0, len(expect), 64):  # UDP GSO: 64 datagrams per send, GRO'd together on receipt
                payload = b"".join(vxlan.header(99) + f for f in expect[i : i + 64])
                s.sendmsg([payload], [(SOL_UDP, UDP_SEGMENT, struct.pack("H", size))], 0, (LO, 4789))
        _receive(fwd, recv, tap_end, len(expect))
        snap = fwd.snapshot()
        assert snap.drops["rx_tap_error"] == 0 and snap.stats["tap_tx"] == len(expect), snap
        assert _resegment_all(reader) == expect

    run_isolated(body)


@pytest.mark.netns
@pytest.mark.parametrize("udp_gso", [False, True])
def test_engine_underlay_offloads(udp_gso: bool) -> None:
    """The engine turns UDP_GRO on for the C path (VXLAN) unless told not to, and opens the UDP GSO pool only
    when asked."""

    def body() -> None:
        from datapath.engine import Engine

        cfg = _cfg(tap_name="ovleng1", udp_gso=udp_gso)
        eng = Engine(cfg)
        try:
            assert eng.udp_gro and len(eng.gso_socks) == (8 if udp_gso else 0)
            assert ("udp_segment via 8" in eng.describe_underlay()) == udp_gso
        finally:
            eng.close()
        eng = Engine(_cfg(tap_name="ovleng1", fast=False))
        try:
            assert not eng.udp_gro and not eng.gso_socks and eng.describe_underlay() == "none"
        finally:
            eng.close()
        eng = Engine(_cfg(tap_name="ovleng1", tap_offloads=False))  # --offload off: no UDP_GRO either
        try:
            assert not eng.udp_gro and eng.describe_underlay().startswith("no udp_gro")
            assert eng.recv_sock.getsockopt(SOL_UDP, 104) == 0
        finally:
            eng.close()

    run_isolated(body)


@pytest.mark.netns
def test_udp_gro_slot_still_drops_oversized() -> None:
    """With UDP_GRO the ring slots hold 64 KiB, but a single datagram bigger than a normal slot is still dropped."""

    def body() -> None:
        cfg = _cfg(batch=4)
        fwd, recv, tap_end, reader = _gro_rig(cfg)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(vxlan.header(99) + _marked(1, cfg.slot_size + 100), (LO, cfg.encap.port))
        select.select([recv], [], [], 1)
        assert fwd.from_tunnel(recv, tap_end.fileno()) == 1
        assert fwd.snapshot().drops["rx_truncated"] == 1
        with pytest.raises(BlockingIOError):
            reader.recv(65536)

    run_isolated(body)


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


# -- the pure steps the datapath runs, without sockets or a TAP ---------------------------


@pytest.mark.parametrize("room", [1, 3, 64])
def test_offload_frame_goes_on_where_it_stopped(room: int) -> None:
    """ovl_offload_frame with a small ring (room) hands out the segments over several calls, as the TX batch
    does when it fills: the same segments, each into its slot; a slot too small for a segment is refused."""
    big, l4 = super_frame(random.Random(room).randbytes(5000), opts=True)
    v = vnet(NEEDS_CSUM, GSO_TCPV4, 0, 700, l4, 16)
    expect = fast.offload_frame(v, big)
    assert len(expect) == 8
    lib, ffi = fast.lib, fast.ffi
    slot = 900
    frame = ffi.from_buffer("uint8_t[]", bytearray(big))
    out = ffi.new("uint8_t[]", slot * room)
    seg = ffi.new("uint32_t *")
    segs, lens = ffi.new("uint8_t *[]", room), ffi.new("uint32_t[]", room)
    got, calls = [], 0
    while True:
        n = lib.ovl_offload_frame(v, frame, len(big), seg, out, slot, segs, lens, room)
        assert 1 <= n <= room
        got += [bytes(ffi.buffer(segs[i], lens[i])) for i in range(n)]
        assert all(segs[i] == out + i * slot for i in range(n))
        calls += 1
        if seg[0] == 0:
            break
        assert seg[0] == len(got)
    assert got == expect and calls == -(-8 // room)
    assert lib.ovl_offload_frame(v, frame, len(big), seg, out, 700, segs, lens, room) == -Drop.TX_TOO_BIG
    plain = ffi.from_buffer("uint8_t[]", bytearray(segment_stream(1, 100)[0]))
    assert lib.ovl_offload_frame(vnet(), plain, len(plain), seg, out, slot, segs, lens, room) == 1
    assert segs[0] == plain  # in place: no copy
    seg[0] = 1
    assert lib.ovl_offload_frame(vnet(), plain, len(plain), seg, out, slot, segs, lens, room) == -Drop.TX_BAD_OFFLOAD


def _plan(
    frames: list[bytes], batch: int = 64, **kw: object
) -> tuple[list[tuple[bytes, bytes, int]], fast.FastForwarder]:
    fwd = fast.FastForwarder(_cfg(batch=batch, **kw), tap_vnet=10)
    return fwd.rx_plan([(vxlan.header(99) + f, LO) for f in frames]), fwd


@pytest.mark.parametrize(
    "variant", ["v4", "v6", "v4_opts_vlan", "v6_qinq", "short_last", "mss_1"], ids=lambda v: str(v)
)
def test_rx_plan_coalesces_one_flow(variant: str) -> None:
    """The coalescing step from_tunnel runs, run by rx_plan: one super-frame that, cut again as the kernel would,
    gives the segments back byte for byte."""
    tags: tuple[Packet, ...] = {"v4_opts_vlan": (Dot1Q(vlan=20),), "v6_qinq": (Dot1AD(vlan=5), Dot1Q(vlan=20))}.get(
        variant, ()
    )
    mss = 1 if variant == "mss_1" else 1000
    segs = segment_stream(20, mss, v6="v6" in variant, tags=tags, opts="opts" in variant)
    if variant == "short_last":
        p = Ether(segs[-1][:-300])
        del p[TCP].chksum, p[IP].len, p[IP].chksum
        segs[-1] = bytes(p)
    plan, fwd = _plan(segs, rx_coalesce=True)
    assert [(len(v), remote) for v, _, remote in plan] == [(10, 0)]
    v, frame, _ = plan[0]
    assert struct.unpack("=BBHHHH", v)[1] == (GSO_TCPV6 if "v6" in variant else GSO_TCPV4)
    assert struct.unpack("=BBHHHH", v)[3] == mss
    assert _resegment(v, frame) == segs
    assert fwd.snapshot().stats["tap_tx"] == 0  # a plan: nothing written, nothing counted as written


def test_rx_plan_mixed_batch() -> None:
    """Interleaved flows and other traffic: super-frames end where they must, every frame is written once,
    each flow in order."""
    a = segment_stream(8, 1000)
    b = segment_stream(4, 500, sport=40001)
    arp = bytes(Ether(src="02:00:00:00:00:05", dst="ff:ff:ff:ff:ff:ff", type=0x0806) / Raw(bytes(28)))
    bad_sum = bytearray(a[5])
    bad_sum[-1] ^= 0xFF
    frames = [a[0], b[0], a[1], arp, a[2], b[1], b[2], a[3], a[4], bytes(bad_sum), a[6], b[3], a[7]]
    plan, _ = _plan(frames, rx_coalesce=True)
    written = [_resegment(v, f) for v, f, _ in plan]
    # The damaged segment ends a's super-frame; what is still open at the end goes out flow slot by flow slot.
    assert written == [[arp], [a[0], a[1], a[2], a[3], a[4]], [bytes(bad_sum)], [a[6], a[7]], [b[0], b[1], b[2], b[3]]]


def test_rx_plan_stays_within_iov_max() -> None:
    """A batch of more tiny segments of one flow than writev takes iovecs: several super-frames, none lost."""
    expect = segment_stream(1100, 40)
    plan, _ = _plan(expect, batch=1024, rx_coalesce=True)
    assert len(plan) == 3  # 1023 + 1 in the first batch (IOV_MAX 1024 with the virtio header), 76 in the second
    assert [s for v, f, _ in plan for s in _resegment(v, f)] == expect


@pytest.mark.parametrize("tap_vnet", [0, 10])
def test_rx_plan_without_coalescing(tap_vnet: int) -> None:
    """Without rx_coalesce the plan is one write per delivered frame: a zeroed virtio header (or none), the frame."""
    segs = segment_stream(5, 1000)
    packets = [(vxlan.header(99) + f, LO) for f in segs]
    packets.insert(2, (vxlan.header(98) + segs[0], LO))  # another VNI: dropped, not written
    for coalesce in (False, True) if tap_vnet == 0 else (False,):  # rx_coalesce needs the virtio header
        fwd = fast.FastForwarder(_cfg(rx_coalesce=coalesce), tap_vnet=tap_vnet)
        assert fwd.rx_plan(packets) == [(bytes(tap_vnet), f, 0) for f in segs]
        assert fwd.snapshot().drops["rx_bad_vni"] == 1
