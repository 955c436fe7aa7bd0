"""Issue 11, v6: ovl-dp between hosts over an IPv6 underlay, in network namespaces (real TAPs, sockets,
Linux bridges): both modes, the C path with and without its thread and the Python path, a mesh of both
families, the zero UDP checksum options, and bad IPv6 input counted.

Each test builds its own lab (control.lab.hosts; IPv6 on the hosts' ul0 only, addresses without DAD)
and tears it down, also on failure.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from control.lab.hosts import Lab
from control.lab.shell import sh
from datapath.encap import lookup

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("no_leftovers")]

MODES = ["vxlan", "gre"]
PATHS = {"thread": (), "loop": ("--no-dp-thread",), "python": ("--no-fast-path",)}
OVERLAY6 = "fd20::"  # the containers' inner IPv6 addresses (inside the lab only)


def container_mtu6(mode: str, underlay_mtu: int = 1500) -> int:
    """What fits a frame over the IPv6 underlay: VXLAN 70, GRE 58 bytes of overhead."""
    return underlay_mtu - lookup(mode)(None).overhead(family=6)


def inner6(lab: Lab, hosts: range) -> None:
    """Inner IPv6 addresses on the containers (ND then crosses the tunnel as multicast)."""
    for i in hosts:
        sh("ip", "-n", lab.container(i), "-6", "addr", "add", f"{OVERLAY6}{i}/64", "dev", "eth0", "nodad")


def ping6(lab: Lab, src: int, dst: int, count: int = 3) -> str:
    res = sh(
        "ip", "netns", "exec", lab.container(src), "ping", "-6", "-n", "-q", "-c", str(count), "-i", "0.2",
        "-W", "2", f"{OVERLAY6}{dst}", check=False, timeout=count * 3 + 10,
    )  # fmt: skip
    return res.stdout


def mac_of(lab: Lab, i: int) -> str:
    return sh("ip", "-n", lab.container(i), "-br", "link", "show", "eth0").stdout.split()[2]


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("mode", MODES)
def test_two_hosts_over_ipv6(mode: str, path: str) -> None:
    with Lab(2) as lab:
        lab.build(container_mtu6(mode))
        lab.enable_underlay6()
        inner6(lab, range(1, 3))
        lab.start_mesh(mode, *PATHS[path], family=6)
        out = lab.daemons[1].output()
        assert ("pure-Python path" if path == "python" else "C fast path") in out, out
        assert f"mtu {container_mtu6(mode)} (underlay 1500)" in out, out  # the automatic TAP MTU, IPv6 overhead
        assert lab.ping(1, 2, count=3)["loss"] < 100  # ARP crosses first
        assert lab.ping(1, 2, count=5)["loss"] == 0 and lab.ping(2, 1, count=5)["loss"] == 0
        assert " 0% packet loss" in ping6(lab, 1, 2), "inner IPv6 (neighbour discovery across the tunnel)"
        fdb1 = {row["mac"]: row["remote"] for row in lab.ovl(1, "fdb")}
        assert fdb1.get(mac_of(lab, 2)) == lab.underlay_ip6(2), fdb1
        listing = sh(
            "ip", "netns", "exec", lab.host(1), sys.executable, "-m", "control.cli", "remote", "list", "--json"
        )
        rows = json.loads(listing.stdout)
        assert [(r["remote"], r["local"]) for r in rows] == [(lab.underlay_ip6(2), lab.underlay_ip6(1))], rows
        result = lab.iperf3(1, 2, 2)
        assert "error" not in result, result
        assert result["end"]["sum_received"]["bytes"] > 1_000_000, result["end"]
        snap = lab.ovl(1, "show")
        bad = {k: v for k, v in snap["drops"].items() if v and k != "tx_full"}
        assert not bad, snap["drops"]
        for i in (1, 2):
            assert lab.stop(lab.daemons[i]) == 0
            assert "Traceback" not in lab.daemons[i].output()


@pytest.mark.parametrize("mode", MODES)
def test_mixed_mesh(mode: str) -> None:
    """h1 reaches h2 over IPv4 and h3 over IPv6 (one daemon, both families); floods go to both."""
    with Lab(3) as lab:
        lab.build(container_mtu6(mode))
        lab.enable_underlay6()
        lab.start(1, "--mode", mode, "--remote", lab.underlay_ip(2), "--remote", lab.underlay_ip6(3))
        lab.start(2, "--mode", mode, "--remote", lab.underlay_ip(1))
        lab.start(3, "--mode", mode, "--remote", lab.underlay_ip6(1), "--local", lab.underlay_ip6(3))
        for dst in (2, 3):
            assert lab.ping(1, dst, count=3)["loss"] < 100
            assert lab.ping(1, dst, count=5)["loss"] == 0, dst
        fdb1 = {row["mac"]: row["remote"] for row in lab.ovl(1, "fdb")}
        assert fdb1.get(mac_of(lab, 2)) == lab.underlay_ip(2) and fdb1.get(mac_of(lab, 3)) == lab.underlay_ip6(3)
        remotes = {r["remote"]: r for r in lab.ovl(1, "show")["remotes"]}
        assert remotes[lab.underlay_ip(2)]["tx_flood"] >= 1 and remotes[lab.underlay_ip6(3)]["tx_flood"] >= 1
        result = lab.iperf3(3, 1, 2)
        assert "error" not in result and result["end"]["sum_received"]["bytes"] > 1_000_000, result


def _udp6_in_csum_errors(lab: Lab, i: int) -> int:
    snmp = sh("ip", "netns", "exec", lab.host(i), "cat", "/proc/net/snmp6").stdout
    return int(next(line.split()[1] for line in snmp.splitlines() if line.startswith("Udp6InCsumErrors")))


def test_udp6_zero_checksum_needs_both_options() -> None:
    """--udp6-zero-csum-tx sends UDP checksum 0; the kernel drops it unless the receiver has --udp6-zero-csum-rx."""
    with Lab(2) as lab:
        lab.build(container_mtu6("vxlan"))
        lab.enable_underlay6()
        lab.start(1, "--mode", "vxlan", "--remote", lab.underlay_ip6(2), "--udp6-zero-csum-tx")
        plain = lab.start(2, "--mode", "vxlan", "--remote", lab.underlay_ip6(1))
        before = _udp6_in_csum_errors(lab, 2)
        assert lab.ping(1, 2, count=3, check=False)["loss"] == 100
        assert _udp6_in_csum_errors(lab, 2) > before  # refused by the kernel: never delivered to ovl-dp
        assert lab.ovl(2, "show")["stats"]["tap_tx"] == 0
        assert lab.stop(plain) == 0
        lab.start(2, "--mode", "vxlan", "--remote", lab.underlay_ip6(1), "--udp6-zero-csum-rx")
        assert lab.ping(1, 2, count=3)["loss"] < 100
        assert lab.ping(1, 2, count=5)["loss"] == 0


SEND = """
import socket, sys
kind, dst, port, payload = sys.argv[1], sys.argv[2], int(sys.argv[3]), bytes.fromhex(sys.argv[4])
if kind == "udp":
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
else:
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, 47)
for _ in range(5):
    s.sendto(payload, (dst, port))
"""


def send6(lab: Lab, ns: str, kind: str, dst: str, port: int, payload: bytes) -> None:
    sh("ip", "netns", "exec", ns, sys.executable, "-c", SEND, kind, dst, str(port), payload.hex())


@pytest.mark.parametrize("path", ["thread", "python"])
def test_bad_ipv6_input_is_counted(path: str) -> None:
    """From a host that is not a remote: rx_not_remote; short VXLAN from a remote: rx_truncated; GRE to
    another of our addresses than the one we send from: rx_bad_dst."""
    from datapath.encap import gre, vxlan

    frame = bytes.fromhex("02aa00000001") + bytes.fromhex("02bb00000002") + b"\x08\x00" + bytes(46)
    with Lab(3) as lab:
        lab.build(container_mtu6("vxlan"))
        lab.enable_underlay6()
        d = lab.start(1, "--mode", "vxlan", "--remote", lab.underlay_ip6(2), *PATHS[path])
        send6(lab, lab.host(3), "udp", lab.underlay_ip6(1), 4789, vxlan.header(0) + frame)
        send6(lab, lab.host(2), "udp", lab.underlay_ip6(1), 4789, vxlan.header(0)[:5])
        drops = lab.ovl(1, "show")["drops"]
        assert drops["rx_not_remote"] == 5 and drops["rx_truncated"] == 5, drops
        assert lab.stop(d) == 0
        # GRE: a second address on h1; h2 sends to it, while h1 sends to h2 from its first.
        sh("ip", "-n", lab.host(1), "-6", "addr", "add", "fd00:192:2::101/64", "dev", "ul0", "nodad")
        lab.start(1, "--mode", "gre", "--remote", lab.underlay_ip6(2), *PATHS[path])
        send6(lab, lab.host(2), "gre", "fd00:192:2::101", 0, gre.header(None) + frame)
        send6(lab, lab.host(2), "gre", lab.underlay_ip6(1), 0, gre.header(None) + frame)
        send6(lab, lab.host(2), "gre", lab.underlay_ip6(1), 0, gre.header(None)[:3])
        snap = lab.ovl(1, "show")
        assert snap["drops"]["rx_bad_dst"] == 5 and snap["drops"]["rx_truncated"] == 5, snap["drops"]
        assert snap["stats"]["tap_tx"] == 5, snap["stats"]


@pytest.mark.parametrize("mode", MODES)
def test_takeover_hands_over_both_families(mode: str) -> None:
    """A takeover of a daemon with an IPv4 and an IPv6 remote: both receiving sockets and the IPv6 send
    socket move to the new process (checked against its configuration), traffic to both goes on."""
    with Lab(3) as lab:
        lab.build(container_mtu6(mode))
        lab.enable_underlay6()
        args = ("--mode", mode, "--remote", lab.underlay_ip(2), "--remote", lab.underlay_ip6(3))
        old = lab.start(1, *args)
        lab.start(2, "--mode", mode, "--remote", lab.underlay_ip(1))
        lab.start(3, "--mode", mode, "--remote", lab.underlay_ip6(1))
        for dst in (2, 3):
            assert lab.ping(1, dst, count=3)["loss"] < 100
        learned = {row["mac"] for row in lab.ovl(1, "fdb")}
        new = lab.start(1, *args, "--takeover")
        assert old.proc.wait(20) == 0
        after = lab.ovl(1, "show")
        assert after["pid"] == new.proc.pid and after["takeover"]["from_pid"] == old.proc.pid, after.get("takeover")
        assert learned <= {row["mac"] for row in lab.ovl(1, "fdb")}  # the FDB came along
        for dst in (2, 3):
            assert lab.ping(1, dst, count=5)["loss"] == 0, dst
            assert lab.ping(dst, 1, count=3)["loss"] == 0, dst
        assert "Traceback" not in new.output() + old.output()


def ctl(lab: Lab, i: int, *args: str) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", lab.host(i), sys.executable, "-m", "control.cli", *args, check=False)


def test_remote_add_del_and_static_entries_over_the_control_socket() -> None:
    with Lab(3) as lab:
        lab.build(container_mtu6("gre"))
        lab.enable_underlay6()
        lab.start(1, "--mode", "gre", "--remote", lab.underlay_ip6(2))
        lab.start(3, "--mode", "gre", "--remote", lab.underlay_ip6(1))
        res = ctl(lab, 1, "remote", "add", lab.underlay_ip6(3).upper())  # any spelling: canonical in the daemon
        assert res.returncode == 0, res.stderr
        assert lab.ping(1, 3, count=3)["loss"] < 100 and lab.ping(1, 3, count=3)["loss"] == 0
        res = ctl(lab, 1, "remote", "add", lab.underlay_ip(2))
        assert res.returncode != 0 and "no IPv4 underlay sockets" in res.stderr, res.stderr
        mac = "02:00:00:00:00:77"
        res = ctl(lab, 1, "fdb", "add", mac, lab.underlay_ip6(2))
        assert res.returncode == 0, res.stderr
        rows = {r["mac"]: r for r in lab.ovl(1, "fdb")}
        assert rows[mac]["remote"] == lab.underlay_ip6(2) and rows[mac]["static"], rows
        table = ctl(lab, 1, "fdb").stdout
        assert any(line.split()[1:3] == [mac, lab.underlay_ip6(2)] for line in table.splitlines()), table
        res = ctl(lab, 1, "remote", "del", lab.underlay_ip6(2))
        assert res.returncode == 0, res.stderr
        assert mac not in {r["mac"] for r in lab.ovl(1, "fdb")}  # purged with its remote
        assert [r["remote"] for r in lab.ovl(1, "show")["remotes"]] == [lab.underlay_ip6(3)]


@pytest.mark.parametrize("mode", MODES)
def test_path_keeper_follows_ipv6_mtu_and_source(mode: str) -> None:
    """control/paths.py over IPv6 (IPV6_MTU of a connected socket): link and route MTUs, a new source."""
    from control import config as host
    from control.paths import PathKeeper
    from datapath.config import Config, OffloadConfig, Remote, TapConfig, TunnelConfig
    from datapath.engine import Engine
    from tests.isolated import run_isolated
    from tests.netns.netutil import ip, mtu_of

    remote, tap = "fd00:9::2", "ovlp6"

    def body() -> None:
        ip("link", "add", "u0", "type", "veth", "peer", "name", "u1")
        ip("link", "set", "u1", "up")
        ip("link", "set", "u0", "up")
        subprocess.run(["sysctl", "-qw", "net.ipv6.conf.u0.disable_ipv6=0"], check=True)  # (off by default here)
        ip("-6", "addr", "add", "fd00:9::1/64", "dev", "u0", "nodad")
        given = Config(
            tunnel=TunnelConfig(mode), remotes=(Remote(remote),), tap=TapConfig(name=tap),
            offload=OffloadConfig(fast_path=False),
        )  # fmt: skip
        engine = Engine(host.resolve(given))
        paths = PathKeeper(engine, given)
        overhead = lookup(mode)(None).overhead(family=6)
        try:
            assert engine.remotes() == (Remote(remote, "fd00:9::1"),)
            assert mtu_of(tap) == engine.tap.mtu == 1500 - overhead
            ip("link", "set", "u0", "mtu", "1400")
            paths.resolve()
            assert mtu_of(tap) == 1400 - overhead and paths.underlay_mtu == 1400 and paths.problem == ""
            ip("-6", "route", "add", f"{remote}/128", "dev", "u0", "mtu", "1300")
            paths.resolve()
            assert mtu_of(tap) == 1300 - overhead
            ip("-6", "addr", "add", "fd00:9::9/64", "dev", "u0", "nodad")
            ip("-6", "route", "replace", f"{remote}/128", "dev", "u0", "src", "fd00:9::9", "mtu", "1300")
            paths.resolve()
            assert engine.remotes() == (Remote(remote, "fd00:9::9"),) and paths.local_changes == 1
            assert paths.problem == ""
        finally:
            engine.close()

    run_isolated(body)


def test_udp_gso_in_a_mixed_mesh() -> None:
    """--udp-gso: packets to the IPv4 remote leave through the UDP_SEGMENT sockets, those to the IPv6 remote
    through the raw IPv6 socket (the GSO sockets are IPv4)."""
    with Lab(3) as lab:
        lab.build(container_mtu6("vxlan"))
        lab.enable_underlay6()
        lab.start(1, "--mode", "vxlan", "--remote", lab.underlay_ip(2), "--remote", lab.underlay_ip6(3), "--udp-gso")
        lab.start(2, "--mode", "vxlan", "--remote", lab.underlay_ip(1))
        lab.start(3, "--mode", "vxlan", "--remote", lab.underlay_ip6(1))
        for dst in (2, 3):
            assert lab.ping(1, dst, count=3)["loss"] < 100
            result = lab.iperf3(1, dst, 2)
            assert "error" not in result and result["end"]["sum_received"]["bytes"] > 1_000_000, (dst, result)
        snap = lab.ovl(1, "show")
        assert snap["stats"]["tx_gso"] > 0, snap["stats"]
        sent = {r["remote"]: r["tx_packets"] for r in snap["remotes"]}
        assert sent[lab.underlay_ip(2)] > 500 and sent[lab.underlay_ip6(3)] > 500, sent
        assert snap["drops"]["tx_error"] == 0, snap["drops"]
