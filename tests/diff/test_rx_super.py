"""Super-packets received whole (csrc/rx_super.c), without sockets: the RX plan's TAP writes against scapy.

A kernel vxlan peer over veth sends whole GSO packets: a datagram of up to 64 KiB whose inner frame is one
TCP packet beyond the TAP's MTU, its checksum the pseudo-header seed. ``FastForwarder.rx_plan`` runs the
steps ``from_tunnel`` runs (``ovl_rx_process``, ``ovl_rx_plan``) on such packets:

- towards a TAP that takes offloads (rx_coalesce with a virtio header) one write, a TSO frame (NEEDS_CSUM at
  the TCP header, TCPV4/TCPV6, +ECN with CWR, gso_size = TAP MTU - IP - TCP headers) that the kernel's
  segmentation (``_resegment``: the TX step's TSO, itself held against scapy) cuts into valid segments;
- elsewhere (no virtio header, or one without coalescing: an OVS bridge) the segments themselves, each with
  full checksums, equal to what the TX step makes of the same super-frame and checked field by field
  against scapy (``check_segments``);
- lengths that do not match the datagram, non-TCP, damaged checksums: never a crash, never a frame beyond
  the TAP MTU with a wrong checksum; dropped as rx_bad_super when it does not fit a ring slot.

Normal-size frames whose TCP/UDP checksum is the seed go to the TAP with NEEDS_CSUM (or completed here).
The I/O path (64 KiB receive slots, a kernel vxlan peer) is in tests/netns/test_rx_super.py.
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
from datapath.encap import vxlan
from tests.offload_frames import (
    DST_MAC,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
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

TAP_MTU = 1450
TAGS = {"untagged": (), "vlan": (Dot1Q(vlan=20),), "qinq": (Dot1AD(vlan=5), Dot1Q(vlan=20))}


def _fwd(coalesce: bool, tap_vnet: int = 10, rx_super: bool = True, **kw: object) -> fast.FastForwarder:
    return fast.FastForwarder(_cfg(rx_coalesce=coalesce, tap_mtu=TAP_MTU, **kw), tap_vnet=tap_vnet, rx_super=rx_super)


def _plan(fwd: fast.FastForwarder, frames: list[bytes]) -> list[tuple[bytes, bytes, int]]:
    return fwd.rx_plan([(vxlan.header(99) + f, LO) for f in frames])


def _hdrs(frame: bytes, l4: int) -> int:
    return l4 + (frame[l4 + 12] >> 4) * 4


def _l3(frame: bytes) -> int:
    off = 12
    while frame[off : off + 2] in (b"\x81\x00", b"\x88\xa8"):
        off += 4
    return off + 2


def mss_for(frame: bytes, l4: int) -> int:
    """What the TAP's MTU leaves for payload: MTU - IP header - TCP header (options included)."""
    return TAP_MTU - (_hdrs(frame, l4) - _l3(frame))


def full_checksum(frame: bytes) -> bytes:
    """frame with its TCP checksum computed in full (scapy), no longer the seed."""
    p = Ether(frame)
    del p[TCP].chksum
    return bytes(p)


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
@pytest.mark.parametrize("opts", [False, True], ids=["", "opts"])
@pytest.mark.parametrize("tags", list(TAGS), ids=list(TAGS))
@pytest.mark.parametrize("size", [3000, 20000, 65000])
def test_tso_write_towards_a_tap_that_takes_offloads(v6: bool, opts: bool, tags: str, size: int) -> None:
    payload = random.Random(size).randbytes(size)
    frame, l4 = super_frame(payload, v6=v6, tags=TAGS[tags], opts=opts, flags="PA")
    if 8 + len(frame) > 65507:
        pytest.skip("bigger than a UDP datagram")
    fwd = _fwd(True)
    plan = _plan(fwd, [frame])
    assert len(plan) == 1
    v, written, remote = plan[0]
    mss = mss_for(frame, l4)
    gso = GSO_TCPV6 if v6 else GSO_TCPV4
    assert (written, remote) == (frame, 0)  # as it came: nothing copied, nothing changed
    assert struct.unpack("=BBHHHH", v) == (NEEDS_CSUM, gso, _hdrs(frame, l4), mss, l4, 16)
    segs = _resegment(v, written)  # the kernel's cut: valid checksums, lengths
    check_segments(frame, l4, segs, mss)
    assert all(len(s) - _l3(s) <= TAP_MTU for s in segs)
    snap = fwd.snapshot()
    assert snap.stats["rx_super"] == 1 and snap.stats["rx_super_split"] == 0
    assert sum(snap.drops.values()) == 0


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
@pytest.mark.parametrize("tags", list(TAGS), ids=list(TAGS))
@pytest.mark.parametrize("tap_vnet", [0, 10], ids=["plain_tap", "vnet_no_coalesce"])
@pytest.mark.parametrize("full", [False, True], ids=["seed", "full_csum"])
def test_split_where_the_tap_takes_no_offloads(v6: bool, tags: str, tap_vnet: int, full: bool) -> None:
    payload = random.Random(7).randbytes(30001)
    frame, l4 = super_frame(payload, v6=v6, tags=TAGS[tags], opts=True, flags="CEFPA", seq=0xFFFFF000, ipid=0xFFF0)
    if full:
        frame = full_checksum(frame)
    fwd = _fwd(False, tap_vnet=tap_vnet)
    plan = _plan(fwd, [frame])
    mss = mss_for(frame, l4)
    assert all(v == bytes(tap_vnet) for v, _, _ in plan)  # complete frames
    segs = [f for _, f, _ in plan]
    check_segments(frame, l4, segs, mss)  # scapy: every checksum, length, id, sequence number, flag
    # The same as the TX step's segmentation of that super-frame.
    assert segs == fast.offload_frame(vnet(NEEDS_CSUM, GSO_TCPV6 if v6 else GSO_TCPV4, 0, mss, l4, 16), frame)
    assert max(len(s) - _l3(s) for s in segs) == TAP_MTU
    snap = fwd.snapshot()
    assert snap.stats["rx_super_split"] == 1 and snap.stats["rx_super"] == 0 and sum(snap.drops.values()) == 0


def test_full_checksum_becomes_the_seed_in_a_tso_write() -> None:
    frame, _ = super_frame(bytes(range(256)) * 40)
    plan = _plan(_fwd(True), [full_checksum(frame)])
    assert [f for _, f, _ in plan] == [frame]  # the seed, as a TSO frame carries it


def test_cwr_sets_the_ecn_bit() -> None:
    frame, _ = super_frame(bytes(5000), flags="CEA")
    [(v, _, _)] = _plan(_fwd(True), [frame])
    assert v[1] == GSO_TCPV4 | GSO_ECN
    segs = _resegment(v, frame)
    assert Ether(segs[0])[TCP].flags == "CEA" and all(Ether(s)[TCP].flags == "EA" for s in segs[1:])


def test_a_flow_keeps_its_order_around_a_super_packet() -> None:
    """Segments of a flow being coalesced, then a super-packet of the same flow, then more segments: the
    open super-frame is written first, the super-packet next, then the rest."""
    segs = segment_stream(6, 1000)
    sp, _ = super_frame(bytes(9000), seq=5000 + 3 * 1000)  # the same flow (addresses, ports)
    plan = _plan(_fwd(True), [*segs[:3], sp, *segs[3:]])
    assert len(plan) == 3
    assert _resegment(*plan[0][:2]) == segs[:3]
    assert plan[1][1] == sp and plan[1][0][1] == GSO_TCPV4
    assert _resegment(*plan[2][:2]) == segs[3:]


def _raw_ip_frame(l3: Packet, l4: Packet, payload: bytes) -> bytes:
    return bytes(Ether(src=SRC_MAC, dst=DST_MAC) / l3 / l4 / Raw(payload))


@pytest.mark.parametrize(
    "kind",
    ["udp", "ip_len_short", "ip_len_long", "bad_ip_csum", "damaged", "fragment", "syn", "urg", "v6_ext", "v6_len"],
)
def test_what_is_no_super_packet(kind: str) -> None:
    """Beyond a ring slot (2 KiB here): dropped as rx_bad_super. Within one: delivered as it is, as before."""
    for size, dropped in ((20000, True), (1700, False)):
        frame, l4 = super_frame(bytes(size))
        raw = bytearray(frame)
        if kind == "udp":
            raw = bytearray(_raw_ip_frame(IP(src="10.0.0.1", dst="10.0.0.2"), UDP(sport=1, dport=2), bytes(size)))
        elif kind == "ip_len_short":
            struct.pack_into("!H", raw, 16, len(raw) - 14 - 1)
        elif kind == "ip_len_long":
            struct.pack_into("!H", raw, 16, min(len(raw) - 14 + 1, 0xFFFF))
        elif kind == "bad_ip_csum":
            raw[24] ^= 1
        elif kind == "damaged":  # neither the seed (which does not cover the payload) nor a valid checksum
            raw[l4 + 16] ^= 0x55
        elif kind == "fragment":
            p = Ether(frame)
            p[IP].flags = "MF"
            del p[IP].chksum
            raw = bytearray(bytes(p))
        elif kind in ("syn", "urg"):
            raw[l4 + 13] |= 0x02 if kind == "syn" else 0x20
            raw = bytearray(partial(bytes(raw), l4, 16, 6))
        elif kind == "v6_ext":
            raw = bytearray(_raw_ip_frame(IPv6(src="2001:db8::1", dst="2001:db8::2", nh=0), Raw(bytes(8)), bytes(size)))
            raw[14 + 40] = 6  # hop-by-hop, then TCP
        elif kind == "v6_len":
            frame, l4 = super_frame(bytes(size), v6=True)
            raw = bytearray(frame)
            struct.pack_into("!H", raw, 18, len(raw) - 14 - 40 - 2)
        fwd = _fwd(True)
        plan = _plan(fwd, [bytes(raw)])
        snap = fwd.snapshot()
        if dropped:
            assert plan == [] and snap.drops["rx_bad_super"] == 1, (kind, snap)
        else:
            assert [f for _, f, _ in plan] == [bytes(raw)], kind
            assert snap.drops["rx_bad_super"] == 0
        assert snap.stats["rx_super"] == snap.stats["rx_super_split"] == 0


def test_off_passes_big_frames_on_as_before() -> None:
    """rx_super off: as before (io_recv drops a datagram beyond a ring slot as truncated), but for the seed."""
    frame, l4 = super_frame(bytes(20000))
    expect = [(vnet(NEEDS_CSUM, GSO_NONE, 0, 0, l4, 16), frame)]
    assert [(v, f) for v, f, _ in _plan(_fwd(True, rx_super=False), [frame])] == expect


def test_tap_mtu_change_and_range() -> None:
    fwd = _fwd(False, tap_vnet=0)
    frame, l4 = super_frame(bytes(20000))
    fwd.set_tap_mtu(1000)
    segs = [f for _, f, _ in _plan(fwd, [frame])]
    check_segments(frame, l4, segs, 1000 - 40)
    with pytest.raises(ValueError):
        fwd.set_tap_mtu(100)
    fwd.set_tap_mtu(TAP_MTU)  # nothing changed by the refused one
    assert len(_plan(fwd, [frame])) == -(-20000 // (TAP_MTU - 40))


# -- normal-size frames with a partial (seed) checksum --------------------------------------------------


def _seed(frame: bytes) -> tuple[bytes, int, int]:
    """frame with the seed in its TCP/UDP checksum; (frame, l4 offset, checksum field offset)."""
    p = Ether(frame)
    ip = p[IPv6] if p.haslayer(IPv6) else p[IP]
    udp = p.haslayer(UDP)
    l4 = len(frame) - len(bytes(ip.payload))
    return partial(frame, l4, 6 if udp else 16, 17 if udp else 6), l4, 6 if udp else 16


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_seed_checksum_passed_on_as_partial(v6: bool, proto: str) -> None:
    l3: Packet = IPv6(src="2001:db8::1", dst="2001:db8::2") if v6 else IP(src="10.0.0.1", dst="10.0.0.2")
    l4p: Packet = UDP(sport=5, dport=6) if proto == "udp" else TCP(flags="SA")
    good = _raw_ip_frame(l3, l4p, bytes(range(200)))
    frame, l4, field = _seed(good)
    assert frame != good
    # A TAP that takes offloads: NEEDS_CSUM from the L4 header, the frame as it came.
    [(v, f, _)] = _plan(_fwd(True), [frame])
    assert struct.unpack("=BBHHHH", v) == (NEEDS_CSUM, GSO_NONE, 0, 0, l4, field) and f == frame
    [full] = fast.offload_frame(v, f)  # the kernel's skb_checksum_help, as the TX step does it
    assert full == good
    # Any other TAP: completed here.
    for tap_vnet in (0, 10):
        [(v, f, _)] = _plan(_fwd(False, tap_vnet=tap_vnet), [frame])
        assert v == bytes(tap_vnet) and f == good
    # A full checksum or a bad one: as it is (the receiver judges a bad one).
    bad = bytearray(good)
    bad[-1] ^= 1
    for f0 in (good, bytes(bad)):
        for coalesce in (True, False):
            assert [(v, f) for v, f, _ in _plan(_fwd(coalesce), [f0])] == [(bytes(10), f0)]


def test_seed_segments_are_coalesced() -> None:
    """A stream of seed-checksum segments (what a kernel peer over veth sends) becomes one super-frame."""
    segs = segment_stream(10, 1000)
    seeded = [_seed(s)[0] for s in segs]
    plan = _plan(_fwd(True), seeded)
    assert len(plan) == 1 and plan[0][0][1] == GSO_TCPV4
    assert _resegment(plan[0][0], plan[0][1]) == segs


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.integers(1, 64000),
    mtu=st.integers(256, 9000),
    v6=st.booleans(),
    opts=st.booleans(),
    tagged=st.booleans(),
    coalesce=st.booleans(),
    flags=st.sampled_from(["A", "PA", "FPA", "CEA"]),
    seq=st.integers(0, 2**32 - 1),
)
def test_random_super_packets(
    size: int, mtu: int, v6: bool, opts: bool, tagged: bool, coalesce: bool, flags: str, seq: int
) -> None:
    frame, l4 = super_frame(
        random.Random(size).randbytes(size), v6=v6, tags=TAGS["vlan"] if tagged else (), opts=opts, flags=flags, seq=seq
    )
    fwd = fast.FastForwarder(_cfg(rx_coalesce=coalesce, tap_mtu=TAP_MTU), tap_vnet=10, rx_super=True)
    fwd.set_tap_mtu(mtu)
    plan = _plan(fwd, [frame])
    mss = mtu - (_hdrs(frame, l4) - _l3(frame))
    if len(frame) - _l3(frame) <= mtu:  # within the MTU: an ordinary frame (its seed passed on or completed)
        assert [s for v, f, _ in plan for s in fast.offload_frame(v, f)] == [full_checksum(frame)]
        return
    segs = [s for v, f, _ in plan for s in _resegment(v, f)]
    check_segments(frame, l4, segs, mss)
    assert len(plan) == (1 if coalesce else len(segs))


@pytest.mark.parametrize("mode", ["vxlan", "gre"])
def test_super_packet_from_an_ipv6_remote(mode: str) -> None:
    """(issue 11, v6) The same TSO write when the datagram came over IPv6 (a VXLAN UDP payload, or a GRE
    packet from its header on, as an IPv6 raw socket gives it)."""
    from datapath.config import Remote
    from datapath.encap import gre

    six = Remote("fd00:5::2", "fd00:5::1")
    kw: dict[str, object] = {"vni": 99} if mode == "vxlan" else {"vni": None, "key": 99}
    fwd = fast.FastForwarder(
        _cfg(mode=mode, remotes=(Remote(LO, LO), six), rx_coalesce=True, tap_mtu=TAP_MTU, **kw),
        tap_vnet=10,
        rx_super=True,
    )
    frame, l4 = super_frame(random.Random(6).randbytes(20000), v6=True, flags="PA")
    head = vxlan.header(99) if mode == "vxlan" else gre.header(99)
    plan = fwd.rx_plan([(head + frame, six.addr, six.local or "")] if mode == "gre" else [(head + frame, six.addr)])
    assert len(plan) == 1
    v, written, remote = plan[0]
    assert (written, remote) == (frame, 1)
    assert struct.unpack("=BBHHHH", v)[:2] == (NEEDS_CSUM, GSO_TCPV6)
    check_segments(frame, l4, _resegment(v, written), mss_for(frame, l4))
    snap = fwd.snapshot()
    assert snap.stats["rx_super"] == 1 and sum(snap.drops.values()) == 0
