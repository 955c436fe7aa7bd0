"""The offload I/O path in a private namespace: from_tap with virtio headers (through a unix datagram socket
standing in for the TAP, and a real TAP opened with IFF_VNET_HDR and TSO, to which the kernel hands a TSO
super-frame injected with AF_PACKET), from_tunnel writing coalesced super-frames (onto a socketpair and into a
real TCP socket behind a TAP), and the VXLAN underlay's UDP_GRO and UDP_SEGMENT.
"""

from __future__ import annotations

import random
import select
import socket
import struct
import time

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw

from datapath import fast
from datapath.config import Config, Remote
from datapath.encap import vxlan
from datapath.io import tap
from tests.configs import datapath_config
from tests.isolated import run_isolated
from tests.offload_frames import (
    DST_MAC,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    LO,
    NEEDS_CSUM,
    SRC_MAC,
    _cfg,
    _resegment,
    check_segments,
    needs_module,
    segment_stream,
    super_frame,
    vnet,
)

pytestmark = [needs_module, pytest.mark.netns]

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
SO_RCVBUFFORCE = 33


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
