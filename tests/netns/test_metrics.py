"""`ovl-dp run --metrics`: a real daemon in the lab, scraped over HTTP from inside its namespace.

The client is urllib, run with `ip netns exec` in the host's namespace (the
endpoint listens on that namespace's 127.0.0.1, as by default). Counters move
after a ping through the tunnel; /healthz follows the TAP's place on the bridge.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from control import ovs
from control.lab.hosts import Lab, container_mtu
from control.lab.shell import sh
from control.procs import wait_until
from tests.isolated import run_isolated
from tests.netns.netutil import exists, veth

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("no_leftovers")]

ROOT = Path(__file__).resolve().parents[2]
PORT = 9109
TIMEOUT = 30.0  # an upper bound for a request to come back, never a speed requirement

# Runs inside the namespace: GET http://127.0.0.1:PORT/PATH, prints the status line and the body.
CLIENT = """
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as res:
        status, body = res.status, res.read()
except urllib.error.HTTPError as exc:
    status, body = exc.code, exc.read()
sys.stdout.write(f"{status}\\n{body.decode()}")
"""


def scrape(ns: str, path: str, port: int = PORT) -> tuple[int, str]:
    """Status and body of GET http://127.0.0.1:port/path, from inside namespace ns."""
    res = sh("ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, f"http://127.0.0.1:{port}{path}", str(TIMEOUT))
    status, _, body = res.stdout.partition("\n")
    return int(status), body


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape: (name, labels) -> value."""
    return {
        (s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples
    }


def one(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


@pytest.mark.parametrize(
    ("mode", "path"), [("vxlan", "fast"), ("gre", "fast"), ("vxlan", "python")]
)  # fmt: skip
def test_counters_move_after_a_ping_and_healthz_follows_the_bridge(mode: str, path: str) -> None:
    with Lab(2) as lab:
        lab.build(container_mtu(mode))
        extra = () if path == "fast" else ("--no-fast-path",)
        lab.start_mesh(mode, "--metrics", f"127.0.0.1:{PORT}", *extra)
        h1, tap = lab.host(1), f"ovl-{mode}"
        remote = lab.underlay_ip(2)
        assert f"metrics on http://127.0.0.1:{PORT}/metrics" in lab.daemons[1].output()

        status, text = scrape(h1, "/metrics")
        assert status == 200, text
        before = samples(text)
        assert one(before, "ovl_dp_remotes", tap=tap) == 1
        assert one(before, "ovl_dp_fast_path_enabled", tap=tap) == (1 if path == "fast" else 0)
        [(labels, info)] = [(dict(k[1]), v) for k, v in before.items() if k[0] == "ovl_dp_build_info"]
        assert info == 1
        assert labels["mode"] == mode and labels["bridge_type"] == "linux" and labels["tap"] == tap
        assert labels["path"] == ("c" if path == "fast" else "python")

        assert lab.ping(1, 2, count=5)["loss"] < 100
        status, text = scrape(h1, "/metrics")
        assert status == 200, text
        after = samples(text)
        for name in ("ovl_dp_remote_tx_packets_total", "ovl_dp_remote_tx_bytes_total",
                     "ovl_dp_remote_rx_packets_total", "ovl_dp_remote_rx_bytes_total"):  # fmt: skip
            assert one(after, name, tap=tap, remote=remote) > one(before, name, tap=tap, remote=remote), name
        assert one(after, "ovl_dp_tap_rx_frames_total", tap=tap) > one(before, "ovl_dp_tap_rx_frames_total", tap=tap)
        assert one(after, "ovl_dp_tap_tx_frames_total", tap=tap) > one(before, "ovl_dp_tap_tx_frames_total", tap=tap)
        assert one(after, "ovl_dp_tx_flooded_frames_total", tap=tap) >= 1  # the ARP request
        assert one(after, "ovl_dp_fdb_learns_total", tap=tap) >= 1
        assert one(after, "ovl_dp_fdb_entries", tap=tap) >= 1
        assert one(after, "ovl_dp_drops_total", tap=tap, reason="rx_not_remote") == 0
        # The same numbers as the control socket's (read after the scrape: only ever larger).
        show = lab.ovl(1, "show")
        assert show["remotes"][0]["rx_packets"] >= one(after, "ovl_dp_remote_rx_packets_total", tap=tap, remote=remote)

        assert scrape(h1, "/healthz") == (200, "ok\n")
        sh("ip", "-n", h1, "link", "del", "br-int")
        status, body = scrape(h1, "/healthz")
        assert status == 503
        assert body == f"TAP {tap} is not attached: bridge br-int does not exist\n"
        assert scrape(lab.host(2), "/healthz") == (200, "ok\n")  # the other host is untouched

        assert lab.stop(lab.daemons[1]) == 0
        out = lab.daemons[1].output()
        assert "Traceback" not in out, out
        res = sh("ip", "netns", "exec", h1, "ss", "-ltnH", "sport", f"= :{PORT}")
        assert res.stdout.strip() == ""  # the server stopped with the daemon
        assert lab.stop(lab.daemons[2]) == 0


def test_healthz_when_the_tap_leaves_the_bridge() -> None:
    # The daemon plugs a TAP taken off its bridge back in (tests/netns/test_faults.py); while the bridge is
    # gone, /healthz says so.
    with Lab(2) as lab:
        lab.build(container_mtu("vxlan"))
        lab.start(1, "--mode", "vxlan", "--remote", lab.underlay_ip(2), "--metrics", str(PORT))  # bare port
        h1 = lab.host(1)
        assert scrape(h1, "/healthz") == (200, "ok\n")
        sh("ip", "-n", h1, "link", "del", "br-int")
        reason = "TAP ovl-vxlan is not attached: bridge br-int does not exist\n"
        wait_until("/healthz to report the bridge", lambda: scrape(h1, "/healthz") == (503, reason), TIMEOUT, 0.05)
        sh("ip", "-n", h1, "link", "add", "br-int", "type", "bridge")
        wait_until("/healthz to be ok again", lambda: scrape(h1, "/healthz") == (200, "ok\n"), TIMEOUT, 0.05)
        sh("ip", "-n", h1, "link", "set", "ovl-vxlan", "nomaster")
        wait_until("the TAP back on its bridge", lambda: "plugged it back in" in lab.daemons[1].output(), TIMEOUT, 0.05)
        assert scrape(h1, "/healthz") == (200, "ok\n")
        assert lab.stop(lab.daemons[1]) == 0


@pytest.mark.skipif(ovs.installed() is not None, reason="Open vSwitch is not installed")
def test_healthz_on_an_ovs_bridge() -> None:
    with Lab(2) as lab:
        lab.build(container_mtu("gre", tagged=True), bridge="ovs", tag=20)
        lab.start(1, "--mode", "gre", "--remote", lab.underlay_ip(2), "--metrics", f"127.0.0.1:{PORT}")
        h1 = lab.host(1)
        assert scrape(h1, "/healthz") == (200, "ok\n")
        status, text = scrape(h1, "/metrics")
        assert status == 200
        assert any(k[0] == "ovl_dp_build_info" and ("bridge_type", "ovs") in k[1] for k in samples(text))
        assert lab.stop(lab.daemons[1]) == 0


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "control.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("70000", "ovl-dp: error: argument --metrics: '70000': port 70000 is out of range 1..65535"),
        ("localhost:9109", "ovl-dp: error: argument --metrics: 'localhost:9109': 'localhost' is not an IPv4 address"),
        ("::1:9109", "ovl-dp: error: argument --metrics: '::1:9109': write an IPv6 address in brackets"),
        (f"127.0.0.1:{PORT}", f"ovl-dp: error: --metrics 127.0.0.1:{PORT}: port {PORT} is already in use on 127.0.0.1"),
        ("192.0.2.77:9109", "ovl-dp: error: --metrics 192.0.2.77:9109: 192.0.2.77 is not an address of this host"),
    ],
)  # fmt: skip
def test_bad_metrics_value_exits_2_with_one_line(value: str, message: str) -> None:
    def body() -> None:
        veth("10.1.0.1/24")
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", PORT))
            holder.listen()
            res = cli("run", "--bridge-type", "none", "--mode", "vxlan", "--remote", "10.1.0.2", "--tap", "ovlm0",
                      "--metrics", value)  # fmt: skip
        assert res.returncode == 2, res
        assert len(res.stderr.splitlines()) == 1 and res.stderr.startswith(message), res.stderr
        assert "Traceback" not in res.stderr
        assert not exists("ovlm0")  # refused before the TAP was made

    run_isolated(body, timeout=120)
