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
