"""datapath/forwarder.py: which forwarder make_forwarder gives, and that both keep the Forwarder protocol.

Both implementations' packet logic is held together by the differential tests;
here: the choice (C if asked for and built, else Python), the refusals, the
arguments passed through (clock, static entries), and one batch of I/O on
loopback sockets per implementation.
"""

from __future__ import annotations

import logging
import select
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from datapath import fast, pypath
from datapath.config import Config, FdbConfig, Remote, StaticEntry, TapConfig, TunnelConfig
from datapath.counters import Snapshot
from datapath.encap.vxlan import Vxlan
from datapath.forwarder import Forwarder, fast_path_available, make_forwarder

LO = "127.0.0.1"
MAC_A = b"\x02\x00\x00\x00\x00\x0a"
MAC_B = b"\x02\x00\x00\x00\x00\x0b"

needs_c = pytest.mark.skipif(not fast.available(), reason="C fast path not built (python3 csrc/build.py)")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resolved(port: int = 4789, ageing: float = 300.0, statics: tuple[StaticEntry, ...] = ()) -> Config:
    return Config(
        tunnel=TunnelConfig("vxlan", vni=99, port=port, underlay_mtu=1500),
        remotes=(Remote(LO, LO),),
        tap=TapConfig(name="ovl0", mtu=1450, mac=b"\x02\x00\x00\x00\x00\x01"),
        fdb=FdbConfig(ageing=ageing, static=statics),
    )


@pytest.fixture(params=["fast", "python"])
def impl(request: pytest.FixtureRequest) -> str:
    if request.param == "fast" and not fast.available():
        pytest.skip("C fast path not built")
    return str(request.param)


def test_fast_path_available_is_the_c_module() -> None:
    assert fast_path_available() == fast.available()


@needs_c
def test_c_when_asked_and_built() -> None:
    assert isinstance(make_forwarder(resolved(), fast=True), fast.FastForwarder)


def test_python_when_asked() -> None:
    fwd = make_forwarder(resolved(), fast=False)
    assert isinstance(fwd, pypath.PyForwarder)


def test_python_with_a_warning_when_c_is_not_built(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(fast, "available", lambda: False)
    assert not fast_path_available()
    with caplog.at_level(logging.WARNING, logger="ovl-dp"):
        fwd = make_forwarder(resolved(), fast=True)
    assert isinstance(fwd, pypath.PyForwarder)
    assert any("C fast path is not built" in r.getMessage() for r in caplog.records)


def test_python_without_a_warning_when_not_asked(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ovl-dp"):
        make_forwarder(resolved(), fast=False)
    assert not caplog.records


@pytest.mark.parametrize("offload", ["tap_vnet", "udp_gro", "gso_socks"])
def test_python_refuses_offloads(offload: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gso:
        choices: dict[str, dict[str, Any]] = {
            "tap_vnet": {"tap_vnet": 10},
            "udp_gro": {"udp_gro": True},
            "gso_socks": {"gso_socks": [gso]},
        }
        kw = choices[offload]
        with pytest.raises(ValueError, match="needs a plain TAP and plain sockets"):
            make_forwarder(resolved(), fast=False, **kw)


def test_offloads_refused_also_when_falling_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast, "available", lambda: False)
    with pytest.raises(ValueError, match="plain TAP"):
        make_forwarder(resolved(), fast=True, tap_vnet=10)


@needs_c
def test_c_takes_the_offload_arguments() -> None:
    fwd = make_forwarder(resolved(), fast=True, tap_vnet=10, udp_gro=True)
    assert isinstance(fwd, fast.FastForwarder) and fwd.tap_vnet == 10


def test_unresolved_config_is_refused(impl: str) -> None:
    cfg = Config(tunnel=TunnelConfig("vxlan"), remotes=(Remote("192.0.2.2"),))
    with pytest.raises(ValueError, match="resolved"):
        make_forwarder(cfg, fast=impl == "fast")


def test_protocol_surface(impl: str) -> None:
    fwd: Forwarder = make_forwarder(resolved(), fast=impl == "fast")
    assert fwd.fdb.entries() == [] and fwd.fdb.expire() == 0
    snap = fwd.snapshot()
    assert isinstance(snap, Snapshot)
    assert snap.stats["tap_rx"] == 0 and snap.remotes[0]["remote"] == LO
    assert set(snap.as_dict()) == {"stats", "drops", "remotes", "fdb"}


def test_static_entries_from_the_config(impl: str) -> None:
    fwd = make_forwarder(resolved(statics=(StaticEntry(MAC_A, LO, 20),)), fast=impl == "fast")
    [entry] = fwd.fdb.entries()
    assert (entry.mac, entry.remote, entry.vlan, entry.static) == (MAC_A, 0, 20, True)


def test_clock_is_passed_to_the_fdb(impl: str) -> None:
    clock = Clock()
    fwd = make_forwarder(resolved(ageing=30.0), fast=impl == "fast", clock=clock)
    fwd.fdb.learn(MAC_B, 0)  # type: ignore[attr-defined]
    clock.now += 29.0
    assert fwd.fdb.expire() == 0 and [e.mac for e in fwd.fdb.entries()] == [MAC_B]
    clock.now += 2.0
    assert fwd.fdb.expire() == 1 and fwd.fdb.entries() == []


# -- one batch of I/O on loopback ---------------------------------------------------


@pytest.fixture
def loopback() -> Iterator[tuple[socket.socket, socket.socket, socket.socket]]:
    """(bound receiving UDP socket, TAP end the forwarder writes, the test's end)."""
    recv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    recv.bind((LO, 0))
    recv.setblocking(False)
    tap_end, reader = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    tap_end.setblocking(False)
    try:
        yield recv, tap_end, reader
    finally:
        for s in (recv, tap_end, reader):
            s.close()


def test_from_tunnel_writes_the_inner_frame_and_learns(
    impl: str, loopback: tuple[socket.socket, socket.socket, socket.socket]
) -> None:
    recv, tap_end, reader = loopback
    port = recv.getsockname()[1]
    cfg = resolved(port=port)
    fwd = make_forwarder(cfg, fast=impl == "fast")
    inner = MAC_A + MAC_B + b"\x08\x00" + bytes(46)
    payload = Vxlan(99, port=port).build(inner, bytes(4), bytes(4))[28:]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        tx.sendto(payload, (LO, port))
    assert select.select([recv], [], [], 30)[0]
    assert fwd.from_tunnel(recv, tap_end.fileno()) == 1
    assert reader.recv(2048) == inner
    assert [(e.mac, e.remote, e.static) for e in fwd.fdb.entries()] == [(MAC_B, 0, False)]
    snap = fwd.snapshot()
    assert snap.stats["tap_tx"] == 1 and snap.remotes[0]["rx_packets"] == 1
    assert snap.remotes[0]["rx_bytes"] == len(inner)
    assert fwd.from_tunnel(recv, tap_end.fileno()) == 0  # nothing more: the socket is drained


def test_from_tunnel_counts_a_foreign_vni(
    impl: str, loopback: tuple[socket.socket, socket.socket, socket.socket]
) -> None:
    recv, tap_end, reader = loopback
    port = recv.getsockname()[1]
    fwd = make_forwarder(resolved(port=port), fast=impl == "fast")
    inner = MAC_A + MAC_B + b"\x08\x00" + bytes(46)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        tx.sendto(Vxlan(98, port=port).build(inner, bytes(4), bytes(4))[28:], (LO, port))
    assert select.select([recv], [], [], 30)[0]
    assert fwd.from_tunnel(recv, tap_end.fileno()) == 1
    snap = fwd.snapshot()
    assert snap.drops["rx_bad_vni"] == 1 and snap.stats["tap_tx"] == 0
    reader.setblocking(False)
    with pytest.raises(BlockingIOError):
        reader.recv(2048)
