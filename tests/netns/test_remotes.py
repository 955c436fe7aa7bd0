"""Remotes changed at run time, in the three-host lab: the engine on host 1, ovl-dp daemons on hosts 2 and 3.

Host 1's engine runs in a child that joined host 1's namespace (the control socket
cannot change remotes yet), on an asyncio loop that also drives the traffic, so
nothing blocks the loop while frames flow. Host 2 (remote A) is a remote from the
start; host 3 (remote B) is added and removed while container 1 pings container 2.
Checked: not one ping lost and A's packets counted alike on both ends; B gets the
floods sent while it is a remote and none before or after; B's MACs are purged when
it goes; the engine's rows show addresses and the last receive time.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from control import bridge
from control.config import resolve
from control.lab.hosts import Lab, container_mtu
from datapath import fast
from datapath.config import Config, OffloadConfig, Remote, TapConfig, TunnelConfig
from datapath.engine import Engine
from datapath.io import underlay
from tests.isolated import run_isolated

pytestmark = pytest.mark.netns

ETHERTYPE = 0x88B5  # IEEE local experimental: the test's own broadcast frames
WAIT = 20.0  # an upper bound for something to happen, never a speed requirement
PINGS = 300

# In a container: count the test's broadcast frames on eth0 by phase byte until SIGTERM, then print them.
LISTEN = f"""
import json, signal, socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons({ETHERTYPE}))
s.bind(("eth0", 0))
seen = {{}}
def done(*_):
    print(json.dumps(seen), flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
print("ready", flush=True)
while True:
    data = s.recv(2048)
    if data[14:20] == b"ovl-rt":
        seen[str(data[20])] = seen.get(str(data[20]), 0) + 1
"""
# In container 1: send N broadcast frames of phase P.
SEND = f"""
import socket, sys
n, phase = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
for i in range(n):
    s.send(b"\\xff" * 6 + bytes([2, 0, 0, 0, 1, phase]) + ({ETHERTYPE}).to_bytes(2, "big")
           + b"ovl-rt" + bytes([phase, i]) + bytes(40))
"""


async def run(*cmd: str) -> str:
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), WAIT * 3)
    assert proc.returncode == 0, (cmd, out, err)
    return out.decode()


async def until(what: str, check: Callable[[], Awaitable[bool]], detail: Callable[[], Awaitable[object]]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not await check():
        if loop.time() >= deadline:
            pytest.fail(f"timed out waiting for {what}: {await detail()}")
        await asyncio.sleep(0.05)


def scenario(lab: Lab, mode: str, path: str) -> None:
    """In host 1's namespace: the engine, with host 2 as its remote; see the module docstring."""
    ip1, ip2, ip3 = (lab.underlay_ip(i) for i in (1, 2, 3))
    user = Config(
        tunnel=TunnelConfig(mode),
        remotes=(Remote(ip2),),
        tap=TapConfig(name="ovl-rt"),
        offload=OffloadConfig(fast_path=path == "fast"),
    )
    cfg = resolve(user, "linux")
    br = bridge.resolve("br-int", "linux")
    eng = Engine(cfg)
    assert eng.fast == (path == "fast")
    loop = asyncio.new_event_loop()
    try:
        br.attach(eng.tap.name)
        eng.start(loop)
        loop.run_until_complete(traffic(lab, eng, ip1, ip2, ip3))
    finally:
        eng.close()
        loop.close()


def row(eng: Engine, addr: str) -> dict[str, Any]:
    return next(r for r in eng.remote_rows() if r["remote"] == addr)


async def daemon_remote(lab: Lab, host: int) -> dict[str, int]:
    """The counters host's daemon keeps for host 1 (its only remote)."""
    out = await run("ip", "netns", "exec", lab.host(host), sys.executable, "-m", "control.cli", "show", "--json")
    (r,) = json.loads(out)["remotes"]
    assert r["remote"] == lab.underlay_ip(1)
    return {k: int(v) for k, v in r.items() if k != "remote"}


async def traffic(lab: Lab, eng: Engine, ip1: str, ip2: str, ip3: str) -> None:
    async def listen(c: int) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", lab.container(c), sys.executable, "-c", LISTEN, stdout=asyncio.subprocess.PIPE
        )  # fmt: skip
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), WAIT)).strip() == b"ready"
        return proc

    async def floods(phase: int, n: int = 5) -> None:
        await run("ip", "netns", "exec", lab.container(1), sys.executable, "-c", SEND, str(n), str(phase))
        await asyncio.sleep(0.3)

    async def counts(proc: asyncio.subprocess.Process) -> dict[str, int]:
        proc.terminate()
        out, _ = await asyncio.wait_for(proc.communicate(), WAIT)
        return {k: int(v) for k, v in json.loads(out).items()}

    # What host 2 sent host 1 before the engine was there (a container's IPv6 chatter) never arrived:
    # the offset of the two counts, once it holds still, is what the end compares against.
    async def offset() -> int:
        return (await daemon_remote(lab, 2))["tx_packets"] - int(row(eng, ip2)["rx_packets"])

    before = await offset()
    while (now := await offset()) != before:
        before = now
    listeners = {c: await listen(c) for c in (2, 3)}
    # Learn both containers' MACs on the way (the ping's ARP), then keep the ping going to A.
    await run("ip", "netns", "exec", lab.container(1), "ping", "-n", "-q", "-c", "2", "-W", "2", lab.overlay_ip(2))
    ping = asyncio.ensure_future(
        run("ip", "netns", "exec", lab.container(1), "ping", "-n", "-q", "-c", str(PINGS), "-i", "0.01", "-W", "2",
            lab.overlay_ip(2))
    )  # fmt: skip
    await floods(0)  # B is not a remote yet

    eng.add_remote(Remote(ip3, underlay.route_to(ip3)[0]))
    assert [r.addr for r in eng.remotes()] == [ip2, ip3]
    assert row(eng, ip3)["last_rx_age"] is None and row(eng, ip3)["tx_packets"] == 0
    await floods(1)
    # Container 3 talks to container 1 across B: its MAC is learned behind B.
    await run("ip", "netns", "exec", lab.container(3), "ping", "-n", "-q", "-c", "2", "-W", "2", lab.overlay_ip(1))
    behind_b = [r["mac"] for r in eng.fdb_table() if r["remote"] == ip3]
    assert behind_b, eng.fdb_table()
    age = row(eng, ip3)["last_rx_age"]
    assert isinstance(age, float) and 0 <= age < WAIT
    assert not ping.done()  # the ping to A runs across the whole change

    assert eng.remove_remote(ip3) == len(behind_b)
    assert [r.addr for r in eng.remotes()] == [ip2]
    assert all(r["remote"] != ip3 for r in eng.fdb_table())
    with pytest.raises(KeyError, match=f"{ip3} is not a remote"):
        eng.remove_remote(ip3)
    await floods(2)  # B is gone again

    out = await ping
    assert f"{PINGS} packets transmitted, {PINGS} received" in out, out
    seen2, seen3 = await counts(listeners[2]), await counts(listeners[3])
    assert seen2 == {"0": 5, "1": 5, "2": 5}, seen2  # A: every flood
    assert seen3 == {"1": 5}, seen3  # B: only while it was a remote

    # Remote A counted alike on both ends, both ways (once nothing is in flight; host 1 -> 2 exactly, as
    # host 2's daemon was there first).
    async def a_balanced() -> bool:
        mine, theirs = row(eng, ip2), await daemon_remote(lab, 2)
        return mine["tx_packets"] == theirs["rx_packets"] and mine["rx_packets"] == theirs["tx_packets"] - before

    async def both_ends() -> object:
        return before, row(eng, ip2), await daemon_remote(lab, 2), eng.snapshot().drops

    await until("host 1's and host 2's counters of each other to agree", a_balanced, both_ends)
    assert int(row(eng, ip2)["tx_packets"]) >= PINGS and int(row(eng, ip2)["rx_packets"]) >= PINGS
    drops = eng.snapshot().drops
    assert drops["tx_error"] == 0 and drops["rx_tap_error"] == 0, drops


@pytest.mark.parametrize(("mode", "path"), [("vxlan", "fast"), ("gre", "python")])
def test_remote_added_and_removed_under_traffic(mode: str, path: str) -> None:
    if path == "fast" and not fast.available():
        pytest.skip("C fast path not built (python3 csrc/build.py)")
    with Lab(3) as lab:
        lab.build(container_mtu(mode))
        for i in (2, 3):
            lab.start(i, "--mode", mode, "--remote", lab.underlay_ip(1))
        run_isolated(lambda: scenario(lab, mode, path), timeout=120, netns=lab.host(1))
