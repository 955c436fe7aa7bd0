"""control/membership/model.py: key layout, JSON values, parse errors, net config comparison (pure)."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control.membership.keeper import Backoff
from control.membership.model import (
    PREFIX,
    Member,
    ModelError,
    NetConfig,
    NetKeys,
    canonical_addr,
    check_net,
    parse_static,
    static_json,
)
from datapath.ether import format_mac

ME = {
    "addr": "192.0.2.1",
    "mac": "02:00:00:00:00:01",
    "hostname": "h1",
    "machine_id": "0123abcd",
    "netns": 4026531840,
    "version": "0.1.0",
    "pid": 123,
    "joined": 1700000000.5,
}


def test_key_layout() -> None:
    k = NetKeys("prod-1")
    assert k.prefix == "/ovl-dp/v1/nets/prod-1/"
    assert k.prefix.startswith(PREFIX)
    assert k.config == "/ovl-dp/v1/nets/prod-1/config"
    assert k.member("2001:DB8:0::1") == "/ovl-dp/v1/nets/prod-1/members/2001:db8::1"
    assert k.static(20, bytes.fromhex("02aabbccddee")) == "/ovl-dp/v1/nets/prod-1/static/20/02:aa:bb:cc:dd:ee"


def test_classify() -> None:
    k = NetKeys("n")
    assert k.classify(k.config).kind == "config"
    m = k.classify(k.prefix + "members/10.1.2.3")
    assert (m.kind, m.addr) == ("member", "10.1.2.3")
    s = k.classify(k.prefix + "static/0/02:00:00:00:00:09")
    assert (s.kind, s.vlan, s.mac) == ("static", 0, bytes.fromhex("020000000009"))
    assert k.classify(k.prefix + "somethingnew/x").kind == "other"


@pytest.mark.parametrize(
    ("suffix", "message"),
    [
        ("members/2001:DB8::1", "must be written 2001:db8::1"),
        ("members/not-an-ip", "is not an IP address"),
        ("members/224.0.0.1", "not a unicast address"),
        ("members/fe80::1", "link-local"),
        ("members/::ffff:10.0.0.1", "IPv4-mapped"),
        ("static/20", "expected static/<vlan>/<mac>"),
        ("static/020/02:00:00:00:00:01", "not a decimal number"),
        ("static/x/02:00:00:00:00:01", "not a decimal number"),
        ("static/4095/02:00:00:00:00:01", "not in 0..4094"),
        ("static/1/02:00:00:00:00:0A", "must be written 02:00:00:00:00:0a"),
        ("static/1/01:00:5e:00:00:01", "not a unicast address"),
        ("static/1/00:00:00:00:00:00", "not a unicast address"),
        ("static/1/zz:00:00:00:00:00", "not hexadecimal"),
    ],
)
def test_classify_errors(suffix: str, message: str) -> None:
    k = NetKeys("n")
    with pytest.raises(ModelError, match=message):
        k.classify(k.prefix + suffix)


def test_key_outside_prefix() -> None:
    with pytest.raises(ModelError, match="is not under /ovl-dp/v1/nets/n/"):
        NetKeys("n").classify("/ovl-dp/v1/nets/other/config")


@pytest.mark.parametrize("name", ["", "Prod", "-a", "a/b", "a" * 64, "a b", 7])
def test_bad_net_names(name: object) -> None:
    with pytest.raises(ModelError, match="bad net name"):
        check_net(name)


@pytest.mark.parametrize("name", ["a", "prod", "p.1_x-2", "0" + "a" * 62])
def test_good_net_names(name: str) -> None:
    assert check_net(name) == name
    assert NetKeys(name).net == name


def test_member_parse_and_json() -> None:
    m = Member.parse(json.dumps({**ME, "future": {"x": 1}}).encode())  # extra keys are ignored
    assert m == Member.from_dict(ME)
    assert json.loads(m.to_json()) == ME
    minimal = {k: ME[k] for k in ("addr", "mac", "hostname", "machine_id", "netns")}
    assert Member.from_dict(minimal) == Member("192.0.2.1", "02:00:00:00:00:01", "h1", "0123abcd", 4026531840)


def test_member_canonicalises() -> None:
    m = Member.from_dict({**ME, "addr": "2001:0DB8::0001", "mac": "02-AA-00-00-00-01"})
    assert (m.addr, m.mac) == ("2001:db8::1", "02:aa:00:00:00:01")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xff", "member: not UTF-8"),
        (b"{", "member: not JSON"),
        (b"[1]", "expected a JSON object, got list"),
        (json.dumps({**ME, "addr": "x"}).encode(), "'addr': 'x' is not an IP address"),
        (json.dumps({k: v for k, v in ME.items() if k != "addr"}).encode(), "'addr': None is not an IP address"),
        (json.dumps({**ME, "mac": "ff:ff:ff:ff:ff:ff"}).encode(), "'mac': MAC address .* not a unicast"),
        (json.dumps({**ME, "hostname": 5}).encode(), "'hostname' must be a string"),
        (json.dumps({**ME, "machine_id": ""}).encode(), "'machine_id' is empty"),
        (json.dumps({**ME, "netns": "1"}).encode(), "'netns' must be an integer"),
        (json.dumps({**ME, "netns": True}).encode(), "'netns' must be an integer"),
        (json.dumps({**ME, "pid": -1}).encode(), "'pid' -1 is not in"),
        (json.dumps({**ME, "joined": "now"}).encode(), "'joined' must be a number"),
    ],
)
def test_member_parse_errors(raw: bytes, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        Member.parse(raw)


def test_owner() -> None:
    a = Member.from_dict(ME)
    assert a.same_owner(Member.from_dict({**ME, "pid": 9, "hostname": "renamed"}))
    assert not a.same_owner(Member.from_dict({**ME, "netns": 1}))  # lab hosts on one machine
    assert not a.same_owner(Member.from_dict({**ME, "machine_id": "other"}))
    assert "h1 (machine id 0123abcd, netns 4026531840, pid 123)" in a.describe_owner()


def test_net_config_parse() -> None:
    assert NetConfig.parse(b'{"mode":"vxlan","vni":42,"port":4790,"vlan_map":{}}') == NetConfig("vxlan", 42, None, 4790)
    assert NetConfig.parse(b'{"mode":"vxlan","vni":42}') == NetConfig("vxlan", 42, None, 4789)  # the IANA port
    assert NetConfig.parse(b'{"mode":"gre","key":7}') == NetConfig("gre", None, 7, None)
    assert NetConfig.parse(b'{"mode":"gre","key":null}') == NetConfig("gre")
    assert NetConfig.parse(b'{"mode":"gre"}') == NetConfig("gre")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"mode":"geneve"}', "'mode' must be one of vxlan, gre, got 'geneve'"),
        (b'{"vni":1}', "'mode' must be one of"),
        (b'{"mode":"vxlan"}', "'vni' must be an integer, got None"),
        (b'{"mode":"vxlan","vni":16777216}', "'vni' 16777216 is not in 0..16777215"),
        (b'{"mode":"vxlan","vni":1,"port":0}', "'port' 0 is not in 1..65535"),
        (b'{"mode":"gre","key":"7"}', "'key' must be an integer"),
        (b'{"mode":"gre","key":4294967296}', "'key' 4294967296 is not in"),
        (b"nope", "net config: not JSON"),
    ],
)
def test_net_config_errors(raw: bytes, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        NetConfig.parse(raw)


def test_net_config_compare() -> None:
    ours = NetConfig("vxlan", vni=42, port=4789)
    assert ours.differences(NetConfig("vxlan", vni=42, port=4789)) == []
    assert ours.differences(NetConfig("vxlan", vni=43, port=4790)) == [
        "vni: etcd has 43, we have 42",
        "port: etcd has 4790, we have 4789",
    ]
    assert ours.differences(NetConfig("gre", key=1)) == ["mode: etcd has gre, we have vxlan"]
    gre = NetConfig("gre", key=7)
    assert gre.differences(NetConfig("gre")) == ["key: etcd has none, we have 7"]
    assert gre.differences(NetConfig("gre", key=7)) == []
    assert gre.describe() == "gre key 7"
    assert NetConfig("gre").describe() == "gre without key"
    assert ours.describe() == "vxlan vni 42 port 4789"


def test_static_values() -> None:
    assert parse_static(b'{"remote":"2001:DB8::5"}') == "2001:db8::5"
    assert parse_static(static_json("10.0.0.1")) == "10.0.0.1"
    with pytest.raises(ModelError, match="static entry: 'remote': None is not an IP address"):
        parse_static(b"{}")
    with pytest.raises(ModelError, match="static entry: not JSON"):
        parse_static(b"10.0.0.1")


@pytest.mark.parametrize("text", ["10.0.0.1%eth0", "fe80::1%eth0", "", " 10.0.0.1", "10.0.0", "255.255.255.255"])
def test_canonical_addr_refuses(text: str) -> None:
    with pytest.raises(ModelError):
        canonical_addr(text)


def test_backoff() -> None:
    b = Backoff(rand=lambda: 0.5)  # the middle of the jitter: the bare doubling
    assert [b.next() for _ in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    b.reset()
    assert b.next() == 0.5
    lo, hi = Backoff(rand=lambda: 0.0), Backoff(rand=lambda: 0.999999)
    assert lo.next() == pytest.approx(0.4) and hi.next() == pytest.approx(0.6, abs=1e-5)
    assert all(hi.next() <= 10.0 for _ in range(10))


# -- round trips ---------------------------------------------------------------------------------

_v4 = st.integers(0x01000000, 0xDFFFFFFF).map(lambda i: str(ipaddress.IPv4Address(i)))
_v6 = st.integers(0x2000 << 112, (0x3FFF << 112) | ((1 << 112) - 1)).map(lambda i: str(ipaddress.IPv6Address(i)))
_addrs = st.one_of(_v4, _v6).filter(lambda a: canonical_ok(a))
_macs = st.binary(min_size=6, max_size=6).map(lambda b: bytes([b[0] & 0xFE | 0x02]) + b[1:])
_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


def canonical_ok(a: str) -> bool:
    try:
        canonical_addr(a)
    except ModelError:
        return False
    return True


@given(
    addr=_addrs,
    mac=_macs,
    hostname=_text,
    machine_id=_text.filter(bool),
    netns=st.integers(0, (1 << 64) - 1),
    version=_text,
    pid=st.integers(0, (1 << 31) - 1),
    joined=st.floats(0, 4e9, allow_nan=False),
)
def test_member_round_trip(
    addr: str, mac: bytes, hostname: str, machine_id: str, netns: int, version: str, pid: int, joined: float
) -> None:
    m = Member(addr, format_mac(mac), hostname, machine_id, netns, version, pid, joined)
    assert Member.parse(m.to_json()) == m
    k = NetKeys("n")
    kind = k.classify(k.member(addr))
    assert (kind.kind, kind.addr) == ("member", addr)


@given(vlan=st.integers(0, 4094), mac=_macs, remote=_addrs)
def test_static_round_trip(vlan: int, mac: bytes, remote: str) -> None:
    k = NetKeys("n")
    kind = k.classify(k.static(vlan, mac))
    assert (kind.kind, kind.vlan, kind.mac) == ("static", vlan, mac)
    assert parse_static(static_json(remote)) == remote


@given(
    mode=st.sampled_from(["vxlan", "gre"]),
    vni=st.integers(0, (1 << 24) - 1),
    key=st.one_of(st.none(), st.integers(0, (1 << 32) - 1)),
    port=st.integers(1, 65535),
)
def test_net_config_round_trip(mode: str, vni: int, key: int | None, port: int) -> None:
    c = NetConfig("vxlan", vni=vni, port=port) if mode == "vxlan" else NetConfig("gre", key=key)
    assert NetConfig.parse(c.to_json()) == c
    assert c.differences(NetConfig.parse(c.to_json())) == []


@given(addr=_addrs)
def test_canonical_addr_is_idempotent(addr: str) -> None:
    text = canonical_addr(addr)
    assert canonical_addr(text) == text
    assert canonical_addr(addr.upper()) == text
