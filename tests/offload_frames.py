"""Frames and configurations for the offload tests (tests/diff/test_offload.py, tests/netns/test_offload_io.py).

Virtio headers, TCP super-frames and segment streams built with scapy, the check
that segments are what the kernel's TSO would make, what the kernel makes of a
written super-frame (``_resegment``), and the loopback VXLAN configuration.
"""

from __future__ import annotations

import random
import struct

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from datapath import fast
from datapath.config import Config, Remote
from tests.configs import datapath_config

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


LO = "127.0.0.1"


def _cfg(batch: int = 64, **kw: object) -> Config:
    """VXLAN VNI 99 over loopback, unless kw says otherwise."""
    fields: dict[str, object] = {"mode": "vxlan", "remotes": (Remote(LO, LO),), "underlay_mtu": 1500,
                                 "tap_mtu": 1450, "vni": 99, "batch": batch}  # fmt: skip
    fields.update(kw)
    return datapath_config(**fields)  # type: ignore[arg-type]


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


def _resegment(v: bytes, frame: bytes) -> list[bytes]:
    """What the kernel makes of a written super-frame: checked header fields, then cut as TSO would."""
    flags, gso, hdr_len, gso_size, start, off = struct.unpack("=BBHHHH", v)
    assert gso_size >= 1 or gso == GSO_NONE
    if gso == GSO_NONE:
        assert v == bytes(10)
        return [frame]
    assert flags == NEEDS_CSUM and off == 16
    l3 = l3_offset(frame)
    assert start == l3 + (40 if gso & ~GSO_ECN == GSO_TCPV6 else 20)
    assert hdr_len == start + (frame[start + 12] >> 4) * 4
    # The checksum field holds the pseudo-header sum: completing it gives a valid checksum.
    [full] = fast.offload_frame(vnet(NEEDS_CSUM, GSO_NONE, 0, 0, start, off), frame)
    again = Ether(full)
    del again[TCP].chksum
    assert bytes(again) == full
    if gso & ~GSO_ECN == GSO_TCPV4:
        again = Ether(full)
        del again[IP].chksum
        assert bytes(again) == full and again[IP].len == len(full) - l3
    return fast.offload_frame(v, frame)
