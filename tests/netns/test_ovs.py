"""ovl-dp on Open vSwitch br-int (userspace datapath, one private OVS per host namespace).

The seed scenario: hosts yy2/yy3, containers vmX/vmY as access ports of
VLAN 20 on br-int, ovl-dp's TAP a trunk port, GRE then VXLAN. The containers
send with checksum offload off (Lab.build does it for OVS): OVS's userspace
datapath does not carry offload state, so TCP would stall otherwise.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from control import ovs
from control.lab.hosts import SEED_TAG, Lab, container_mtu, seed_lab
from control.lab.shell import sh
from control.procs import wait_until

pytestmark = [
    pytest.mark.netns,
    pytest.mark.usefixtures("no_leftovers"),
    pytest.mark.skipif(ovs.installed() is not None, reason="Open vSwitch is not installed"),
]


def mac_of(lab: Lab, i: int) -> str:
    return sh("ip", "-n", lab.container(i), "-br", "link", "show", "eth0").stdout.split()[2]


def ping_eventually(lab: Lab, src: int, dst: int, seconds: float = 15) -> None:
    """Ping until a reply comes back (after a restart the path needs a moment)."""
    # A ping waits for its reply itself: no interval.
    wait_until(f"a ping reply from container {dst}", lambda: lab.ping(src, dst, count=1, check=False)["loss"] < 100,
               seconds, 0)  # fmt: skip


@pytest.mark.parametrize("mode", ["gre", "vxlan"])
def test_seed_scenario(mode: str) -> None:
    with seed_lab() as lab:
        lab.build(container_mtu(mode, tagged=True), bridge="ovs", tag=SEED_TAG)
        lab.start_mesh(mode)
        assert "coalesced into super-frames: no" in lab.daemons[1].output()  # OVS must not get 64 KiB frames
        tap = f"ovl-{mode}"
        for i in (1, 2):
            assert tap in lab.ovs[i].vsctl("list-ports", "br-int").split()
            assert lab.ovs[i].vsctl("get", "port", tap, "tag").strip() == "[]"  # a trunk, as an OVS tunnel port
        assert lab.ping(1, 2, count=5)["loss"] == 0
        assert lab.ping(2, 1, count=5)["loss"] == 0
        result = lab.iperf3(1, 2, 2)
        assert "error" not in result, result
        assert result["end"]["sum_received"]["bytes"] > 1_000_000
        # vmY's MAC is learned behind yy3; frames crossed tagged (VLAN 20), so no drops for size.
        fdb = {row["mac"]: row for row in lab.ovl(1, "fdb")}
        assert fdb[mac_of(lab, 2)]["remote"] == lab.underlay_ip(2)
        assert lab.ovl(1, "show")["drops"]["tx_too_big"] == 0
        # SIGTERM: exit 0 and the port is gone from the OVS database.
        assert lab.stop(lab.daemons[1]) == 0
        assert tap not in lab.ovs[1].vsctl("list-ports", "br-int").split()


def link_counter(lab: Lab, i: int, dev: str, field: str) -> int:
    """A counter of dev on host i from sysfs (tx_packets, rx_packets, ...)."""
    return int(sh("ip", "netns", "exec", lab.host(i), "cat", f"/sys/class/net/{dev}/statistics/{field}").stdout)


@pytest.mark.parametrize("mode", ["vxlan", "gre"])
def test_seed_scenario_with_ovs_userspace_tso_gets_super_frames(mode: str) -> None:
    """OVS started with userspace-tso-enable=true: ovl-dp sees it and writes coalesced TCP super-frames, which
    cross br-int (trunk TAP, VLAN 20 access port) whole: the container's veth gets fewer, bigger packets than
    ovl-dp received segments, and TCP runs (a wrong virtio header or checksum would stall it)."""
    with seed_lab() as lab:
        lab.build(container_mtu(mode, tagged=True), bridge="ovs", tag=SEED_TAG,
                  ovs_config={"userspace-tso-enable": "true"})  # fmt: skip
        lab.start_mesh(mode)
        for i in (1, 2):
            assert "coalesced into super-frames: yes (Open vSwitch has other_config:userspace-tso-enable=true)" in (
                lab.daemons[i].output()
            )
        assert lab.ping(1, 2, count=3)["loss"] == 0
        vm0_before = link_counter(lab, 2, "vm0", "tx_packets")
        result = lab.iperf3(1, 2, 2)
        assert "error" not in result, result
        received = result["end"]["sum_received"]["bytes"]
        assert received > 1_000_000
        stats = lab.ovl(2, "show")["stats"]
        vm0_packets = link_counter(lab, 2, "vm0", "tx_packets") - vm0_before
        print(f"\n{mode}: {received / 2e6 * 8:.0f} Mbit/s, host 2: {stats['tap_tx']} frames in, "
              f"{stats['tap_tx_gso']} super-frames to OVS, vm0 sent {vm0_packets} packets")  # fmt: skip
        assert stats["tap_tx_gso"] > 0
        assert vm0_packets < stats["tap_tx"]  # OVS passed super-frames on whole, it did not segment them
        for i in (1, 2):
            log = (lab.ovs[i].rundir / "ovs-vswitchd.log").read_text()
            assert "Userspace TCP Segmentation Offloading support enabled" in log
            assert "Too big" not in log and "No TSO support" not in log, log[-2000:]
        assert lab.ovl(2, "show")["drops"]["rx_tap_error"] == 0


def test_without_ovs_userspace_tso_no_super_frames_reach_ovs() -> None:
    """The database key false (as by default: missing): ovl-dp writes every segment alone, as OVS needs."""
    with seed_lab() as lab:
        lab.build(container_mtu("vxlan"), bridge="ovs", ovs_config={"userspace-tso-enable": "false"})
        lab.start_mesh("vxlan")
        out = lab.daemons[2].output()
        assert "coalesced into super-frames: no (Open vSwitch without other_config:userspace-tso-enable" in out
        result = lab.iperf3(1, 2, 1)
        assert "error" not in result, result
        assert lab.ovl(2, "show")["stats"]["tap_tx_gso"] == 0


def test_access_port_readded_after_delete_and_vswitchd_restart() -> None:
    with seed_lab() as lab:
        lab.build(container_mtu("gre"), bridge="ovs", tag=SEED_TAG)
        lab.start_mesh("gre", "--tag", str(SEED_TAG))  # access ports: frames cross untagged
        o = lab.ovs[1]
        assert o.vsctl("get", "port", "ovl-gre", "tag").strip() == str(SEED_TAG)
        assert lab.ping(1, 2, count=3)["loss"] == 0
        # An operator (or a fresh database) removes the port: ovl-dp puts it back.
        o.vsctl("del-port", "br-int", "ovl-gre")
        wait_until("ovl-dp to re-add ovl-gre", lambda: "ovl-gre" in o.vsctl("list-ports", "br-int").split(), 10, 0.2,
                   detail=lab.daemons[1].output)  # fmt: skip
        assert o.vsctl("get", "port", "ovl-gre", "tag").strip() == str(SEED_TAG)
        ping_eventually(lab, 1, 2)
        assert "re-adding" in lab.daemons[1].output()
        # ovs-vswitchd restarts while ovl-dp runs: traffic flows again.
        o.stop_vswitchd()
        o.start_vswitchd()
        ping_eventually(lab, 1, 2)
        assert lab.ping(1, 2, count=3)["loss"] == 0
        assert lab.daemons[1].proc.poll() is None
        assert lab.stop(lab.daemons[1], signal.SIGINT) == 0
        assert "ovl-gre" not in o.vsctl("list-ports", "br-int").split()


def run_cli(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", lab.host(1), sys.executable, "-m", "control.cli", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_ovs_errors_are_one_line() -> None:
    with seed_lab() as lab:
        lab.build(bridge="ovs", tag=SEED_TAG)
        peer, db = lab.underlay_ip(2), lab.ovs[1].db
        cases = [
            (
                ("--bridge-type", "ovs", "--ovsdb", "unix:/nonexistent/db.sock"),
                "cannot reach the Open vSwitch database",
            ),
            (("--bridge-type", "ovs", "--ovsdb", db, "--bridge", "br-nope"), "Open vSwitch has no bridge br-nope"),
            (("--bridge-type", "linux", "--tag", "20"), "--tag is for Open vSwitch"),
            (("--ovsdb", db, "--tag", "20", "--vlan-map", "30=5030"), "exclude each other"),
        ]
        for args, needle in cases:
            res = run_cli(lab, "run", "--mode", "vxlan", "--remote", peer, *args)
            lines = res.stderr.strip().splitlines()
            assert res.returncode == 2 and len(lines) == 1 and needle in lines[0], (args, res.stderr)
        # auto finds the OVS bridge through --ovsdb.
        lab.start(1, "--mode", "vxlan", "--remote", peer)
        assert "bridge br-int (ovs)" in lab.daemons[1].output()


@pytest.mark.parametrize("mode", ["vxlan", "gre"])
def test_vlan_map_carries_vlan_20_untagged_in_its_own_tunnel_id(mode: str) -> None:
    from scapy.layers.inet import IP
    from scapy.layers.l2 import GRE, Dot1Q, Ether
    from scapy.layers.vxlan import VXLAN

    from datapath.encap import lookup
    from tests.interop_util import Capture

    tenant = 5020
    with seed_lab() as lab:
        # Mapped frames cross untagged; GRE frames of a mapped VLAN carry a key field.
        lab.build(1500 - lookup(mode)(0).overhead(), bridge="ovs", tag=SEED_TAG)
        lab.start_mesh(mode, "--vlan-map", f"{SEED_TAG}={tenant}")
        cap = Capture(lab, lab.switch, "p1", "udp port 4789" if mode == "vxlan" else "ip proto 47", f"map-{mode}")
        assert lab.ping(1, 2, count=5)["loss"] == 0
        packets = [Ether(p) for p in cap.stop()]
        assert packets, "nothing captured on the underlay"
        for pkt in packets:
            if mode == "vxlan":
                assert pkt[VXLAN].vni == tenant
                inner = pkt[VXLAN].payload
            else:
                assert pkt[GRE].key_present and pkt[GRE].key == tenant
                inner = pkt[GRE].payload
            assert isinstance(inner, Ether) and Dot1Q not in inner, inner.summary()
            assert pkt[IP].src in (lab.underlay_ip(1), lab.underlay_ip(2))
        # Learned per VLAN: vmY's MAC in VLAN 20, behind yy3.
        rows = [r for r in lab.ovl(1, "fdb") if r["mac"] == mac_of(lab, 2)]
        assert rows and rows[0]["vlan"] == SEED_TAG and rows[0]["remote"] == lab.underlay_ip(2), rows
        result = lab.iperf3(1, 2, 2)
        assert "error" not in result and result["end"]["sum_received"]["bytes"] > 1_000_000, result
        assert lab.ovl(1, "show")["drops"]["tx_too_big"] == 0
