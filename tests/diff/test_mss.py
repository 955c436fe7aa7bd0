"""TCP MSS clamping (``--clamp-mss``): csrc/mss.c against datapath/mss.py against scapy.

- the pure step (``ovl_mss_clamp`` / ``mss.clamp``) on SYNs scapy builds (IPv4 / IPv6, untagged, 802.1Q,
  QinQ, the MSS option at even and odd offsets, several MSS options): the MSS scapy reads afterwards is
  min(MSS, limit), the TCP checksum the one scapy computes, nothing else changed;
- hypothesis: random option bytes (malformed ones too), data offsets, truncations, tags, limits: C and
  Python give the same bytes, never raise an MSS, and a checksum that was valid stays valid;
- a partial (seed) checksum of a received frame stays the seed, and the RX plan completes it over the
  clamped option; a NEEDS_CSUM SYN read from a TAP is completed before the clamp (offload step);
- the forwarders: tx (unicast, flood) and rx (base id, mapped VLAN), auto and fixed clamps, the figure
  per encapsulation / tag / IP version, counters equal in C and Python.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw

from datapath import fast, mss
from datapath.config import Config, Remote
from datapath.encap import gre, ipv4, vxlan
from datapath.pypath import PyForwarder
from tests.configs import datapath_config, examples
from tests.offload_frames import GSO_NONE, GSO_TCPV4, NEEDS_CSUM, partial, super_frame, vnet

pytestmark = pytest.mark.skipif(not fast.available(), reason="C fast path not built")

SRC_MAC = bytes.fromhex("02aa00000001")  # behind our TAP
DST_MAC = bytes.fromhex("02bb00000001")  # behind a remote
TAGS: dict[str, tuple[Packet, ...]] = {
    "untagged": (),
    "vlan": (Dot1Q(vlan=30),),
    "qinq": (Dot1AD(vlan=5), Dot1Q(vlan=30)),
}


def syn(
    *,
    v6: bool = False,
    tags: tuple[Packet, ...] = (),
    options: list[tuple[str, object]] | None = None,
    flags: str = "S",
    payload: bytes = b"",
    src: bytes = SRC_MAC,
    dst: bytes = DST_MAC,
) -> bytes:
    """A TCP segment (default: a SYN with MSS 1460, SACK, timestamps, window scale) with valid checksums."""
    if options is None:
        options = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)]
    pkt: Packet = Ether(src=src, dst=dst)
    for t in tags:
        pkt = pkt / t.copy()
    l3: Packet = IPv6(src="fd00:20::1", dst="fd00:20::2") if v6 else IP(src="172.20.1.1", dst="172.20.1.2")
    return bytes(pkt / l3 / TCP(sport=40000, dport=5201, flags=flags, options=options) / Raw(payload))


def both(frame: bytes, limit: int, partial_ok: bool = False) -> tuple[bytes, bool]:
    """The C and the Python clamp of frame, held equal."""
    c = fast.mss_clamp(frame, limit, partial=partial_ok)
    buf = bytearray(frame)
    py = mss.clamp(buf, limit, partial=partial_ok)
    assert c == (bytes(buf), py)
    return c


def scapy_mss(frame: bytes) -> list[int]:
    return [v for k, v in Ether(frame)[TCP].options if k == "MSS"]  # type: ignore[misc]


def assert_scapy_checksum(frame: bytes) -> None:
    """The TCP checksum of frame is what scapy computes for it."""
    p = Ether(frame)
    got = p[TCP].chksum
    del p[TCP].chksum
    assert Ether(bytes(p))[TCP].chksum == got


def tcp_valid(frame: bytes) -> bool:
    """The TCP checksum of frame verifies (our own plain sum, independent of the incremental update)."""
    found = mss.find_syn(frame)
    assert found is not None
    l3, l4, v6, l4len, _ = found
    addrs = frame[l3 + 8 : l3 + 40] if v6 else frame[l3 + 12 : l3 + 20]
    pseudo = addrs + struct.pack("!HH", 6, l4len)
    return ipv4.checksum(pseudo + frame[l4 : l4 + l4len]) == 0


# -- the pure step against scapy ----------------------------------------------------------------


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("tag", list(TAGS))
@pytest.mark.parametrize(
    "options",
    [
        [("MSS", 1460)],
        [("NOP", None), ("MSS", 1460), ("NOP", None), ("NOP", None), ("NOP", None)],  # MSS value at an odd offset
        [("NOP", None), ("NOP", None), ("NOP", None), ("MSS", 0xFFFF), ("WScale", 14)],
        [("SAckOK", b""), ("Timestamp", (7, 9)), ("MSS", 8960), ("NOP", None), ("WScale", 7)],
        [("MSS", 1460), ("MSS", 9000)],  # both are clamped (a receiver honours the last)
    ],
    ids=["first", "odd", "odd_ffff", "last", "twice"],
)
@pytest.mark.parametrize("flags", ["S", "SA"])
def test_clamp_against_scapy(v6: bool, tag: str, options: list[tuple[str, object]], flags: str) -> None:
    frame = syn(v6=v6, tags=TAGS[tag], options=options, flags=flags)
    before = scapy_mss(frame)
    out, lowered = both(frame, 1200)
    assert lowered and scapy_mss(out) == [min(m, 1200) for m in before]
    assert_scapy_checksum(out)
    assert len(out) == len(frame)
    changed = [i for i in range(len(frame)) if out[i] != frame[i]]
    l4 = mss.find_syn(frame)[1]  # type: ignore[index]
    assert all(i in (l4 + 16, l4 + 17) or l4 + 20 <= i < l4 + 60 for i in changed)  # checksum and options only


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_never_raised_and_nothing_else_touched(v6: bool) -> None:
    small = syn(v6=v6, options=[("MSS", 536)])
    assert both(small, 1200) == (small, False)
    assert both(small, 536) == (small, False)  # equal: nothing to lower
    for flags in ("A", "PA", "R", "F"):  # no SYN: the MSS option is not looked at
        other = syn(v6=v6, flags=flags, options=[("MSS", 1460)])
        assert both(other, 1200) == (other, False)
    no_mss = syn(v6=v6, options=[("SAckOK", b""), ("NOP", None), ("WScale", 7)])
    assert both(no_mss, 1200) == (no_mss, False)


def test_syn_with_data_and_ethernet_padding() -> None:
    """The TCP length comes from the IP header: padding behind a short SYN is not TCP; data behind it is."""
    frame = syn(options=[("MSS", 1460)])
    padded = frame + bytes(60 - len(frame)) if len(frame) < 60 else frame + bytes(6)
    out, lowered = both(padded, 1000)
    assert lowered and out[len(frame) :] == padded[len(frame) :]
    assert_scapy_checksum(out[: len(frame)])
    with_data = syn(options=[("MSS", 1460)], payload=b"TFO cookie data" * 3)
    out, lowered = both(with_data, 1000)
    assert lowered and scapy_mss(out) == [1000]
    assert_scapy_checksum(out)


def raw_syn(opts: bytes, *, doff: int | None = None, v6: bool = False, tags: int = 0, flags: int = 0x02) -> bytes:
    """A SYN whose option bytes are opts as given (malformed ones too), with a valid TCP checksum."""
    pad = (-len(opts)) % 4
    body = opts + bytes(pad)
    words = doff if doff is not None else 5 + len(body) // 4
    tcp = bytearray(struct.pack("!HHIIBBHHH", 40000, 5201, 1, 0, words << 4, flags, 64240, 0, 0) + body)
    src, dst = (bytes.fromhex("fd00002000000000000000000000000" + d) for d in "12") if v6 else (
        bytes([172, 20, 1, 1]), bytes([172, 20, 1, 2]))  # fmt: skip
    struct.pack_into("!H", tcp, 16, ipv4.checksum(src + dst + struct.pack("!HH", 6, len(tcp)) + tcp))
    if v6:
        l3 = struct.pack("!IHBB", 6 << 28, len(tcp), 6, 64) + src + dst
        etype = 0x86DD
    else:
        hdr = bytearray(ipv4.build_header(src, dst, 6, len(tcp)))
        l3, etype = bytes(hdr), 0x0800
    l2 = DST_MAC + SRC_MAC
    for i in range(tags):
        l2 += struct.pack("!HH", 0x88A8 if i == 0 and tags == 2 else 0x8100, 30 + i)
    return l2 + struct.pack("!H", etype) + l3 + bytes(tcp)


def test_malformed_options_are_left_alone() -> None:
    mss_opt = bytes([2, 4, 0x05, 0xB4])  # MSS 1460
    cases = {
        "eol_first": bytes([0]) + mss_opt,  # after EOL: not options
        "eol_then_bytes": bytes([0, 2]) + mss_opt,  # (read as an option of length 2, an MSS would follow)
        "zero_length": bytes([8, 0]) + mss_opt,  # a length below 2 ends the walk
        "one_length": bytes([8, 1]) + mss_opt,
        "past_header": bytes([8, 40]) + mss_opt,
        "mss_length_3": bytes([2, 3, 0x05, 0xB4]),  # an MSS option of another length is skipped
        "mss_length_6": bytes([2, 6, 0x05, 0xB4, 0, 0]),
        "mss_cut_by_doff": bytes([1, 1, 1, 1, 1, 1, 2, 4]),  # the MSS option runs past the header
        "kind_at_end": bytes([1, 1, 1, 8]),  # no room for a length
    }
    for name, opts in cases.items():
        frame = raw_syn(opts)
        assert both(frame, 1000) == (frame, False), name
    # An MSS option before a malformed one is clamped (a receiver reads it before giving up too).
    frame = raw_syn(mss_opt + bytes([8, 0]))
    out, lowered = both(frame, 1000)
    assert lowered and out[-8:-4] == bytes([2, 4, 0x03, 0xE8]) and tcp_valid(out)


def test_not_read_beyond_what_is_there() -> None:
    """Cut short anywhere, a frame is left alone; a data offset past the IP length; fragments; IPv6 with an
    extension header; other protocols."""
    frame = raw_syn(bytes([2, 4, 0x05, 0xB4]))
    for n in range(len(frame)):
        assert both(frame[:n], 1000) == (frame[:n], False)
    big_doff = raw_syn(bytes([2, 4, 0x05, 0xB4]), doff=15)
    assert both(big_doff, 1000) == (big_doff, False)
    small_doff = raw_syn(bytes([2, 4, 0x05, 0xB4]), doff=4)
    assert both(small_doff, 1000) == (small_doff, False)
    for frag in (0x2000, 0x0001, 0x2001):  # MF, an offset, both
        f = bytearray(frame)
        struct.pack_into("!H", f, 14 + 6, frag)
        assert both(bytes(f), 1000) == (bytes(f), False)
    v6 = bytearray(raw_syn(bytes([2, 4, 0x05, 0xB4]), v6=True))
    v6[14 + 6] = 0  # hop-by-hop options in front of TCP: not read
    assert both(bytes(v6), 1000) == (bytes(v6), False)
    udp = bytearray(frame)
    udp[14 + 9] = 17
    assert both(bytes(udp), 1000) == (bytes(udp), False)


OPTION_PIECES = [b"\x01", b"\x02\x04\xff\xff", b"\x02\x04\x05\xb4", b"\x03\x03\x07", b"\x04\x02", b"\x00\x02",
                 b"\x08\x0a" + bytes(8), b"\x00", b"\x02\x04\x00\x10"]  # fmt: skip
OPTIONS = st.binary(max_size=40) | st.lists(st.sampled_from(OPTION_PIECES), max_size=12).map(b"".join).filter(
    lambda b: len(b) <= 40
)


@settings(max_examples=examples(600), deadline=None)
@given(
    opts=OPTIONS,
    doff=st.none() | st.integers(0, 15),
    v6=st.booleans(),
    tags=st.integers(0, 2),
    flags=st.sampled_from([0x02, 0x12, 0x10, 0x18, 0x06, 0xFF]),
    limit=st.integers(0, 70000),
    cut=st.integers(0, 80),
    partial_ok=st.booleans(),
)
def test_random_options(
    opts: bytes, doff: int | None, v6: bool, tags: int, flags: int, limit: int, cut: int, partial_ok: bool
) -> None:
    frame = raw_syn(opts, doff=doff, v6=v6, tags=tags, flags=flags)
    if cut:
        frame = frame[:-cut]
    out, lowered = both(frame, limit, partial_ok)
    if not lowered:
        assert out == frame
        return
    assert limit <= 0xFFFF and mss.find_syn(frame) is not None
    if not cut or mss.find_syn(frame)[3] == mss.find_syn(out)[3]:  # type: ignore[index]
        assert tcp_valid(out) == tcp_valid(frame)
    # Every MSS option went down to the limit or stayed, at the same place; nothing else moved.
    diff = [i for i in range(len(frame)) if out[i] != frame[i]]
    l4 = mss.find_syn(frame)[1]  # type: ignore[index]
    assert all(i - l4 in (16, 17) or i - l4 >= 20 for i in diff)


# -- partial checksums ---------------------------------------------------------------------------


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_seed_checksum_stays_and_is_completed_later(v6: bool) -> None:
    frame = syn(v6=v6, flags="SA")
    l4 = mss.find_syn(frame)[1]  # type: ignore[index]
    seeded = partial(frame, l4, 16, 6)
    out, lowered = both(seeded, 1000, partial_ok=True)
    assert lowered and out[l4 + 16 : l4 + 18] == seeded[l4 + 16 : l4 + 18] and scapy_mss(out) == [1000]
    # Not known to be partial (a frame from the TAP always has a full one): updated as a full checksum.
    out_tx, _ = both(seeded, 1000, partial_ok=False)
    assert out_tx[l4 + 16 : l4 + 18] != seeded[l4 + 16 : l4 + 18]
    # A full checksum is updated with partial_ok as well.
    out_full, _ = both(frame, 1000, partial_ok=True)
    assert_scapy_checksum(out_full)


def _rx_setup(clamp: str | int = "auto", **kw: object) -> tuple[Config, fast.FastForwarder, PyForwarder]:
    fields: dict[str, object] = {"mode": "vxlan", "remotes": REMOTES, "underlay_mtu": 1500, "tap_mtu": 1450,
                                 "vni": 42, "vlan_map": ((20, 5020),), "clamp_mss": clamp}  # fmt: skip
    fields.update(kw)
    cfg = datapath_config(**fields)  # type: ignore[arg-type]
    return cfg, fast.FastForwarder(cfg, **({"tap_vnet": 10} if kw.get("tap_offloads") else {})), PyForwarder(cfg)


REMOTES = tuple(Remote(f"10.0.{i}.2", f"10.0.{i}.1") for i in range(3))


def from_remote(cfg: Config, i: int, frame: bytes, tid: int | None = None) -> tuple[bytes, str]:
    """What remote i sends us, as the receiving socket hands it over."""
    r = cfg.remotes[i]
    if cfg.tunnel.mode == "vxlan":
        vni = cfg.base_id if tid is None else tid
        return vxlan.encap(frame, vni=vni, src=r.addr_bytes, dst=r.local_bytes)[28:], r.addr
    return gre.encap(frame, key=cfg.tunnel.key if tid is None else tid, src=r.addr_bytes, dst=r.local_bytes), r.addr


@pytest.mark.parametrize("coalesce", [False, True], ids=["completed", "needs_csum"])
def test_rx_plan_completes_a_clamped_seed(coalesce: bool) -> None:
    """The RX plan after the clamp: the seed is completed over the new option (or passed on as NEEDS_CSUM)."""
    cfg, fp, _ = _rx_setup(tap_offloads=True, rx_coalesce=coalesce)
    frame = syn(flags="SA", src=DST_MAC, dst=SRC_MAC)
    l4 = mss.find_syn(frame)[1]  # type: ignore[index]
    ((v, out, remote),) = fp.rx_plan([from_remote(cfg, 1, partial(frame, l4, 16, 6))])
    assert remote == 1 and scapy_mss(out) == [1410]
    if coalesce:
        assert v[0] == NEEDS_CSUM and struct.unpack_from("=HH", v, 6) == (l4, 16)
        l3 = 14
        seed = ipv4.checksum(out[l3 + 12 : l3 + 20] + struct.pack("!HH", 6, len(out) - l4))
        assert struct.unpack_from("!H", out, l4 + 16)[0] == ~seed & 0xFFFF
        out = out[: l4 + 16] + b"\0\0" + out[l4 + 18 :]
        out = out[: l4 + 16] + struct.pack("!H", ipv4.checksum(out[l4:], ~seed & 0xFFFF)) + out[l4 + 18 :]
    assert_scapy_checksum(out)
    assert fp.snapshot().stats["mss_clamped"] == 1


def test_tap_partial_checksum_is_completed_before_the_clamp() -> None:
    """A SYN read from a TAP with NEEDS_CSUM: the offload step completes it, the clamp updates the full sum."""
    cfg, fp, pp = _rx_setup()
    frame = syn()
    l4 = mss.find_syn(frame)[1]  # type: ignore[index]
    (done,) = fast.offload_frame(vnet(NEEDS_CSUM, GSO_NONE, 0, 0, l4, 16), partial(frame, l4, 16, 6))
    assert done == frame
    out = fp.tx([done])
    assert out == pp.tx([done]) and len(out) == 3
    inner = out[0][1][cfg.outer_len :]
    assert scapy_mss(inner) == [1410]
    assert_scapy_checksum(inner)


# -- the forwarders --------------------------------------------------------------------------------


def inner_of(cfg: Config, pkt: bytes, mapped: bool = False) -> bytes:
    return pkt[cfg.mapped_outer_len if mapped else cfg.outer_len :]


@pytest.mark.parametrize(
    ("mode", "key", "v6", "tags", "mapped", "want"),
    [
        ("vxlan", None, False, (), False, 1500 - 36 - 14 - 20 - 20),  # 1410: TAP MTU 1450 - 40
        ("vxlan", None, True, (), False, 1500 - 36 - 14 - 40 - 20),  # 1390
        ("vxlan", None, False, (Dot1Q(vlan=30),), False, 1500 - 36 - 18 - 40),  # a trunk's tag travels: 1406
        ("vxlan", None, True, (Dot1AD(vlan=5), Dot1Q(vlan=30)), False, 1500 - 36 - 22 - 60),  # QinQ: 1382
        ("vxlan", None, False, (Dot1Q(vlan=20),), True, 1410),  # a mapped VLAN leaves untagged
        ("gre", None, False, (), False, 1500 - 24 - 14 - 40),  # 1422
        ("gre", None, False, (Dot1Q(vlan=20),), True, 1500 - 28 - 14 - 40),  # mapped: keyed, 1418
        ("gre", 7, True, (), False, 1500 - 28 - 14 - 60),  # 1398
    ],
)
def test_auto_figure_tx_and_rx(
    mode: str, key: int | None, v6: bool, tags: tuple[Packet, ...], mapped: bool, want: int
) -> None:
    kw: dict[str, object] = {"mode": mode, "vni": None, "key": key} if mode == "gre" else {}
    cfg, fp, pp = _rx_setup(**kw)
    frame = syn(v6=v6, tags=tags, options=[("MSS", 8960), ("NOP", None), ("WScale", 7)])
    for fwd in (fp, pp):
        assert fwd.mss_limit(None, v6, mapped or key is not None, 14 + 4 * len(tags) - (4 if mapped else 0)) == want
    out = fp.tx([frame])
    assert out == pp.tx([frame]) and [r for r, _ in out] == [0, 1, 2]  # unknown: flooded, the same figure
    for _, pkt in out:
        inner = inner_of(cfg, pkt, mapped)
        assert scapy_mss(inner) == [want]
        assert_scapy_checksum(inner)
    # The answer from remote 2 (the same tags as the bridge sees them): the figure towards that remote.
    answer = syn(v6=v6, tags=tags, flags="SA", src=DST_MAC, dst=SRC_MAC, options=[("MSS", 9000)])
    if mapped:
        wire = answer[:12] + answer[16:]
        packets = [from_remote(cfg, 2, wire, tid=5020)]
    else:
        packets = [from_remote(cfg, 2, answer)]
    got = fp.rx(packets)
    assert got == pp.rx(packets) and len(got) == 1 and got[0][0] == 2
    assert scapy_mss(got[0][1]) == [want]
    assert_scapy_checksum(got[0][1])
    assert fp.snapshot() == pp.snapshot() and fp.snapshot().stats["mss_clamped"] == 2


@pytest.mark.parametrize("clamp", [1200, "off"])
def test_fixed_and_off(clamp: int | str) -> None:
    cfg, fp, pp = _rx_setup(clamp)
    frames = [syn(options=[("MSS", m)]) for m in (1460, 1200, 600)] + [syn(v6=True, options=[("MSS", 65000)])]
    out = fp.tx(frames)
    assert out == pp.tx(frames)
    seen = [scapy_mss(inner_of(cfg, p))[0] for r, p in out if r == 0]
    if clamp == "off":
        assert seen == [1460, 1200, 600, 65000]
        assert fp.mss_limit(0, False, False, 14) == pp.mss_limit(0, False, False, 14) == 0
    else:
        assert seen == [1200, 1200, 600, 1200]  # a fixed clamp is the same for IPv4 and IPv6, never raises
    snap = fp.snapshot()
    assert snap == pp.snapshot() and snap.stats["mss_clamped"] == (0 if clamp == "off" else 2)


def test_unicast_counts_once_and_learned_remote() -> None:
    cfg, fp, pp = _rx_setup()
    reply = syn(flags="A", src=DST_MAC, dst=SRC_MAC, options=[])
    for fwd in (fp, pp):
        fwd.rx([from_remote(cfg, 1, reply)])  # learn DST_MAC behind remote 1
    out = fp.tx([syn()])
    assert out == pp.tx([syn()]) and [r for r, _ in out] == [1]
    assert scapy_mss(inner_of(cfg, out[0][1])) == [1410]
    assert fp.snapshot() == pp.snapshot() and fp.snapshot().stats["mss_clamped"] == 1


def test_no_remote_and_tiny_underlay() -> None:
    """A flood with no remote in use takes the underlay's figure; a tiny MTU gives TCP_MIN_MSS, never less."""
    _, fp, pp = _rx_setup(underlay_mtu=150, tap_mtu=100)
    for fwd in (fp, pp):
        assert fwd.mss_limit(None, True, False, 14) == mss.TCP_MIN_MSS
        for slot in (0, 1, 2):
            fwd.remove_remote(slot)
    _, fp, pp = _rx_setup()
    for fwd in (fp, pp):
        for slot in (0, 1, 2):
            fwd.remove_remote(slot)
        assert fwd.mss_limit(None, False, False, 14) == 1410
        assert fwd.mss_limit(1, False, False, 14) == 1410  # a free slot: as a flood
    assert fp.tx([syn()]) == pp.tx([syn()]) == []
    assert fp.snapshot() == pp.snapshot()


def test_setter_range() -> None:
    """ovl_config_set_clamp_mss refuses what the config layer refuses."""
    c = fast.lib.ovl_config_new(0)
    try:
        for value, ok in [(0, True), (1, True), (2, False), (535, False), (536, True), (65495, True), (65496, False)]:
            assert (fast.lib.ovl_config_set_clamp_mss(c, value) == 0) == ok, value
    finally:
        fast.lib.ovl_config_free(c)


@pytest.mark.parametrize("clamp", ["off", "auto"])
def test_a_syn_super_frame_is_kept_from_the_injection_tap(clamp: str) -> None:
    """SYNs are never TSO; a super-frame that has SYN anyway goes the old way (segmented, each clamped)
    with the clamp on, not whole through the injection TAP (where nothing would clamp it)."""
    cfg = datapath_config(mode="vxlan", remotes=REMOTES[:1], underlay_mtu=1500, tap_mtu=1450, tap_offloads=True,
                          clamp_mss=clamp)  # fmt: skip
    fp = fast.FastForwarder(cfg, tap_vnet=10)
    fp.set_inject(-1, bytes.fromhex("02cc00000001"), False)
    frame, l4 = super_frame(bytes(3000), flags="S")
    v = vnet(NEEDS_CSUM, GSO_TCPV4, l4 + 20, 1000, l4, 16)
    if clamp == "off":
        assert len(fp.inject_header(0, v, frame)) > len(frame)
    else:
        with pytest.raises(ValueError, match="fallback_other"):
            fp.inject_header(0, v, frame)
    plain, _ = super_frame(bytes(3000))  # no SYN: injected either way
    assert len(fp.inject_header(0, v, plain)) > len(plain)
