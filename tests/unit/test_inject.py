"""The injection TAP's writes (csrc/inject.c) against scapy's dissection, and the pure helpers around it.

FastForwarder.inject_header runs the function the TX path runs for one super-frame and one
remote: the 24-byte virtio header (struct virtio_net_hdr_v1_hash_tunnel), outer Ethernet,
outer IPv4 / UDP / VXLAN, the inner frame. The kernel side of it is in
tests/netns/test_inject.py.
"""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.layers.vxlan import VXLAN

from control.inject import ADDR_NET, METADATA, pick_address
from datapath import fast
from datapath.config import Remote
from datapath.counters import INJECT_FIELDS
from datapath.io.inject import inject_names
from tests.configs import datapath_config
from tests.offload_frames import GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, NEEDS_CSUM, _sum16, super_frame, vnet

needs_module = pytest.mark.skipif(not fast.available(), reason="C fast path not built")

INJ_MAC = bytes.fromhex("0a0000000042")
LOCAL, REMOTE = "10.9.0.1", "10.9.0.2"
MSS = 1398


def forwarder(udp_csum: bool = False, **kw: object) -> fast.FastForwarder:
    fields: dict[str, object] = {"mode": "vxlan", "remotes": (Remote(REMOTE, LOCAL),), "underlay_mtu": 1500,
                                 "tap_mtu": 1450, "vni": 42, "udp_csum": udp_csum, **kw}  # fmt: skip
    cfg = datapath_config(**fields)  # type: ignore[arg-type]
    fwd = fast.FastForwarder(cfg, tap_vnet=10)
    fwd.set_inject(-1, INJ_MAC, udp_csum)
    return fwd


def tso(frame: bytes, l4: int, mss: int = MSS, gso: int = GSO_TCPV4, flags: int = NEEDS_CSUM) -> bytes:
    hdrs = l4 + (frame[l4 + 12] >> 4) * 4
    return vnet(flags, gso, hdrs, mss, l4, 16)


def tunnel_fields(out: bytes) -> dict[str, int]:
    flags, gso_type, hdr_len, gso_size, start, off, nbuf = struct.unpack_from("=BBHHHHH", out)
    outer_th, inner_nh = struct.unpack_from("<HH", out, 20)
    return {"flags": flags, "gso_type": gso_type, "hdr_len": hdr_len, "gso_size": gso_size, "csum_start": start,
            "csum_offset": off, "num_buffers": nbuf, "outer_th": outer_th, "inner_nh": inner_nh,
            "hash": int.from_bytes(out[10:20], "little")}  # fmt: skip


@needs_module
def test_counter_enum_in_python_order() -> None:
    for i, name in enumerate(INJECT_FIELDS):
        assert getattr(fast.lib, "OVL_INJ_" + name.upper()) == i, name
    assert len(INJECT_FIELDS) == fast.lib.OVL_INJ_COUNT


@needs_module
@pytest.mark.parametrize("udp_csum", [False, True], ids=["csum0", "csum"])
def test_header_of_a_tcpv4_super_frame(udp_csum: bool) -> None:
    fwd = forwarder(udp_csum)
    frame, l4 = super_frame(bytes(range(256)) * 80)  # 20,480 bytes of payload: 15 segments
    out = fwd.inject_header(0, tso(frame, l4), frame)
    v = tunnel_fields(out)
    shift = 14 + 20 + 8 + 8
    assert v == {"flags": NEEDS_CSUM | (8 if udp_csum else 0), "gso_type": GSO_TCPV4 | 0x20,
                 "hdr_len": shift + l4 + 20, "gso_size": MSS, "csum_start": shift + l4, "csum_offset": 16,
                 "num_buffers": 0, "outer_th": 34, "inner_nh": shift + 14, "hash": 0}  # fmt: skip
    pkt = Ether(out[24:])
    assert pkt.dst == INJ_MAC.hex(":") and pkt.src != pkt.dst and pkt.type == 0x0800
    ip, udp = pkt[IP], pkt[UDP]
    # no DF: VXLAN's default --df is unset, as the kernel's vxlan
    assert (ip.src, ip.dst, ip.ttl, ip.flags, ip.len) == (LOCAL, REMOTE, 65, "", len(out) - 24 - 14)
    again = IP(bytes(ip))
    del again.chksum
    assert IP(bytes(again)).chksum == ip.chksum  # a full IPv4 header checksum
    # The source port is the flow's: the one the per-segment path puts on every segment.
    plain = IP(fast.encap(fwd.cfg, 0, frame))
    assert udp.sport == plain[UDP].sport and udp.dport == 4789 and udp.len == ip.len - 20
    if udp_csum:  # the pseudo-header seed, which the kernel completes per segment
        seed = _sum16(ipaddress.ip_address(LOCAL).packed + ipaddress.ip_address(REMOTE).packed
                      + struct.pack("!HH", 17, udp.len))  # fmt: skip
        assert udp.chksum == seed
    else:
        assert udp.chksum == 0
    assert pkt[VXLAN].vni == 42 and pkt[VXLAN].flags == 0x08
    assert out[24 + shift :] == frame  # the inner frame untouched: its TCP checksum field keeps the seed


@needs_module
def test_ecn_and_tcpv6_keep_their_gso_type() -> None:
    fwd = forwarder()
    frame, l4 = super_frame(b"x" * 9000)
    assert tunnel_fields(fwd.inject_header(0, tso(frame, l4, gso=GSO_TCPV4 | GSO_ECN), frame))["gso_type"] == 0xA1
    frame6, l4 = super_frame(b"y" * 9000, v6=True)
    v = tunnel_fields(fwd.inject_header(0, tso(frame6, l4, mss=1378, gso=GSO_TCPV6), frame6))
    assert (v["gso_type"], v["inner_nh"], v["csum_start"]) == (GSO_TCPV6 | 0x20, 64, 50 + 14 + 40)


@needs_module
def test_an_inner_tag_stays_and_moves_the_offsets() -> None:
    """A trunk's 802.1Q tag (an unmapped VLAN) crosses inside the tunnel: inner_nh behind it."""
    fwd = forwarder()
    frame, l4 = super_frame(b"z" * 9000, tags=(Dot1Q(vlan=20),))
    out = fwd.inject_header(0, tso(frame, l4, mss=1394), frame)
    v = tunnel_fields(out)
    assert (v["inner_nh"], v["csum_start"]) == (50 + 18, 50 + 18 + 20)
    assert out[24 + 50 :] == frame


@needs_module
def test_a_mapped_vlan_leaves_untagged_in_its_vni() -> None:
    fwd = forwarder(vlan_map=((20, 5020),))
    frame, l4 = super_frame(b"z" * 9000, tags=(Dot1Q(vlan=20),))
    out = fwd.inject_header(0, tso(frame, l4), frame)
    v = tunnel_fields(out)
    assert (v["inner_nh"], v["csum_start"], v["hdr_len"]) == (64, 50 + l4 - 4, 50 + l4 - 4 + 20)
    assert Ether(out[24:])[VXLAN].vni == 5020
    assert out[24 + 50 :] == frame[:12] + frame[16:]


@needs_module
def test_what_goes_the_old_way() -> None:
    fwd = forwarder()
    frame, l4 = super_frame(b"a" * 9000)
    with pytest.raises(ValueError, match="fallback_other"):
        fwd.inject_header(0, tso(frame, l4, flags=0), frame)  # no partial checksum
    with pytest.raises(ValueError, match="fallback_other"):
        fwd.inject_header(0, tso(frame, l4, gso=GSO_NONE), frame)  # not a super-frame
    with pytest.raises(ValueError, match="fallback_other"):
        fwd.inject_header(0, tso(frame, l4, mss=0), frame)
    with pytest.raises(ValueError, match="fallback_other"):
        fwd.inject_header(1, tso(frame, l4), frame)  # no such remote
    # 36 outer + 14 + 20 + 20 + 1411 = 1501 > 1500: segments the underlay would not take
    with pytest.raises(ValueError, match="fallback_mtu"):
        fwd.inject_header(0, tso(frame, l4, mss=1411), frame)
    assert fwd.inject_header(0, tso(frame, l4, mss=1410), frame)
    # Outer IPv4 length 36 + frame: at most 65,535.
    big, l4 = super_frame(b"b" * (65535 - 36 - 54))
    assert len(fwd.inject_header(0, tso(big, l4), big)) == 24 + 14 + 65535
    bigger, l4 = super_frame(b"b" * (65535 - 36 - 54 + 1))
    with pytest.raises(ValueError, match="fallback_too_big"):
        fwd.inject_header(0, tso(bigger, l4), bigger)


@needs_module
@pytest.mark.parametrize("udp_csum", [False, True], ids=["csum0", "csum"])
def test_a_single_segment_goes_the_old_way(udp_csum: bool) -> None:
    """A GSO label on a frame whose payload fits one segment: the kernel does not make it GSO
    ("too small packets are not really GSO ones", __virtio_net_hdr_to_skb), so nothing would
    complete the outer UDP checksum seed: it would leave with a wrong checksum."""
    fwd = forwarder(udp_csum)
    frame, l4 = super_frame(b"s" * MSS)  # exactly one segment
    with pytest.raises(ValueError, match="fallback_other"):
        fwd.inject_header(0, tso(frame, l4), frame)
    frame, l4 = super_frame(b"s" * (MSS + 1))  # two: the kernel segments it
    assert fwd.inject_header(0, tso(frame, l4), frame)


@needs_module
@pytest.mark.parametrize("frag", [0x2000, 0x0001, 0x4001], ids=["MF", "offset", "DF+offset"])
def test_an_inner_ipv4_fragment_goes_the_old_way(frag: int) -> None:
    """The per-segment path drops a TSO frame whose inner IPv4 header says fragment (tso_prepare);
    the kernel's inet_gso_segment would copy MF / the offset onto every segment: same as the old way."""
    fwd = forwarder()
    frame, l4 = super_frame(b"f" * 9000)
    bad = bytearray(frame)
    struct.pack_into("!H", bad, 14 + 6, frag)  # (the IPv4 header checksum is not what is tested)
    with pytest.raises(ValueError, match="fallback_other"):
        fwd.inject_header(0, tso(bytes(bad), l4), bytes(bad))


@needs_module
def test_only_vxlan_with_a_virtio_header() -> None:
    gre = fast.FastForwarder(
        datapath_config(mode="gre", remotes=(Remote(REMOTE, LOCAL),), underlay_mtu=1500, tap_mtu=1462), tap_vnet=10
    )
    with pytest.raises(ValueError):
        gre.set_inject(-1, INJ_MAC, False)
    plain = fast.FastForwarder(
        datapath_config(mode="vxlan", remotes=(Remote(REMOTE, LOCAL),), underlay_mtu=1500, tap_mtu=1450)
    )
    with pytest.raises(ValueError):
        plain.set_inject(-1, INJ_MAC, False)
    assert plain.snapshot().inject is None
    fwd = forwarder()
    assert not fwd.injecting()  # headers only: no fd
    assert fwd.snapshot().inject == dict.fromkeys(INJECT_FIELDS, 0)
    assert fwd.inject_drain() == 0 and fwd.inject_errno() == 0


@needs_module
def test_every_injection_call_parks_the_data_path_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a data-path thread (runner_start), each call into the C injection state goes through a
    pause, as every other FastForwarder call: set_inject swaps dp->inj (a calloc'd one has fd 0 until
    set), inject_header builds into the buffer the thread writes its headers from."""
    fwd = forwarder()
    frame, l4 = super_frame(b"p" * 9000)
    entered: list[bool] = []
    real_enter = fast.Paused.__enter__

    def counting_enter(self: fast.Paused) -> None:
        entered.append(self._runner is not None)
        real_enter(self)

    monkeypatch.setattr(fast.Paused, "__enter__", counting_enter)
    fwd.runner_start()
    try:
        calls = {
            "set_inject": lambda: fwd.set_inject(-1, INJ_MAC, False),
            "injecting": fwd.injecting,
            "inject_errno": fwd.inject_errno,
            "inject_drain": fwd.inject_drain,
            "inject_header": lambda: fwd.inject_header(0, tso(frame, l4), frame),
        }
        for name, call in calls.items():
            entered.clear()
            call()
            assert True in entered, f"{name} did not pause the data-path thread"
    finally:
        fwd.runner_end()


def test_injection_tap_names() -> None:
    names = inject_names("ovl-vxlan")
    assert names[0] == "ovl-vxlan-inj" and len(set(names)) == len(names)
    long = inject_names("a-very-long-tap")  # 15 characters, the most a name has
    assert all(len(n) <= 15 for n in long) and len(set(long)) == len(long)
    assert long[0] == "a-very-long-inj" and long[1] == "a-very-lon-inj1"


def test_address_choice() -> None:
    first = pick_address("ovl-vxlan-inj", set())
    assert first in ADDR_NET and first != METADATA and first not in (ADDR_NET[0], ADDR_NET[-1])
    assert pick_address("ovl-vxlan-inj", set()) == first  # the same device name, the same first choice
    taken = {first}
    second = pick_address("ovl-vxlan-inj", taken)
    assert second != first and second in ADDR_NET
    everything = set(ADDR_NET.hosts())
    with pytest.raises(Exception, match="no free address"):
        pick_address("x", everything)


def test_iptables_legacy_is_run_only_where_it_is_in_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """iptables-legacy installed next to nftables (Debian's iptables package has both) but not in use:
    running it would load ip_tables and give this namespace a legacy filter table, a host change of
    its own. It is asked only when /proc/net/ip_tables_names lists the filter table."""
    from control import inject as host_inject

    marker = tmp_path / "ran"
    fake = tmp_path / "iptables-legacy"
    fake.write_text(f"#!/bin/sh\ntouch {marker}\necho '-P FORWARD ACCEPT'\n")
    fake.chmod(0o755)
    monkeypatch.setattr(host_inject.shutil, "which", lambda name: str(fake) if name == "iptables-legacy" else None)
    names = tmp_path / "ip_tables_names"
    names.write_text("")  # ip_tables loaded, no table in this namespace
    monkeypatch.setattr(host_inject, "IPT_LEGACY_TABLES", str(names))
    setup = host_inject.HostSetup("x-inj")
    host_inject._iptables_legacy(setup, 4789)
    assert not marker.exists() and not setup.changes
    names.unlink()  # ip_tables not loaded at all
    host_inject._iptables_legacy(setup, 4789)
    assert not marker.exists() and not setup.changes
    names.write_text("mangle\nfilter\n")
    host_inject._iptables_legacy(setup, 4789)
    assert marker.exists() and not setup.changes  # in use: asked; policy ACCEPT, nothing to add


def test_nftables_in_use_without_nft_refuses_the_injection(monkeypatch: pytest.MonkeyPatch) -> None:
    """nf_tables loaded (iptables-nft, as Docker on Ubuntu uses it) but no nft binary to read its forward
    chains: a chain with policy drop would eat every injected super-frame unseen, so the host is not
    set up (SetupError before any change: the daemon segments in C and says why)."""
    from control import inject as host_inject
    from datapath.errors import SetupError

    monkeypatch.setattr(host_inject.shutil, "which", lambda name: None)
    in_use = [True]
    monkeypatch.setattr(host_inject, "nftables_in_use", lambda families=frozenset({4}): in_use[0])
    touched: list[str] = []
    monkeypatch.setattr(host_inject, "_write_sysctl", lambda path, value: touched.append(path))
    with pytest.raises(SetupError, match="nft"):
        host_inject.configure("x-inj", 4789)
    assert touched == []  # nothing was changed
    in_use[0] = False  # no ip/inet table: nothing of nftables can drop them
    with pytest.raises(SetupError, match="gone"):  # on to the device, which this test has not made
        host_inject.configure("x-inj", 4789)
    assert touched


@needs_module
@pytest.mark.parametrize(
    "settings,want",
    [
        ({"tos": "inherit", "ttl": "inherit", "df": "inherit"}, (0x2A, 62, "DF")),  # inner DS 0x2A, TTL 61, DF
        ({"tos": 0xB8, "ttl": 17, "df": "set"}, (0xBA, 18, "DF")),  # DSCP of --tos, the inner ECT(0)
        ({"tos": 0, "ttl": 64, "df": "unset"}, (0x02, 65, "")),
    ],
    ids=["inherit", "fixed", "defaults"],
)
def test_injected_outer_fields(settings: dict[str, object], want: tuple[int, int, str]) -> None:
    """The injection header takes --tos/--ttl/--df as every packet does (csrc/ecn.c), TTL one more for the
    forwarding hop, with a full header checksum."""
    fwd = forwarder(**settings)
    frame, l4 = super_frame(bytes(range(256)) * 80)
    ip = Ether(fwd.inject_header(0, tso(frame, l4), frame)[24:])[IP]
    assert (ip.tos, ip.ttl, str(ip.flags)) == want
    again = IP(bytes(ip))
    del again.chksum
    assert IP(bytes(again)).chksum == ip.chksum


def test_held_to_the_tightest_remote_path() -> None:
    """Issue 11: a remote's lowered path MTU (ovl_dp_set_remote_mtu) holds the injection to it as well."""
    fwd = forwarder()
    frame, l4 = super_frame(b"a" * 9000)
    assert fwd.inject_header(0, tso(frame, l4, mss=1410), frame)
    fwd.set_remote_mtu(0, 1400)
    with pytest.raises(ValueError, match="fallback_mtu"):
        fwd.inject_header(0, tso(frame, l4, mss=1410), frame)
    assert fwd.inject_header(0, tso(frame, l4, mss=1310), frame)  # 36 + 54 + 1310 = 1400
    fwd.set_remote_mtu(0, 0)
    assert fwd.inject_header(0, tso(frame, l4, mss=1410), frame)


# ---- issue 11, inject6: IPv6 remotes -------------------------------------------------------------------

LOCAL6, REMOTE6 = "2001:db8::1", "2001:db8::2"


def forwarder6(udp_tunnel_csum: bool = True, inject6: bool = True, **kw: object) -> fast.FastForwarder:
    """A forwarder with one IPv6 remote (slot 0) and one IPv4 remote (slot 1), headers only."""
    fields: dict[str, object] = {"mode": "vxlan", "remotes": (Remote(REMOTE6, LOCAL6), Remote(REMOTE, LOCAL)),
                                 "underlay_mtu": 1500, "tap_mtu": 1430, "vni": 42, **kw}  # fmt: skip
    fwd = fast.FastForwarder(datapath_config(**fields), tap_vnet=10)  # type: ignore[arg-type]
    fwd.set_inject(-1, INJ_MAC, udp_tunnel_csum)
    if inject6:
        fwd.set_inject6(True)
    return fwd


@needs_module
@pytest.mark.parametrize("zero_csum", [False, True], ids=["csum", "udp6-zero-csum-tx"])
def test_header_for_an_ipv6_remote(zero_csum: bool) -> None:
    fwd = forwarder6(udp6_zero_csum_tx=zero_csum, tos="inherit")
    frame, l4 = super_frame(bytes(range(256)) * 80)
    out = fwd.inject_header(0, tso(frame, l4, mss=1378), frame)  # 56 + 14 + 20 + 20 + 1378 = 1488
    v = tunnel_fields(out)
    shift = 14 + 40 + 8 + 8
    assert v == {"flags": NEEDS_CSUM | (0 if zero_csum else 8), "gso_type": GSO_TCPV4 | 0x40,
                 "hdr_len": shift + l4 + 20, "gso_size": 1378, "csum_start": shift + l4, "csum_offset": 16,
                 "num_buffers": 0, "outer_th": 14 + 40, "inner_nh": shift + 14, "hash": 0}  # fmt: skip
    pkt = Ether(out[24:])
    assert pkt.dst == INJ_MAC.hex(":") and pkt.src != pkt.dst and pkt.type == 0x86DD
    ip6, udp = pkt[IPv6], pkt[UDP]
    assert (ip6.src, ip6.dst, ip6.nh, ip6.hlim, ip6.fl) == (LOCAL6, REMOTE6, 17, 65, 0)  # hop limit 64 + 1
    assert ip6.plen == len(out) - 24 - 14 - 40 == udp.len
    inner_tos = IP(frame[14:]).tos
    assert ip6.tc == inner_tos  # --tos inherit: the inner DS field (ecn_outer)
    plain = IPv6(fast.encap(fwd.cfg, 0, frame))
    assert udp.sport == plain[UDP].sport and udp.dport == 4789
    if zero_csum:
        assert udp.chksum == 0
    else:  # the IPv6 pseudo-header seed (RFC 8200 8.1), which the kernel completes per segment
        seed = _sum16(ipaddress.ip_address(LOCAL6).packed + ipaddress.ip_address(REMOTE6).packed
                      + struct.pack("!IxxxB", udp.len, 17))  # fmt: skip
        assert udp.chksum == seed
    assert pkt[VXLAN].vni == 42 and pkt[VXLAN].flags == 0x08
    assert out[24 + shift :] == frame
    # The IPv4 remote next to it keeps its own header: no UDP checksum without --udp-csum, although
    # the TAP can have them completed.
    v4 = fwd.inject_header(1, tso(frame, l4), frame)
    assert tunnel_fields(v4)["gso_type"] == GSO_TCPV4 | 0x20 and tunnel_fields(v4)["flags"] == NEEDS_CSUM
    assert Ether(v4[24:])[UDP].chksum == 0


@needs_module
def test_an_ipv6_remote_without_the_host_or_the_checksum_offload_goes_the_old_way() -> None:
    frame, l4 = super_frame(b"c" * 9000)
    off = forwarder6(inject6=False)  # no force_forwarding on the host: not set
    frame, l4 = super_frame(b"c" * 9000)
    with pytest.raises(ValueError, match="fallback_other"):
        off.inject_header(0, tso(frame, l4, mss=1378), frame)
    assert off.inject_header(1, tso(frame, l4, mss=1378), frame)  # the IPv4 remote is not held back
    no_csum = forwarder6(udp_tunnel_csum=False)  # the TAP has no TUN_F_UDP_TUNNEL_GSO_CSUM
    with pytest.raises(ValueError, match="fallback_other"):
        no_csum.inject_header(0, tso(frame, l4, mss=1378), frame)
    zero = forwarder6(udp_tunnel_csum=False, udp6_zero_csum_tx=True)  # no checksum due: fine
    assert tunnel_fields(zero.inject_header(0, tso(frame, l4, mss=1378), frame))["gso_type"] == GSO_TCPV4 | 0x40
    again = forwarder6()
    again.set_inject(-1, INJ_MAC, True)  # every set_inject turns IPv6 off again
    with pytest.raises(ValueError, match="fallback_other"):
        again.inject_header(0, tso(frame, l4, mss=1378), frame)
    plain = fast.FastForwarder(
        datapath_config(mode="vxlan", remotes=(Remote(REMOTE6, LOCAL6),), underlay_mtu=1500, tap_mtu=1430),
        tap_vnet=10,
    )
    with pytest.raises(ValueError, match="before set_inject"):
        plain.set_inject6(True)


@needs_module
def test_ipv6_limits_follow_the_remotes_outer_length() -> None:
    """gso_size against the remote's path MTU with the 56-byte outer IPv6 header; the IPv6 payload length."""
    fwd = forwarder6()
    frame, l4 = super_frame(b"m" * 9000)
    # 56 outer + 14 + 20 + 20 + 1391 = 1501 > 1500; 1390 fits. The IPv4 remote takes 1410.
    with pytest.raises(ValueError, match="fallback_mtu"):
        fwd.inject_header(0, tso(frame, l4, mss=1391), frame)
    assert fwd.inject_header(0, tso(frame, l4, mss=1390), frame)
    assert fwd.inject_header(1, tso(frame, l4, mss=1410), frame)
    fwd.set_remote_mtu(0, 1400)  # a lowered path MTU towards the IPv6 remote (pmtu.c)
    with pytest.raises(ValueError, match="fallback_mtu"):
        fwd.inject_header(0, tso(frame, l4, mss=1390), frame)
    assert fwd.inject_header(0, tso(frame, l4, mss=1290), frame)
    assert fwd.inject_header(1, tso(frame, l4, mss=1410), frame)  # the other remote's path is its own
    # IPv6 payload length: UDP + VXLAN + frame at most 65,535 (20 bytes more than over IPv4).
    big, l4 = super_frame(b"b" * (65535 - 16 - 54))
    out = fwd.inject_header(0, tso(big, l4, mss=1290), big)
    assert len(out) == 24 + 14 + 40 + 65535 and Ether(out[24:])[IPv6].plen == 65535
    with pytest.raises(ValueError, match="fallback_too_big"):
        fwd.inject_header(1, tso(big, l4, mss=1290), big)  # over IPv4: too big
    bigger, l4 = super_frame(b"b" * (65535 - 16 - 54 + 1))
    with pytest.raises(ValueError, match="fallback_too_big"):
        fwd.inject_header(0, tso(bigger, l4, mss=1290), bigger)


@needs_module
def test_tcpv6_inner_over_an_ipv6_remote() -> None:
    fwd = forwarder6()
    frame6, l4 = super_frame(b"y" * 9000, v6=True)
    out = fwd.inject_header(0, tso(frame6, l4, mss=1358, gso=GSO_TCPV6 | GSO_ECN), frame6)
    v = tunnel_fields(out)
    assert (v["gso_type"], v["inner_nh"], v["csum_start"], v["outer_th"]) == (GSO_ECN | GSO_TCPV6 | 0x40, 70 + 14,
                                                                               70 + 14 + 40, 54)  # fmt: skip
    assert out[24 + 70 :] == frame6
