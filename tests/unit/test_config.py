"""datapath/config.py: every check of the one validated Config shape, its derived values and ConfigError."""

from __future__ import annotations

import dataclasses
import re
import string
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from datapath.config import (
    GROUPS,
    MAX_BATCH,
    MAX_FDB,
    MAX_REMOTES,
    MAX_VLAN_MAP,
    BridgeConfig,
    Config,
    ConfigError,
    FdbConfig,
    OffloadConfig,
    Remote,
    StaticEntry,
    TapConfig,
    TunnelConfig,
    check_address,
    from_keys,
)
from datapath.encap import Gre, Vxlan
from datapath.encap.gre import KEY_MAX
from datapath.encap.vxlan import VNI_MAX

R1, R2, LOCAL = "192.0.2.2", "192.0.2.3", "192.0.2.1"
MAC = b"\x02\x00\x00\x00\x00\x01"


def error(fn: Any, *args: Any, **kwargs: Any) -> ConfigError:
    """The ConfigError fn(*args, **kwargs) raises (fails the test if it raises nothing or something else)."""
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    assert type(info.value) is ConfigError
    return info.value


def cfg(mode: str = "vxlan", *, remotes: tuple[str, ...] = (R1,), **kw: Any) -> Config:
    """A Config of mode to remotes; kw are Config fields (tunnel= replaces the whole TunnelConfig)."""
    tunnel = kw.pop("tunnel", TunnelConfig(mode))
    return Config(tunnel=tunnel, remotes=tuple(Remote(a) for a in remotes), **kw)


def by_name(field: str, value: object) -> dict[str, Any]:
    """{field: value}, for keyword arguments chosen by a parameter."""
    return {field: value}


def resolved(mode: str = "vxlan", underlay_mtu: int = 1500, tap_mtu: int = 1450, **tunnel: Any) -> Config:
    """A resolved Config (underlay and TAP MTU, local address towards the remote)."""
    return Config(
        tunnel=TunnelConfig(mode, underlay_mtu=underlay_mtu, **tunnel),
        remotes=(Remote(R1, LOCAL),),
        tap=TapConfig(mtu=tap_mtu, mac=MAC),
    )


# -- ConfigError ------------------------------------------------------------------


def test_error_keys_and_default_render() -> None:
    e = ConfigError("{tunnel.vni} and {offload.udp_gso} clash; {remotes} too")
    assert e.keys == ["tunnel.vni", "offload.udp_gso", "remotes"]
    assert str(e) == e.render() == "tunnel.vni and offload.udp_gso clash; remotes too"
    assert e.template == "{tunnel.vni} and {offload.udp_gso} clash; {remotes} too"


def test_error_render_with_names_leaves_unmapped_keys_plain() -> None:
    e = ConfigError("{tunnel.vni} is for {tunnel.mode} vxlan")
    assert e.render({"tunnel.vni": "--vni"}) == "--vni is for tunnel.mode vxlan"
    assert e.render({"tunnel.vni": "--vni", "tunnel.mode": "--mode"}) == "--vni is for --mode vxlan"
    assert e.render({}) == "tunnel.vni is for tunnel.mode vxlan"


def test_error_is_a_value_error_without_keys_when_none_named() -> None:
    e = ConfigError("nothing to name")
    assert isinstance(e, ValueError) and e.keys == [] and str(e) == "nothing to name"


_key_part = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=8)
_keys = st.lists(_key_part, min_size=1, max_size=3).map(".".join)
_plain = st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=12)


@given(
    st.lists(st.tuples(_plain, _keys), min_size=1, max_size=5),
    _plain,
    st.dictionaries(_keys, st.text(alphabet=string.ascii_letters + "-", min_size=1, max_size=10)),
)
def test_render_never_leaves_a_placeholder_for_a_mapped_key(
    parts: list[tuple[str, str]], tail: str, extra: dict[str, str]
) -> None:
    template = "".join(f"{text}{{{key}}}" for text, key in parts) + tail
    names = {**extra, **{key: f"--{key.replace('.', '-')}" for _, key in parts}}
    e = ConfigError(template)
    assert e.keys == [key for _, key in parts]
    out = e.render(names)
    assert "{" not in out and "}" not in out
    for _, key in parts:
        assert names[key] in out


@given(st.sampled_from(["vxlan", "gre"]), st.integers(min_value=-(1 << 40), max_value=1 << 40))
def test_every_range_error_names_its_key_and_renders_without_braces(mode: str, value: int) -> None:
    """Each numeric field accepts exactly its range and refuses the rest with a message naming its key."""
    id_key, id_max = ("vni", VNI_MAX) if mode == "vxlan" else ("key", KEY_MAX)
    checks: list[tuple[str, int, int, Any]] = [
        (f"tunnel.{id_key}", 0, id_max, lambda v: TunnelConfig(mode, **{id_key: v})),
        ("tunnel.ttl", 1, 255, lambda v: TunnelConfig(mode, ttl=v)),
        ("tunnel.underlay_mtu", 68, 65535, lambda v: TunnelConfig(mode, underlay_mtu=v)),
        ("tap.mtu", 68, 65000, lambda v: TapConfig(mtu=v)),
        ("fdb.max_entries", 1, MAX_FDB, lambda v: FdbConfig(max_entries=v)),
        ("bridge.tag", 1, 4094, lambda v: BridgeConfig(type="ovs", tag=v)),
    ]
    for key, lo, hi, build in checks:
        if lo <= value <= hi:
            build(value)
            continue
        e = error(build, value)
        assert e.keys == [key]
        assert e.render({key: "--opt"}) == f"--opt: {e.template.split(': ', 1)[1]}"
        assert "{" not in str(e) and f"{value} is out of range {lo}..{hi}" in str(e)


# -- check_address ----------------------------------------------------------------


def test_check_address_accepts_unicast_ipv4() -> None:
    assert check_address("remotes", "192.0.2.7") == "192.0.2.7"
    assert check_address("remotes", "10.255.255.254") == "10.255.255.254"
    assert check_address("remotes", "2001:DB8:0:0::1") == "2001:db8::1"  # IPv6, canonical (RFC 5952)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("192.0.2.300", "is not an IP address"),
        ("host.example", "is not an IP address"),
        ("", "is not an IP address"),
        (" 192.0.2.1", "is not an IP address"),
        ("fe80::1", "is link-local"),
        ("::ffff:192.0.2.1", "is an IPv4-mapped address"),
        ("::", "is not a unicast address"),
        ("ff02::1", "is not a unicast address"),
        ("224.0.0.1", "is not a unicast address"),
        ("239.1.2.3", "is not a unicast address"),
        ("0.0.0.0", "is not a unicast address"),
        ("255.255.255.255", "is not a unicast address"),
    ],
)
def test_check_address_refuses(text: str, needle: str) -> None:
    e = error(check_address, "tunnel.local", text)
    assert e.keys == ["tunnel.local"] and needle in str(e)


# -- tunnel -----------------------------------------------------------------------


def test_tunnel_mode_must_be_known() -> None:
    e = error(TunnelConfig, "ipip")
    assert e.keys == ["tunnel.mode"] and "'ipip' is not one of vxlan, gre" in str(e)


@pytest.mark.parametrize(
    ("mode", "field", "expect"),
    [
        ("vxlan", "key", "tunnel.key is for tunnel.mode gre; VXLAN uses tunnel.vni"),
        ("gre", "vni", "tunnel.vni is for tunnel.mode vxlan; GRE uses tunnel.key"),
    ],
)
def test_tunnel_id_of_the_other_protocol(mode: str, field: str, expect: str) -> None:
    assert str(error(TunnelConfig, mode, **{field: 5})) == expect


@pytest.mark.parametrize(
    ("mode", "field", "top", "name"), [("vxlan", "vni", VNI_MAX, "VNI"), ("gre", "key", KEY_MAX, "GRE key")]
)
def test_tunnel_id_range(mode: str, field: str, top: int, name: str) -> None:
    assert getattr(TunnelConfig(mode, **by_name(field, 0)), field) == 0
    assert getattr(TunnelConfig(mode, **by_name(field, top)), field) == top
    for bad in (-1, top + 1):
        e = error(TunnelConfig, mode, **{field: bad})
        assert str(e) == f"tunnel.{field}: {name} {bad} is out of range 0..{top}"


@pytest.mark.parametrize(
    ("field", "good", "bad", "key"),
    [
        ("port", (1, 65535), (0, 65536), "tunnel.port"),
        ("ttl", (1, 255), (0, 256), "tunnel.ttl"),
        ("underlay_mtu", (68, 65535), (67, 65536), "tunnel.underlay_mtu"),
    ],
)
def test_tunnel_scalar_ranges(field: str, good: tuple[int, int], bad: tuple[int, int], key: str) -> None:
    for v in good:
        assert getattr(TunnelConfig("vxlan", **by_name(field, v)), field) == v
    for v in bad:
        e = error(TunnelConfig, "vxlan", **{field: v})
        assert e.keys == [key] and f" {v} is out of range {good[0]}..{good[1]}" in str(e)


def test_tunnel_local_is_checked_and_named() -> None:
    assert TunnelConfig("gre", local="192.0.2.9").local == "192.0.2.9"
    e = error(TunnelConfig, "gre", local="224.0.0.5")
    assert e.keys == ["tunnel.local"]


@pytest.mark.parametrize(
    ("mode", "vlan_map", "needle"),
    [
        ("vxlan", ((0, 5),), "mapped VLAN 0 out of range 1..4094"),
        ("vxlan", ((4095, 5),), "mapped VLAN 4095 out of range 1..4094"),
        ("vxlan", ((10, VNI_MAX + 1),), f"mapped VNI {VNI_MAX + 1} out of range 0..{VNI_MAX}"),
        ("vxlan", ((10, -1),), f"mapped VNI -1 out of range 0..{VNI_MAX}"),
        ("gre", ((10, KEY_MAX + 1),), f"mapped GRE key {KEY_MAX + 1} out of range 0..{KEY_MAX}"),
        ("vxlan", ((10, 5), (10, 6)), "a VLAN is mapped twice"),
        ("vxlan", ((10, 5), (11, 5)), "two VLANs are mapped to the same VNI"),
        ("gre", ((10, 5), (11, 5)), "two VLANs are mapped to the same GRE key"),
        ("vxlan", ((10, 0),), "a VLAN is mapped to the base VNI 0"),
        ("gre", ((10, 0),), "a VLAN is mapped to the base GRE key 0"),
    ],
)
def test_vlan_map_checks(mode: str, vlan_map: tuple[tuple[int, int], ...], needle: str) -> None:
    e = error(TunnelConfig, mode, vlan_map=vlan_map)
    assert e.keys == ["tunnel.vlan_map"] and needle in str(e), str(e)


def test_vlan_map_base_id_follows_the_configured_id() -> None:
    assert TunnelConfig("vxlan", vni=7, vlan_map=((10, 0),)).vlan_map == ((10, 0),)
    assert "base VNI 7" in str(error(TunnelConfig, "vxlan", vni=7, vlan_map=((10, 7),)))
    assert "base GRE key 9" in str(error(TunnelConfig, "gre", key=9, vlan_map=((10, 9),)))


def test_vlan_map_size_cap() -> None:
    full = tuple((v, v + 100) for v in range(1, MAX_VLAN_MAP + 1))
    assert len(TunnelConfig("vxlan", vni=1, vlan_map=full).vlan_map) == MAX_VLAN_MAP
    e = error(TunnelConfig, "vxlan", vlan_map=(*full, (1, 99999)))
    assert f"at most {MAX_VLAN_MAP} VLAN mappings" in str(e)


@pytest.mark.parametrize(
    ("kw", "cls", "tunnel_id", "port", "describe"),
    [
        ({"mode": "vxlan"}, Vxlan, None, 4789, "vni 0 port 4789"),
        ({"mode": "vxlan", "vni": 5, "port": 8472, "udp_csum": True, "ttl": 9}, Vxlan, 5, 8472, "vni 5 port 8472"),
        ({"mode": "gre"}, Gre, None, 0, "key none"),
        ({"mode": "gre", "key": 77, "ttl": 3}, Gre, 77, 0, "key 77"),
    ],
)
def test_tunnel_encap_carries_the_settings(
    kw: dict[str, Any], cls: type, tunnel_id: int | None, port: int, describe: str
) -> None:
    t = TunnelConfig(**kw)
    enc = t.encap
    assert type(enc) is cls
    assert (enc.tunnel_id, enc.port, enc.udp_csum, enc.ttl) == (tunnel_id, port, t.udp_csum, t.ttl)
    assert enc.describe() == describe


# -- remotes ----------------------------------------------------------------------


def test_remote_addresses_and_bytes() -> None:
    r = Remote(R1, LOCAL)
    assert r.addr_bytes == bytes([192, 0, 2, 2]) and r.local_bytes == bytes([192, 0, 2, 1])
    assert error(Remote, "224.1.1.1").keys == ["remotes"]
    assert error(Remote, R1, "::1").keys == ["tunnel.local"]


def test_unresolved_remote_has_no_local_bytes() -> None:
    e = error(lambda: Remote(R1).local_bytes)
    assert e.keys == ["tunnel.local"] and f"towards remote {R1} is not resolved yet" in str(e)


# -- tap --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["t", "ovl-vxlan", "a" * 15, "tap.0", "x_y-z"])
def test_tap_names_accepted(name: str) -> None:
    assert TapConfig(name=name).name == name


@pytest.mark.parametrize("name", ["", "a" * 16, "a/b", " lead", "trail ", "in side", ".", ".."])
def test_tap_names_refused(name: str) -> None:
    e = error(TapConfig, name=name)
    assert e.keys == [
        "tap.name"
    ] and "interface names are 1-15 characters (bytes) without '/', ':' or white space" in str(e)


@pytest.mark.parametrize("name", ["a\tb", "a\nb", "eth0:1"])
def test_tap_names_refused_like_the_kernel(name: str) -> None:
    error(TapConfig, name=name)


def test_tap_name_length_is_in_bytes() -> None:
    error(TapConfig, name="é" * 8)


def test_tap_mtu_range() -> None:
    assert TapConfig(mtu=68).mtu == 68 and TapConfig(mtu=65000).mtu == 65000
    for bad in (67, 65001):
        assert str(error(TapConfig, mtu=bad)) == f"tap.mtu: MTU {bad} is out of range 68..65000"


def test_tap_qdisc() -> None:
    assert TapConfig().qdisc == "noqueue" and TapConfig(qdisc="keep").qdisc == "keep"
    assert str(error(TapConfig, qdisc="fq")) == "tap.qdisc 'fq' is not one of noqueue, keep"
    assert from_keys({"tunnel.mode": "gre", "remotes": ["192.0.2.2"], "tap.qdisc": "keep"}).tap.qdisc == "keep"


@pytest.mark.parametrize("mac", [b"\x02\x00\x00\x00\x00", b"\x02" * 7, b"\x01\x00\x00\x00\x00\x01", bytes(6)])
def test_tap_mac_refused(mac: bytes) -> None:
    assert str(error(TapConfig, mac=mac)) == "tap.mac must be a unicast, nonzero MAC address"


# -- fdb --------------------------------------------------------------------------


def test_static_entry_checks() -> None:
    s = StaticEntry(MAC, R1, 4094)
    assert (s.mac, s.remote, s.vlan) == (MAC, R1, 4094)
    assert "MAC is 6 bytes" in str(error(StaticEntry, MAC[:5], R1))
    assert "MAC is 6 bytes" in str(error(StaticEntry, "02:00:00:00:00:01", R1))
    assert "ff:ff:ff:ff:ff:ff: must be a unicast, nonzero MAC" in str(error(StaticEntry, b"\xff" * 6, R1))
    assert "00:00:00:00:00:00: must be a unicast" in str(error(StaticEntry, bytes(6), R1))
    assert error(StaticEntry, MAC, "not-an-ip").keys == ["fdb.static"]
    for vlan in (-1, 4095, 4096):  # 4095 is reserved by 802.1Q
        assert "VLAN must be 0..4094 (0 = untagged)" in str(error(StaticEntry, MAC, R1, vlan))


def test_static_entry_from_value() -> None:
    assert StaticEntry.from_value(("02:00:00:00:00:01", R1)) == StaticEntry(MAC, R1, 0)
    assert StaticEntry.from_value(["02-00-00-00-00-01", R1, 20]) == StaticEntry(MAC, R1, 20)
    assert StaticEntry.from_value((MAC, R1, 3)) == StaticEntry(MAC, R1, 3)


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("02:00:00:00:00:01", "expected MAC=REMOTE or MAC@VLAN=REMOTE"),
        ("02:00:00:00:00:01@x=192.0.2.2", "expected MAC=REMOTE or MAC@VLAN=REMOTE"),
        ({"mac": "02:00:00:00:00:01"}, "a static entry is (MAC, remote[, VLAN])"),
        (("02:00:00:00:00:01",), "a static entry is (MAC, remote[, VLAN])"),
        (("02:00:00:00:00:01", R1, 1, 2), "a static entry is (MAC, remote[, VLAN])"),
        (("02:00:00:00:01", R1), "bad MAC address '02:00:00:00:01'"),
        (("02:00:00:00:00:zz", R1), "not hexadecimal"),
        (("02:00:00:00:00:01", 3232236034), "(MAC, remote address[, VLAN number])"),
        (("02:00:00:00:00:01", R1, "20"), "(MAC, remote address[, VLAN number])"),
        ((12345, R1), "MAC is 6 bytes"),
    ],
)
def test_static_entry_from_bad_value(value: object, needle: str) -> None:
    e = error(StaticEntry.from_value, value)
    assert e.keys == ["fdb.static"] and needle in str(e), str(e)


def test_fdb_limits() -> None:
    assert FdbConfig(max_entries=1, ageing=0).ageing == 0
    assert FdbConfig(max_entries=MAX_FDB, ageing=10**6).max_entries == MAX_FDB
    for bad in (0, MAX_FDB + 1):
        assert error(FdbConfig, max_entries=bad).keys == ["fdb.max_entries"]
    for ageing in (-0.5, 10**6 + 1, float("nan"), float("inf")):
        e = error(FdbConfig, ageing=ageing)
        assert e.keys == ["fdb.ageing"] and "must be between 0 and 1000000 seconds" in str(e)


# -- offload and bridge -----------------------------------------------------------


def test_offload_policy_and_udp_gso() -> None:
    assert "'max' is not one of auto, on, off" in str(error(OffloadConfig, policy="max"))
    assert OffloadConfig(udp_gso=True).udp_gso
    for kw in ({"fast_path": False}, {"policy": "off"}):
        e = error(OffloadConfig, udp_gso=True, **kw)
        assert e.keys == ["offload.udp_gso"] and "needs the C fast path with offloads on" in str(e)


def test_offload_dp_thread_and_cpu() -> None:
    """The data-path thread is on by default; cpu pins it, so it needs the thread and the C path."""
    assert OffloadConfig().dp_thread and OffloadConfig().cpu is None
    assert OffloadConfig(cpu=1).cpu == 1 and not OffloadConfig(dp_thread=False).dp_thread
    assert error(OffloadConfig, dp_thread=1).keys == ["offload.dp_thread"]
    for bad in (-1, 8192, True, "1"):
        assert error(OffloadConfig, cpu=bad).keys == ["offload.cpu"]
    for kw in ({"fast_path": False}, {"dp_thread": False}):
        e = error(OffloadConfig, cpu=0, **kw)
        assert e.keys == ["offload.cpu"] and "needs the C fast path and its thread" in str(e)


@pytest.mark.parametrize(
    ("policy", "rx_coalesce", "tap", "coalesce"),
    [
        ("auto", None, True, False),
        ("auto", True, True, True),
        ("auto", False, True, False),
        ("on", None, True, True),
        ("on", False, True, False),
        ("off", None, False, False),
        ("off", True, False, False),
    ],
)
def test_offload_derived_flags(policy: str, rx_coalesce: bool | None, tap: bool, coalesce: bool) -> None:
    o = OffloadConfig(policy=policy, rx_coalesce=rx_coalesce)
    assert (o.tap, o.udp_gro, o.coalesce) == (tap, tap, coalesce)


def test_bridge_checks() -> None:
    assert BridgeConfig().name == "br-int" and BridgeConfig(type="auto", tag=20).tag == 20
    assert "'docker' is not one of auto, linux, ovs, none" in str(error(BridgeConfig, type="docker"))
    for bad in (0, 4095):
        assert str(error(BridgeConfig, type="ovs", tag=bad)) == f"bridge.tag: VLAN {bad} is out of range 1..4094"
    for kind in ("linux", "none"):
        e = error(BridgeConfig, type=kind, tag=20)
        assert e.keys == ["bridge.tag", "bridge.type"]


# -- Config: cross-group checks -----------------------------------------------------


def test_tap_name_defaults_to_the_mode() -> None:
    assert cfg("vxlan").tap.name == "ovl-vxlan" and cfg("gre").tap.name == "ovl-gre"
    assert cfg("gre", tap=TapConfig(name="mine")).tap.name == "mine"


def test_remote_count() -> None:
    assert str(error(cfg, remotes=())) == "remotes: at least one remote is needed (or membership.etcd)"
    many = tuple(f"10.0.{i // 250}.{i % 250 + 1}" for i in range(MAX_REMOTES + 1))
    assert len(cfg(remotes=many[:MAX_REMOTES]).remotes) == MAX_REMOTES
    assert str(error(cfg, remotes=many)) == f"remotes: at most {MAX_REMOTES} remotes are supported"


def test_remotes_distinct_and_not_local() -> None:
    assert str(error(cfg, remotes=(R1, R2, R1))) == f"remotes {R1} is given twice"
    e = error(cfg, remotes=(R1,), tunnel=TunnelConfig("gre", local=R1))
    assert e.keys == ["remotes", "tunnel.local"] and "a tunnel needs another host" in str(e)


def test_static_remote_must_be_a_remote() -> None:
    fdb = FdbConfig(static=(StaticEntry(MAC, R2),))
    e = error(cfg, remotes=(R1,), fdb=fdb)
    assert str(e) == f"fdb.static 02:00:00:00:00:01: {R2} is not one of the remotes (remotes)"
    assert cfg(remotes=(R1, R2), fdb=fdb).fdb.static == fdb.static


@pytest.mark.parametrize(
    "kw",
    [
        {"tunnel": TunnelConfig("gre", port=4789)},
        {"tunnel": TunnelConfig("gre", udp_csum=True)},
        {"tunnel": TunnelConfig("gre"), "offload": OffloadConfig(udp_gso=True)},
        {"tunnel": TunnelConfig("gre", udp6_zero_csum_tx=True)},
        {"tunnel": TunnelConfig("gre", udp6_zero_csum_rx=True)},
    ],
)
def test_udp_settings_need_a_udp_encapsulation(kw: dict[str, Any]) -> None:
    e = error(cfg, "gre", **kw)
    assert e.keys == [
        "tunnel.port",
        "tunnel.udp_csum",
        "tunnel.udp6_zero_csum_tx",
        "tunnel.udp6_zero_csum_rx",
        "offload.udp_gso",
        "tunnel.mode",
    ]
    assert str(e).endswith("are for tunnel.mode vxlan")


def test_udp_settings_on_vxlan() -> None:
    c = cfg(tunnel=TunnelConfig("vxlan", port=8472, udp_csum=True), offload=OffloadConfig(udp_gso=True))
    assert c.encap.port == 8472 and c.encap.udp_csum


def test_access_port_and_vlan_map_exclude_each_other() -> None:
    e = error(cfg, tunnel=TunnelConfig("vxlan", vlan_map=((10, 5),)), bridge=BridgeConfig(type="ovs", tag=20))
    assert e.keys == ["bridge.tag", "tunnel.vlan_map"]


def test_batch_range() -> None:
    assert cfg(batch=1).batch == 1 and cfg(batch=MAX_BATCH).batch == MAX_BATCH
    for bad in (0, MAX_BATCH + 1):
        assert str(error(cfg, batch=bad)) == f"batch: batch {bad} is out of range 1..{MAX_BATCH}"


# -- Config: derived values ---------------------------------------------------------


@pytest.mark.parametrize(
    ("tunnel", "outer", "mapped", "overhead"),
    [
        (TunnelConfig("vxlan"), 36, 36, 50),
        (TunnelConfig("vxlan", vni=5, vlan_map=((10, 6),)), 36, 36, 50),
        (TunnelConfig("gre"), 24, 28, 38),
        (TunnelConfig("gre", key=0), 28, 28, 42),
        (TunnelConfig("gre", vlan_map=((10, 6),)), 24, 28, 42),
        (TunnelConfig("gre", key=1, vlan_map=((10, 6),)), 28, 28, 42),
    ],
)
def test_outer_lengths_and_overhead(tunnel: TunnelConfig, outer: int, mapped: int, overhead: int) -> None:
    c = cfg(tunnel=tunnel)
    assert (c.outer_len, c.mapped_outer_len, c.overhead) == (outer, mapped, overhead)
    assert c.encap.describe() == tunnel.encap.describe() and type(c.encap) is type(tunnel.encap)


def test_base_id_and_bind() -> None:
    assert cfg(tunnel=TunnelConfig("vxlan", vni=42)).base_id == 42
    assert cfg("gre").base_id == 0 and cfg(tunnel=TunnelConfig("gre", key=9)).base_id == 9
    assert cfg().bind == "0.0.0.0"
    assert cfg(tunnel=TunnelConfig("vxlan", local=LOCAL)).bind == LOCAL


def test_static_entries_are_indexed_by_remote() -> None:
    other = b"\x02\x00\x00\x00\x00\x02"
    fdb = FdbConfig(static=(StaticEntry(MAC, R2, 20), StaticEntry(other, R1)))
    c = cfg(remotes=(R1, R2), fdb=fdb)
    assert c.static_entries == ((MAC, 1, 20), (other, 0, 0))


def test_is_resolved_needs_mtus_and_locals() -> None:
    full = resolved()
    assert full.is_resolved()
    assert not cfg().is_resolved()
    assert not dataclasses.replace(full, tunnel=TunnelConfig("vxlan")).is_resolved()
    assert not dataclasses.replace(full, tap=TapConfig(mac=MAC)).is_resolved()
    assert not dataclasses.replace(full, remotes=(Remote(R1, LOCAL), Remote(R2))).is_resolved()
    assert dataclasses.replace(full, remotes=(Remote(R1, LOCAL), Remote(R2, LOCAL))).is_resolved()


def test_unresolved_mtus_raise() -> None:
    c = cfg()
    assert error(lambda: c.underlay_mtu).keys == ["tunnel.underlay_mtu"]
    assert error(lambda: c.tap_mtu).keys == ["tap.mtu"]
    assert error(lambda: c.slot_size).keys == ["tunnel.underlay_mtu"]
    r = resolved(underlay_mtu=1400, tap_mtu=1350)
    assert (r.underlay_mtu, r.tap_mtu) == (1400, 1350)


@pytest.mark.parametrize(
    ("mode", "underlay", "tap", "slot"),
    [
        ("vxlan", 1500, 1450, 2048),
        ("gre", 1500, 1462, 2048),
        ("vxlan", 9050, 9000, 9152),  # 9000 + 18 + 36 + 64, rounded up to 64
        ("gre", 9000, 8962, 9088),  # 8962 + 18 + 28 (mapped GRE) + 64 -> 9072, rounded up
        ("vxlan", 65535, 1450, 65600),  # the underlay packet is the larger
    ],
)
def test_slot_size_examples(mode: str, underlay: int, tap: int, slot: int) -> None:
    assert resolved(mode, underlay, tap).slot_size == slot


@given(
    st.sampled_from(["vxlan", "gre"]),
    st.integers(min_value=68, max_value=65535),
    st.integers(min_value=68, max_value=65000),
)
def test_slot_size_holds_the_largest_packet(mode: str, underlay: int, tap: int) -> None:
    c = resolved(mode, underlay, tap)
    slot = c.slot_size
    assert slot % 64 == 0 and slot >= 2048
    assert slot >= underlay + 64 and slot >= tap + 14 + 4 + c.mapped_outer_len + 64
    assert slot - 64 < max(2048, underlay + 64, tap + 18 + max(c.outer_len, c.mapped_outer_len) + 64)


# -- from_keys --------------------------------------------------------------------


def test_from_keys_builds_every_group() -> None:
    c = from_keys(
        {
            "tunnel.mode": "vxlan",
            "tunnel.vni": 5001,
            "tunnel.port": 8472,
            "tunnel.vlan_map": [[10, 100], (20, 200)],
            "remotes": [R1, R2],
            "tap.name": "ovl9",
            "tap.mtu": None,
            "fdb.max_entries": 10,
            "fdb.ageing": 30.0,
            "fdb.static": [["02:00:00:00:00:01", R2, 10]],
            "offload.policy": "on",
            "bridge.type": "linux",
            "bridge.name": "br0",
            "batch": 32,
        }
    )
    assert c.tunnel == TunnelConfig("vxlan", vni=5001, port=8472, vlan_map=((10, 100), (20, 200)))
    assert c.remotes == (Remote(R1), Remote(R2))
    assert c.tap == TapConfig(name="ovl9")
    assert c.fdb == FdbConfig(max_entries=10, ageing=30.0, static=(StaticEntry(MAC, R2, 10),))
    assert c.offload == OffloadConfig(policy="on")
    assert c.bridge == BridgeConfig(name="br0", type="linux")
    assert c.batch == 32


def test_from_keys_none_leaves_defaults() -> None:
    c = from_keys({"tunnel.mode": "gre", "remotes": [R1], "tunnel.key": None, "batch": None, "fdb.static": None})
    assert c == cfg("gre")


def test_from_keys_knows_every_field() -> None:
    keys = {f"{g}.{f.name}" for g, cls in GROUPS.items() for f in dataclasses.fields(cls)}
    assert {"tunnel.mode", "tunnel.vlan_map", "tap.mac", "fdb.static", "offload.udp_gso", "bridge.ovsdb"} <= keys
    for key in sorted(keys - {"tunnel.mode"}):
        assert from_keys({"tunnel.mode": "vxlan", "remotes": [R1], key: None}).tunnel.mode == "vxlan"


@pytest.mark.parametrize("key", ["tunnel.vnid", "tunnel", "remote", "fdb.size", "tap.name.x", "offload"])
def test_from_keys_unknown_key(key: str) -> None:
    e = error(from_keys, {"tunnel.mode": "vxlan", "remotes": [R1], key: 1})
    assert e.keys == [key] and str(e) == f"{key} is not a configuration key"


@pytest.mark.parametrize("key", ["tunnel.vlan-map", "tunnel.vni2"])
def test_from_keys_unknown_key_with_other_characters(key: str) -> None:
    e = error(from_keys, {"tunnel.mode": "vxlan", "remotes": [R1], key: 1})
    assert e.keys == [key] and "{" not in str(e)


def test_from_keys_batch_of_the_wrong_type() -> None:
    e = error(from_keys, {"tunnel.mode": "vxlan", "remotes": [R1], "batch": "64"})
    assert e.keys == ["batch"] and "not a configuration key" not in str(e)


def test_from_keys_mode_is_required() -> None:
    assert str(error(from_keys, {"remotes": [R1]})) == "tunnel.mode is required"
    assert str(error(from_keys, {"remotes": [R1], "tunnel.mode": None})) == "tunnel.mode is required"


def test_from_keys_without_remotes() -> None:
    assert error(from_keys, {"tunnel.mode": "vxlan"}).keys == ["remotes", "membership.etcd"]


@pytest.mark.parametrize(
    ("key", "value", "expect"),
    [
        ("remotes", R1, "remotes must be a list"),
        ("remotes", {"addr": R1}, "remotes must be a list"),
        ("remotes", 5, "remotes must be a list"),
        ("remotes", [5], "remotes '5' is not an IP address"),
        ("fdb.static", "02:00:00:00:00:01=192.0.2.2", "fdb.static must be a list"),
        ("fdb.static", [("02:00:00:00:00:01",)], "fdb.static: a static entry is (MAC, remote[, VLAN])"),
        ("tunnel.vlan_map", "10=100", "tunnel.vlan_map must be a list"),
        ("tunnel.vlan_map", [10], "tunnel.vlan_map must be a list"),
        ("tunnel.vlan_map", ["10=100"], "tunnel.vlan_map must be a list"),
    ],
)
def test_from_keys_wrong_shapes(key: str, value: object, expect: str) -> None:
    values: dict[str, object] = {"tunnel.mode": "vxlan", "remotes": [R1], key: value}
    assert str(error(from_keys, values)) == expect


@pytest.mark.parametrize("pair", [(10, 100, 1), (10,), ("10", 100), (10, "100")])
def test_from_keys_vlan_map_pair_of_the_wrong_type(pair: tuple[object, ...]) -> None:
    e = error(from_keys, {"tunnel.mode": "vxlan", "remotes": [R1], "tunnel.vlan_map": [pair]})
    assert e.keys == ["tunnel.vlan_map"]


def test_from_keys_scalar_of_the_wrong_type() -> None:
    e = error(from_keys, {"tunnel.mode": "vxlan", "remotes": [R1], "tunnel.vni": "5"})
    assert e.keys == ["tunnel.vni"]


@given(
    st.dictionaries(
        st.sampled_from(["tunnel.vni", "tunnel.ttl", "tunnel.port", "tap.mtu", "fdb.max_entries", "batch"]),
        st.integers(min_value=-5, max_value=1 << 25),
    )
)
def test_from_keys_errors_name_only_the_keys_given(values: dict[str, int]) -> None:
    """Any refusal of numeric keys names a key that was given, and renders without braces."""
    try:
        c = from_keys({"tunnel.mode": "vxlan", "remotes": [R1], **values})
    except ConfigError as e:
        assert e.keys and set(e.keys) <= set(values), (e.template, values)
        assert not re.search(r"\{[^}]*\}", str(e))
    else:
        assert c.tunnel.vni == values.get("tunnel.vni")
        assert c.batch == values.get("batch", 64)


# -- issue 11, v6: IPv6 underlays --------------------------------------------------------------


def test_tunnel_local_one_per_family() -> None:
    t = TunnelConfig("vxlan", local=["2001:DB8::1", "192.0.2.1"])
    assert t.local == ("192.0.2.1", "2001:db8::1") and t.locals == t.local  # IPv4 first, canonical
    assert t.local_for(4) == "192.0.2.1" and t.local_for(6) == "2001:db8::1"
    assert TunnelConfig("gre", local=["2001:db8::1"]).local == "2001:db8::1"  # a list of one: the address
    assert TunnelConfig("gre").locals == () and TunnelConfig("gre").local_for(6) is None
    assert "at most one IPv4 and one IPv6" in str(error(TunnelConfig, "gre", local=["2001:db8::1", "2001:db8::2"]))
    assert error(TunnelConfig, "gre", local=[]).keys == ["tunnel.local"]
    assert error(TunnelConfig, "gre", local=[5]).keys == ["tunnel.local"]


def test_mixed_families() -> None:
    c = cfg("vxlan", remotes=("2001:db8::2", R1))
    assert c.families == {4, 6} and c.overhead == 70 and c.bind == "0.0.0.0" and c.bind_for(6) == "::"
    assert cfg("gre", remotes=(R1,)).overhead == 38 and cfg("gre", remotes=("2001:db8::2",)).overhead == 58
    keyed = cfg("gre", remotes=("2001:db8::2",), tunnel=TunnelConfig("gre", key=1))
    assert keyed.overhead == 62 and keyed.encap.outer_len(family=6) == 48
    local = TunnelConfig("vxlan", local=["2001:db8::1", "192.0.2.1"])
    assert cfg("vxlan", remotes=("2001:db8::2",), tunnel=local).bind_for(6) == "2001:db8::1"
    e = error(cfg, "vxlan", remotes=(R1,), tunnel=TunnelConfig("vxlan", local="2001:db8::1"))
    assert "has no IPv4 address" in str(e) and e.keys == ["remotes", "tunnel.local"]
    assert "needs an IPv6 local address" in str(error(Remote, "2001:db8::2", "192.0.2.1"))
    r = Remote("2001:db8::2", "2001:db8::1")
    assert r.family == 6 and len(r.addr_bytes) == 16 and len(r.local_bytes) == 16


def test_tunnel_local_list_from_a_file() -> None:
    c = from_keys(
        {"tunnel.mode": "vxlan", "remotes": ["2001:db8::2", "10.0.0.2"], "tunnel.local": ["10.0.0.1", "2001:db8::1"],
         "tunnel.udp6_zero_csum_rx": True}
    )  # fmt: skip
    assert c.tunnel.local_for(6) == "2001:db8::1" and c.encap.udp6_zero_csum_rx and not c.encap.udp6_zero_csum_tx


def test_clamp_mss_values() -> None:
    """tunnel.clamp_mss: off (default), auto, or a fixed MSS 536..65495 (its text too, as a command line gives
    it); the datapath's number is mss.CLAMP_OFF / CLAMP_AUTO / the MSS."""
    assert TunnelConfig("vxlan").clamp_mss == "off" and TunnelConfig("vxlan").clamp_mss_setting == 0
    assert TunnelConfig("vxlan", clamp_mss="auto").clamp_mss_setting == 1
    for text, value in [(536, 536), ("1200", 1200), (65495, 65495)]:
        t = TunnelConfig("gre", clamp_mss=text)
        assert t.clamp_mss == value and t.clamp_mss_setting == value
    for bad in (535, 65496, 0, 1, True, "on", "1200.0", 1200.0, None):
        with pytest.raises(ConfigError) as info:
            TunnelConfig("vxlan", clamp_mss=bad)  # type: ignore[arg-type]
        assert info.value.keys == ["tunnel.clamp_mss"]
    cfg = from_keys({"tunnel.mode": "vxlan", "remotes": ["192.0.2.2"], "tunnel.clamp_mss": "auto"})
    assert cfg.tunnel.clamp_mss == "auto"
