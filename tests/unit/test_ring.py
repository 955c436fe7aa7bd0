"""The AF_PACKET TX ring's frames (csrc/ring.c via FastForwarder.tx_ring_frames), checked with scapy.

The frames are the ones io_send would copy into ring slots: Ethernet header of the next hop +
the outer packet the raw path sends + the inner frame. A ring socket on lo is opened and mapped
(nothing is sent on it: tx_ring_frames never calls send()).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
from scapy.layers.inet import GRE, IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from datapath import fast
from datapath.config import Remote
from datapath.io import ring
from tests.configs import datapath_config

needs_module = pytest.mark.skipif(not fast.available(), reason="C fast path not built")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="AF_PACKET needs CAP_NET_RAW")

NH_MAC = bytes.fromhex("02aabbccddee")
OUR_MAC = bytes.fromhex("021122334455")
REMOTES = (Remote("10.0.0.2", "10.0.0.1"), Remote("10.0.1.2", "10.0.1.1"))
INNER_DST = bytes.fromhex("ffffffffffff")  # flooded: one packet per remote


def frame(n: int) -> bytes:
    return INNER_DST + bytes.fromhex("020000000001") + b"\x08\x00" + bytes(range(256)) * (n // 256) + bytes(n % 256)


@pytest.fixture
def lo_ring() -> Iterator[ring.TxRing]:
    r = ring.open_tx_ring(socket.if_nametoindex("lo"), 1500)
    yield r
    r.close()


def test_geometry_holds_a_frame_of_the_mtu() -> None:
    for mtu in (68, 1500, 1501, 9000, 65535):
        g = ring.geometry(mtu)
        assert g.frame_size % 16 == 0 and g.block_size % 4096 == 0
        assert g.frame_size - ring.TPACKET2_DATA >= mtu + ring.ETH_HLEN
        assert g.frame_nr >= ring.RING_FRAMES
        assert g.max_len == mtu + 14
    assert ring.geometry(1500).bytes <= 1 << 20  # modest: 512 slots of 1552 bytes
    with pytest.raises(ValueError):
        ring.geometry(10)


@needs_module
@needs_root
@pytest.mark.parametrize("mode", ["gre", "gre-key", "vxlan", "vxlan-csum"])
def test_ring_frame_is_the_raw_packet_behind_an_ethernet_header(mode: str, lo_ring: ring.TxRing) -> None:
    kw: dict[str, object] = {"remotes": REMOTES, "underlay_mtu": 1500, "tap_mtu": 1450, "tap_offloads": False}
    if mode.startswith("vxlan"):
        kw.update(mode="vxlan", vni=42, udp_csum=mode == "vxlan-csum")
    else:
        kw.update(mode="gre", key=7 if mode == "gre-key" else None)
    fwd = fast.FastForwarder(datapath_config(**kw))  # type: ignore[arg-type]
    fwd.set_tx_ring(3, lo_ring)
    fwd.set_nexthop(1, 3, NH_MAC, OUR_MAC)  # slot 1 through the ring, slot 0 not
    frames = [frame(n) for n in (14, 60, 1000, 1436)]
    raw = fwd.tx(frames)
    ringed = fwd.tx_ring_frames(frames)
    assert [r for r, _ in ringed] == [r for r, _ in raw]
    for (remote, pkt), (_, eth) in zip(raw, ringed, strict=True):
        if remote == 0:
            assert eth is None  # no next hop: the raw way
            continue
        assert eth is not None and eth[14:] == pkt  # exactly what the raw socket would send
        e = Ether(eth)
        assert (e.dst, e.src, e.type) == ("02:aa:bb:cc:dd:ee", "02:11:22:33:44:55", 0x0800)
        ip = e[IP]
        df = "" if mode.startswith("vxlan") else "DF"  # the default --df: VXLAN unset, GRE set (as the kernel's)
        assert (ip.src, ip.dst, ip.ttl, ip.flags, ip.id) == ("10.0.1.1", "10.0.1.2", 64, df, 0)
        assert ip.chksum == _recomputed(bytes(ip), IP)  # complete header checksum
        assert ip.len == len(eth) - 14
        if mode.startswith("vxlan"):
            u = e[UDP]
            assert u.dport == 4789 and e[VXLAN].vni == 42
            if mode == "vxlan-csum":
                assert u.chksum == _recomputed(bytes(ip), UDP) != 0
            else:
                assert u.chksum == 0
            inner = bytes(e[VXLAN].payload)
        else:
            g = e[GRE]
            assert g.proto == 0x6558 and (g.key == 7 if mode == "gre-key" else g.key_present == 0)
            inner = bytes(g.payload)
        assert inner in frames


def _recomputed(ip: bytes, layer: type) -> int:
    """The checksum scapy computes for layer (IP or UDP) of the IPv4 packet ip."""
    pkt = IP(ip)
    del pkt[layer].chksum
    return int(IP(bytes(pkt))[layer].chksum)


@needs_module
@needs_root
def test_nexthop_follows_changes_and_ring_clear(lo_ring: ring.TxRing) -> None:
    fwd = fast.FastForwarder(datapath_config(mode="gre", remotes=REMOTES, underlay_mtu=1500, tap_mtu=1476))
    f = [frame(100)]
    assert all(eth is None for _, eth in fwd.tx_ring_frames(f))
    with pytest.raises(KeyError):
        fwd.set_nexthop(0, 0, NH_MAC, OUR_MAC)  # no ring 0 yet
    fwd.set_tx_ring(0, lo_ring)
    with pytest.raises(OSError):
        fwd.set_tx_ring(0, lo_ring)  # EBUSY
    fwd.set_nexthop(0, 0, NH_MAC, OUR_MAC)
    fwd.set_nexthop(1, 0, NH_MAC, OUR_MAC)
    assert [eth[:6] for _, eth in fwd.tx_ring_frames(f) if eth] == [NH_MAC, NH_MAC]
    fwd.set_nexthop(0, 0, b"\x02" * 6, OUR_MAC)  # the neighbour's MAC changed
    assert [eth[:6] for _, eth in fwd.tx_ring_frames(f) if eth] == [b"\x02" * 6, NH_MAC]
    fwd.set_nexthop(1, None)
    assert [eth is None for _, eth in fwd.tx_ring_frames(f)] == [False, True]
    with pytest.raises(KeyError):
        fwd.set_nexthop(5, None)  # a free slot
    fwd.remove_remote(0)  # a removed remote forgets its next hop; a new one in its slot has none
    fwd.add_remote(Remote("10.0.2.2", "10.0.2.1"))
    assert all(eth is None for _, eth in fwd.tx_ring_frames(f))
    fwd.set_nexthop(0, 0, NH_MAC, OUR_MAC)
    assert fwd.clear_tx_ring(0) is lo_ring
    assert all(eth is None for _, eth in fwd.tx_ring_frames(f))  # every next hop through it is gone
    assert fwd.clear_tx_ring(0) is None
    assert fwd.ring_counters() == dict.fromkeys(fast.RING_FIELDS, 0)  # nothing was sent


@needs_module
@needs_root
def test_too_big_for_the_device_goes_the_raw_way() -> None:
    small = ring.open_tx_ring(socket.if_nametoindex("lo"), 576)
    try:
        fwd = fast.FastForwarder(
            datapath_config(mode="gre", remotes=REMOTES[:1], underlay_mtu=1500, tap_mtu=1476, tap_offloads=False)
        )
        fwd.set_tx_ring(0, small)
        fwd.set_nexthop(0, 0, NH_MAC, OUR_MAC)
        got = fwd.tx_ring_frames([frame(500), frame(600)])
        assert got[0][1] is not None and len(got[0][1]) == 14 + 24 + 514
        assert got[1][1] is None  # 24 + 614 > 576
        fwd.clear_tx_ring(0)
    finally:
        small.close()


@needs_module
def test_ring_counter_enum_in_python_order() -> None:
    for i, name in enumerate(fast.RING_FIELDS):
        assert getattr(fast.lib, "OVL_" + name.upper()) == i
    assert len(fast.RING_FIELDS) == fast.lib.OVL_RING_STAT_COUNT


def test_tx_ring_option() -> None:
    from control.cli import build_parser
    from datapath.config import ConfigError, OffloadConfig

    assert OffloadConfig().tx_ring == "auto"
    with pytest.raises(ConfigError, match=r"offload\.tx_ring"):
        OffloadConfig(tx_ring="on")
    args = build_parser().parse_args(["run", "--remote", "192.0.2.2", "--tx-ring", "off"])
    assert getattr(args, "offload.tx_ring") == "off"
