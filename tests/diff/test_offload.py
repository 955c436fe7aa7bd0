"""TAP offloads in C, without sockets: TSO super-frames cut into segments, partial checksums completed,
received segments planned into super-frames.

The C function (``fast.offload_frame`` over ``ovl_offload_frame``, the per-frame step the TX batch runs) is
held against scapy as an independent dissector: every segment's IPv4 header checksum and TCP checksum are
what scapy computes, lengths, IPv4 ids and sequence numbers run on, the payload is the super-frame's,
FIN/PSH sit only on the last segment and CWR only on the first, everything else is copied. Malformed virtio
headers and truncated frames are refused (the datapath counts them as ``tx_bad_offload``), never a crash.
The RX write plan (``FastForwarder.rx_plan``: ``ovl_rx_process`` + ``ovl_rx_plan``, what ``from_tunnel`` runs
before it writes) coalesces a flow's segments into super-frames that resegment to the same segments. The
I/O path around these steps is tested in tests/netns/test_offload_io.py.
"""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw

from datapath import fast
from datapath.counters import Drop
from datapath.encap import vxlan
from tests.configs import examples
from tests.offload_frames import (
    DST_MAC,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP,
    GSO_UDP_L4,
    LO,
    NEEDS_CSUM,
    SRC_MAC,
    _cfg,
    _resegment,
    check_segments,
    needs_module,
    partial,
    segment_stream,
    super_frame,
    vnet,
)

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
@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
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


def test_drop_reason_value() -> None:
    assert Drop.TX_BAD_OFFLOAD == fast.lib.OVL_DROP_TX_BAD_OFFLOAD


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


@pytest.mark.parametrize("bits", [0x01, 0x02, 0x0E], ids=["ae", "reserved_low", "reserved_all"])
def test_rx_plan_keeps_tcp_header_bits(bits: int) -> None:
    """A segment whose TCP byte 12 differs in its low bits (AccECN's AE, the reserved bits) from the segment before
    is not merged into it: a super-frame carries its first segment's header, so the bits would be lost (found by the
    rx_plan fuzzer, tests/fuzz/corpus/rx_plan/crash-fd05dc96...)."""
    segs = segment_stream(5, 1000)
    p = Ether(segs[2])
    raw = bytearray(bytes(p))
    l4 = len(raw) - 1000 - 20
    raw[l4 + 12] |= bits
    p = Ether(bytes(raw))
    del p[TCP].chksum
    segs[2] = bytes(p)
    assert segs[2][l4 + 12] & 0x0F == bits
    plan, _ = _plan(segs, rx_coalesce=True)
    assert [s for v, f, _ in plan for s in _resegment(v, f)] == segs
    assert len(plan) == 3  # [0, 1], [2], [3, 4]
