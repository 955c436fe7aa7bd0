"""Super-packets received whole from the kernel's vxlan device (csrc/rx_super.c), in the two-host lab.

Host 2 runs the kernel's vxlan device on its Linux bridge; host 1 runs ovl-dp. Unlike the interop tests,
host 2's underlay veth keeps its default offloads: the kernel then sends its GSO packets whole across the
veth (datagrams of up to 64 KiB, inner TCP checksum only the pseudo-header seed), and normal-size segments
with the seed too (notes/lab-wire.md). ovl-dp must take them whole: written to the TAP as one TSO frame
(Linux bridge, offloads auto), or cut into segments with full checksums here (``--offload off``: a plain
TAP); never dropped as truncated. The NIC-like wire (host 2's ul0 ``tx off``, host 1's ul0 ``gro on``,
its switch port no TSO) gives UDP_GRO trains of 1472-byte datagrams instead, split and coalesced.
``--no-rx-super`` is the fallback: super-packets are dropped as truncated, as before.

Figures (throughput, the daemon's peak RSS) are printed for the README, not asserted.
"""

from __future__ import annotations

import pytest

from control.lab.hosts import Lab, container_mtu
from control.lab.peers import kernel_vxlan
from control.lab.shell import nsexec
from tests.interop_util import iperf_bytes

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("no_leftovers")]

VNI = 5001
PORT = 4789
MIN_TRANSFER = 1_000_000  # bytes an iperf3 -t 2 must move at the least


def _hwm_kb(lab: Lab, i: int) -> int:
    """The ovl-dp daemon's peak RSS (VmHWM, kB) on host i."""
    with open(f"/proc/{lab.daemons[i].proc.pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def _lab_with_kernel_peer(lab: Lab, *args: str) -> None:
    lab.build(container_mtu("vxlan"))
    lab.start(1, "--mode", "vxlan", "--remote", lab.underlay_ip(2), "--vni", str(VNI), "--port", str(PORT), *args)
    kernel_vxlan(lab, 2, 1, VNI, PORT)


def _transfer(lab: Lab) -> tuple[int, int]:
    lab.ping(1, 2, count=3)
    return iperf_bytes(lab, 1, 2), iperf_bytes(lab, 2, 1)


@pytest.mark.parametrize("offload", ["auto", "off"], ids=["tso-write", "split-plain-tap"])
def test_kernel_vxlan_over_veth_with_default_offloads(offload: str) -> None:
    """The kernel's super-packets reach the TAP whole (auto) or cut here (off); TCP both ways; no drops."""
    with Lab(2) as lab:
        _lab_with_kernel_peer(lab, f"--offload={offload}")
        sent, got = _transfer(lab)
        assert sent > MIN_TRANSFER and got > MIN_TRANSFER
        snap = lab.ovl(1, "show")
        stats, drops = snap["stats"], snap["drops"]
        print(f"\nrx_super {offload}: h1->h2 {sent * 8 / 2e9:.2f} Gbit/s, h2->h1 {got * 8 / 2e9:.2f} Gbit/s, "
              f"stats {stats}, VmHWM {_hwm_kb(lab, 1)} kB")  # fmt: skip
        if offload == "auto":
            assert stats["rx_super"] > 0 and stats["rx_super_split"] == 0, stats
        else:
            assert stats["rx_super_split"] > 0 and stats["rx_super"] == 0, stats
        assert {k: v for k, v in drops.items() if v} == {}, drops


def test_nic_like_wire_udp_gro_trains_split_and_coalesced() -> None:
    """Host 2's ul0 fills checksums and segments (`tx off`), host 1's ul0 does GRO: UDP_GRO buffers of
    1472-byte VXLAN datagrams, split, their inner TCP coalesced into super-frames for the TAP."""
    with Lab(2) as lab:
        lab.build(container_mtu("vxlan"))
        # GRO on host 1's ul0; its peer on the switch must not be TSO-capable, or veth hands forwarded
        # packets past GRO (veth_skb_is_eligible_for_gro).
        nsexec(lab.host(1), "ethtool", "-K", "ul0", "gro", "on")
        nsexec(lab.switch, "ethtool", "-K", "p1", "tso", "off")
        lab.start(1, "--mode", "vxlan", "--remote", lab.underlay_ip(2), "--vni", str(VNI), "--port", str(PORT))
        kernel_vxlan(lab, 2, 1, VNI, PORT)
        nsexec(lab.host(2), "ethtool", "-K", "ul0", "tx", "off")
        sent, got = _transfer(lab)
        assert sent > MIN_TRANSFER and got > MIN_TRANSFER
        snap = lab.ovl(1, "show")
        stats, drops = snap["stats"], snap["drops"]
        print(f"\nnic-like wire: h1->h2 {sent * 8 / 2e9:.2f} Gbit/s, h2->h1 {got * 8 / 2e9:.2f} Gbit/s, stats {stats}")
        assert stats["rx_gro"] > 0 and stats["tap_tx_gso"] > 0, stats
        assert stats["rx_super"] == 0 and stats["rx_super_split"] == 0, stats
        assert {k: v for k, v in drops.items() if v} == {}, drops


def test_no_rx_super_is_the_old_path() -> None:
    """--no-rx-super: a super-packet is dropped as truncated (counted), small frames still cross."""
    with Lab(2) as lab:
        _lab_with_kernel_peer(lab, "--no-rx-super")
        lab.ping(1, 2, count=3)
        lab.iperf3(2, 1, 1)  # may stall: the kernel's super-packets cannot be received
        snap = lab.ovl(1, "show")
        assert snap["drops"]["rx_truncated"] > 0, snap
        assert snap["stats"]["rx_super"] == snap["stats"]["rx_super_split"] == 0, snap
