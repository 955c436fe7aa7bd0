"""Back-pressure: a flood towards remotes whose underlay cannot keep up never stalls the daemon.

Two-host lab; host 1's underlay (ul0) is throttled to 1 Mbit/s by a token bucket
with a deep queue, and host 1 has, besides host 2, 30 remotes that never answer
ARP (their packets wait in the neighbour queue). Container 1 floods broadcast
frames, which ovl-dp sends to all 31 remotes: the send buffer is full almost at
once. A datapath that waits for it (a blocking send) would sit in one batch for
minutes; ovl-dp counts ``tx_full`` drops, keeps answering its control socket, and
exits on SIGTERM. The time from SIGTERM to exit is reported, not asserted.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from control.lab.hosts import Lab
from control.lab.shell import sh
from control.procs import stop_process, wait_until

pytestmark = pytest.mark.netns

ETHERTYPE = 0x88B5  # IEEE local experimental: the test's own frames
SILENT = [f"192.0.2.{i}" for i in range(100, 130)]  # on the underlay subnet, owned by nobody
WAIT = 30.0  # an upper bound for something to happen, never a speed requirement

# In container 1: broadcast frames of 1400 bytes on eth0 as fast as it can, until killed.
FLOOD = f"""
import socket
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
frame = b"\\xff" * 6 + bytes.fromhex("020000bb0001") + ({ETHERTYPE}).to_bytes(2, "big") + bytes(1386)
while True:
    try:
        s.send(frame)
    except BlockingIOError:
        pass
"""


# The tbf on the underlay is the back-pressure: the AF_PACKET TX ring bypasses the qdisc
# (PACKET_QDISC_BYPASS, README "TX ring"), so the C paths run here with the raw socket.
PATHS = {
    "fast": ("--tx-ring", "off"),
    "python": ("--no-fast-path",),
    "udp-gso": ("--udp-gso", "--tx-ring", "off"),
}


@pytest.mark.parametrize(
    ("mode", "path"), [("vxlan", "fast"), ("gre", "fast"), ("vxlan", "python"), ("vxlan", "udp-gso")]
)  # fmt: skip
def test_a_flood_into_a_full_underlay_is_dropped_and_counted_and_sigterm_still_ends_it(mode: str, path: str) -> None:
    with Lab(2).build() as lab:
        h1 = lab.host(1)
        sh("ip", "netns", "exec", h1, "tc", "qdisc", "add", "dev", "ul0", "root", "tbf",
           "rate", "1mbit", "burst", "1600", "limit", "50000000")  # fmt: skip
        remotes = [a for r in (lab.underlay_ip(2), *SILENT) for a in ("--remote", r)]
        daemon = lab.start(1, "--mode", mode, *remotes, *PATHS[path])
        flood = subprocess.Popen(
            ["ip", "netns", "exec", lab.container(1), "python3", "-c", FLOOD],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        lab.procs.append(flood)
        try:

            def dropping() -> bool:
                snap = lab.ovl(1, "show")  # the control socket answers under the flood
                return int(snap["drops"]["tx_full"]) > 1000

            wait_until("tx_full drops under the flood", dropping, WAIT, 0.2)
            snap = lab.ovl(1, "show")
            assert snap["stats"]["tap_rx"] > 0 and snap["drops"]["tx_error"] == 0, snap
            assert flood.poll() is None, flood.stderr.read() if flood.stderr else ""
            began = time.monotonic()
            code = lab.stop(daemon, timeout=WAIT)
            took = time.monotonic() - began
        finally:
            stop_process(flood, 5)
        print(f"{mode}/{path}: SIGTERM to exit under the flood: {took * 1000:.0f} ms; drops {snap['drops']}")
        assert code == 0, daemon.output()
        assert "Traceback" not in daemon.output(), daemon.output()
