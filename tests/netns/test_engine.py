"""datapath/engine.py on a real TAP and real sockets, in a namespace of the test's own; C and Python paths.

The namespace's loopback carries two underlay addresses: the engine's (10.9.0.1)
and the remote's (10.9.0.2), where the test's own socket reads what the engine sends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
from collections.abc import Callable

import pytest

from datapath import fast
from datapath.config import Config, ConfigError, FdbConfig, OffloadConfig, Remote, StaticEntry, TapConfig, TunnelConfig
from datapath.counters import REMOTE_FIELDS
from datapath.encap import lookup
from datapath.engine import Engine, Inherited
from datapath.errors import SetupError
from datapath.ether import format_mac
from datapath.fdb import FdbFull
from datapath.io import tap
from tests.isolated import run_isolated
from tests.netns.netutil import exists, ip
from tests.offload_frames import _cfg as offload_cfg

pytestmark = pytest.mark.netns

LOCAL, REMOTE = "10.9.0.1", "10.9.0.2"
TAP = "ovle0"
TAP_MAC = b"\x02\x00\x00\x00\x00\x01"
MAC_A = b"\x02\x00\x00\x00\x00\xaa"  # behind the TAP
MAC_B = b"\x02\x00\x00\x00\x00\xbb"  # behind the remote
MAC_S = b"\x02\x00\x00\x00\x00\x5a"  # a static entry
PORT = 4790
VNI, KEY = 4242, 77
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
WAIT = 20.0  # an upper bound for something to arrive, never a speed requirement

PATHS = ["fast", "python"]
MODES = ["vxlan", "gre"]


def underlay() -> None:
    ip("addr", "add", f"{LOCAL}/32", "dev", "lo")
    ip("addr", "add", f"{REMOTE}/32", "dev", "lo")


def engine_cfg(mode: str, path: str, statics: tuple[StaticEntry, ...] = ()) -> Config:
    vxlan = mode == "vxlan"
    return Config(
        tunnel=TunnelConfig(
            mode,
            vni=VNI if vxlan else None,
            key=None if vxlan else KEY,
            port=PORT if vxlan else None,
            local=LOCAL,
            underlay_mtu=1500,
        ),
        remotes=(Remote(REMOTE, LOCAL),),
        tap=TapConfig(name=TAP, mtu=1400, mac=TAP_MAC),
        fdb=FdbConfig(static=statics),
        # "fast-loop": the C path with its batches run from the asyncio loop (--no-dp-thread).
        offload=OffloadConfig(fast_path=path != "python", dp_thread=path != "fast-loop"),
    )


def skip_without_c(path: str) -> None:
    if path != "python" and not fast.available():
        pytest.skip("C fast path not built (python3 csrc/build.py)")


def frame(dst: bytes, src: bytes, payload: bytes = b"ovl-dp engine test") -> bytes:
    return dst + src + b"\x88\xb5" + payload.ljust(46, b"\0")


def remote_reader(mode: str) -> socket.socket:
    """What the remote host would receive on: the VXLAN port, or a raw GRE socket, on REMOTE."""
    if mode == "vxlan":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((REMOTE, PORT))
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_GRE)
        s.bind((REMOTE, 0))
    s.setblocking(False)
    return s


def send_from_remote(cfg: Config, inner: bytes) -> None:
    """inner, encapsulated as the remote host sends it to us."""
    packet = cfg.encap.build(inner, socket.inet_aton(REMOTE), socket.inet_aton(LOCAL))
    if cfg.encap.udp:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((REMOTE, 0))
            s.sendto(packet[28:], (LOCAL, PORT))
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
            s.sendto(packet, (LOCAL, 0))


def run_until(loop: asyncio.AbstractEventLoop, done: Callable[[], bool]) -> None:
    """Run loop until done() (checked between iterations); fail after WAIT seconds."""

    async def wait() -> None:
        while not done():
            await asyncio.sleep(0.01)

    loop.run_until_complete(asyncio.wait_for(wait(), WAIT))


@pytest.mark.parametrize("path", PATHS)
def test_refuses_an_unresolved_config(path: str) -> None:
    skip_without_c(path)

    def body() -> None:
        underlay()
        cfg = engine_cfg("vxlan", path)
        for unresolved in (
            Config(tunnel=TunnelConfig("vxlan", port=PORT), remotes=(Remote(REMOTE),)),
            Config(tunnel=cfg.tunnel, remotes=cfg.remotes, tap=TapConfig(name=TAP, mtu=1400)),  # no MAC
        ):
            with pytest.raises(ValueError, match="resolved configuration"):
                Engine(unresolved)
        assert not exists(TAP) and not exists("ovl-vxlan")

    run_isolated(body)


@pytest.mark.parametrize("path", PATHS)
def test_a_taken_udp_port_leaves_no_tap_behind(path: str) -> None:
    skip_without_c(path)

    def body() -> None:
        underlay()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
            holder.bind((LOCAL, PORT))
            fds = len(os.listdir("/proc/self/fd"))
            with pytest.raises(SetupError, match=f"UDP port {PORT} is already in use on {LOCAL}"):
                Engine(engine_cfg("vxlan", path))
            assert not exists(TAP)
            assert len(os.listdir("/proc/self/fd")) == fds

    run_isolated(body)


@pytest.mark.parametrize("path", PATHS)
def test_a_busy_tap_closes_the_sockets(path: str) -> None:
    skip_without_c(path)

    def body() -> None:
        underlay()
        first = Engine(engine_cfg("gre", path))
        try:
            fds = len(os.listdir("/proc/self/fd"))
            with pytest.raises(SetupError, match=f"cannot create TAP {TAP}: it is in use"):
                Engine(engine_cfg("gre", path))
            assert len(os.listdir("/proc/self/fd")) == fds
        finally:
            first.close()

    run_isolated(body)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", MODES)
def test_engine_forwards_both_ways_and_shows_its_fdb(mode: str, path: str) -> None:
    skip_without_c(path)

    def body() -> None:
        underlay()
        cfg = engine_cfg(mode, path, statics=(StaticEntry(MAC_S, REMOTE, 0),))
        eng = Engine(cfg)
        assert exists(TAP)
        reader = remote_reader(mode)
        pkt = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        loop = asyncio.new_event_loop()
        try:
            assert eng.fast == (path == "fast")
            assert eng.tap.vnet_hdr_len == (10 if path == "fast" else 0)
            pkt.bind((TAP, 0))
            pkt.setblocking(False)
            eng.start(loop)

            # TAP -> underlay: a broadcast frame the kernel sends out of the TAP floods to the remote.
            out = frame(b"\xff" * 6, MAC_A)
            pkt.send(out)
            got = loop.run_until_complete(asyncio.wait_for(loop.sock_recv(reader, 65536), WAIT))
            off, tid = lookup(mode)(VNI if mode == "vxlan" else KEY).parse(got)
            assert off >= 0 and tid == (VNI if mode == "vxlan" else KEY), (off, tid)
            assert got[off:] == out
            if mode == "gre":
                assert got[12:16] == socket.inet_aton(LOCAL) and got[16:20] == socket.inet_aton(REMOTE)

            # underlay -> TAP: the remote's frame arrives on the TAP and its source is learned.
            back = frame(MAC_A, MAC_B, b"from the remote")
            send_from_remote(cfg, back)
            run_until(loop, lambda: any(r["mac"] == format_mac(MAC_B) for r in eng.fdb_table()))
            seen: list[bytes] = []

            def arrived() -> bool:
                try:
                    data, addr = pkt.recvfrom(65536)
                except BlockingIOError:
                    return False
                if addr[2] != PACKET_OUTGOING:
                    seen.append(data)
                return back in seen

            run_until(loop, arrived)

            rows = eng.fdb_table()
            assert [(r["vlan"], r["mac"], r["remote"], r["static"]) for r in rows] == [
                (0, format_mac(MAC_S), REMOTE, True),
                (0, format_mac(MAC_B), REMOTE, False),
            ]
            assert all(isinstance(r["age"], float) and r["age"] >= 0 for r in rows)
            snap = eng.snapshot()
            assert snap.stats["tx_flooded"] >= 1 and snap.stats["tap_tx"] >= 1
            assert int(snap.remotes[0]["tx_packets"]) >= 1 and int(snap.remotes[0]["rx_packets"]) >= 1
        finally:
            eng.close()
            loop.close()
            reader.close()
            pkt.close()
        assert not exists(TAP)

    run_isolated(body)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", MODES)
def test_close_removes_the_tap_and_unregisters(mode: str, path: str) -> None:
    skip_without_c(path)

    def body() -> None:
        underlay()
        eng = Engine(engine_cfg(mode, path))
        loop = asyncio.new_event_loop()
        try:
            eng.start(loop)
            tap_fd, sock_fd = eng.tap.fileno(), eng.recv_sock.fileno()
            eng.close()
            assert not exists(TAP)
            assert not loop.remove_reader(tap_fd) and not loop.remove_reader(sock_fd)
            assert eng.recv_sock.fileno() == -1 and eng.send_sock.fileno() == -1
        finally:
            loop.close()

    run_isolated(body)


@pytest.mark.parametrize(
    ("mode", "path", "text"),
    [
        ("vxlan", "fast", "udp_gro, no udp_segment"),
        ("gre", "fast", "none (raw sockets, sendmmsg/recvmmsg)"),
        ("vxlan", "python", "none"),
        ("gre", "python", "none"),
    ],
)
def test_describe_underlay(mode: str, path: str, text: str) -> None:
    skip_without_c(path)

    def body() -> None:
        underlay()
        eng = Engine(engine_cfg(mode, path))
        try:
            assert eng.describe_underlay() == text
            assert eng.udp_gro == (mode == "vxlan" and path == "fast")
        finally:
            eng.close()

    run_isolated(body)


# -- which offloads the engine turns on -----------------------------------------------------

SOL_UDP = 17


@pytest.mark.netns
@pytest.mark.parametrize("fast_path", [True, False])
def test_engine_picks_tap_flags_by_forwarder(fast_path: bool) -> None:
    """The C path gets the virtio header and offloads; the Python path a plain TAP; tap_offloads=False too."""

    def body() -> None:
        from datapath.engine import Engine

        for offloads in (True, False):
            cfg = offload_cfg(
                mode="gre", vni=None, tap_mtu=1462, tap_name="ovleng0", tap_offloads=offloads, fast=fast_path
            )
            eng = Engine(cfg)
            try:
                on = fast_path and offloads
                assert eng.fast == fast_path
                assert eng.tap.vnet_hdr_len == (10 if on else 0)
                assert bool(eng.tap.offloads & tap.TUN_F_TSO4) == on
                assert getattr(eng.forwarder, "tap_vnet", 0) == eng.tap.vnet_hdr_len
            finally:
                eng.close()

    run_isolated(body)


@pytest.mark.netns
@pytest.mark.parametrize("udp_gso", [False, True])
def test_engine_underlay_offloads(udp_gso: bool) -> None:
    """The engine turns UDP_GRO on for the C path (VXLAN) unless told not to, and opens the UDP GSO pool only
    when asked."""

    def body() -> None:
        from datapath.engine import Engine

        cfg = offload_cfg(tap_name="ovleng1", udp_gso=udp_gso)
        eng = Engine(cfg)
        try:
            assert eng.udp_gro and len(eng.gso_socks) == (8 if udp_gso else 0)
            assert ("udp_segment via 8" in eng.describe_underlay()) == udp_gso
        finally:
            eng.close()
        eng = Engine(offload_cfg(tap_name="ovleng1", fast=False))
        try:
            assert not eng.udp_gro and not eng.gso_socks and eng.describe_underlay() == "none"
        finally:
            eng.close()
        eng = Engine(offload_cfg(tap_name="ovleng1", tap_offloads=False))  # --offload off: no UDP_GRO either
        try:
            assert not eng.udp_gro and eng.describe_underlay().startswith("no udp_gro")
            assert eng.recv_sock.getsockopt(SOL_UDP, 104) == 0
        finally:
            eng.close()

    run_isolated(body)


# -- the runtime API the control plane calls ---------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_runtime_remote_and_fdb_calls(path: str) -> None:
    """Engine.add_remote / remove_remote / remotes / remote_rows / fdb_add / fdb_del / fdb_flush /
    set_fdb_limits: results, refusals with messages, rows that name addresses across holes in the slots."""
    skip_without_c(path)
    other = "10.9.0.3"

    def body() -> None:
        underlay()
        ip("addr", "add", f"{other}/32", "dev", "lo")
        clock = [100.0]
        eng = Engine(engine_cfg("vxlan", path, statics=(StaticEntry(MAC_S, REMOTE, 0),)), clock=lambda: clock[0])
        try:
            assert eng.remotes() == (Remote(REMOTE, LOCAL),) and eng.cfg.remotes == eng.remotes()
            with pytest.raises(ConfigError, match=f"remotes {REMOTE} is already a remote"):
                eng.add_remote(Remote(REMOTE, LOCAL))
            with pytest.raises(ConfigError, match="not resolved"):
                eng.add_remote(Remote(other))
            eng.add_remote(Remote(other, LOCAL))
            assert [r.addr for r in eng.remotes()] == [REMOTE, other]
            rows = eng.remote_rows()
            keys = {"remote", "local", "tx_packets", "tx_bytes", "tx_flood", "rx_packets", "rx_bytes", "last_rx_age"}
            assert [set(r) for r in rows] == [keys | {"path_mtu"}] * 2
            zero = dict.fromkeys(REMOTE_FIELDS, 0)
            mtu = eng.cfg.underlay_mtu
            assert rows[1] == {"remote": other, "local": LOCAL, **zero, "last_rx_age": None, "path_mtu": mtu}
            # issue 11: a remote's own path MTU, shown in its row; 0 gives back the underlay MTU
            assert eng.set_remote_mtu(other, 1400) == eng.cfg.underlay_mtu and eng.remote_mtu(other) == 1400
            assert eng.remote_rows()[1]["path_mtu"] == 1400 and eng.remote_rows()[0]["path_mtu"] == eng.cfg.underlay_mtu
            eng.set_remote_mtu(other, 0)
            assert eng.remote_mtu(other) == eng.cfg.underlay_mtu
            with pytest.raises(KeyError):
                eng.set_remote_mtu("10.9.0.4", 1400)
            with pytest.raises(ValueError):
                eng.set_remote_mtu(other, 10)

            eng.fdb_add(MAC_B, other, vlan=7)
            with pytest.raises(KeyError, match=r"10\.9\.0\.4 is not a remote"):
                eng.fdb_add(MAC_A, "10.9.0.4")
            with pytest.raises(ValueError, match="6 bytes"):
                eng.fdb_add(b"\x02", other)
            for vlan in (4095, 4096, -1):
                with pytest.raises(ValueError, match=f"VLAN must be 0..4094 .*, not {vlan}"):
                    eng.fdb_add(MAC_A, other, vlan=vlan)
            eng.set_fdb_limits(2, 300.0)
            with pytest.raises(FdbFull):
                eng.fdb_add(MAC_A, other)
            with pytest.raises(ConfigError, match=r"fdb\.max_entries"):
                eng.set_fdb_limits(0, 300.0)
            with pytest.raises(ConfigError, match=r"fdb\.ageing"):
                eng.set_fdb_limits(10, -1.0)
            eng.set_fdb_limits(10, 60.0)
            eng.fdb_add(MAC_A, other)
            assert [(r["mac"], r["remote"], r["vlan"]) for r in eng.fdb_table()] == [
                (format_mac(MAC_S), REMOTE, 0),
                (format_mac(MAC_A), other, 0),
                (format_mac(MAC_B), other, 7),
            ]
            assert eng.fdb_del(MAC_A) and not eng.fdb_del(MAC_A) and not eng.fdb_del(MAC_B)

            # A hole in slot 0: rows and tables still name addresses.
            assert eng.remove_remote(REMOTE) == 1  # the static entry behind it
            with pytest.raises(KeyError, match=f"{REMOTE} is not a remote"):
                eng.remove_remote(REMOTE)
            assert [r["remote"] for r in eng.remote_rows()] == [other]
            assert [r["remote"] for r in eng.snapshot().remotes] == [other]
            assert [(r["mac"], r["remote"]) for r in eng.fdb_table()] == [(format_mac(MAC_B), other)]
            with pytest.raises(KeyError):
                eng.fdb_flush(REMOTE)
            assert eng.fdb_flush(other) == 1 and eng.fdb_flush() == 0

            # Liveness: seconds since the last packet delivered from a remote.
            eng.add_remote(Remote(REMOTE, LOCAL))  # back, in slot 0
            loop = asyncio.new_event_loop()
            try:
                eng.start(loop)
                send_from_remote(eng.cfg, frame(MAC_A, MAC_B))
                run_until(loop, lambda: row_of(eng, REMOTE)["last_rx_age"] is not None)
                clock[0] += 2.5
                assert row_of(eng, REMOTE)["last_rx_age"] == 2.5 and row_of(eng, REMOTE)["rx_packets"] == 1
                assert row_of(eng, other)["last_rx_age"] is None
            finally:
                eng.close()
                loop.close()
        finally:
            eng.close()

    run_isolated(body)


def row_of(eng: Engine, addr: str) -> dict[str, object]:
    return next(r for r in eng.remote_rows() if r["remote"] == addr)


def _dups(inh: Inherited) -> Inherited:
    """inh with every fd duplicated (what SCM_RIGHTS gives the receiving process)."""
    return dataclasses.replace(
        inh,
        tap_fd=os.dup(inh.tap_fd),
        recv_fd=os.dup(inh.recv_fd),
        send_fd=os.dup(inh.send_fd),
        gso_fds=[os.dup(fd) for fd in inh.gso_fds],
    )


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", MODES)
def test_an_engine_built_on_anothers_fds_forwards_with_its_fdb(mode: str, path: str) -> None:
    """The takeover's engine half: fds checked against the configuration (refused ones closed), the FDB
    carried over with its ages, the first engine closed without the TAP going away."""
    skip_without_c(path)

    def body() -> None:
        underlay()
        cfg = engine_cfg(mode, path, statics=(StaticEntry(MAC_S, REMOTE, 0),))
        old = Engine(cfg)
        reader = remote_reader(mode)
        pkt = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        loop = asyncio.new_event_loop()
        new: Engine | None = None
        try:
            pkt.bind((TAP, 0))
            pkt.setblocking(False)
            old.start(loop)
            send_from_remote(cfg, frame(MAC_A, MAC_B, b"learn me"))
            run_until(loop, lambda: any(r["mac"] == format_mac(MAC_B) for r in old.fdb_table()))
            # Configurations that cannot share the fds: refused, every received fd closed.
            fds = len(os.listdir("/proc/self/fd"))
            other_path = "python" if path == "fast" else "fast"
            bad = [
                (dataclasses.replace(cfg, tap=TapConfig(name=TAP, mtu=1300, mac=TAP_MAC)), "its MTU is 1400"),
                (dataclasses.replace(cfg, tap=TapConfig(name="ovle9", mtu=1400, mac=TAP_MAC)), "not 'ovle9'"),
            ]
            if mode == "vxlan":
                tunnel = dataclasses.replace(cfg.tunnel, port=PORT + 1)
                bad.append(
                    (dataclasses.replace(cfg, tunnel=tunnel), f"bound to {LOCAL}:{PORT}, not {LOCAL}:{PORT + 1}")
                )
            if fast.available():
                bad.append((engine_cfg(mode, other_path), "path"))
            for wrong, needle in bad:
                with pytest.raises(SetupError, match=needle):
                    Engine(wrong, inherited=_dups(old.inherit()))
                assert len(os.listdir("/proc/self/fd")) == fds, needle
            # The right one: it gets the FDB with the ages, then the old engine stops and closes.
            new = Engine(dataclasses.replace(cfg, fdb=FdbConfig()), inherited=_dups(old.inherit()))
            assert new.inherited and new.tap.vnet_hdr_len == old.tap.vnet_hdr_len and new.fast == old.fast
            counts = new.fdb_import(old.fdb_export())
            assert counts == {"static": 1, "learned": 1, "left_out": 0, "full": 0}
            ages = {r["mac"]: (r["static"], r["age"]) for r in new.fdb_table()}
            assert ages[format_mac(MAC_S)] == (True, 0.0) and ages[format_mac(MAC_B)][0] is False
            old_age = float(str({r["mac"]: r["age"] for r in old.fdb_table()}[format_mac(MAC_B)]))
            assert float(str(ages[format_mac(MAC_B)][1])) >= old_age  # aged on from there, not learned anew
            assert new.snapshot().fdb["learns"] == 0
            new.start(loop)
            old.stop_reading()
            old.close()
            assert exists(TAP)  # the new engine holds it
            # Both ways through the new engine; MAC_B is known: the frame to it goes unicast.
            out = frame(MAC_B, MAC_A, b"to the known MAC")
            pkt.send(out)
            got = loop.run_until_complete(asyncio.wait_for(loop.sock_recv(reader, 65536), WAIT))
            off, _ = lookup(mode)(VNI if mode == "vxlan" else KEY).parse(got)
            assert got[off:] == out
            snap = new.snapshot()
            assert snap.stats["tx_unicast"] == 1 and snap.stats["tx_flooded"] == 0, snap.stats
            send_from_remote(cfg, frame(MAC_A, MAC_B, b"back"))
            run_until(loop, lambda: new is not None and new.snapshot().stats["tap_tx"] >= 1)
        finally:
            old.close()
            if new is not None:
                new.close()
            loop.close()
            reader.close()
            pkt.close()
        assert not exists(TAP)

    run_isolated(body)


def test_the_udp_gso_pool_is_handed_over_too() -> None:
    skip_without_c("fast")

    def body() -> None:
        underlay()
        base = engine_cfg("vxlan", "fast")
        cfg = dataclasses.replace(base, offload=OffloadConfig(udp_gso=True))
        old = Engine(cfg)
        try:
            if not old.gso_socks:
                pytest.skip("this kernel refuses UDP_SEGMENT")
            fds = len(os.listdir("/proc/self/fd"))
            with pytest.raises(SetupError, match=r"offload\.udp_gso differs"):
                Engine(base, inherited=_dups(old.inherit()))
            assert len(os.listdir("/proc/self/fd")) == fds
            new = Engine(cfg, inherited=_dups(old.inherit()))
            try:
                ports = sorted(s.getsockname()[1] for s in new.gso_socks)
                assert ports == sorted(s.getsockname()[1] for s in old.gso_socks)
                assert new.udp_gro == old.udp_gro and new.describe_underlay() == old.describe_underlay()
            finally:
                new.close()
        finally:
            old.close()

    run_isolated(body)


@pytest.mark.parametrize("path", PATHS)
def test_a_takeover_asks_for_the_outer_tos_on_every_receiving_socket(path: str) -> None:
    """ECN needs the outer DS field of every received packet (IP_RECVTOS / IPV6_RECVTCLASS): the engine
    built on another's fds asks for it on the IPv4 and the IPv6 receiving socket (the old one may not have)."""
    skip_without_c(path)

    def body() -> None:
        underlay()
        with open("/proc/sys/net/ipv6/conf/lo/disable_ipv6", "w") as f:  # (run_isolated turned it off)
            f.write("0")
        ip("addr", "add", "fd09::1/128", "dev", "lo", "nodad")
        base = engine_cfg("vxlan", path)
        cfg = dataclasses.replace(
            base,
            tunnel=dataclasses.replace(base.tunnel, local=(LOCAL, "fd09::1")),
            remotes=(Remote(REMOTE, LOCAL), Remote("fd09::2", "fd09::1")),
        )
        old = Engine(cfg)
        new: Engine | None = None
        try:
            assert old.recv_sock2 is not None and old.recv_sock2.family == socket.AF_INET6
            old.recv_sock.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 0)  # as a daemon without ECN
            old.recv_sock2.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVTCLASS, 0)
            inh = old.inherit()
            new = Engine(
                cfg,
                inherited=dataclasses.replace(_dups(inh), recv2_fd=os.dup(inh.recv2_fd), send6_fd=os.dup(inh.send6_fd)),
            )
            assert new.recv_sock.getsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS) == 1
            assert new.recv_sock2 is not None
            assert new.recv_sock2.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVTCLASS) == 1
        finally:
            if new is not None:
                new.close()
            old.close()

    run_isolated(body)
