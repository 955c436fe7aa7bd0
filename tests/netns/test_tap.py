"""datapath/io/tap.py with real TAP devices, each in a namespace of the test's own."""

from __future__ import annotations

import os
from typing import Any

import pytest

from datapath.errors import SetupError
from datapath.io import tap
from datapath.io.tap import Tap, offload_names, tun_features
from tests.isolated import run_isolated
from tests.netns.netutil import exists, is_up, mac_of, mtu_of, veth

pytestmark = pytest.mark.netns

MAC = b"\x02\x11\x22\x33\x44\x55"


def test_offload_names() -> None:
    assert offload_names(0) == "none"
    assert offload_names(tap.TUN_F_CSUM) == "csum"
    assert offload_names(tap.OFFLOAD_SETS[0]) == "csum tso4 tso6 tso_ecn"
    assert offload_names(tap.TUN_F_CSUM | tap.TUN_F_TSO6) == "csum tso6"


def test_tun_features_lists_the_virtio_header() -> None:
    assert tun_features() & tap.IFF_VNET_HDR


@pytest.mark.parametrize("offloads", [False, True])
def test_tap_is_named_addressed_sized_up_and_non_blocking(offloads: bool) -> None:
    def body() -> None:
        t = Tap("ovlt0", MAC, 1400, offloads=offloads)
        try:
            assert t.name == "ovlt0" and t.mac == MAC and t.mtu == 1400
            assert exists("ovlt0") and mac_of("ovlt0") == MAC and mtu_of("ovlt0") == 1400 and is_up("ovlt0")
            assert not os.get_blocking(t.fileno())
            with pytest.raises(BlockingIOError):
                os.read(t.fileno(), 65536)
        finally:
            t.close()

    run_isolated(body)


def test_offloads_give_a_virtio_header_and_offload_flags() -> None:
    def body() -> None:
        t = Tap("ovlt1", MAC, 1500, offloads=True)
        try:
            assert t.vnet_hdr_len == tap.VNET_HDR_LEN == 10
            assert t.offloads in tap.OFFLOAD_SETS and t.offloads & tap.TUN_F_CSUM
            assert t.describe() == f"virtio header 10 bytes, offloads: {offload_names(t.offloads)}, qdisc default"
            assert "csum" in t.describe() and "tso4" in t.describe()
        finally:
            t.close()

    run_isolated(body)


def test_without_offloads_a_plain_tap() -> None:
    def body() -> None:
        t = Tap("ovlt2", MAC, 1500, offloads=False)
        try:
            assert (t.vnet_hdr_len, t.offloads) == (0, 0)
            assert t.describe() == "plain TAP (no virtio header, no offloads), qdisc default"
        finally:
            t.close()

    run_isolated(body)


def _root_qdisc(dev: str) -> str:
    import subprocess

    return subprocess.run(["tc", "qdisc", "show", "dev", dev, "root"], capture_output=True, text=True).stdout.split()[1]


def test_tap_qdisc_noqueue_or_the_kernels_default() -> None:
    """qdisc="noqueue" replaces the default root qdisc (frames then go straight to the TAP's ring, and still
    arrive); "keep" leaves the kernel's; the engine's default (tap.qdisc) is noqueue."""
    from datapath.config import TapConfig

    assert TapConfig().qdisc == "noqueue"

    def body() -> None:
        kept = Tap("ovlq0", MAC, 1500, offloads=True)
        quick = Tap("ovlq1", MAC, 1500, offloads=True, qdisc="noqueue")
        try:
            default = _root_qdisc("ovlq0")
            assert default != "noqueue" and kept.qdisc == "default"
            assert _root_qdisc("ovlq1") == "noqueue" and quick.qdisc == "noqueue"
            assert quick.describe().endswith(", qdisc noqueue")
            # A frame sent into the TAP (as a bridge or OVS's packet socket does) reaches our fd.
            import socket

            frame = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5" + b"x" * 50
            with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
                s.bind(("ovlq1", 0))
                s.send(frame)
            got = os.read(quick.fileno(), 65536)
            assert got[quick.vnet_hdr_len :] == frame
        finally:
            kept.close()
            quick.close()

    run_isolated(body)


def test_tap_qdisc_refused_keeps_the_default_and_says_why() -> None:
    """The fallback: a qdisc request the kernel refuses is an answer, never an exception."""
    from datapath.io.qdisc import set_root_qdisc

    def body() -> None:
        t = Tap("ovlq2", MAC, 1500)
        try:
            before = _root_qdisc("ovlq2")
            ifindex = socket_index("ovlq2")
            assert "ENOENT" in set_root_qdisc(ifindex, "no-such-qdisc")
            assert _root_qdisc("ovlq2") == before
            assert "ENODEV" in set_root_qdisc(2**31 - 1, "noqueue")
            assert set_root_qdisc(ifindex, "noqueue") == "" and _root_qdisc("ovlq2") == "noqueue"
        finally:
            t.close()

    run_isolated(body)


def socket_index(dev: str) -> int:
    import socket

    return socket.if_nametoindex(dev)


def test_close_removes_the_device() -> None:
    def body() -> None:
        t = Tap("ovlt3", MAC, 1500, offloads=True)
        assert exists("ovlt3")
        t.close()
        assert not exists("ovlt3")

    run_isolated(body)


def test_name_in_use_by_a_device_that_is_not_a_tap() -> None:
    def body() -> None:
        veth("10.1.0.1/24", name="taken0", peer="taken1")
        with pytest.raises(SetupError) as info:
            Tap("taken0", MAC, 1500)
        assert str(info.value) == "cannot create TAP taken0: an interface of that name exists and is not a TAP"
        assert exists("taken0")

    run_isolated(body)


@pytest.mark.parametrize("offloads", [False, True])
def test_busy_tap(offloads: bool) -> None:
    def body() -> None:
        first = Tap("busy0", MAC, 1500, offloads=offloads)
        try:
            with pytest.raises(SetupError) as info:
                Tap("busy0", MAC, 1500, offloads=offloads)
            assert str(info.value) == (
                "cannot create TAP busy0: it is in use by another process (is another ovl-dp running?)"
            )
            assert exists("busy0") and first.fileno() >= 0
        finally:
            first.close()
        assert not exists("busy0")

    run_isolated(body)


def test_refused_configuration_leaves_no_device() -> None:
    def body() -> None:
        with pytest.raises(SetupError) as info:
            Tap("ovlt4", MAC, 70000)
        assert str(info.value).startswith("cannot configure TAP ovlt4 (MAC, MTU 70000, up): ")
        assert not exists("ovlt4")

    run_isolated(body)


def test_missing_tun_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tap, "TUN_DEVICE", "/nonexistent/tun")
    with pytest.raises(SetupError, match="does not exist: load the tun module"):
        Tap("never0", MAC, 1500)
    assert tun_features() == 0


@pytest.mark.parametrize("offloads", [False, True])
def test_adopt_checks_what_another_process_claims(offloads: bool) -> None:
    """Tap.adopt (the takeover's receiving end) on a dup of a TAP's fd: the same device, or a clear error."""

    def body() -> None:
        t = Tap("ovlt5", MAC, 1400, offloads=offloads)
        try:
            good: dict[str, Any] = dict(
                name="ovlt5", mac=MAC, mtu=1400, vnet_hdr_len=t.vnet_hdr_len, offloads=t.offloads
            )
            cases: list[tuple[dict[str, Any], str]] = [
                ({"name": "ovlt6"}, "not 'ovlt6'"),
                ({"vnet_hdr_len": 12}, "virtio header"),
                ({"mac": b"\x02\x00\x00\x00\x00\x01"}, "its MAC is 02:11:22:33:44:55"),
                ({"mtu": 1500}, "its MTU is 1400"),
            ]
            for bad, needle in cases:
                fd = os.dup(t.fileno())
                with pytest.raises(SetupError, match=needle):
                    Tap.adopt(fd, **{**good, **bad})
                os.close(fd)  # adopt leaves a refused fd to the caller
            with open("/dev/null", "rb") as f, pytest.raises(SetupError, match="not a TUN/TAP device"):
                Tap.adopt(f.fileno(), **good)
            other = Tap.adopt(os.dup(t.fileno()), **good)
            assert other.fileno() != t.fileno() and not os.get_blocking(other.fileno())
            assert other.vnet_hdr_len == t.vnet_hdr_len and other.offloads == t.offloads
            other.set_mtu(1300)  # by name, without pytun's device object
            assert other.mtu == 1300 and mtu_of("ovlt5") == 1300
            t.close()  # the first holder goes: the TAP stays while the adopted fd is open
            assert exists("ovlt5") and is_up("ovlt5")
            other.close()
            assert not exists("ovlt5")
        finally:
            t.close()

    run_isolated(body)
