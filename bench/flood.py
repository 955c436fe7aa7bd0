"""What a flooded frame costs per remote in the C datapath, and the context's memory with many remotes.

    python3 -m bench.flood [--remotes 1,64,1024] [--io] [--rss]

For each remote count, a batch of 64 broadcast frames (110 bytes, VXLAN) goes through
``ovl_tx_process`` (the pure step: FDB lookup, head-end replication, one outer header per
copy from the remote's template) in a timing loop; printed: µs per flooded frame and ns
per copy. ``--io`` also runs ``ovl_from_tap`` (read the batch, process, sendmmsg on a raw
socket) in a network namespace of its own, where the remotes are routed to a dummy
device, so the kernel's per-packet send path is counted too (as root). ``--rss``: the
process's peak RSS after a context with 1,024 remotes (batch 64) was built and flooded.
It reports; it never passes or fails.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import pickle
import resource
import socket
import subprocess
import time
from typing import Any

from datapath import fast
from datapath.config import Config, Remote, TapConfig, TunnelConfig

FRAME = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x06" + bytes(96)
BATCH = 64
CLONE_NEWNET = 0x40000000


def forwarder(n: int) -> fast.FastForwarder:
    remotes = tuple(Remote(f"10.{1 + i // 250}.{i % 250}.2", "10.0.0.1") for i in range(n))
    cfg = Config(
        tunnel=TunnelConfig("vxlan", underlay_mtu=1500),
        remotes=remotes,
        tap=TapConfig(name="ovl-flood", mtu=1450, mac=b"\x02\0\0\0\0\1"),
        batch=BATCH,
    )
    return fast.FastForwarder(cfg)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


def flood(fwd: fast.FastForwarder, n: int) -> None:
    """A batch of broadcast frames through ovl_tx_process: every slot of the TX rings written."""
    bufs = [fast.ffi.from_buffer("uint8_t[]", bytearray(FRAME)) for _ in range(BATCH)]
    for i, b in enumerate(bufs):
        fast.lib.ovl_tx_load(fwd._dp, i, b, len(FRAME))
    assert fast.lib.ovl_tx_process(fwd._dp, BATCH, 0.0) == BATCH * n


def time_process(n: int, seconds: float = 1.0) -> float:
    """Seconds per flooded frame through ovl_tx_process."""
    fwd = forwarder(n)
    lib, ffi = fast.lib, fast.ffi
    bufs = [ffi.from_buffer("uint8_t[]", bytearray(FRAME)) for _ in range(BATCH)]
    frames = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for i, b in enumerate(bufs):
            lib.ovl_tx_load(fwd._dp, i, b, len(FRAME))
        assert lib.ovl_tx_process(fwd._dp, BATCH, 0.0) == BATCH * n
        frames += BATCH
    return (time.perf_counter() - start) / frames


def time_io(n: int, seconds: float = 1.0) -> float:
    """Seconds per flooded frame through ovl_from_tap (a datagram socketpair as the TAP; raw socket sends)."""
    fwd = forwarder(n)
    tap_in, tap_out = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    tap_out.setblocking(False)
    send = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    frames = 0
    elapsed = 0.0
    while elapsed < seconds:
        for _ in range(BATCH):
            tap_in.send(FRAME)
        t = time.perf_counter()
        got = fast.lib.ovl_from_tap(fwd._dp, tap_out.fileno(), send.fileno(), 0.0)
        elapsed += time.perf_counter() - t
        frames += got
    errors = fwd.snapshot().drops["tx_error"]
    if errors:
        print(f"  ({errors} sends refused)")
    return elapsed / frames


def in_namespace(fn: Any) -> Any:
    """Run fn() after unshare(CLONE_NEWNET) in a forked child, 10.0.0.0/9 routed out of a veth to a MAC no one has
    (the peer drops the frames as meant for another host: no ARP, no forwarding)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            if ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
            for cmd in (
                "ip link set lo up",
                "ip link add v0 type veth peer name v1",
                "ip link set v0 up",
                "ip link set v1 up",
                "ip addr add 10.255.255.1/30 dev v0",
                "ip neigh add 10.255.255.2 lladdr 02:00:00:00:00:02 dev v0 nud permanent",
                "ip route add 10.0.0.0/9 via 10.255.255.2",
            ):
                subprocess.run(cmd.split(), check=True)
            os.write(w, pickle.dumps(fn()))
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.waitpid(pid, 0)
    return pickle.loads(data)


def rss_io() -> str:
    """RSS of a context grown to 1,024 remotes at run time, after a batch of floods went out through the rings."""
    before = rss_mb()
    fwd = forwarder(1)
    for i in range(1, 1024):
        fwd.add_remote(Remote(f"10.{1 + i // 250}.{i % 250}.2", "10.0.0.1"))
    tap_in, tap_out = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    tap_out.setblocking(False)
    send = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    for _ in range(BATCH):
        tap_in.send(FRAME)
    fast.lib.ovl_from_tap(fwd._dp, tap_out.fileno(), send.fileno(), 0.0)
    snap = fwd.snapshot()
    sent = sum(int(r["tx_packets"]) for r in snap.remotes)
    return (f"RSS {before:.1f} MB before the context, {rss_mb():.1f} MB after 1,024 remotes and {BATCH} floods "
            f"sent ({sent} packets, {snap.drops['tx_error']} refused)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--remotes", default="1,64,1024")
    ap.add_argument("--io", action="store_true")
    ap.add_argument("--rss", action="store_true")
    args = ap.parse_args()
    counts = [int(x) for x in args.remotes.split(",")]
    for n in counts:
        per = time_process(n)
        line = f"{n:5d} remotes: ovl_tx_process {per * 1e6:9.2f} µs per flooded frame, {per / n * 1e9:6.1f} ns per copy"
        if args.io:
            io = in_namespace(lambda n=n: time_io(n))
            line += f"; ovl_from_tap + sendmmsg {io * 1e6:9.1f} µs per frame, {io / n * 1e9:6.0f} ns per copy"
        print(line, flush=True)
    if args.rss and args.io:
        print(in_namespace(rss_io))
    elif args.rss:
        before = rss_mb()
        fwd = forwarder(1)
        flood(fwd, 1)
        one = rss_mb()
        for i in range(1, 1024):
            fwd.add_remote(Remote(f"10.{1 + i // 250}.{i % 250}.2", "10.0.0.1"))
        flood(fwd, 1024)
        after = rss_mb()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"RSS: {before:.1f} MB before the context, {one:.1f} MB with 1 remote, {after:.1f} MB with 1,024 "
            f"remotes added at run time and a batch of {BATCH} floods sent through the rings (peak {peak:.1f} MB)"
        )


if __name__ == "__main__":
    main()
