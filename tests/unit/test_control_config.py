"""control/config.py without the host: the TAP MAC and the offload flags (resolve is in tests/netns)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control import config
from control.config import offload_flags, tap_mac


@pytest.fixture
def machine_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A machine id file of the test's own."""
    path = tmp_path / "machine-id"
    path.write_text("0123456789abcdef0123456789abcdef\n")
    monkeypatch.setattr(config, "MACHINE_ID", path)
    return path


def expected(host: str, local: str, mode: str, tunnel_id: int, tap: str) -> bytes:
    d = hashlib.sha256(f"{host}|{local}|{mode}|{tunnel_id}|{tap}".encode()).digest()
    return bytes([(d[0] & 0xFE) | 0x02]) + d[1:6]


def test_tap_mac_is_derived_from_machine_id_and_tunnel(machine_id: Path) -> None:
    mac = tap_mac("192.0.2.1", "vxlan", 42, "ovl-vxlan")
    assert mac == expected("0123456789abcdef0123456789abcdef", "192.0.2.1", "vxlan", 42, "ovl-vxlan")
    assert mac == tap_mac("192.0.2.1", "vxlan", 42, "ovl-vxlan")


def test_tap_mac_changes_with_each_input(machine_id: Path) -> None:
    base = ("192.0.2.1", "vxlan", 42, "ovl-vxlan")
    variants = [
        ("192.0.2.9", "vxlan", 42, "ovl-vxlan"),
        ("192.0.2.1", "gre", 42, "ovl-vxlan"),
        ("192.0.2.1", "vxlan", 43, "ovl-vxlan"),
        ("192.0.2.1", "vxlan", 42, "ovl-other"),
    ]
    macs = {tap_mac(*base), *(tap_mac(*v) for v in variants)}
    assert len(macs) == 5
    before = tap_mac(*base)
    machine_id.write_text("another host\n")
    assert tap_mac(*base) != before


def test_tap_mac_falls_back_to_the_host_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "MACHINE_ID", tmp_path / "absent")
    monkeypatch.setattr(config.socket, "gethostname", lambda: "host-a")
    assert tap_mac("192.0.2.1", "gre", 0, "ovl-gre") == expected("host-a", "192.0.2.1", "gre", 0, "ovl-gre")


@given(
    st.ip_addresses(v=4).map(str),
    st.sampled_from(["vxlan", "gre"]),
    st.integers(0, (1 << 32) - 1),
    st.text(min_size=1, max_size=15),
)
def test_tap_mac_is_always_local_unicast_and_nonzero(local: str, mode: str, tid: int, tap: str) -> None:
    mac = tap_mac(local, mode, tid, tap)
    assert len(mac) == 6
    assert mac[0] & 0x02 and not mac[0] & 0x01 and any(mac)


@pytest.mark.parametrize(
    ("policy", "kind", "flags"),
    [
        ("auto", "linux", (True, True)),
        ("auto", "ovs", (True, False)),
        ("auto", "none", (True, False)),
        ("on", "linux", (True, True)),
        ("on", "ovs", (True, True)),
        ("on", "none", (True, True)),
        ("off", "linux", (False, False)),
        ("off", "ovs", (False, False)),
        ("off", "none", (False, False)),
    ],
)
def test_offload_flags(policy: str, kind: str, flags: tuple[bool, bool]) -> None:
    assert offload_flags(policy, kind) == flags


def test_offload_flags_coalesce_towards_ovs_with_userspace_tso() -> None:
    """OVS with userspace TSO carries super-frames: auto coalesces towards it; off stays off; on stays on."""
    assert offload_flags("auto", "ovs", ovs_tso=True) == (True, True)
    assert offload_flags("auto", "ovs", ovs_tso=False) == (True, False)
    assert offload_flags("off", "ovs", ovs_tso=True) == (False, False)
    assert offload_flags("auto", "none", ovs_tso=True) == (True, False)  # only a bridge of OVS itself


# -- configuration files --------------------------------------------------------------------------

EXAMPLE = """
remotes = ["192.0.2.2", "192.0.2.3"]

[tunnel]
mode = "vxlan"
vni = 5001
vlan_map = { 20 = 5020 }

[tap]
name = "ovl-test"
mtu = "auto"

[fdb]
ageing = 120
max_entries = 1000
static = ["02:00:00:00:00:0a=192.0.2.2", "02:00:00:00:00:0b@20=192.0.2.3"]

[offload]
policy = "off"
"""


def test_a_file_gives_every_key(tmp_path: Path) -> None:
    from control.config import ConfigSource, load_file
    from datapath.config import StaticEntry

    f = tmp_path / "a.toml"
    f.write_text(EXAMPLE)
    keys = load_file(f)
    assert keys["tunnel.vni"] == 5001 and keys["remotes"] == ["192.0.2.2", "192.0.2.3"]
    cfg = ConfigSource({}, f).load()
    assert cfg.tunnel.vlan_map == ((20, 5020),) and cfg.tap.name == "ovl-test" and cfg.tap.mtu is None
    assert cfg.fdb.static == (
        StaticEntry(bytes.fromhex("02000000000a"), "192.0.2.2"),
        StaticEntry(bytes.fromhex("02000000000b"), "192.0.2.3", 20),
    )
    assert (cfg.fdb.ageing, cfg.fdb.max_entries, cfg.offload.policy) == (120, 1000, "off")


def test_the_command_line_overrides_the_file(tmp_path: Path) -> None:
    from control.config import ConfigSource

    f = tmp_path / "a.toml"
    f.write_text(EXAMPLE)
    cfg = ConfigSource({"tunnel.vni": 7, "remotes": ["192.0.2.3", "192.0.2.2", "192.0.2.9"]}, f).load()
    assert cfg.tunnel.vni == 7 and [r.addr for r in cfg.remotes] == ["192.0.2.3", "192.0.2.2", "192.0.2.9"]
    assert cfg.fdb.ageing == 120  # from the file


def test_file_errors_name_the_key_and_the_file(tmp_path: Path) -> None:
    from control.cli import build_parser, option_names
    from control.config import ConfigSource
    from datapath.config import ConfigError

    f = tmp_path / "bad.toml"
    f.write_text(EXAMPLE.replace("vni = 5001", "vni = 99999999"))
    source = ConfigSource({"tap.name": "x"}, f)
    with pytest.raises(ConfigError) as info:
        source.load()
    names = source.names(option_names(build_parser()))
    assert info.value.render(names) == f"tunnel.vni (in {f}): VNI 99999999 is out of range 0..16777215"
    assert names["tap.name"] == "--tap"  # given on the command line


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[tunnel\nmode = 1", "is not valid TOML"),
        ("[tunel]\nmode = 'gre'", "tunel is not a configuration key"),
        ("mode = 'gre'", "mode is not a configuration key"),
    ],
)
def test_bad_files(tmp_path: Path, text: str, needle: str) -> None:
    from control.config import load_file
    from datapath.config import ConfigError
    from datapath.errors import SetupError

    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises((ConfigError, SetupError)) as info:
        load_file(f)
    assert needle in str(info.value)
    with pytest.raises(SetupError, match="cannot read configuration file"):
        load_file(tmp_path / "missing.toml")


def test_the_shipped_example_file_loads() -> None:
    from control.config import ConfigSource

    example = Path(__file__).resolve().parents[2] / "control" / "examples" / "br-int.toml"
    cfg = ConfigSource({}, example).load()
    assert cfg.tunnel.mode == "vxlan" and cfg.tunnel.vni == 5001 and len(cfg.remotes) == 2
