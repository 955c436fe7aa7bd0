"""csrc/loop.c and datapath/dpthread.py: the C data-path loop in a thread, pause / resume / stop.

On loopback sockets (no namespace): the "TAP" is one end of a datagram socketpair, the
underlay a UDP socket bound on 127.0.0.1 (the remote), sends go through a raw socket. The
tests check behaviour (what came out, what the runner's state bits say), never times.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from datapath import dpthread, fast
from datapath.config import Config, Remote, TapConfig, TunnelConfig
from datapath.encap.vxlan import Vxlan

pytestmark = pytest.mark.skipif(not fast.available(), reason="C fast path not built (python3 csrc/build.py)")

LO = "127.0.0.1"
OTHER = "127.0.0.2"
MAC_A = b"\x02\x00\x00\x00\x00\x0a"
MAC_B = b"\x02\x00\x00\x00\x00\x0b"
WAIT = 30.0  # an upper bound for something to arrive, never a speed requirement


def bits() -> dict[str, int]:
    lib = fast.lib
    return {
        "active": lib.OVL_RUNNER_ACTIVE,
        "parked": lib.OVL_RUNNER_PARKED,
        "stop": lib.OVL_RUNNER_STOP,
        "paused": lib.OVL_RUNNER_PAUSED,
    }


def state(fwd: fast.FastForwarder) -> set[str]:
    s = fwd.runner_state()
    return {name for name, bit in bits().items() if s & bit}


class Rig:
    """A forwarder on loopback sockets and a data-path thread over them."""

    def __init__(self) -> None:
        self.recv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.recv.bind((LO, 0))
        self.recv.setblocking(False)
        self.port = self.recv.getsockname()[1]
        self.send = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.tap, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.tap.setblocking(False)
        self.cfg = Config(
            tunnel=TunnelConfig("vxlan", vni=99, port=self.port, underlay_mtu=1500),
            remotes=(Remote(LO, LO),),
            tap=TapConfig(name="ovl0", mtu=1450, mac=b"\x02\x00\x00\x00\x00\x01"),
        )
        self.fwd = fast.FastForwarder(self.cfg)
        self.errors: list[tuple[str, OSError]] = []
        self.thread: dpthread.DataPathThread | None = None
        self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def start(self, tap_fd: int | None = None, tap_gone: tuple[int, ...] = ()) -> dpthread.DataPathThread:
        self.thread = dpthread.DataPathThread(
            self.fwd,
            self.tap.fileno() if tap_fd is None else tap_fd,
            self.recv.fileno(),
            self.send.fileno(),
            lambda kind, exc: self.errors.append((kind, exc)),
            tap_gone=tap_gone,
        )
        self.thread.start()
        return self.thread

    def packet(self, inner: bytes, vni: int = 99) -> bytes:
        return Vxlan(vni, port=self.port).build(inner, bytes(4), bytes(4))[28:]

    def from_remote(self, inner: bytes) -> None:
        self.tx.sendto(self.packet(inner), (LO, self.port))

    def close(self) -> None:
        if self.thread is not None:
            self.thread.stop()
        for s in (self.recv, self.send, self.tap, self.peer, self.tx):
            s.close()


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    try:
        yield r
    finally:
        r.close()


def wait_active(fwd: fast.FastForwarder) -> None:
    """Until the started thread is inside its loop (a pause before that returns at once, also valid)."""
    for _ in range(int(WAIT * 100)):
        if "active" in state(fwd):
            return
        threading.Event().wait(0.01)
    raise AssertionError("the data-path thread never entered its loop")


def inner(n: int = 0, src: bytes = MAC_B) -> bytes:
    return MAC_A + src + b"\x08\x00" + n.to_bytes(4, "big") + bytes(42)


def read_frame(sock: socket.socket) -> bytes:
    assert select.select([sock], [], [], WAIT)[0], "nothing came out of the data-path thread"
    return sock.recv(4096)


def test_pause_without_a_thread_is_immediate_and_nests(rig: Rig) -> None:
    """Before the first start no runner exists (a pause is a no-op); with a runner and no thread
    inside it a pause returns at once, is counted, nests, and a resume too many is refused."""
    assert rig.fwd.runner_state() == 0
    with rig.fwd.paused():
        assert rig.fwd.runner_state() == 0
    rig.fwd.runner_start()
    assert state(rig.fwd) == set()
    with rig.fwd.paused():
        assert state(rig.fwd) == {"paused"}
        with rig.fwd.paused():
            assert state(rig.fwd) == {"paused"}
        assert state(rig.fwd) == {"paused"}
    assert state(rig.fwd) == set()
    assert fast.lib.ovl_runner_resume(rig.fwd._running) == -1
    rig.fwd.runner_stop()
    assert state(rig.fwd) == {"stop"}
    rig.fwd.runner_end()
    rig.fwd.runner_start()  # rearmed
    assert state(rig.fwd) == set()
    rig.fwd.runner_end()


def test_frames_flow_through_the_thread_both_ways(rig: Rig) -> None:
    """Underlay -> TAP: decapsulated, learned; TAP -> underlay: the raw socket sends to 127.0.0.1 on the
    receiving port, so the frame comes back through the thread (the remote is ourselves)."""
    th = rig.start()
    rig.from_remote(inner(1))
    assert read_frame(rig.peer) == inner(1)
    assert [(e.mac, e.remote) for e in rig.fwd.fdb.entries()] == [(MAC_B, 0)]
    with open(f"/proc/self/task/{th.native_id}/comm") as f:
        assert f.read().strip() == "ovl-dp data"  # named by the loop (top -H, perf)
    # A frame into the TAP towards MAC_B (learned behind remote 0 = 127.0.0.1): out and back in.
    out = MAC_B + MAC_A + b"\x08\x00" + b"tap-side".ljust(46, b"\0")
    rig.peer.send(out)
    assert read_frame(rig.peer) == out
    snap = rig.fwd.snapshot()
    assert snap.stats["tap_rx"] == 1 and snap.stats["tx_unicast"] == 1 and snap.stats["tap_tx"] == 2
    assert snap.remotes[0]["tx_packets"] == 1 and snap.remotes[0]["rx_packets"] == 2
    assert th.alive and "active" in state(rig.fwd)
    th.stop()
    assert not th.alive and state(rig.fwd) == {"stop"}  # until the next start rearms it
    # After the stop nothing is read: the packet stays queued on the socket.
    rig.from_remote(inner(2))
    assert select.select([rig.recv], [], [], WAIT)[0]
    assert rig.fwd.snapshot().stats["tap_tx"] == 2
    assert rig.fwd.from_tunnel(rig.recv, rig.tap.fileno()) == 1  # the same forwarder, from Python again
    assert read_frame(rig.peer) == inner(2)


def test_a_pause_stops_the_world_under_traffic(rig: Rig) -> None:
    """While a sender floods the underlay, each pause finds the loop parked and the counters still;
    a remote added and removed in a pause is applied: packets from it are dropped, then delivered."""
    rig.start()
    wait_active(rig.fwd)
    stop = threading.Event()
    other_sent = [0]

    def flood() -> None:
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx2,
        ):
            tx2.bind((OTHER, 0))
            n = 0
            while not stop.is_set():
                tx.sendto(rig.packet(inner(n)), (LO, rig.port))
                if n % 8 == 0:
                    tx2.sendto(rig.packet(inner(n, src=b"\x02\x00\x00\x00\x00\x0c")), (LO, rig.port))
                    other_sent[0] += 1
                n += 1

    def drain() -> None:
        rig.peer.setblocking(False)
        while not stop.is_set():
            if select.select([rig.peer], [], [], 0.1)[0]:
                try:
                    while True:
                        rig.peer.recv(4096)
                except BlockingIOError:
                    pass

    workers = [threading.Thread(target=flood), threading.Thread(target=drain)]
    for w in workers:
        w.start()
    try:
        seen = []
        for i in range(50):
            with rig.fwd.paused():
                assert state(rig.fwd) == {"active", "parked", "paused"}
                a = rig.fwd.snapshot()
                b = rig.fwd.snapshot()
                assert a == b  # nothing moves while the world is stopped
                seen.append(a.stats["tap_tx"] + a.drops["rx_not_remote"])
                if i == 10:
                    slot = rig.fwd.add_remote(Remote(OTHER, LO))
                if i == 30:
                    rig.fwd.remove_remote(slot)
            threading.Event().wait(0.01)  # the world turns between two pauses
        assert seen[-1] > seen[0], seen  # traffic flowed between the pauses
    finally:
        stop.set()
        for w in workers:
            w.join()
    snap = rig.fwd.snapshot()
    assert snap.drops["rx_not_remote"] > 0  # before the add and after the remove
    assert rig.errors == []


def test_stop_inside_a_pause_and_from_another_thread(rig: Rig) -> None:
    """A stop while paused ends the loop (joined inside the block); a pause from another thread works."""
    th = rig.start()
    wait_active(rig.fwd)
    done = threading.Event()

    def other() -> None:
        with rig.fwd.paused():
            assert "parked" in state(rig.fwd)
        done.set()

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert done.is_set()
    with rig.fwd.paused():
        th.stop()
        assert not th.alive
    assert state(rig.fwd) == {"stop"}  # the block resumed the runner it paused


def test_a_failing_receive_is_reported_and_the_loop_goes_on(rig: Rig) -> None:
    """ECONNREFUSED queued on the receiving socket (connected to a closed port): on_error(tunnel), then
    frames are forwarded again."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind((LO, 0))
        dead = closed.getsockname()
    rig.start()
    rig.recv.connect(dead)
    rig.recv.send(b"x")  # ICMP port unreachable -> a pending socket error
    for _ in range(int(WAIT * 10)):
        if rig.errors:
            break
        threading.Event().wait(0.1)
    assert [(k, e.errno) for k, e in rig.errors] == [(dpthread.TUNNEL, errno.ECONNREFUSED)]
    rig.recv.connect((LO, rig.port))  # what it is connected to filters the sources: the "remote" is us
    rig.recv.sendto(rig.packet(inner(3)), (LO, rig.port))
    assert read_frame(rig.peer) == inner(3)


def test_a_tap_gone_error_ends_the_tap_reading_only(rig: Rig) -> None:
    """A TAP read failing with an errno of tap_gone (here EISDIR from a directory fd, which poll calls
    readable for ever) is reported once; the thread stops reading it and still receives."""
    dirfd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        th = rig.start(tap_fd=dirfd, tap_gone=(errno.EISDIR,))
        for _ in range(int(WAIT * 10)):
            if rig.errors:
                break
            threading.Event().wait(0.1)
        rig.from_remote(inner(4))  # the TAP not read any more is written as fd -1 (EBADF): counted
        for _ in range(int(WAIT * 10)):
            if rig.fwd.snapshot().drops["rx_tap_error"]:
                break
            threading.Event().wait(0.1)
        assert [(k, e.errno) for k, e in rig.errors] == [(dpthread.TAP, errno.EISDIR)]
        assert not th.reading_tap and th.alive
        assert rig.fwd.snapshot().drops["rx_tap_error"] == 1
        th.stop()
    finally:
        os.close(dirfd)


def test_only_one_thread_per_runner(rig: Rig) -> None:
    """A second loop on the same runner is refused (EBUSY) while the first runs."""
    rig.start()
    wait_active(rig.fwd)
    err: Any = fast.ffi.new("int32_t *")
    rc = fast.lib.ovl_runner_run(rig.fwd._running, rig.fwd._dp, -1, rig.recv.fileno(), rig.send.fileno(), err)
    assert rc == fast.lib.OVL_RUN_FAILED and err[0] == errno.EBUSY
