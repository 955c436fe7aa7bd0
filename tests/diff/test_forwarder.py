"""FastForwarder against PyForwarder: the same tx()/rx() batches give the same packets, counters and FDB.

tx()/rx() run the C batch functions (ovl_tx_process / ovl_rx_process) that
from_tap()/from_tunnel() run, so this holds the I/O path's logic to the reference.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datapath import ether, fast
from datapath.config import MAX_REMOTES, Config, Remote
from datapath.counters import Drop
from datapath.encap import gre, ipv4, vxlan
from datapath.fdb import FdbEntry, FdbFull
from datapath.pypath import PyForwarder, RxPacket
from tests.configs import datapath_config

pytestmark = pytest.mark.skipif(not fast.available(), reason="C fast path not built")

BCAST = b"\xff" * 6
MCAST = bytes.fromhex("01005e000001")
ZERO = bytes(6)
LOCAL = [bytes([0x02, 0xAA, 0, 0, 0, i]) for i in range(6)]  # behind our TAP
FAR = [bytes([0x02, 0xBB, 0, 0, 0, i]) for i in range(10)]  # behind the remotes
STRANGER = "10.99.0.1"


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def remotes(n: int) -> tuple[Remote, ...]:
    return tuple(Remote(f"10.0.{i}.2", f"10.0.{i}.1") for i in range(n))


def remotes6(n: int) -> tuple[Remote, ...]:
    """n IPv6 remotes (issue 11, v6)."""
    return tuple(Remote(f"fd00:{i}::2", f"fd00:{i}::1") for i in range(n))


CONFIGS = {
    "vxlan": datapath_config(mode="vxlan", remotes=remotes(3), underlay_mtu=1500, tap_mtu=1450, vni=4242),
    "vxlan_csum_smallbatch_cap": datapath_config(
        mode="vxlan",
        remotes=remotes(2),
        underlay_mtu=1400,
        tap_mtu=1350,
        vni=7,
        port=8472,
        udp_csum=True,
        batch=4,
        fdb_max=5,
        fdb_ageing=3.0,
        ttl=9,
    ),
    "vxlan_statics_noageing": datapath_config(
        mode="vxlan",
        remotes=remotes(4),
        underlay_mtu=9000,
        tap_mtu=8950,
        statics=((FAR[0], 3), (FAR[1], 0)),
        fdb_ageing=0.0,
    ),
    "gre": datapath_config(mode="gre", remotes=remotes(3), underlay_mtu=1500, tap_mtu=1462, fdb_ageing=2.0),
    "gre_key_one_remote": datapath_config(
        mode="gre", remotes=remotes(1), underlay_mtu=1476, tap_mtu=1434, key=0xABCD, batch=3, fdb_max=4
    ),
    "gre_key0_three_remotes": datapath_config(
        mode="gre",
        remotes=(Remote("10.0.0.2", "10.0.0.1"), Remote("10.0.1.2", "10.0.1.1"), Remote("10.0.2.2", "10.0.0.5")),
        underlay_mtu=1500,
        tap_mtu=1458,
        key=0,
        statics=((FAR[2], 1),),
    ),
    "vxlan_vlans_csum": datapath_config(
        mode="vxlan",
        remotes=remotes(3),
        underlay_mtu=1500,
        tap_mtu=1450,
        vni=4242,
        udp_csum=True,
        vlan_map=((10, 5000), (20, 0), (4094, vxlan.VNI_MAX)),
        statics=((FAR[0], 2, 10), (FAR[0], 1), (FAR[1], 0, 30)),
        fdb_ageing=2.0,
    ),
    "gre_nokey_vlans": datapath_config(
        mode="gre",
        remotes=remotes(2),
        underlay_mtu=1500,
        tap_mtu=1462,
        vlan_map=((10, 77), (20, gre.KEY_MAX)),
        batch=5,
        fdb_max=6,
    ),
    "gre_key_vlans": datapath_config(
        mode="gre",
        remotes=remotes(3),
        underlay_mtu=1400,
        tap_mtu=1358,
        key=5,
        vlan_map=((10, 0), (30, 6), (1, 7)),  # key 0: packets without a key field land in VLAN 10
        statics=((FAR[3], 0, 30),),
        fdb_ageing=3.0,
    ),
    # issue 11, v6: IPv6 underlays, and a mesh of both families.
    "vxlan6_mixed": datapath_config(
        mode="vxlan", remotes=(*remotes6(2), *remotes(1)), underlay_mtu=1500, tap_mtu=1430, vni=66
    ),
    "vxlan6_zero_csum_cap": datapath_config(
        mode="vxlan", remotes=remotes6(3), underlay_mtu=1400, tap_mtu=1330, udp6_zero_csum_tx=True, fdb_max=5, ttl=3
    ),
    "gre6_key_mixed": datapath_config(
        mode="gre", remotes=(*remotes(1), *remotes6(2)), underlay_mtu=1500, tap_mtu=1438, key=0x66, fdb_ageing=2.0
    ),
    "gre6_nokey": datapath_config(mode="gre", remotes=remotes6(2), underlay_mtu=1480, tap_mtu=1422, batch=3),
    # issue 11, ecn: the outer DS field / TTL / DF taken from the inner packet, or fixed
    "vxlan_inherit_all": datapath_config(
        mode="vxlan",
        remotes=remotes(2),
        underlay_mtu=1500,
        tap_mtu=1450,
        vni=9,
        tos="inherit",
        ttl="inherit",
        df="inherit",
        vlan_map=((10, 90),),
        udp_csum=True,
    ),
    "gre_tos_df_unset": datapath_config(
        mode="gre", remotes=remotes(2), underlay_mtu=1500, tap_mtu=1462, tos=0xB9, ttl=3, df="unset"
    ),
    "gre_inherit_vlans": datapath_config(
        mode="gre",
        remotes=remotes(3),
        underlay_mtu=1500,
        tap_mtu=1458,
        key=1,
        tos="inherit",
        ttl="inherit",
        df="inherit",
        vlan_map=((20, 2),),
    ),
    "vxlan_tos_df_set": datapath_config(
        mode="vxlan", remotes=remotes(1), underlay_mtu=1500, tap_mtu=1450, tos=0x2E, ttl=200, df="set"
    ),
    # issue 11, the parts together: a mixed mesh, the clamp following each remote's path MTU and outer length,
    # the outer fields from the inner packet, per-remote path MTUs (PATH_MTUS) with too-big frames and fragments.
    "vxlan6_mixed_clamp_inherit_pmtu": datapath_config(
        mode="vxlan",
        remotes=(*remotes(2), *remotes6(2)),
        underlay_mtu=1500,
        tap_mtu=1430,
        vni=61,
        tos="inherit",
        ttl="inherit",
        df="inherit",
        clamp_mss="auto",
        vlan_map=((10, 610),),
        udp_csum=True,
    ),
    "gre6_mixed_clamp_inherit_pmtu": datapath_config(
        mode="gre",
        remotes=(*remotes6(2), *remotes(2)),
        underlay_mtu=1500,
        tap_mtu=1438,
        key=62,
        tos="inherit",
        ttl="inherit",
        df="inherit",
        clamp_mss="auto",
        vlan_map=((20, 620),),
        batch=6,
    ),
}
# Per-remote path MTUs (slot -> MTU; 0: the underlay's) the scenarios of these configs set on both forwarders.
PATH_MTUS = {
    "vxlan6_mixed_clamp_inherit_pmtu": {0: 1400, 2: 1300, 3: 0},
    "gre6_mixed_clamp_inherit_pmtu": {0: 1350, 1: 0, 3: 1280},
}
# VIDs the frames use: mapped in some configs, unmapped in others; 0 is a priority tag, 4095 reserved.
VIDS = [0, 1, 10, 10, 20, 20, 30, 4094, 4095]


def payload(rnd: random.Random) -> bytes:
    """An Ethernet payload: an IPv4/TCP or UDP header (so flow hashes vary) with any DS field, TTL and DF, an
    IPv6 header with any traffic class and hop limit, an IP EtherType with a header cut short, or random bytes."""
    ports = struct.pack("!HH", rnd.randrange(65536), rnd.randrange(65536))
    kind = rnd.random()
    if kind < 0.45:
        proto = rnd.choice([6, 17])
        ip = ipv4.build_header(
            rnd.randbytes(4), rnd.randbytes(4), proto, 20, rnd.randrange(256), rnd.randrange(256), rnd.random() < 0.5
        )
        return b"\x08\x00" + ip + ports + rnd.randbytes(16)
    if kind < 0.6:
        first = 6 << 28 | rnd.randrange(256) << 20 | rnd.randrange(1 << 20)
        ip6 = struct.pack("!IHBB", first, 24, rnd.choice([6, 17]), rnd.randrange(256)) + rnd.randbytes(32)
        return b"\x86\xdd" + ip6 + ports + rnd.randbytes(20)
    if kind < 0.65:  # IPv4 / IPv6 EtherType, header short or of another version
        return rnd.choice([b"\x08\x00", b"\x86\xdd"]) + rnd.randbytes(rnd.randrange(0, 44))
    return rnd.randbytes(2) + rnd.randbytes(rnd.randrange(0, 100))


def syn_payload(rnd: random.Random) -> bytes:
    """An IPv4 / IPv6 TCP SYN, SYN-ACK or ACK with an MSS option (alone or among others), any DS field and TTL."""
    mss_opt = struct.pack("!BBH", 2, 4, rnd.choice([536, 1200, 1300, 1380, 1400, 1460, 8960, 65535]))
    opts = rnd.choice([mss_opt, b"\x01\x01" + mss_opt + b"\x01\x03\x03\x07" + b"\x00\x00"])
    flags = rnd.choice([0x02, 0x02, 0x12, 0x12, 0x10])
    tcp = rnd.randbytes(12) + bytes([(20 + len(opts)) // 4 << 4, flags]) + rnd.randbytes(6) + opts
    if rnd.random() < 0.5:
        ip = ipv4.build_header(
            rnd.randbytes(4),
            rnd.randbytes(4),
            6,
            len(tcp),
            rnd.randrange(1, 256),
            rnd.randrange(256),
            rnd.random() < 0.7,
        )
        return b"\x08\x00" + ip + tcp
    first = 6 << 28 | rnd.randrange(256) << 20 | rnd.randrange(1 << 20)
    return b"\x86\xdd" + struct.pack("!IHBB", first, len(tcp), 6, rnd.randrange(1, 256)) + rnd.randbytes(32) + tcp


def tag(rnd: random.Random) -> bytes:
    """Nothing (untagged), an 802.1Q tag with random PCP/DEI, or an 802.1ad tag (not a VLAN for us)."""
    kind = rnd.random()
    if kind < 0.4:
        return b""
    tci = rnd.randrange(16) << 12 | rnd.choice(VIDS)
    tpid = ether.ETH_P_8021AD if kind > 0.9 else ether.ETH_P_8021Q
    return struct.pack("!HH", tpid, tci)


def tx_frame(rnd: random.Random, cfg: Config) -> bytes:
    kind = rnd.random()
    if kind < 0.05:
        return rnd.randbytes(rnd.randrange(14))  # runt
    dst = rnd.choice([BCAST, MCAST, *FAR, *FAR, bytes([0x02, 0xCC, 0, 0, 0, 1])])
    if kind < 0.08:  # an 802.1Q TPID with the tag cut short: untagged, VLAN 0
        return dst + rnd.choice(LOCAL) + b"\x81\x00" + rnd.randbytes(rnd.randrange(3))
    clamp = cfg.tunnel.clamp_mss_setting and rnd.random() < 0.3  # SYNs for the MSS clamp
    frame = dst + rnd.choice(LOCAL) + tag(rnd) + (syn_payload(rnd) if clamp else payload(rnd))
    if kind < 0.15:  # right at or over the MTU limit (a stripped tag moves it by 4)
        room = cfg.underlay_mtu - cfg.outer_len - len(frame)
        frame += bytes(max(0, room + rnd.choice([0, 1, 2, 4, 5, 3000])))
    elif kind < 0.3 and cfg.tunnel.clamp_mss_setting:  # around a path MTU, an IPv6 remote's 20 more bytes
        mtu = rnd.choice([cfg.underlay_mtu, 1400, 1350, 1300, 1280])
        room = mtu - cfg.outer_len - len(frame) - rnd.choice([0, 20])
        frame += bytes(max(0, room + rnd.choice([-4, 0, 1, 4])))
    return frame


def encap(cfg: Config, i: int | Remote, frame: bytes, tid: int | None = None) -> bytes:
    """What remote i (cfg.remotes[i], or a Remote) sends us, as the receiving socket hands it over; in the base
    id unless tid is given."""
    r = cfg.remotes[i] if isinstance(i, int) else i
    if cfg.tunnel.mode == "vxlan":
        vni = cfg.base_id if tid is None else tid
        if r.family == 6:
            return vxlan.encap6(frame, vni=vni, src=r.addr_bytes, dst=r.local_bytes, dport=cfg.encap.port)[48:]
        return vxlan.encap(frame, vni=vni, src=r.addr_bytes, dst=r.local_bytes, dport=cfg.encap.port)[28:]
    key = cfg.tunnel.key if tid is None else tid
    if r.family == 6:  # an IPv6 raw socket hands over the GRE header on
        return gre.encap6(frame, key=key, src=r.addr_bytes, dst=r.local_bytes)[40:]
    return gre.encap(frame, key=key, src=r.addr_bytes, dst=r.local_bytes)


def gre_with_checksum(cfg: Config, i: int | Remote, frame: bytes, good: bool) -> bytes:
    """A GRE packet with the C bit (as other implementations may send), its checksum right or wrong."""
    flags = gre.GRE_CSUM | (gre.GRE_KEY if cfg.tunnel.key is not None else 0)
    body = struct.pack("!HHHH", flags, gre.ETH_P_TEB, 0, 0)
    body += struct.pack("!I", cfg.tunnel.key) if cfg.tunnel.key is not None else b""
    body += frame
    csum = ipv4.checksum(body) if good else 0x1234
    body = body[:4] + struct.pack("!H", csum) + body[6:]
    r = cfg.remotes[i] if isinstance(i, int) else i
    if r.family == 6:
        return body
    return ipv4.build_header(r.addr_bytes, r.local_bytes, ipv4.IPPROTO_GRE, len(body)) + body


def rx_packet(rnd: random.Random, cfg: Config, pool: Sequence[Remote] = ()) -> RxPacket:
    """A packet from one of cfg.remotes, or from one of pool if given (remotes now and gone), with its outer
    DS field (any ECN field, so that RFC 6040's table is crossed); an IPv6 GRE packet mostly with its
    destination (IPV6_PKTINFO), now and then not ours."""
    i: int | Remote = rnd.choice(pool) if pool else rnd.randrange(len(cfg.remotes))
    pkt, src, tos = _rx_packet(rnd, cfg, i)
    r = cfg.remotes[i] if isinstance(i, int) else i
    if r.family == 6 and cfg.tunnel.mode == "gre" and rnd.random() < 0.8:
        assert r.local is not None
        return pkt, src, tos, rnd.choice([r.local, r.local, r.local, "fd00:99::1"])
    return pkt, src, tos


def _rx_packet(rnd: random.Random, cfg: Config, i: int | Remote) -> tuple[bytes, str, int]:
    src_mac = rnd.choice([*FAR, *FAR, *FAR, MCAST, BCAST, ZERO])
    clamp = cfg.tunnel.clamp_mss_setting and rnd.random() < 0.3  # SYN-ACKs for the MSS clamp
    frame = rnd.choice([BCAST, *LOCAL]) + src_mac + tag(rnd) + (syn_payload(rnd) if clamp else payload(rnd))
    # The base id, a mapped id, an unknown id, or (GRE) no key field at all.
    tid = rnd.choice([None, None, rnd.randrange(1 << 24), *(t for _, t in cfg.tunnel.vlan_map)])
    r = cfg.remotes[i] if isinstance(i, int) else i
    if cfg.tunnel.mode == "gre" and rnd.random() < 0.1:
        pkt = gre.encap(frame, key=None, src=r.addr_bytes, dst=r.local_bytes)
        pkt = pkt[ipv4.IPV4_HLEN :] if r.family == 6 else pkt
    else:
        pkt = encap(cfg, i, frame, tid)
    kind = rnd.random()
    if kind < 0.08:
        pkt = pkt[: rnd.randrange(len(pkt))]
    elif kind < 0.16:  # damage a header byte
        b = bytearray(pkt)
        b[rnd.randrange(min(len(b), 40))] ^= 1 << rnd.randrange(8)
        pkt = bytes(b)
    elif kind < 0.2 and cfg.tunnel.mode == "vxlan":
        pkt = vxlan.header(cfg.base_id + 1) + frame
    elif kind < 0.2:
        pkt = gre.encap(frame, key=(cfg.tunnel.key or 0) + 1, src=b"\1\1\1\1", dst=b"\2\2\2\2")
        pkt = pkt[ipv4.IPV4_HLEN :] if r.family == 6 else pkt
    elif kind < 0.24 and cfg.tunnel.mode == "gre":
        b = bytearray(pkt)
        b[1 if r.family == 6 else 21] |= rnd.randrange(1, 8)  # GRE version
        pkt = bytes(b)
    elif kind < 0.3 and cfg.tunnel.mode == "gre":
        pkt = gre_with_checksum(cfg, i, frame, good=rnd.random() < 0.5)
    src = STRANGER if rnd.random() < 0.07 else (cfg.remotes[i] if isinstance(i, int) else i).addr
    return pkt, src, rnd.randrange(256) if rnd.random() < 0.7 else 0


def table(fwd: fast.FastForwarder | PyForwarder) -> list[FdbEntry]:
    return sorted(fwd.fdb.entries(), key=lambda e: (e.vlan, e.mac))


def assert_same(fp: fast.FastForwarder, pp: PyForwarder) -> None:
    assert fp.snapshot() == pp.snapshot()
    assert table(fp) == table(pp)
    assert fp.remotes() == pp.remotes()


def name_of(cfg: Config) -> str:
    return next(n for n, c in CONFIGS.items() if c is cfg)


def run_scenario(cfg: Config, seed: int, batches: int = 40) -> None:
    rnd = random.Random(seed)
    clock = Clock()
    fp, pp = fast.FastForwarder(cfg, clock), PyForwarder(cfg, clock)
    for fwd in (fp, pp):
        for slot, mtu in PATH_MTUS.get(name_of(cfg), {}).items():
            fwd.set_remote_mtu(slot, mtu)
    assert_same(fp, pp)
    for b in range(batches):
        if rnd.random() < 0.5:
            frames = [tx_frame(rnd, cfg) for _ in range(rnd.randrange(0, 2 * cfg.batch + 2))]
            assert fp.tx(frames) == pp.tx(frames), (seed, b)
            assert fp.pmtu_replies() == pp.pmtu_replies(), (seed, b)
        else:
            packets = [rx_packet(rnd, cfg) for _ in range(rnd.randrange(0, 2 * cfg.batch + 2))]
            assert fp.rx(packets) == pp.rx(packets), (seed, b)
        op = rnd.random()
        if op < 0.1:
            assert fp.fdb.expire() == pp.fdb.expire()
        elif op < 0.15:
            m, r, v = rnd.choice(FAR), rnd.randrange(len(cfg.remotes)), rnd.choice(VIDS)
            full = []
            for fdb in (fp.fdb, pp.fdb):
                try:
                    fdb.add_static(m, r, vlan=v)
                    full.append(False)
                except FdbFull:
                    full.append(True)
            assert full[0] == full[1]
        elif op < 0.2:
            m, v = rnd.choice(FAR), rnd.choice(VIDS)
            assert fp.fdb.remove(m, vlan=v) == pp.fdb.remove(m, vlan=v)
        clock.now += rnd.choice([0.0, 0.0, 0.5, 1.0, 2.5])
        assert_same(fp, pp)


@pytest.mark.parametrize("seed", range(25))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_random_batches(name: str, seed: int) -> None:
    run_scenario(CONFIGS[name], seed)


# Remotes that come and go: the configs' own (10.0.i.2) and more.
POOL = (*(Remote(f"10.0.{i}.2", f"10.0.{i}.1") for i in range(8)), Remote("10.7.0.9", "10.0.0.5"))


def both(fp: fast.FastForwarder, pp: PyForwarder, op: str, *args: object) -> object:
    """The same call on both forwarders (or their FDBs): the same result, or the same exception type."""
    out = []
    for fwd in (fp, pp):
        target = fwd.fdb if op in ("flush", "set_limits", "add_static") else fwd
        try:
            out.append(("ok", getattr(target, op)(*args)))
        except (ValueError, KeyError, FdbFull) as exc:
            out.append(("raised", type(exc)))
    assert out[0] == out[1], (op, args, out)
    return out[0][1]


def run_churn(cfg: Config, seed: int, batches: int = 60) -> None:
    """Random batches while remotes are added and removed, the FDB flushed and its limits changed."""
    rnd = random.Random(seed)
    clock = Clock()
    fp, pp = fast.FastForwarder(cfg, clock), PyForwarder(cfg, clock)
    ever: list[Remote] = list(cfg.remotes)
    for b in range(batches):
        op = rnd.random()
        live = [r for _, r, _ in pp.remotes()]
        if op < 0.15:
            r = rnd.choice(POOL)
            both(fp, pp, "add_remote", r)  # a duplicate raises ValueError in both
            ever = [*ever, r] if r not in ever else ever
        elif op < 0.3 and live:
            slot = rnd.choice(pp.remotes())[0]
            both(fp, pp, "remove_remote", slot)
        elif op < 0.33:
            both(fp, pp, "remove_remote", rnd.randrange(12))  # often a free slot: KeyError
        elif op < 0.38:
            both(fp, pp, "flush", rnd.choice([None, *range(len(POOL))]))
        elif op < 0.42:
            both(fp, pp, "set_limits", rnd.choice([1, 3, 5, 64, 4096]), rnd.choice([0.0, 2.0, 300.0]))
        elif op < 0.47:  # a static entry, maybe behind a free slot (then floods, as unknown)
            both(fp, pp, "add_static", rnd.choice(FAR), rnd.randrange(len(POOL)))
        elif op < 0.52:  # the underlay's address changed under a remote (or a free slot: KeyError)
            local = f"10.0.{rnd.randrange(8)}.{rnd.randrange(1, 9)}"
            both(fp, pp, "set_remote_local", rnd.randrange(len(POOL) + 2), local)
        if rnd.random() < 0.5:
            frames = [tx_frame(rnd, cfg) for _ in range(rnd.randrange(0, 2 * cfg.batch + 2))]
            assert fp.tx(frames) == pp.tx(frames), (seed, b)
        else:
            packets = [rx_packet(rnd, cfg, ever) for _ in range(rnd.randrange(0, 2 * cfg.batch + 2))]
            assert fp.rx(packets) == pp.rx(packets), (seed, b)
        if rnd.random() < 0.1:
            assert fp.fdb.expire() == pp.fdb.expire()
        clock.now += rnd.choice([0.0, 0.0, 0.5, 1.0, 2.5])
        assert_same(fp, pp)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize(
    "name",
    [
        "vxlan",
        "vxlan_csum_smallbatch_cap",
        "gre_key_one_remote",
        "vxlan_vlans_csum",
        "vxlan6_mixed",  # issue 11: IPv4 remotes come and go beside IPv6 ones (set_remote_local of another family)
        "vxlan6_mixed_clamp_inherit_pmtu",
    ],
)
def test_random_batches_with_remote_churn(name: str, seed: int) -> None:
    run_churn(CONFIGS[name], seed)


@pytest.mark.parametrize("name", ["vxlan", "gre"])
def test_remote_add_remove_rules(name: str) -> None:
    """Slots: lowest free reused with zeroed counters, others stay; removal purges learned and static entries."""
    cfg = CONFIGS[name]  # three remotes, 10.0.0.2 .. 10.0.2.2
    clock = Clock()
    for fwd in (fast.FastForwarder(cfg, clock), PyForwarder(cfg, clock)):
        flood = BCAST + LOCAL[0] + b"\x08\x06" + bytes(46)
        assert [r for r, _ in fwd.tx([flood])] == [0, 1, 2]
        reply = LOCAL[0] + FAR[1] + b"\x08\x06" + bytes(28)
        fwd.rx([(encap(cfg, 1, reply), cfg.remotes[1].addr)])
        fwd.fdb.add_static(FAR[2], 1, vlan=5)
        fwd.fdb.add_static(FAR[3], 2)
        assert [last for _, _, last in fwd.remotes()] == [None, clock.now, None]
        clock.now += 1
        assert fwd.remove_remote(1) == 2  # FAR[1] learned, FAR[2] static
        assert sorted(e.mac for e in fwd.fdb.entries()) == [FAR[3]]
        assert [s for s, _, _ in fwd.remotes()] == [0, 2]
        assert [r for r, _ in fwd.tx([flood])] == [0, 2]  # gone from the flood at once
        assert fwd.rx([(encap(cfg, 1, reply), cfg.remotes[1].addr)]) == []  # and its packets dropped
        assert fwd.snapshot().drops["rx_not_remote"] == 1
        with pytest.raises(KeyError):
            fwd.remove_remote(1)
        with pytest.raises(ValueError, match="already there"):
            fwd.add_remote(cfg.remotes[0])
        new = Remote("10.5.0.2", "10.5.0.1")
        assert fwd.add_remote(new) == 1  # the lowest free slot
        snap = fwd.snapshot()
        assert [row["remote"] for row in snap.remotes] == ["10.0.0.2", "10.5.0.2", "10.0.2.2"]
        assert [v for k, v in snap.remotes[1].items() if k != "remote"] == [0] * 5  # it had a flood and a packet
        assert fwd.remotes()[1] == (1, new, None)
        assert fwd.add_remote(Remote("10.6.0.2", "10.6.0.1")) == 3
        assert [r for r, _ in fwd.tx([flood])] == [0, 1, 2, 3]
        # Every remote gone: floods go nowhere, tunnel packets are not from a remote.
        for slot in (0, 1, 2, 3):
            fwd.remove_remote(slot)
        assert fwd.remotes() == [] and fwd.tx([flood]) == [] and fwd.snapshot().remotes == []
        assert fwd.rx([(encap(cfg, 0, reply), cfg.remotes[0].addr)]) == []
        snap = fwd.snapshot()
        assert snap.stats["tx_flooded"] == 4 and snap.drops["rx_not_remote"] == 2
        assert fwd.add_remote(cfg.remotes[2]) == 0


@pytest.mark.parametrize("name", ["vxlan", "gre", "gre_key_one_remote"])
def test_set_remote_local_rebuilds_the_outer_header_and_keeps_the_rest(name: str) -> None:
    """A remote's local address changed at run time: packets to it leave from the new address (IPv4 header
    checksum and, for VXLAN with UDP checksums, the UDP checksum right), its FDB entries and counters stay."""
    from scapy.layers.inet import IP, UDP

    cfg = CONFIGS[name]
    clock = Clock()
    outs = []
    for fwd in (fast.FastForwarder(cfg, clock), PyForwarder(cfg, clock)):
        reply = LOCAL[0] + FAR[4] + b"\x08\x06" + bytes(28)
        fwd.rx([(encap(cfg, 0, reply), cfg.remotes[0].addr)])
        frame = FAR[4] + LOCAL[0] + payload(random.Random(2))
        before = fwd.tx([frame])
        counters = fwd.snapshot()
        fwd.set_remote_local(0, "10.0.0.77")
        assert fwd.snapshot() == counters  # counters untouched
        after = fwd.tx([frame])
        assert [r for r, _ in after] == [0]  # still unicast: the learned entry stayed
        pkt = IP(after[0][1])
        assert pkt.src == "10.0.0.77" and pkt.dst == cfg.remotes[0].addr
        again = IP(after[0][1])
        del again.chksum  # scapy computes it anew (and the UDP checksum, where one was set)
        if UDP in again and again[UDP].chksum:
            del again[UDP].chksum
        assert bytes(again) == after[0][1]  # the checksums match the new source
        if cfg.tunnel.mode == "gre":
            assert after[0][1][20:] == before[0][1][20:]  # only the IP header changed
        assert fwd.remotes()[0] == (0, Remote(cfg.remotes[0].addr, "10.0.0.77"), clock.now)  # last receive kept
        with pytest.raises(KeyError):
            fwd.set_remote_local(len(cfg.remotes) + 3, "10.0.0.77")
        outs.append(after)
    assert outs[0] == outs[1]


def test_remote_table_limits() -> None:
    """MAX_REMOTES remotes fit (the TX rings grow as slots fill); one more is refused; a flood reaches all."""
    cfg = datapath_config(mode="vxlan", remotes=remotes(1), underlay_mtu=1500, tap_mtu=1450, batch=4)
    clock = Clock()
    fp, pp = fast.FastForwarder(cfg, clock), PyForwarder(cfg, clock)
    assert fast.lib.OVL_MAX_REMOTES == MAX_REMOTES >= 1024
    many = [Remote(f"10.{1 + i // 250}.{i % 250}.2", "10.0.0.1") for i in range(MAX_REMOTES - 1)]
    for i, r in enumerate(many):
        assert fp.add_remote(r) == pp.add_remote(r) == i + 1
    for fwd in (fp, pp):
        with pytest.raises(ValueError, match=f"at most {MAX_REMOTES} remotes"):
            fwd.add_remote(Remote("10.99.0.2", "10.0.0.1"))
    frames = [BCAST + LOCAL[i] + b"\x08\x06" + bytes(46) for i in range(4)]  # a full batch of floods
    out = fp.tx(frames)
    assert len(out) == 4 * MAX_REMOTES and out == pp.tx(frames)
    reply = LOCAL[0] + FAR[0] + b"\x08\x06" + bytes(28)
    last = many[-1]
    packets = [(encap(cfg, last, reply), last.addr)]
    assert fp.rx(packets) == pp.rx(packets) == [(MAX_REMOTES - 1, reply)]
    assert fp.remove_remote(500) == 0 and fp.add_remote(Remote("10.99.0.2", "10.0.0.1")) == 500
    pp.remove_remote(500)
    pp.add_remote(Remote("10.99.0.2", "10.0.0.1"))
    assert_same(fp, pp)


def test_scenarios_exercise_every_counter() -> None:
    """The random scenarios reach every per-packet outcome (else the comparison above proves little)."""
    seen: dict[str, int] = {}
    for name, cfg in CONFIGS.items():
        for seed in range(5):
            rnd = random.Random(seed)
            clock = Clock()
            fp = fast.FastForwarder(cfg, clock)
            for _ in range(30):
                fp.tx([tx_frame(rnd, cfg) for _ in range(10)])
                fp.rx([rx_packet(rnd, cfg) for _ in range(10)])
                clock.now += 1.0
            snap = fp.snapshot().as_dict()
            for group in ("stats", "drops", "fdb"):
                for k, v in snap[group].items():  # type: ignore[attr-defined]
                    seen[f"{name}.{k}"] = seen.get(f"{name}.{k}", 0) + v
    io_only = {"tap_tx", "tx_error", "tx_full", "rx_tap_error", "rx_truncated", "tx_bad_offload", "entries",
               "rx_bad_super"}  # rx_bad_super: the RX plan (tests/diff/test_rx_super.py)  # fmt: skip
    reached = {k.split(".", 1)[1] for k, v in seen.items() if v}
    io_only |= {"rx_ecn", "rx_bad_dst"}  # issue 11 slots of the ecn / v6 parts, 0 on this branch
    wanted = {
        "tap_rx",
        "tx_unicast",
        "tx_flooded",
        "learns",
        "moves",
        "refused_full",
        "aged",
        "rx_ecn_ce",
        *(d.name.lower() for d in Drop),
    } - io_only
    wanted -= {"rx_ecn", "rx_bad_dst"}  # issue 11 slots of the ecn / v6 parts: always 0 on the mss branch
    # RX_BAD_VERSION etc. are GRE-only and RX_BAD_VNI VXLAN-only; across all configs each must appear.
    assert wanted <= reached, wanted - reached


@pytest.mark.parametrize("name", [n for n, c in CONFIGS.items() if c.tunnel.vlan_map])
def test_vlan_scenarios_exercise_the_mapping(name: str) -> None:
    """The random VLAN scenarios strip and insert tags, use every mapped id and learn in several VLANs."""
    cfg = CONFIGS[name]
    rnd = random.Random(7)
    pp = PyForwarder(cfg, Clock())
    sent_ids: set[int] = set()
    stripped = tagged_back = 0
    vlans_learned: set[int] = set()
    for _ in range(60):
        frames = [tx_frame(rnd, cfg) for _ in range(10)]
        for _, pkt in pp.tx(frames):
            if int.from_bytes(pkt[6:8], "big") & 0x1FFF:  # a later outer fragment (pmtu, --df): no headers
                continue
            off, tid = vxlan.parse(pkt[28:]) if cfg.tunnel.mode == "vxlan" else gre.parse(pkt)
            assert off >= 0
            sent_ids.add(tid)
            stripped += tid != cfg.base_id
        for _, frame in pp.rx([rx_packet(rnd, cfg) for _ in range(10)]):
            tagged_back += ether.vlan_id(frame) in dict(cfg.tunnel.vlan_map)
        vlans_learned |= {e.vlan for e in pp.fdb.entries() if not e.static}
    assert sent_ids == {cfg.base_id, *(t for _, t in cfg.tunnel.vlan_map)}
    assert stripped > 20 and tagged_back > 20
    assert {0, *(v for v, _ in cfg.tunnel.vlan_map)} <= vlans_learned, vlans_learned
    assert pp.snapshot().drops["rx_bad_vni" if cfg.tunnel.mode == "vxlan" else "rx_bad_key"] > 0


# -- deterministic cases ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vxlan", "gre"])
def test_learn_then_unicast(name: str) -> None:
    cfg = CONFIGS[name]
    clock = Clock()
    for fwd in (fast.FastForwarder(cfg, clock), PyForwarder(cfg, clock)):
        frame = FAR[3] + LOCAL[0] + payload(random.Random(1))
        out = fwd.tx([frame])
        assert [r for r, _ in out] == [0, 1, 2]  # unknown: flooded
        reply = LOCAL[0] + FAR[3] + b"\x08\x06" + bytes(28)
        assert fwd.rx([(encap(cfg, 2, reply), cfg.remotes[2].addr)]) == [(2, reply)]
        out = fwd.tx([frame])
        assert len(out) == 1 and out[0][0] == 2  # learned: unicast to remote 2
        assert fwd.rx([(encap(cfg, 1, reply), STRANGER)]) == []
        snap = fwd.snapshot()
        assert snap.stats == {
            "tap_rx": 2,
            "tap_tx": 0,
            "tx_unicast": 1,
            "tx_flooded": 1,
            "tap_rx_gso": 0,
            "tap_tx_gso": 0,
            "tx_gso": 0,
            "rx_gro": 0,
            "rx_super": 0,
            "rx_super_split": 0,
            "tx_pmtu_icmp": 0,
            "tx_pmtu_limited": 0,
            "tx_fragmented": 0,
            "mss_clamped": 0,
            "rx_ecn_ce": 0,
        }
        assert snap.drops["rx_not_remote"] == 1 and snap.fdb["learns"] == 1
        assert [r["tx_flood"] for r in snap.remotes] == [1, 1, 1]


def test_multicast_destination_is_never_looked_up() -> None:
    """A lookup can age an entry out; multicast frames must not, in C as in Python."""
    cfg = CONFIGS["gre"]  # ageing 2 s
    clock = Clock()
    fp, pp = fast.FastForwarder(cfg, clock), PyForwarder(cfg, clock)
    for fwd in (fp, pp):
        fwd.fdb.learn(MCAST, 1)  # cannot happen from the wire, but makes a lookup visible
    clock.now += 5
    frame = MCAST + LOCAL[0] + bytes(50)
    assert fp.tx([frame]) == pp.tx([frame])
    assert fp.fdb.stats()["aged"] == pp.fdb.stats()["aged"] == 0


def test_bad_config_refused() -> None:
    with pytest.raises(ValueError):
        fast.FastForwarder(
            datapath_config(mode="vxlan", remotes=remotes(1), underlay_mtu=1500, tap_mtu=1450, batch=100000)
        )
    cfg = datapath_config(
        mode="vxlan", remotes=remotes(1), underlay_mtu=1500, tap_mtu=1450, fdb_max=1, statics=((FAR[0], 0), (FAR[1], 0))
    )
    with pytest.raises(FdbFull):
        PyForwarder(cfg)
    with pytest.raises(FdbFull):
        fast.FastForwarder(cfg)


@settings(max_examples=60, deadline=None)
@given(
    frames=st.lists(st.binary(max_size=120), max_size=12),
    packets=st.lists(
        st.tuples(st.binary(max_size=120), st.sampled_from(["10.0.0.2", "10.0.1.2", "1.2.3.4"])), max_size=12
    ),
    mode=st.sampled_from(["vxlan", "gre"]),
)
def test_arbitrary_bytes(frames: list[bytes], packets: list[tuple[bytes, str]], mode: str) -> None:
    cfg = CONFIGS[mode]
    clock = Clock()
    fp, pp = fast.FastForwarder(cfg, clock), PyForwarder(cfg, clock)
    assert fp.tx(frames) == pp.tx(frames)
    assert fp.rx(packets) == pp.rx(packets)
    assert_same(fp, pp)
