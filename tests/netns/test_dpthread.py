"""The engine's C data-path thread (offload.dp_thread) on a real TAP and real sockets, in a namespace.

Which path runs (the thread, or batches from the asyncio loop: --no-dp-thread, another clock),
frames through the thread both ways, control calls applied while the remote floods the
underlay, and stop_reading: the thread is joined and nothing more is read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import select
import socket
import threading
import time
from pathlib import Path

import pytest

from control.config import ConfigSource
from control.service import Service
from datapath import fast
from datapath.config import Config, Remote
from datapath.engine import Engine
from datapath.ether import format_mac
from tests.isolated import run_isolated
from tests.netns.netutil import ip
from tests.netns.test_engine import (
    ETH_P_ALL,
    LOCAL,
    MAC_A,
    MAC_B,
    PACKET_OUTGOING,
    PORT,
    REMOTE,
    TAP,
    WAIT,
    engine_cfg,
    frame,
    remote_reader,
    run_until,
    send_from_remote,
    skip_without_c,
    underlay,
)
from tests.netns.test_service import write_config

pytestmark = pytest.mark.netns

THREAD_NAME = "ovl-dp data path"
OTHER = "10.9.0.3"


def dp_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


def with_thread(cfg: Config, on: bool) -> Config:
    return dataclasses.replace(cfg, offload=dataclasses.replace(cfg.offload, dp_thread=on))


@pytest.mark.parametrize("how", ["thread", "no-dp-thread", "own-clock"])
def test_which_path_runs_and_frames_flow_both_ways(how: str) -> None:
    """The thread by default; --no-dp-thread or a clock other than time.monotonic: the loop's readers."""
    skip_without_c("fast")

    def body() -> None:
        underlay()
        cfg = with_thread(engine_cfg("vxlan", "fast"), how != "no-dp-thread")
        eng = Engine(cfg, clock=(lambda: time.monotonic()) if how == "own-clock" else time.monotonic)
        reader = remote_reader("vxlan")
        pkt = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        loop = asyncio.new_event_loop()
        try:
            pkt.bind((TAP, 0))
            pkt.setblocking(False)
            eng.start(loop)
            assert len(dp_threads()) == (1 if how == "thread" else 0)
            assert eng.threaded == (how == "thread")
            out = frame(b"\xff" * 6, MAC_A)
            pkt.send(out)
            got = loop.run_until_complete(asyncio.wait_for(loop.sock_recv(reader, 65536), WAIT))
            assert got.endswith(out)
            back = frame(MAC_A, MAC_B, b"from the remote")
            send_from_remote(cfg, back)

            def arrived() -> bool:
                try:
                    data, addr = pkt.recvfrom(65536)
                except BlockingIOError:
                    return False
                return addr[2] != PACKET_OUTGOING and data == back

            run_until(loop, arrived)
            assert [r["mac"] for r in eng.fdb_table()] == [format_mac(MAC_B)]
            eng.stop_reading()
            assert dp_threads() == []
        finally:
            eng.close()
            loop.close()
            reader.close()
            pkt.close()

    run_isolated(body)


class Flood:
    """The remote sends VXLAN packets (from MAC_B, to MAC_A) as fast as it can, in a thread."""

    def __init__(self, cfg: Config) -> None:
        self.packet = cfg.encap.build(frame(MAC_A, MAC_B), socket.inet_aton(REMOTE), socket.inet_aton(LOCAL))[28:]
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((REMOTE, 0))
            while not self._stop.is_set():
                for _ in range(64):
                    s.sendto(self.packet, (LOCAL, PORT))
                self.sent += 64

    def __enter__(self) -> Flood:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_control_calls_apply_under_heavy_traffic() -> None:
    """While the remote floods: remove it (its packets now dropped as rx_not_remote, its entries purged),
    add it back (delivered again), add and drop another remote, FDB calls, set_remote_local; then
    stop_reading joins the thread and nothing more is read (the rest stays queued on the socket)."""
    skip_without_c("fast")

    def body() -> None:
        underlay()
        ip("addr", "add", f"{OTHER}/32", "dev", "lo")
        cfg = engine_cfg("vxlan", "fast")
        eng = Engine(cfg)
        loop = asyncio.new_event_loop()
        try:
            eng.start(loop)
            assert eng.threaded and len(dp_threads()) == 1
            with Flood(cfg):

                def rx() -> int:
                    return int(eng.snapshot().remotes[0]["rx_packets"]) if eng.remotes() else 0

                def not_remote() -> int:
                    return eng.snapshot().drops["rx_not_remote"]

                run_until(loop, lambda: rx() > 1000)
                assert [r["mac"] for r in eng.fdb_table()] == [format_mac(MAC_B)]
                assert eng.remove_remote(REMOTE) == 1  # the learned MAC_B went with it
                assert eng.remotes() == () and eng.fdb_table() == []
                base = not_remote()
                run_until(loop, lambda: not_remote() > base + 1000)
                eng.add_remote(Remote(REMOTE, LOCAL))
                run_until(loop, lambda: rx() > 1000)  # counters of a new slot start at 0
                eng.add_remote(Remote(OTHER, LOCAL))
                eng.fdb_add(b"\x02\x00\x00\x00\x00\x77", OTHER)
                eng.set_remote_local(REMOTE, LOCAL)
                eng.set_fdb_limits(100, 30.0)
                assert [r.addr for r in eng.remotes()] == [REMOTE, OTHER]
                assert {r["mac"] for r in eng.fdb_table()} == {format_mac(MAC_B), "02:00:00:00:00:77"}
                assert eng.remove_remote(OTHER) == 1
                run_until(loop, lambda: rx() > 5000)
                eng.stop_reading()
                assert dp_threads() == []
                first = eng.snapshot()
                time.sleep(0.2)
                assert eng.snapshot() == first  # nothing read after the join
                assert select.select([eng.recv_sock], [], [], WAIT)[0]  # the flood is still queued
            print(f"\nflood: {first.remotes[0]['rx_packets']} delivered after the re-add, "
                  f"{first.drops['rx_not_remote']} dropped while removed, io_errors {eng.io_errors}")  # fmt: skip
            assert eng.io_errors == 0
        finally:
            eng.close()
            loop.close()

    run_isolated(body)


def test_start_again_after_stop_reading() -> None:
    """A takeover that fails hands the fds back: start() after stop_reading() runs a new thread."""
    skip_without_c("fast")

    def body() -> None:
        underlay()
        cfg = engine_cfg("vxlan", "fast")
        eng = Engine(cfg)
        loop = asyncio.new_event_loop()
        try:
            for _ in range(3):
                eng.start(loop)
                assert len(dp_threads()) == 1
                n = eng.snapshot().stats["tap_tx"]  # before the send: the thread may be quicker than the next line
                send_from_remote(cfg, frame(MAC_A, MAC_B))
                run_until(loop, lambda n=n: eng.snapshot().stats["tap_tx"] > n)
                eng.stop_reading()
                assert dp_threads() == []
        finally:
            eng.close()
            loop.close()

    run_isolated(body)


def test_fdb_import_stops_the_world_once() -> None:
    """A takeover's FDB (up to the size cap, on the loop after start) enters under one pause: the
    thread is parked once for all rows, not once per row (each a wake-up and two context switches)."""
    skip_without_c("fast")

    def body() -> None:
        underlay()
        cfg = engine_cfg("vxlan", "fast")
        eng = Engine(cfg)
        loop = asyncio.new_event_loop()
        stops = [0]  # pauses that had to park a running loop (none was held already)
        real_enter = fast.Paused.__enter__

        def counting_enter(self: fast.Paused) -> None:
            runner = self._runner  # the runner this block pauses
            if runner is not None and not fast.lib.ovl_runner_state(runner) & fast.lib.OVL_RUNNER_PAUSED:
                stops[0] += 1
            real_enter(self)

        try:
            eng.start(loop)
            assert len(dp_threads()) == 1
            rows = [(bytes([2, 0, 0, 0, 1, i]), 0, REMOTE, False, 1.0) for i in range(50)]
            fast.Paused.__enter__ = counting_enter  # type: ignore[method-assign]
            try:
                counts = eng.fdb_import(rows)
            finally:
                fast.Paused.__enter__ = real_enter  # type: ignore[method-assign]
            assert counts["learned"] == 50
            print(f"fdb_import of 50 rows: the data-path thread parked {stops[0]} time(s)")
            assert stops[0] == 1, stops[0]
        finally:
            eng.close()
            loop.close()

    run_isolated(body)


def test_a_reload_applies_as_one_change(tmp_path: Path) -> None:
    """A reload that moves static entries (delete, then add) is one change for the data path, as it was
    on the loop's path: the thread is parked once for all its steps, so no frame is flooded or
    learned half-way (one park: the plan reads the remotes from the engine's own index, which parks
    nothing; then every step in one pause)."""
    skip_without_c("fast")

    def body() -> None:
        underlay()
        eng = Engine(engine_cfg("vxlan", "fast"))
        loop = asyncio.new_event_loop()
        conf = tmp_path / "ovl.toml"
        macs = [f"02:00:00:00:02:0{i}" for i in range(4)]
        write_config(conf, [REMOTE], tuple(f"{m}={REMOTE}" for m in macs[:2]))
        source = ConfigSource(file=conf)
        service = Service(eng, source, "linux", source.load())
        stops = [0]
        real_enter = fast.Paused.__enter__

        def counting_enter(self: fast.Paused) -> None:
            runner = self._runner  # the runner this block pauses
            if runner is not None and not fast.lib.ovl_runner_state(runner) & fast.lib.OVL_RUNNER_PAUSED:
                stops[0] += 1
            real_enter(self)

        try:
            for m in macs[:2]:
                eng.fdb_add(bytes.fromhex(m.replace(":", "")), REMOTE)
            eng.start(loop)
            assert len(dp_threads()) == 1
            write_config(conf, [REMOTE], tuple(f"{m}={REMOTE}" for m in macs[2:]))
            fast.Paused.__enter__ = counting_enter  # type: ignore[method-assign]
            try:
                applied = service.handle("reload", {})
            finally:
                fast.Paused.__enter__ = real_enter  # type: ignore[method-assign]
            print(f"reload {applied}: the data-path thread parked {stops[0]} time(s)")
            assert sorted(r["mac"] for r in eng.fdb_table() if r["static"]) == macs[2:]
            assert stops[0] == 1, stops[0]  # all steps; the plan's look at the remotes parks nothing (issue 12)
        finally:
            eng.close()
            loop.close()

    run_isolated(body)
