"""VLANs: the FDB per VLAN, vlan_map (VLAN <-> VNI / GRE key), and their validation.

The rules run on the Python reference and on the C fast path; scapy checks
the bytes (Dot1Q stripped on the way out, inserted on the way in).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import GRE, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN

from datapath import ether, fast
from datapath.config import Config, Remote, StaticEntry
from datapath.encap import gre, vxlan
from datapath.pypath import PyForwarder
from tests.configs import datapath_config

LOCAL = bytes.fromhex("02aa00000001")  # behind our TAP
FAR = bytes.fromhex("02bb00000001")  # behind the remotes
REMOTES = (Remote("10.0.0.2", "10.0.0.1"), Remote("10.0.1.2", "10.0.1.1"))

Forwarder = PyForwarder | fast.FastForwarder
IMPLS: dict[str, Callable[[Config], Forwarder]] = {"python": PyForwarder}
if fast.available():
    IMPLS["c"] = fast.FastForwarder

# mode -> (config, the tunnel id of VLAN 10, of VLAN 20)
CASES = {
    "vxlan": (
        datapath_config(
            mode="vxlan", remotes=REMOTES, underlay_mtu=1500, tap_mtu=1450, vni=100, vlan_map=((10, 1010), (20, 1020))
        ),
        1010,
        1020,
    ),
    "gre_nokey": (
        datapath_config(
            mode="gre", remotes=REMOTES, underlay_mtu=1500, tap_mtu=1462, vlan_map=((10, 1010), (20, 1020))
        ),
        1010,
        1020,
    ),
    "gre_key": (
        datapath_config(
            mode="gre", remotes=REMOTES, underlay_mtu=1500, tap_mtu=1458, key=100, vlan_map=((10, 1010), (20, 1020))
        ),
        1010,
        1020,
    ),
}


@pytest.fixture(params=[(c, i) for c in CASES for i in IMPLS], ids=lambda p: f"{p[0]}-{p[1]}")
def setup(request: pytest.FixtureRequest) -> tuple[Config, Forwarder]:
    case, impl = request.param
    cfg = CASES[case][0]
    return cfg, IMPLS[impl](cfg)


def eth(dst: bytes, src: bytes, vid: int | None = None, size: int = 60) -> bytes:
    """An IPv4 frame built by scapy, with an 802.1Q tag if vid is given."""
    p = Ether(dst=ether.format_mac(dst), src=ether.format_mac(src))
    if vid is not None:
        p = p / Dot1Q(vlan=vid, prio=5)  # a PCP that stripping drops
    p = p / IP(src="172.20.1.1", dst="172.20.1.2") / UDP(sport=1000, dport=2000)
    return bytes(p) + bytes(max(0, size - len(p)))


def sent(cfg: Config, pkt: bytes) -> tuple[int | None, bytes]:
    """(tunnel id as scapy reads it, None for a GRE packet without key; inner frame) of a packet we send."""
    p = IP(pkt)
    if cfg.tunnel.mode == "vxlan":
        return int(p[VXLAN].vni), bytes(p[VXLAN].payload)
    g = p[GRE]
    return (int(g.key) if g.key_present else None), bytes(g.payload)


def received(cfg: Config, remote: int, frame: bytes, tid: int | None) -> tuple[bytes, str]:
    """What remote sends us carrying frame in tunnel id tid (None: the base id)."""
    r = cfg.remotes[remote]
    if cfg.tunnel.mode == "vxlan":
        vni = cfg.base_id if tid is None else tid
        return vxlan.encap(frame, vni=vni, src=r.addr_bytes, dst=r.local_bytes)[28:], r.addr
    return gre.encap(frame, key=cfg.tunnel.key if tid is None else tid, src=r.addr_bytes, dst=r.local_bytes), r.addr


def base_on_wire(cfg: Config) -> int | None:
    return cfg.base_id if cfg.tunnel.mode == "vxlan" else cfg.tunnel.key


# -- transmit -------------------------------------------------------------------------


def test_mapped_vlan_leaves_untagged_in_its_id(setup: tuple[Config, Forwarder]) -> None:
    cfg, fwd = setup
    frame = eth(ether.parse_mac("ff:ff:ff:ff:ff:ff"), LOCAL, vid=10)
    out = fwd.tx([frame])
    assert [r for r, _ in out] == [0, 1]  # flooded within VLAN 10's id
    for _, pkt in out:
        tid, inner = sent(cfg, pkt)
        assert tid == dict(cfg.tunnel.vlan_map)[10]  # GRE: with a key field even without a base key
        assert inner == ether.strip_vlan(frame)
        assert Dot1Q not in Ether(inner) and Ether(inner)[IP].dst == "172.20.1.2"
        assert Ether(inner).type == 0x0800
        assert IP(pkt).len == len(pkt)
    snap = fwd.snapshot()
    assert snap.stats["tx_flooded"] == 1


@pytest.mark.parametrize("vid", [None, 0, 30, 4095])
def test_unmapped_frames_pass_as_they_are_in_the_base_id(setup: tuple[Config, Forwarder], vid: int) -> None:
    """Untagged, priority-tagged, and tagged with a VLAN that is not mapped: unchanged (a trunk)."""
    cfg, fwd = setup
    frame = eth(FAR, LOCAL, vid=vid)
    for _, pkt in fwd.tx([frame]):
        assert sent(cfg, pkt) == (base_on_wire(cfg), frame)


def test_s_tag_is_not_a_vlan(setup: tuple[Config, Forwarder]) -> None:
    cfg, fwd = setup
    frame = bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=ether.format_mac(LOCAL), type=0x88A8) / Dot1Q(vlan=10) / IP())
    assert ether.vlan_id(frame) == 0
    assert {sent(cfg, pkt) for _, pkt in fwd.tx([frame])} == {(base_on_wire(cfg), frame)}


def test_too_big_is_checked_after_stripping(setup: tuple[Config, Forwarder]) -> None:
    cfg, fwd = setup
    # --df set: these inner IPv4 frames without DF would otherwise leave in outer fragments (issue 11)
    cfg = dataclasses.replace(cfg, tunnel=dataclasses.replace(cfg.tunnel, df="set"))
    fwd = type(fwd)(cfg)  # type: ignore[call-arg]
    # The largest frame that fits in the base id, plus a tag.
    size = cfg.underlay_mtu - cfg.outer_len + ether.VLAN_HLEN
    mapped, unmapped = eth(FAR, LOCAL, vid=10, size=size), eth(FAR, LOCAL, vid=30, size=size)
    out = fwd.tx([mapped, unmapped])
    if cfg.mapped_outer_len == cfg.outer_len:  # the stripped tag makes room: the mapped frame goes (flooded)
        assert len(out) == 2 and all(len(pkt) == cfg.underlay_mtu for _, pkt in out)
        assert fwd.snapshot().drops["tx_too_big"] == 1
    else:  # GRE without a base key: the key field takes the room the tag leaves
        assert out == [] and fwd.snapshot().drops["tx_too_big"] == 2


# -- receive --------------------------------------------------------------------------


def test_received_mapped_id_gets_the_tag(setup: tuple[Config, Forwarder]) -> None:
    cfg, fwd = setup
    frame = eth(LOCAL, FAR)
    out = fwd.rx([received(cfg, 1, frame, dict(cfg.tunnel.vlan_map)[20])])
    assert len(out) == 1 and out[0][0] == 1
    got = out[0][1]
    assert got == ether.insert_vlan(frame, 20)
    p = Ether(got)
    assert p[Dot1Q].vlan == 20 and p[Dot1Q].prio == 0 and p[Dot1Q].dei == 0 and p[Dot1Q].type == 0x0800
    assert p.type == 0x8100 and bytes(p[Dot1Q].payload) == frame[14:]
    assert [(e.vlan, e.mac, e.remote) for e in fwd.fdb.entries()] == [(20, FAR, 1)]


def test_base_id_is_delivered_as_it_is_and_learned_in_its_own_vlan(setup: tuple[Config, Forwarder]) -> None:
    cfg, fwd = setup
    untagged, tagged = eth(LOCAL, FAR), eth(LOCAL, FAR, vid=30)
    assert fwd.rx([received(cfg, 0, untagged, None), received(cfg, 1, tagged, None)]) == [(0, untagged), (1, tagged)]
    assert sorted((e.vlan, e.remote) for e in fwd.fdb.entries()) == [(0, 0), (30, 1)]


def test_unknown_id_is_dropped(setup: tuple[Config, Forwarder]) -> None:
    cfg, fwd = setup
    assert fwd.rx([received(cfg, 0, eth(LOCAL, FAR), 999)]) == []
    reason = "rx_bad_vni" if cfg.tunnel.mode == "vxlan" else "rx_bad_key"
    snap = fwd.snapshot()
    assert snap.drops[reason] == 1 and sum(snap.drops.values()) == 1 and len(fwd.fdb.entries()) == 0


def test_gre_without_key_field_is_the_base_id_when_there_is_no_key() -> None:
    cfg = CASES["gre_nokey"][0]
    for fwd in (impl(cfg) for impl in IMPLS.values()):
        frame = eth(LOCAL, FAR)
        r = cfg.remotes[0]
        keyed0 = gre.encap(frame, key=0, src=r.addr_bytes, dst=r.local_bytes)
        assert fwd.rx([received(cfg, 0, frame, None), (keyed0, r.addr)]) == [(0, frame), (0, frame)]


# -- the FDB per VLAN, end to end --------------------------------------------------------


def test_same_mac_in_two_vlans_behind_two_remotes(setup: tuple[Config, Forwarder]) -> None:
    cfg, fwd = setup
    ids = dict(cfg.tunnel.vlan_map)
    reply = eth(LOCAL, FAR)
    assert len(fwd.rx([received(cfg, 0, reply, ids[10]), received(cfg, 1, reply, ids[20])])) == 2
    assert sorted((e.vlan, e.mac, e.remote) for e in fwd.fdb.entries()) == [(10, FAR, 0), (20, FAR, 1)]
    out10, out20 = fwd.tx([eth(FAR, LOCAL, vid=10)]), fwd.tx([eth(FAR, LOCAL, vid=20)])
    assert [r for r, _ in out10] == [0] and sent(cfg, out10[0][1])[0] == ids[10]
    assert [r for r, _ in out20] == [1] and sent(cfg, out20[0][1])[0] == ids[20]
    # Not known untagged or in another VLAN: flooded.
    assert len(fwd.tx([eth(FAR, LOCAL)])) == len(fwd.tx([eth(FAR, LOCAL, vid=30)])) == 2
    snap = fwd.snapshot()
    assert (snap.stats["tx_unicast"], snap.stats["tx_flooded"], snap.fdb["learns"], snap.fdb["moves"]) == (2, 2, 2, 0)


def test_statics_per_vlan(setup: tuple[Config, Forwarder]) -> None:
    cfg, _ = setup
    static = (StaticEntry(FAR, REMOTES[1].addr, 10), StaticEntry(FAR, REMOTES[0].addr))
    cfg = dataclasses.replace(cfg, fdb=dataclasses.replace(cfg.fdb, static=static))
    for fwd in (impl(cfg) for impl in IMPLS.values()):
        assert sorted((e.vlan, e.remote, e.static) for e in fwd.fdb.entries()) == [(0, 0, True), (10, 1, True)]
        assert [r for r, _ in fwd.tx([eth(FAR, LOCAL, vid=10)])] == [1]
        assert [r for r, _ in fwd.tx([eth(FAR, LOCAL)])] == [0]


# -- configuration ----------------------------------------------------------------------


def cfg_with(**kw: object) -> Config:
    args: dict[str, object] = {"mode": "vxlan", "remotes": REMOTES, "underlay_mtu": 1500, "tap_mtu": 1450, **kw}
    return datapath_config(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"vlan_map": ((0, 5),)}, "out of range"),
        ({"vlan_map": ((4095, 5),)}, "out of range"),
        ({"vlan_map": ((10, 1 << 24),)}, "out of range"),
        ({"mode": "gre", "vlan_map": ((10, 1 << 32),)}, "out of range"),
        ({"vlan_map": ((10, 5), (10, 6))}, "mapped twice"),
        ({"vlan_map": ((10, 5), (11, 5))}, "same VNI"),
        ({"vni": 7, "vlan_map": ((10, 7),)}, "base VNI"),
        ({"mode": "gre", "vlan_map": ((10, 0),)}, "base GRE key"),  # no key: the base id is 0
        ({"mode": "gre", "key": 9, "vlan_map": ((10, 9),)}, "base GRE key"),
        ({"vlan_map": (*((v, v) for v in range(1, 4095)), (1, 9999))}, "at most 4094"),
        ({"statics": ((FAR, 0, 4096),)}, "VLAN"),
        ({"statics": ((FAR, "10.9.9.9", 10),)}, "not one of the remotes"),
        ({"statics": ((FAR,),)}, "static entry"),
        ({"statics": ((b"\x02", 0),)}, "static entry"),
    ],
)
def test_config_refuses(kw: dict[str, object], msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        cfg_with(**kw)


def test_config_accepts_and_normalises() -> None:
    cfg = cfg_with(vni=0, vlan_map=tuple((v, v) for v in range(1, 4095)), statics=((FAR, 1), (FAR, 0, 4094)))
    assert cfg.static_entries == ((FAR, 1, 0), (FAR, 0, 4094))
    assert cfg_with(mode="gre", key=5, vlan_map=((10, 0),)).base_id == 5
    assert cfg_with(mode="gre", vlan_map=((10, 5),)).base_id == 0
    gre_cfg = cfg_with(mode="gre", tap_mtu=1462, vlan_map=((10, 5),))
    assert (gre_cfg.outer_len, gre_cfg.mapped_outer_len) == (24, 28)
    assert cfg.outer_len == cfg.mapped_outer_len == 36
    # A slot holds the largest tagged frame the TAP hands over, with the largest outer header.
    for c in (cfg, gre_cfg):
        assert c.slot_size >= c.tap_mtu + ether.ETH_HLEN + ether.VLAN_HLEN + c.mapped_outer_len
    if fast.available():  # the C side takes the full map (and builds its id -> VLAN table)
        fwd = fast.FastForwarder(cfg)
        out = fwd.rx([received(cfg, 0, eth(LOCAL, FAR), 4094)])
        assert out == [(0, ether.insert_vlan(eth(LOCAL, FAR), 4094))]


def _c_accepts(c: object) -> bool:
    dp = fast.lib.ovl_dp_new(c)
    fast.lib.ovl_dp_free(dp)
    return bool(dp != fast.ffi.NULL)


@pytest.mark.skipif(not fast.available(), reason="C fast path not built")
def test_c_refuses_a_bad_map() -> None:
    """The C context checks what it relies on, even if Python's validation were bypassed."""
    assert _c_accepts(fast._make_config(cfg_with(vlan_map=((10, 5), (20, 6))), 1))
    for bad in ("count", "vlan0", "vlan4095", "dup", "base", "vni_range"):
        c = fast._make_config(cfg_with(vlan_map=((10, 5),)), 1)
        if bad == "count":  # a VLAN mapped twice (and one beyond the 12 bits) is refused when set
            assert fast.lib.ovl_config_map_vlan(c, 10, 6) == -1
            assert fast.lib.ovl_config_map_vlan(c, 4096, 6) == -1
            assert _c_accepts(c), bad
            continue
        vlan, tid = {
            "vlan0": (0, 6),
            "vlan4095": (4095, 6),
            "dup": (20, 5),
            "base": (20, 0),
            "vni_range": (20, 1 << 24),
        }[bad]
        assert fast.lib.ovl_config_map_vlan(c, vlan, tid) == 0
        assert not _c_accepts(c), bad
