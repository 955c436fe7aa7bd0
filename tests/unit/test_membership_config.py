"""Membership settings (issue 12): MembershipConfig, the `membership` file group and `ovl-dp run`'s options."""

from __future__ import annotations

from pathlib import Path

import pytest

from control import cli
from control.config import ConfigSource
from control.report import format_members, format_membership_line
from datapath.config import Config, ConfigError, MembershipConfig, Remote, TunnelConfig, etcd_host_port, from_keys

URL = "http://192.0.2.10:23790"


def error_of(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert cli.main(list(argv)) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ovl-dp: error:"), err
    return err


def config_error(**kw: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        MembershipConfig(**kw)  # type: ignore[arg-type]
    return info.value


@pytest.mark.parametrize(
    ("given", "want"),
    [
        ("http://192.0.2.10:23790", ("http://192.0.2.10:23790",)),
        ("http://192.0.2.10", ("http://192.0.2.10:2379",)),  # etcd's client port by default
        ("HTTP://Etcd-1.Example:2379/", ("http://etcd-1.example:2379",)),
        ("http://[2001:DB8::0:1]:2379", ("http://[2001:db8::1]:2379",)),
        ("http://a:1, http://b:2", ("http://a:1", "http://b:2")),  # one comma-separated string
        (["http://a:1,http://b:2", "http://c:3"], ("http://a:1", "http://b:2", "http://c:3")),
    ],
)
def test_etcd_endpoints_in_their_canonical_form(given: object, want: tuple[str, ...]) -> None:
    m = MembershipConfig(etcd=given, net="n1")  # type: ignore[arg-type]
    assert m.etcd == want and m.enabled
    assert etcd_host_port(want[-1])[1] == int(want[-1].rsplit(":", 1)[1])


def test_ipv6_endpoint_host_port() -> None:
    assert etcd_host_port("http://[2001:db8::1]:2379") == ("2001:db8::1", 2379)


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("https://192.0.2.10:2379", "https is not supported"),
        ("ftp://192.0.2.10", "expected http://HOST:PORT"),
        ("192.0.2.10:2379", "expected http://HOST:PORT"),
        ("http://192.0.2.10:0", "port '0' is not 1..65535"),
        ("http://192.0.2.10:99999", "is not 1..65535"),
        ("http://192.0.2.10:port", "is not 1..65535"),
        ("http://192.0.2.10:", "the port is missing"),
        ("http://user@192.0.2.10", "no user, path or query"),
        ("http://192.0.2.10/v3", "no user, path or query"),
        ("http://2001:db8::1:2379", "in brackets"),
        ("http://[2001:db8::zz]:2379", "is not an IPv6 address"),
        ("http://", "expected http://HOST:PORT"),
        ("http://bad_host:1", "not a host name or address"),
        ("", "must be an etcd URL"),
    ],
)
def test_bad_etcd_urls(url: str, needle: str) -> None:
    e = config_error(etcd=url, net="n1")
    assert e.keys[0] == "membership.etcd" and needle in str(e), str(e)


def test_https_points_to_the_readme_tls_section() -> None:
    text = str(config_error(etcd="https://etcd:2379", net="n1"))
    assert "README" in text and "grpc-proxy" in text and "127.0.0.1" in text


def test_endpoint_given_twice() -> None:
    assert "given twice" in str(config_error(etcd="http://a:2379,http://a", net="n1"))


@pytest.mark.parametrize("net", ["", "Net", "-x", ".x", "a" * 64, "a/b", "a b", "ä"])
def test_bad_net_names(net: str) -> None:
    e = config_error(etcd=URL, net=net)
    assert e.keys == ["membership.net"] and "a net name is 1-63 characters" in str(e)


@pytest.mark.parametrize("net", ["a", "0", "prod-1", "a.b_c-d", "z" * 63])
def test_good_net_names(net: str) -> None:
    assert MembershipConfig(etcd=URL, net=net).net == net


def test_etcd_and_net_need_each_other() -> None:
    assert config_error(etcd=URL).keys == ["membership.etcd", "membership.net"]
    assert config_error(net="n1").keys == ["membership.net", "membership.etcd"]


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"lease_ttl": 1.9}, "lease_ttl 1.9 is out of range 2..3600"),
        ({"lease_ttl": 3601}, "out of range 2..3600"),
        ({"lease_ttl": "15"}, "must be a number of seconds"),
        ({"lease_ttl": True}, "must be a number of seconds"),
        ({"keepalive": 0.4}, "keepalive 0.4 is out of range 0.5..7.5"),
        ({"keepalive": 7.6}, "at most half of membership.lease_ttl"),
        ({"lease_ttl": 3, "keepalive": 2}, "out of range 0.5..1.5"),
        ({"address": "192.0.2.300"}, "not an IP address"),
        ({"address": "fe80::1"}, "link-local"),
    ],
)
def test_lease_keepalive_and_address_ranges(kw: dict[str, object], needle: str) -> None:
    e = config_error(etcd=URL, net="n1", **kw)
    assert needle in str(e), str(e)


def test_defaults_and_the_shortest_lease() -> None:
    m = MembershipConfig()
    assert not m.enabled and (m.lease_ttl, m.keepalive, m.address) == (15.0, 5.0, None)
    m = MembershipConfig(etcd=URL, net="n1", lease_ttl=3, keepalive=1, address="2001:DB8::1")
    assert (m.lease_ttl, m.keepalive, m.address) == (3.0, 1.0, "2001:db8::1")


def test_zero_remotes_only_with_etcd() -> None:
    with pytest.raises(ConfigError, match="at least one remote is needed"):
        Config(TunnelConfig("vxlan"), ())
    cfg = Config(TunnelConfig("vxlan"), (), membership=MembershipConfig(etcd=URL, net="n1"))
    assert cfg.remotes == () and cfg.families == {4}


def test_the_advertised_address_picks_the_family() -> None:
    m = MembershipConfig(etcd=URL, net="n1", address="2001:db8::1")
    assert Config(TunnelConfig("vxlan"), (), membership=m).families == {6}
    assert Config(TunnelConfig("vxlan"), (Remote("192.0.2.2"),), membership=m).families == {4, 6}


def test_from_keys_membership_group() -> None:
    cfg = from_keys(
        {"tunnel.mode": "gre", "membership.etcd": "http://a:1,http://b:2", "membership.net": "n1",
         "membership.lease_ttl": 3, "membership.keepalive": 1}
    )  # fmt: skip
    assert cfg.remotes == () and cfg.membership.etcd == ("http://a:1", "http://b:2")
    assert (cfg.membership.lease_ttl, cfg.membership.keepalive) == (3.0, 1.0)
    with pytest.raises(ConfigError, match="is not a configuration key"):
        from_keys({"tunnel.mode": "gre", "membership.etcd": URL, "membership.net": "n1", "membership.ttl": 3})


def test_config_file_membership_table(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[tunnel]\nmode = "vxlan"\n\n[membership]\netcd = ["http://192.0.2.10:2379", "http://192.0.2.11"]\n'
        'net = "prod"\nlease_ttl = 30\nkeepalive = 10\naddress = "192.0.2.1"\n'
    )
    cfg = ConfigSource(file=path).load()
    assert cfg.membership == MembershipConfig(
        etcd=("http://192.0.2.10:2379", "http://192.0.2.11:2379"), net="prod", lease_ttl=30, keepalive=10,
        address="192.0.2.1",
    )  # fmt: skip
    path.write_text('[tunnel]\nmode = "vxlan"\n\n[membership]\netcd = "https://x"\nnet = "prod"\n')
    with pytest.raises(ConfigError) as info:
        ConfigSource(file=path).load()
    names = ConfigSource(file=path).names({})
    assert info.value.render(names).startswith(f"membership.etcd (in {path}) 'https://x': https is not supported")


def test_run_options_set_the_membership_keys() -> None:
    args = cli.build_parser().parse_args(
        ["run", "--mode", "vxlan", "--etcd", "http://a:1,http://b:2", "--etcd", "http://c", "--net", "n1",
         "--lease-ttl", "3", "--keepalive", "1", "--advertise", "192.0.2.1"]
    )  # fmt: skip
    cfg = cli.run_source(args).load()
    assert cfg.membership.etcd == ("http://a:1", "http://b:2", "http://c:2379")
    assert (cfg.membership.net, cfg.membership.lease_ttl, cfg.membership.keepalive) == ("n1", 3.0, 1.0)
    assert cfg.membership.address == "192.0.2.1" and cfg.remotes == ()
    names = cli.option_names(cli.build_parser())
    assert {k: names[k] for k in names if k.startswith("membership.")} == {
        "membership.etcd": "--etcd", "membership.net": "--net", "membership.lease_ttl": "--lease-ttl",
        "membership.keepalive": "--keepalive", "membership.address": "--advertise",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--etcd", URL], "--etcd needs --net"),
        (["--net", "n1"], "--net needs --etcd"),
        (["--etcd", "https://192.0.2.10:2379", "--net", "n1"], "--etcd 'https://192.0.2.10:2379': https is not"),
        (["--etcd", "192.0.2.10", "--net", "n1"], "expected http://HOST:PORT"),
        (["--etcd", URL, "--net", "N1"], "--net 'N1': a net name"),
        (["--etcd", URL, "--net", "n1", "--lease-ttl", "1"], "--lease-ttl 1 is out of range 2..3600"),
        (["--etcd", URL, "--net", "n1", "--lease-ttl", "soon"], "not a number of seconds"),
        (["--etcd", URL, "--net", "n1", "--keepalive", "8"], "--keepalive 8 is out of range 0.5..7.5 s"),
        (["--etcd", URL, "--net", "n1", "--advertise", "224.0.0.1"], "--advertise 224.0.0.1 is not a unicast"),
        ([], "--remote: at least one remote is needed (or --etcd)"),
    ],
)
def test_bad_membership_options(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> None:
    assert needle in error_of(capsys, "run", "--mode", "vxlan", *argv)


def test_members_command_parses() -> None:
    args = cli.build_parser().parse_args(["members", "--tap", "t0", "--json"])
    assert (args.command, args.tap, args.json) == ("members", "t0", True)
    assert "members" in cli.CONTROL_COMMANDS


REPORT = {
    "net": "n1",
    "endpoints": ["http://192.0.2.10:2379", "http://192.0.2.11:2379"],
    "endpoint": "http://192.0.2.10:2379",
    "state": "connected",
    "problem": "",
    "self": "192.0.2.1",
    "lease": {"id": 7, "ttl": 15, "last_keepalive": 998.0},
    "revision": 42,
    "counters": {},
    "members": [
        {"addr": "192.0.2.1", "self": True, "hostname": "h1", "remote": False, "static": False, "refused": "",
         "rx_packets": None, "last_rx_age": None, "since": 900.0},
        {"addr": "192.0.2.2", "self": False, "hostname": "h2", "remote": True, "static": True, "refused": "",
         "rx_packets": 12, "last_rx_age": 0.5, "since": 990.0},
        {"addr": "192.0.2.3", "self": False, "hostname": "h3", "remote": False, "static": False,
         "refused": "no route", "rx_packets": None, "last_rx_age": None, "since": 995.0},
    ],
}  # fmt: skip


def test_members_table() -> None:
    lines = format_members(REPORT, now=1000.0).splitlines()
    assert lines[0] == (
        "net n1 on http://192.0.2.10:2379 (http://192.0.2.10:2379, http://192.0.2.11:2379): connected; "
        "our lease 15 s, last keepalive 2.0s ago"
    )
    assert lines[1].split() == ["ADDR", "HOST", "SINCE", "RX", "PKTS", "LAST", "RX", "STATE"]
    assert lines[2].split() == ["192.0.2.1", "h1", "-", "-", "-", "self"]
    assert lines[3].split() == ["192.0.2.2", "h2", "10.0s", "ago", "12", "0.5s", "ago", "remote", "(also", "static)"]
    assert lines[4].split() == ["192.0.2.3", "h3", "5.0s", "ago", "-", "never", "refused:", "no", "route"]
    # The state comes last: a long refusal reason does not push the other columns out of line.
    assert lines[4].index("refused:") == lines[1].index("STATE") == lines[2].index("self")
    degraded = {**REPORT, "state": "degraded", "problem": "etcd unreachable", "members": []}
    text = format_members(degraded, now=1000.0)
    assert "degraded" in text and "problem: etcd unreachable" in text and "(no members)" in text


def test_show_line() -> None:
    line = format_membership_line(
        {"net": "n1", "endpoint": None, "endpoints": ["http://a:1"], "state": "connecting", "members": 0,
         "problem": "etcd http://a:1 unreachable"}
    )  # fmt: skip
    assert line == "net n1 on http://a:1: connecting, 0 other member(s); problem: etcd http://a:1 unreachable"


def test_ipv6_endpoints_without_ipv6_loopback() -> None:
    from control import joining

    def cfg(*etcd: str) -> Config:
        return Config(TunnelConfig("vxlan"), (), membership=MembershipConfig(etcd=etcd, net="n1"))

    assert joining.endpoint_problem(cfg("http://[fd00::1]:2379"), v6_loopback=True) == ("", False)
    assert joining.endpoint_problem(cfg("http://192.0.2.1:2379"), v6_loopback=False) == ("", False)
    text, fatal = joining.endpoint_problem(cfg("http://[fd00::1]:2379"), v6_loopback=False)
    assert fatal and "http://[fd00::1]:2379" in text and "net.ipv6.conf.lo.disable_ipv6=0" in text
    text, fatal = joining.endpoint_problem(cfg("http://[fd00::1]:2379", "http://192.0.2.1:2379"), v6_loopback=False)
    assert not fatal and "http://[fd00::1]:2379" in text and "192.0.2.1" not in text


def test_member_value_and_net_config(tmp_path: Path) -> None:
    from control import joining
    from control.membership.model import Member, NetConfig

    m = MembershipConfig(etcd=URL, net="n1", address="192.0.2.1")
    cfg = Config(TunnelConfig("vxlan", vni=42), (), membership=m)
    assert joining.net_config(cfg) == NetConfig("vxlan", vni=42, port=4789)
    assert joining.net_config(Config(TunnelConfig("gre", key=7), (), membership=m)) == NetConfig("gre", key=7)
    assert joining.net_config(Config(TunnelConfig("gre"), (), membership=m)) == NetConfig("gre", key=None)
    value = joining.member_value(cfg, bytes.fromhex("0200000000aa"), version="1.2.3")
    member = Member.from_dict(value)  # the keeper's parser takes it
    assert (member.addr, member.mac, member.version) == ("192.0.2.1", "02:00:00:00:00:aa", "1.2.3")
    assert value["netns"] == joining.netns_inode() > 0 and value["machine_id"]
    assert joining.describe(cfg) == (
        "net n1 on etcd http://192.0.2.10:23790, member 192.0.2.1, lease TTL 15 s keepalive 5 s"
    )
    (tmp_path / "dbus").write_text("abc123\n")
    assert joining.machine_id((tmp_path / "none", tmp_path / "dbus")) == "abc123"
    with pytest.raises(joining.SetupError, match=r"needs a machine id.*systemd-machine-id-setup"):
        joining.machine_id((tmp_path / "none", tmp_path / "also-none"))
