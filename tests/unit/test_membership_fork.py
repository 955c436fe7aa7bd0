"""control.membership.etcd and fork: a child forked after gRPC ran in the parent must not hang.

A parent that ran an etcd client (gRPC) and left its objects to the cycle collector (collection off, as when
they sit in an old generation), then forks a child that collects: gRPC's finalizers spin in the child for
ever (its threads do not exist there), unless what the child inherited is frozen (the fork hook that
control.membership.etcd registers). In an interpreter of its own: the test must not change this process's
collector.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

GRPC_GARBAGE_THEN_FORK = """
import asyncio, gc, os
from control.membership.etcd import EtcdStore
from control.membership.store import Unavailable
from control.procs import collect_child

async def use_and_close() -> None:
    store = EtcdStore(["http://127.0.0.1:1"], timeout=0.5)  # nothing listens on port 1
    try:
        await store.get("/k")
    except Unavailable:
        pass
    await store.close()

gc.disable()
asyncio.run(use_and_close())
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    gc.collect()
    os.write(w, b"collected")
    os._exit(0)
os.close(w)
out, timed_out, status = collect_child(pid, r, 15)
print("hung" if timed_out else out.decode(), os.waitstatus_to_exitcode(status))
"""


def test_a_forked_child_does_not_finalize_the_grpc_objects_it_inherited() -> None:
    """The child's collection leaves the inherited gRPC garbage alone and returns (without the hook it spins)."""
    root = Path(__file__).resolve().parents[2]
    got = subprocess.run(
        [sys.executable, "-c", GRPC_GARBAGE_THEN_FORK], capture_output=True, text=True, timeout=60, cwd=root
    )
    assert got.returncode == 0, got.stderr
    assert got.stdout.split() == ["collected", "0"], got.stdout + got.stderr
