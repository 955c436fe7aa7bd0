"""from_tap / from_tunnel for real: a TAP, a raw send socket and the tunnel socket, in a private namespace.

Frames are put into the TAP from the kernel side (an AF_PACKET socket bound
to it), so the datapath reads them from the TAP fd; the encapsulated packets
go out over loopback (remote = local = 127.0.0.1) and are caught by the
tunnel socket. Those packets are then fed back, and what from_tunnel writes
to the TAP is seen by the AF_PACKET socket. FastForwarder and PyForwarder
share the I/O contract, so every test runs on both.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import struct
import subprocess
import time
from collections.abc import Callable

import pytest

from datapath import ether, fast
from datapath.config import Config, Remote
from datapath.encap import gre, vxlan
from datapath.pypath import PyForwarder
from tests.configs import datapath_config
from tests.isolated import run_isolated

pytestmark = pytest.mark.netns

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SOL_PACKET = 263
PACKET_AUXDATA = 8
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6
MARK = b"\x88\xb5"  # IEEE local experimental EtherType: nothing else sends it
LOCAL_MAC = bytes.fromhex("020000aa0001")
TAP = "ovlio0"
LO = "127.0.0.1"

Forwarder = fast.FastForwarder | PyForwarder

CASES = {
    "vxlan": {"mode": "vxlan", "vni": 99},
    "vxlan_csum": {"mode": "vxlan", "vni": 99, "udp_csum": True, "port": 4790},
    "gre": {"mode": "gre"},
    "gre_key": {"mode": "gre", "key": 1234},
    # VLAN 10 <-> its own id, GRE without a base key (so mapped packets carry a key field, others none).
    "gre_vlans": {"mode": "gre", "vlan_map": ((10, 7777), (20, 0xFFFFFFFF))},
}
IMPLS: dict[str, Callable[[Config], Forwarder]] = {"fast": fast.FastForwarder, "python": PyForwarder}


def make_cfg(case: str) -> Config:
    return datapath_config(remotes=(Remote(LO, LO),), underlay_mtu=1500, tap_mtu=1450, batch=4, **CASES[case])  # type: ignore[arg-type]


def frame(i: int, dst: bytes = b"\xff" * 6, size: int = 60) -> bytes:
    body = MARK + f"frame {i} ".encode()
    return dst + LOCAL_MAC + body + bytes(max(0, size - 12 - len(body)))


class Rig:
    """TAP + sockets inside the namespace; closed by close()."""

    def __init__(self, cfg: Config) -> None:
        from pytun import IFF_NO_PI, IFF_TAP, TunTapDevice

        self.cfg = cfg
        self.tap = TunTapDevice(name=TAP, flags=IFF_TAP | IFF_NO_PI)
        self.tap.mtu = 1500
        self.tap.up()
        self.fd = self.tap.fileno()
        fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        self.send = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        if cfg.tunnel.mode == "vxlan":
            self.recv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.recv.bind((LO, cfg.encap.port))
        else:
            self.recv = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47)
        self.recv.setblocking(False)
        self.pkt = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.pkt.bind((TAP, 0))
        self.pkt.setblocking(False)

        self.pkt.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)  # the kernel takes a received tag out of the data

    def close(self) -> None:
        for s in (self.pkt, self.recv, self.send):
            s.close()
        self.tap.close()

    def inject(self, frames: list[bytes]) -> None:
        """Frames the kernel transmits on the TAP: the datapath reads them from the TAP fd."""
        for f in frames:
            self.pkt.send(f)

    def pump_tap(self, fwd: Forwarder, want: int, send: socket.socket | None = None) -> list[int]:
        """from_tap until want frames were read; the count of each call."""
        counts: list[int] = []
        end = time.monotonic() + 5
        while sum(counts) < want and time.monotonic() < end:
            select.select([self.fd], [], [], 0.1)
            n = fwd.from_tap(self.fd, send or self.send)
            if n:
                counts.append(n)
        return counts

    def catch(self, want: int, timeout: float = 5.0) -> list[tuple[bytes, str]]:
        """Tunnel packets that arrived: (payload as the socket gives it, source address)."""
        got: list[tuple[bytes, str]] = []
        end = time.monotonic() + timeout
        while len(got) < want and time.monotonic() < end:
            if select.select([self.recv], [], [], 0.1)[0]:
                data, addr = self.recv.recvfrom(65536)
                got.append((data, addr[0]))
        return got

    def parse(self, packet: bytes) -> tuple[int, bytes]:
        """(tunnel id, inner frame) of a tunnel packet."""
        off, tid = vxlan.parse(packet) if self.cfg.tunnel.mode == "vxlan" else gre.parse(packet)
        assert off >= 0, f"not a tunnel packet: drop reason {-off}"
        return tid, packet[off:]

    def inner(self, packet: bytes) -> bytes:
        tid, frame = self.parse(packet)
        assert tid == self.cfg.base_id, f"tunnel id {tid}, not the base id"
        return frame

    def resend(self, packets: list[bytes], src: str = LO) -> None:
        """Send tunnel packets to ourselves, from src, as a remote would."""
        if self.cfg.tunnel.mode == "vxlan":
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((src, 0))
                for p in packets:
                    s.sendto(p, (LO, self.cfg.encap.port))
        else:
            for p in packets:
                tid, inner = self.parse(p)
                key = self.cfg.tunnel.key if tid == self.cfg.base_id else tid
                pkt = gre.encap(inner, key=key, src=socket.inet_aton(src), dst=socket.inet_aton(LO))
                self.send.sendto(pkt, (LO, 0))

    def pump_tunnel(self, fwd: Forwarder, want: int, tap_fd: int | None = None) -> int:
        got = 0
        end = time.monotonic() + 5
        while got < want and time.monotonic() < end:
            select.select([self.recv], [], [], 0.1)
            got += fwd.from_tunnel(self.recv, self.fd if tap_fd is None else tap_fd)
        return got

    def tap_frames(self, settle: float = 0.3) -> list[bytes]:
        """Marked frames the kernel received on the TAP (written by from_tunnel), with their 802.1Q tag."""
        out: list[bytes] = []
        end = time.monotonic() + settle
        while time.monotonic() < end:
            if not select.select([self.pkt], [], [], 0.05)[0]:
                continue
            data, anc, _, addr = self.pkt.recvmsg(65536, socket.CMSG_SPACE(32))
            for level, kind, aux in anc:
                if level == SOL_PACKET and kind == PACKET_AUXDATA:
                    status, _, _, _, _, tci, tpid = struct.unpack_from("IIIHHHH", aux)
                    if status & TP_STATUS_VLAN_VALID:  # put back the tag the kernel took out
                        tpid = tpid if status & TP_STATUS_VLAN_TPID_VALID else ether.ETH_P_8021Q
                        data = data[:12] + struct.pack("!HH", tpid, tci) + data[12:]
            if addr[2] != PACKET_OUTGOING and MARK in (data[12:14], data[16:18]):
                out.append(data)
        return out


def in_namespace(case: str, impl: str, body: Callable[[Rig, Forwarder], None], timeout: float = 60.0) -> None:
    def run() -> None:
        cfg = make_cfg(case)
        rig = Rig(cfg)
        try:
            body(rig, IMPLS[impl](cfg))
        finally:
            rig.close()

    run_isolated(run, timeout=timeout)


params = pytest.mark.parametrize(("case", "impl"), [(c, i) for c in CASES for i in IMPLS])


@params
def test_tap_to_tunnel_and_back(case: str, impl: str) -> None:
    if impl == "fast" and not fast.available():
        pytest.skip("C fast path not built")

    def body(rig: Rig, fwd: Forwarder) -> None:
        frames = [frame(i, size=60 + 7 * i) for i in range(6)]
        rig.inject(frames)
        counts = rig.pump_tap(fwd, 6)
        assert sum(counts) == 6 and max(counts) <= rig.cfg.batch, counts
        caught = rig.catch(6)
        assert [src for _, src in caught] == [LO] * 6
        assert [rig.inner(p) for p, _ in caught] == frames
        snap = fwd.snapshot()
        assert snap.stats == {
            "tap_rx": 6,
            "tap_tx": 0,
            "tx_unicast": 0,
            "tx_flooded": 6,
            "tap_rx_gso": 0,
            "tap_tx_gso": 0,
            "tx_gso": 0,
            "rx_gro": 0,
            "rx_super": 0,
            "rx_super_split": 0,
            "tx_pmtu_icmp": 0,  # issue 11's slots (pmtu, mss, ecn): 0 here
            "tx_pmtu_limited": 0,
            "tx_fragmented": 0,
            "mss_clamped": 0,
            "rx_ecn_ce": 0,
        }
        r = snap.remotes[0]
        assert (r["tx_packets"], r["tx_bytes"], r["tx_flood"]) == (6, sum(map(len, frames)), 6)
        assert fwd.from_tap(rig.fd, rig.send) == 0  # drained: EAGAIN is not an error

        rig.tap_frames(settle=0.1)  # nothing of ours should be there yet; empties the socket
        rig.resend([p for p, _ in caught])
        assert rig.pump_tunnel(fwd, 6) == 6
        assert rig.tap_frames() == frames
        snap = fwd.snapshot()
        assert snap.stats["tap_tx"] == 6 and sum(snap.drops.values()) == 0, snap
        assert (snap.remotes[0]["rx_packets"], snap.remotes[0]["rx_bytes"]) == (6, sum(map(len, frames)))
        assert [(e.mac, e.remote) for e in fwd.fdb.entries()] == [(LOCAL_MAC, 0)]
        assert fwd.from_tunnel(rig.recv, rig.fd) == 0

        # Now known behind remote 0: unicast.
        rig.inject([frame(9, dst=LOCAL_MAC)])
        assert sum(rig.pump_tap(fwd, 1)) == 1
        assert [rig.inner(p) for p, _ in rig.catch(1)] == [frame(9, dst=LOCAL_MAC)]
        assert fwd.snapshot().stats["tx_unicast"] == 1

    in_namespace(case, impl, body)


@params
def test_drops_on_the_io_path(case: str, impl: str) -> None:
    if impl == "fast" and not fast.available():
        pytest.skip("C fast path not built")

    def body(rig: Rig, fwd: Forwarder) -> None:
        # From an address that is not a remote.
        rig.inject([frame(1)])
        rig.pump_tap(fwd, 1)
        caught = rig.catch(1)
        rig.resend([p for p, _ in caught], src="127.0.0.2")
        assert rig.pump_tunnel(fwd, 1) == 1
        assert fwd.snapshot().drops["rx_not_remote"] == 1
        assert rig.tap_frames() == []
        # The send socket refuses every packet: counted, not raised, the batch goes on.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:  # sendto port 0: EINVAL
            rig.inject([frame(2), frame(3)])
            assert sum(rig.pump_tap(fwd, 2, send=udp)) == 2
        snap = fwd.snapshot()
        assert snap.drops["tx_error"] == 2 and snap.remotes[0]["tx_packets"] == 1, snap
        # The TAP refuses the write.
        rig.resend([p for p, _ in caught])
        r, w = os.pipe()
        try:
            assert rig.pump_tunnel(fwd, 1, tap_fd=r) == 1
        finally:
            os.close(r)
            os.close(w)
        snap = fwd.snapshot()
        assert snap.drops["rx_tap_error"] == 1 and snap.stats["tap_tx"] == 0, snap
        # Too big for the underlay: dropped before sending.
        rig.inject([frame(4, size=1500 - rig.cfg.outer_len + 1)])
        assert sum(rig.pump_tap(fwd, 1)) == 1
        assert fwd.snapshot().drops["tx_too_big"] == 1
        assert rig.catch(1, timeout=0.3) == []
        # A read error other than EAGAIN is raised.
        closed = os.open("/dev/null", os.O_RDONLY)
        os.close(closed)
        with pytest.raises(OSError):
            fwd.from_tap(closed, rig.send)

    in_namespace(case, impl, body)


def tagged(i: int, vid: int, dst: bytes = b"\xff" * 6) -> bytes:
    """frame(i) with an 802.1Q tag (PCP 3) of VLAN vid."""
    f = frame(i, dst)
    return f[:12] + struct.pack("!HH", ether.ETH_P_8021Q, 3 << 13 | vid) + f[12:]


@pytest.mark.parametrize("impl", list(IMPLS))
def test_vlan_map_on_the_io_path(impl: str) -> None:
    """A mapped VLAN leaves untagged in its id and comes back tagged; others pass as they are (a trunk)."""
    if impl == "fast" and not fast.available():
        pytest.skip("C fast path not built")

    def body(rig: Rig, fwd: Forwarder) -> None:
        cfg = rig.cfg
        ids = dict(cfg.tunnel.vlan_map)
        frames = [tagged(1, 10), tagged(2, 20), tagged(3, 30), frame(4), tagged(5, 10)]
        mapped = {0: 10, 1: 20, 4: 10}  # index -> VLAN
        rig.inject(frames)
        assert sum(rig.pump_tap(fwd, len(frames))) == len(frames)
        raw = [p for p, _ in rig.catch(len(frames))]
        caught = [rig.parse(p) for p in raw]
        want = [
            (ids[mapped[i]], ether.strip_vlan(f)) if i in mapped else (cfg.base_id, f) for i, f in enumerate(frames)
        ]
        assert caught == want
        snap = fwd.snapshot()
        assert snap.remotes[0]["tx_bytes"] == sum(len(f) for _, f in want)  # as sent: mapped tags stripped
        assert sum(snap.drops.values()) == 0

        rig.tap_frames(settle=0.1)
        rig.resend(raw)
        assert rig.pump_tunnel(fwd, len(frames)) == len(frames)
        back = rig.tap_frames()
        # Mapped ids get their VLAN's tag (PCP 0); the base id delivers the frame as it came.
        expect = [ether.insert_vlan(f, mapped[i]) if i in mapped else f for i, (_, f) in enumerate(caught)]
        assert back == expect
        snap = fwd.snapshot()
        assert snap.stats["tap_tx"] == len(frames) and sum(snap.drops.values()) == 0, snap
        assert snap.remotes[0]["rx_bytes"] == sum(map(len, expect))  # as written to the TAP: tags inserted
        table = sorted((e.vlan, e.mac, e.remote) for e in fwd.fdb.entries())
        assert table == [(0, LOCAL_MAC, 0), (10, LOCAL_MAC, 0), (20, LOCAL_MAC, 0), (30, LOCAL_MAC, 0)]

        # Known in VLAN 10: unicast, in VLAN 10's id.
        rig.inject([tagged(9, 10, dst=LOCAL_MAC)])
        assert sum(rig.pump_tap(fwd, 1)) == 1
        assert [rig.parse(p) for p, _ in rig.catch(1)] == [(ids[10], ether.strip_vlan(tagged(9, 10, LOCAL_MAC)))]
        assert fwd.snapshot().stats["tx_unicast"] == 1

    in_namespace("gre_vlans", impl, body)


@pytest.mark.parametrize("case", ["vxlan", "gre"])
def test_fast_truncated_packet(case: str) -> None:
    """A packet longer than a ring slot is cut by recvmmsg: the C path drops it as truncated."""
    if not fast.available():
        pytest.skip("C fast path not built")

    def body(rig: Rig, fwd: Forwarder) -> None:
        big = frame(1, size=rig.cfg.slot_size + 100)
        if rig.cfg.tunnel.mode == "vxlan":
            rig.resend([vxlan.header(rig.cfg.base_id) + big])
        else:
            rig.send.sendto(gre.encap(big, key=None, src=socket.inet_aton(LO), dst=socket.inet_aton(LO)), (LO, 0))
        assert rig.pump_tunnel(fwd, 1) == 1
        assert fwd.snapshot().drops["rx_truncated"] == 1
        assert rig.tap_frames() == []

    in_namespace(case, "fast", body)


def test_isolated_reports_child_failures() -> None:
    """The helper turns a failure inside the namespace into a failure of the test, with its message."""

    def body() -> None:
        assert socket.if_nameindex() == [(1, "lo")], "fresh namespace has only lo"
        raise AssertionError("boom from the child")

    with pytest.raises(pytest.fail.Exception, match="boom from the child"):
        run_isolated(body)


@params
def test_a_full_send_buffer_is_a_counted_drop_never_a_wait(case: str, impl: str) -> None:
    """Back-pressure: a send socket whose buffer stays full (a tiny buffer in front of an 8 kbit/s
    qdisc) costs counted tx_full drops; the batch never waits, even on a blocking socket.

    Waiting for that qdisc would take about a minute for these frames: the test's own timeout
    (20 s) fails a datapath that blocks.
    """
    if impl == "fast" and not fast.available():
        pytest.skip("C fast path not built")

    def body(rig: Rig, fwd: Forwarder) -> None:
        subprocess.run(
            ["tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "8kbit", "burst", "1600", "limit", "3000000"],
            check=True,
        )  # fmt: skip
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as slow:
            slow.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # blocking, as a careless caller's
            frames = [frame(i, size=1400) for i in range(40)]
            for chunk in (frames[:20], frames[20:]):
                rig.inject(chunk)
                assert sum(rig.pump_tap(fwd, len(chunk), send=slow)) == len(chunk)
        snap = fwd.snapshot()
        sent, full = snap.remotes[0]["tx_packets"], snap.drops["tx_full"]
        assert snap.stats["tap_rx"] == 40 and snap.drops["tx_error"] == 0, snap
        assert full > 0 and sent + full == 40, snap

    in_namespace(case, impl, body, timeout=20.0)
