"""Test-only helpers for the interop tests: traffic checks, crafted frames, captures.

The peers that are not ovl-dp (kernel vxlan, OVS native tunnels) are built by
control.lab.peers, shared with bench. Everything here works only on the Lab's own
namespaces and addresses, and leaves the teardown to the Lab (namespaces, OVS
instances and processes it started).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from control.lab.hosts import Lab
from control.lab.shell import nsexec
from control.procs import wait_until

# -- what this ovl-dp can do ----------------------------------------------------------------


def ovl_ipv6_missing(mode: str, *keys: str) -> str | None:
    """None if this ovl-dp accepts an IPv6 remote in mode (and each configuration key in keys set to
    true), else why not: its configuration check (datapath.config.from_keys, what `ovl-dp run` uses)
    is asked, never a version."""
    from datapath.config import ConfigError, from_keys

    values: dict[str, object] = {"tunnel.mode": mode, "remotes": ["fd00:192:2::2"]}
    values.update(dict.fromkeys(keys, True))
    try:
        from_keys(values)
    except ConfigError as exc:
        return f"this ovl-dp does not take an IPv6 remote in {mode} mode: {exc}"
    return None


# -- traffic ----------------------------------------------------------------------------


def iperf_bytes(lab: Lab, client: int, server: int, seconds: int = 2) -> int:
    """Bytes an iperf3 TCP transfer from container client to container server delivered (asserts no error)."""
    result = lab.iperf3(client, server, seconds)
    assert "error" not in result, result
    return int(result["end"]["sum_received"]["bytes"])


# -- frames on the wire -------------------------------------------------------------------

SEND_FRAMES = """
import socket, sys
iface, count = sys.argv[1], int(sys.argv[2])
with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
    s.bind((iface, 0))
    for frame in sys.argv[3:]:
        for _ in range(count):
            s.send(bytes.fromhex(frame))
"""


def send_frames(ns: str, iface: str, frames: list[bytes], count: int = 1) -> None:
    """Send each Ethernet frame count times out of iface in namespace ns (AF_PACKET, bytes as given)."""
    nsexec(ns, sys.executable, "-c", SEND_FRAMES, iface, str(count), *(f.hex() for f in frames))


class Capture:
    """tcpdump on iface in namespace ns, writing a pcap in the lab's workdir; stop() returns the frames' bytes.

    The process is one of the lab's, so the lab stops it (by PID) also if the test fails first.
    """

    def __init__(self, lab: Lab, ns: str, iface: str, bpf: str, name: str) -> None:
        self.path = lab.workdir / f"{name}.pcap"
        err = lab.workdir / f"{name}.tcpdump"
        with err.open("wb") as out:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, "tcpdump", "-Z", "root", "--immediate-mode", "-U", "-n", "-s", "0",
                 "-i", iface, "-w", str(self.path), bpf],
                stdout=subprocess.DEVNULL, stderr=out, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        lab.procs.append(self.proc)
        wait_until(
            f"tcpdump on {ns}/{iface}", lambda: "listening on" in err.read_text() or self.proc.poll() is not None
        )
        assert self.proc.poll() is None, err.read_text()

    def stop(self) -> list[bytes]:
        """Stop tcpdump (SIGINT: it flushes the file) and return what it captured, oldest first."""
        import scapy.layers.l2  # noqa: F401  (registers Ethernet for rdpcap)
        from scapy.utils import rdpcap

        time.sleep(0.2)  # let the last packets reach the socket
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(5)
        return [bytes(p) for p in rdpcap(str(self.path))]
