"""VXLAN TX through the injection TAP, with the real kernel doing the segmentation.

Lab of two hosts (control.lab.hosts): ovl-dp VXLAN on host 1 (C path, TAP offloads, --inject
auto), the kernel's vxlan device or ovl-dp on host 2. What is checked:

- traffic (ping, iperf3 TCP) with the kernel's vxlan device, the super-frames written to the
  injection TAP (show: inject counters, tx_path);
- with host 1's underlay veth made NIC-like (``ethtool -K ul0 tx off``: the kernel segments in
  software before the wire), every VXLAN packet captured on the wire is a valid one: a full
  IPv4 header checksum, UDP checksum 0 (or valid with --udp-csum), valid inner TCP checksum,
  within the underlay MTU, and every packet of a TCP flow with that flow's one source port;
- ovl-dp <-> ovl-dp over such a wire;
- a host whose nftables forward chain drops by default: the accept rule is inserted, traffic
  flows, and the rule is gone after the daemon exited (the chain and its policy stay);
- the host changes are undone on exit: the injection TAP is gone;
- the fallbacks: --inject off; a kernel that refuses the TAP's offloads (Engine, isolated);
  a write the kernel refuses at run time (the injection TAP taken down: EIO), after which
  super-frames are segmented in C and traffic goes on.

Between two ovl-dp over a plain veth (no `tx off`), the super-packets cross the veth whole;
the receiving ovl-dp needs to accept them (issue 10, RX of super-packets).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import time
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from control.lab.hosts import Lab, container_mtu
from control.lab.peers import kernel_vxlan
from control.lab.shell import nsexec, sh
from control.procs import wait_until
from datapath import fast
from tests.interop_util import Capture, iperf_bytes, send_frames
from tests.isolated import run_isolated
from tests.offload_frames import _sum16 as sum16

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("no_leftovers")]
needs_module = pytest.mark.skipif(not fast.available(), reason="C fast path not built")

VNI = 5001
PORT = 8472
INJ = "ovl-vxlan-inj"  # the injection TAP of the default TAP ovl-vxlan
MIN_TRANSFER = 1_000_000
SAMPLE = 1500  # captured packets dissected with scapy
# Host 1's underlay veth as a NIC without tunnel offloads: the kernel segments before the wire.
NIC_LIKE = ("tx", "off", "tx-udp_tnl-segmentation", "off", "tx-udp_tnl-csum-segmentation", "off")


def check_wire(frames: list[bytes], udp_csum: bool, mtu: int = 1500) -> None:
    """Every VXLAN packet of frames is valid: within the MTU, outer IPv4 / UDP and inner TCP checksums."""
    tcp_seen = 0
    for raw in frames:
        pkt = Ether(raw)
        ip, udp = pkt[IP], pkt[UDP]
        assert ip.len <= mtu, ip.len
        assert ip.ttl == 64, ip.ttl  # written one higher: forwarding took one
        assert sum16(bytes(ip)[: ip.ihl * 4]) == 0xFFFF, "outer IPv4 header checksum"
        if udp_csum:
            assert udp.chksum != 0
            seg = bytes(udp)[: udp.len]
            pseudo = bytes(ip)[12:20] + struct.pack("!HH", 17, udp.len)
            assert sum16(pseudo + seg) == 0xFFFF, "outer UDP checksum"
        else:
            assert udp.chksum == 0
        inner = pkt[VXLAN].payload
        if IP in inner and TCP in inner:
            iip = inner[IP]
            l4 = bytes(iip)[iip.ihl * 4 : iip.len]
            pseudo = bytes(iip)[12:20] + struct.pack("!HH", 6, len(l4))
            assert sum16(pseudo + l4) == 0xFFFF, "inner TCP checksum"
            tcp_seen += 1
    assert tcp_seen > len(frames) // 2, (tcp_seen, len(frames))


class RawCapture(Capture):
    """Capture whose stop() reads the pcap without dissecting every packet (scapy's RawPcapReader)."""

    def stop(self) -> list[bytes]:
        from scapy.utils import RawPcapReader

        time.sleep(0.2)
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(5)
        with RawPcapReader(str(self.path)) as reader:
            return [bytes(data) for data, _ in reader]


def outer_ports(frames: list[bytes]) -> dict[tuple[str, int, str, int], set[int]]:
    """Inner TCP flow -> the outer UDP source ports it was seen with, over every frame (plain offsets:
    outer IPv4 without options, untagged inner IPv4, as in this lab)."""
    flows: dict[tuple[str, int, str, int], set[int]] = {}
    for raw in frames:
        inner = 14 + 20 + 8 + 8
        ip = inner + 14
        if len(raw) < ip + 24 or raw[inner + 12 : inner + 14] != b"\x08\x00" or raw[ip + 9] != 6:
            continue
        tcp = ip + (raw[ip] & 0x0F) * 4
        sport, dport = struct.unpack_from("!HH", raw, tcp)
        key = (socket.inet_ntoa(raw[ip + 12 : ip + 16]), sport, socket.inet_ntoa(raw[ip + 16 : ip + 20]), dport)
        flows.setdefault(key, set()).add(struct.unpack_from("!H", raw, 34)[0])
    return flows


def expected_sport(src: str, sport: int, dst: str, dport: int) -> int:
    """The outer source port ovl-dp gives flow (udp_flow_src_port's scaling of the flow hash)."""
    frame = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=src, dst=dst)
                  / TCP(sport=sport, dport=dport))  # fmt: skip
    h = fast.flow_hash(frame)
    return 32768 + ((h * (61000 - 32768)) >> 32)


def host_nstat(lab: Lab, i: int) -> dict[str, int]:
    res = sh("ip", "netns", "exec", lab.host(i), "nstat", "-a", "-z", "-j", check=False)
    return {k: int(v) for k, v in json.loads(res.stdout).get("kernel", {}).items()} if res.stdout else {}


def link_exists(lab: Lab, i: int, name: str) -> bool:
    return sh("ip", "-n", lab.host(i), "link", "show", name, check=False).returncode == 0


@needs_module
@pytest.mark.parametrize("udp_csum", [False, True], ids=["csum0", "udp-csum"])
def test_with_the_kernels_vxlan_device(udp_csum: bool) -> None:
    with Lab(2) as lab:
        lab.build(container_mtu("vxlan"))
        extra = ("--udp-csum",) if udp_csum else ()
        d = lab.start(1, "--mode", "vxlan", "--remote", lab.underlay_ip(2), "--vni", str(VNI), "--port", str(PORT),
                      *extra)  # fmt: skip
        kernel_vxlan(lab, 2, 1, VNI, PORT)
        nsexec(lab.host(2), "ethtool", "-K", "ul0", "tx", "off")  # the kernel's own sends: NIC-like
        assert f"host changes: no IPv6 on {INJ}" in d.output()
        assert f"net.ipv4.conf.{INJ}.accept_local=1" in d.output()
        addr = sh("ip", "-n", lab.host(1), "-4", "-o", "addr", "show", "dev", INJ).stdout
        assert "169.254.255." in addr and "/32" in addr, addr
        assert "inet6" not in sh("ip", "-n", lab.host(1), "addr", "show", "dev", INJ).stdout
        assert lab.ping(1, 2, count=3)["loss"] == 0
        assert iperf_bytes(lab, 1, 2) > MIN_TRANSFER  # the veth carries the super-packets whole
        assert iperf_bytes(lab, 2, 1) > MIN_TRANSFER

        # A NIC-like wire: the kernel cuts them before the wire; every packet on it is valid.
        nsexec(lab.host(1), "ethtool", "-K", "ul0", *NIC_LIKE)
        cap = RawCapture(lab, lab.host(2), "ul0", f"udp dst port {PORT} and src host {lab.underlay_ip(1)}", "wire")
        assert iperf_bytes(lab, 1, 2) > MIN_TRANSFER
        frames = cap.stop()
        check_wire(frames[:: max(1, len(frames) // SAMPLE)], udp_csum)  # scapy is slow: a spread sample
        flows = outer_ports(frames)
        data = [k for k in flows if k[3] == 5201]
        assert data, f"no iperf3 data flow among {len(frames)} packets"
        for key in data:  # every packet of a flow (injected or not) with the flow's one source port
            assert flows[key] == {expected_sport(*key)}, (key, flows[key])
        # Without DF (VXLAN's default --df unset) a packet may be fragmented on its way: each needs an IP id of its
        # own (RFC 6864 4.1). The kernel numbers an injected super-packet's segments from its id on; an id 0 in
        # every super-packet would repeat 0, 1, 2, ... Three sources number these packets, each passing 0 once per
        # 65,536 (the injection's range, the TX ring's counter, the kernel's ip_select_ident for the raw socket):
        # at most three 0s per 65,536 packets (the bug gave 3,074 in 106,569).
        ids = [struct.unpack_from("!H", f, 18)[0] for f in frames if not struct.unpack_from("!H", f, 20)[0] & 0x4000]
        assert len(ids) == len(frames)
        assert ids.count(0) <= 3 * (len(frames) // 65536 + 1), (ids.count(0), len(frames))
        snap = lab.ovl(1, "show")
        print("wire:", len(frames), "packets;", "inject:", snap["inject"], "nstat:",
              {k: v for k, v in host_nstat(lab, 1).items() if k in ("IpForwDatagrams", "IpInAddrErrors",
               "TcpExtIPReversePathFilter", "IpOutNoRoutes", "IcmpOutDestUnreachs")})  # fmt: skip
        assert snap["inject"]["writes"] > 0 and snap["inject"]["segments"] > snap["inject"]["writes"]
        assert snap["inject"]["errors"] == 0 and snap["inject"]["fallback_off"] == 0
        assert "kernel segmentation" in snap["tx_path"], snap["tx_path"]
        # What the kernel sends out of the injection TAP (here: frames sent on it with AF_PACKET) is read and counted.
        send_frames(lab.host(1), INJ, [bytes(Ether(dst="ff:ff:ff:ff:ff:ff", type=0x88B5) / (b"x" * 50))], count=3)
        assert wait_until("the frames to be drained", lambda: lab.ovl(1, "show")["inject"]["drained"] >= 3)
        assert not {k: v for k, v in snap["drops"].items() if v}, snap["drops"]
        assert lab.stop(d) == 0
        assert not link_exists(lab, 1, INJ)  # its address and sysctls went with it


@needs_module
def test_between_two_ovl_dp_over_a_nic_like_wire() -> None:
    with Lab(2) as lab:
        lab.build(container_mtu("vxlan"))
        lab.start_mesh("vxlan")
        for i in (1, 2):
            nsexec(lab.host(i), "ethtool", "-K", "ul0", *NIC_LIKE)
        assert lab.ping(1, 2, count=3)["loss"] == 0
        assert iperf_bytes(lab, 1, 2) > MIN_TRANSFER
        assert iperf_bytes(lab, 2, 1) > MIN_TRANSFER
        for i in (1, 2):
            snap = lab.ovl(i, "show")
            assert snap["inject"]["writes"] > 0, snap
            assert not {k: v for k, v in snap["drops"].items() if v}, snap["drops"]
        for i in (1, 2):
            assert lab.stop(lab.daemons[i]) == 0
            assert not link_exists(lab, i, INJ)


def nft(lab: Lab, *args: str) -> str:
    return sh("ip", "netns", "exec", lab.host(1), "nft", *args).stdout


@needs_module
@pytest.mark.skipif(not os.path.exists("/usr/sbin/nft"), reason="nftables not installed")
def test_a_forward_chain_that_drops_by_default() -> None:
    with Lab(2) as lab:
        lab.build(container_mtu("vxlan"))
        nft(lab, "add", "table", "inet", "hostfw")
        nft(lab, "add", "chain", "inet", "hostfw", "forward", "{ type filter hook forward priority 0; policy drop; }")
        # The host lets its own bridge's traffic through (br_netfilter hands bridged frames to this hook),
        # as Docker does for its bridges; the tunnel's forwarded packets are ovl-dp's to open.
        nft(lab, "add", "rule", "inet", "hostfw", "forward", "iifname", "br-int", "oifname", "br-int", "accept")
        d = lab.start(1, "--mode", "vxlan", "--remote", lab.underlay_ip(2), "--vni", str(VNI), "--port", str(PORT))
        kernel_vxlan(lab, 2, 1, VNI, PORT)
        nsexec(lab.host(2), "ethtool", "-K", "ul0", "tx", "off")
        rules = nft(lab, "-a", "list", "chain", "inet", "hostfw", "forward")
        assert f'iifname "{INJ}" udp dport {PORT} accept' in rules, rules
        assert "nft rule" in d.output() and "inet hostfw forward" in d.output()
        assert iperf_bytes(lab, 1, 2) > MIN_TRANSFER
        snap = lab.ovl(1, "show")
        assert snap["inject"]["writes"] > 0 and "kernel segmentation" in snap["tx_path"]
        assert lab.stop(d) == 0
        rules = nft(lab, "-a", "list", "chain", "inet", "hostfw", "forward")
        assert INJ not in rules and "policy drop" in rules, rules
        assert "host change undone: nft rule" in d.output()
        assert not link_exists(lab, 1, INJ)


@needs_module
def test_without_a_filter_no_rule_is_added() -> None:
    with Lab(2) as lab:
        lab.build(container_mtu("vxlan"))
        nft(lab, "add", "table", "inet", "hostfw")  # policy accept: nothing to open
        nft(lab, "add", "chain", "inet", "hostfw", "forward", "{ type filter hook forward priority 0; policy accept; }")
        d = lab.start(1, "--mode", "vxlan", "--remote", lab.underlay_ip(2))
        assert INJ not in nft(lab, "list", "ruleset") and "nft rule" not in d.output()
        assert lab.stop(d) == 0


@needs_module
def test_inject_off_and_a_refused_write() -> None:
    """--inject off keeps the C segmentation; a write the kernel refuses (TAP down: EIO) falls back for good."""
    with Lab(2) as lab:
        lab.build(container_mtu("vxlan"))
        d = lab.start(1, "--mode", "vxlan", "--remote", lab.underlay_ip(2), "--vni", str(VNI), "--port", str(PORT),
                      "--inject", "off")  # fmt: skip
        kernel_vxlan(lab, 2, 1, VNI, PORT)
        nsexec(lab.host(2), "ethtool", "-K", "ul0", "tx", "off")
        assert iperf_bytes(lab, 1, 2) > MIN_TRANSFER
        snap = lab.ovl(1, "show")
        assert "inject" not in snap and "--inject off" in snap["tx_path"], snap
        assert snap["stats"]["tap_rx_gso"] > 0  # super-frames, segmented in C
        assert not link_exists(lab, 1, INJ) and "host changes" not in d.output()
        assert lab.stop(d) == 0

        d = lab.start(1, "--mode", "vxlan", "--remote", lab.underlay_ip(2), "--vni", str(VNI), "--port", str(PORT))
        assert iperf_bytes(lab, 1, 2) > MIN_TRANSFER
        sh("ip", "-n", lab.host(1), "link", "set", INJ, "down")  # every write now fails with EIO
        assert iperf_bytes(lab, 1, 2) > MIN_TRANSFER  # segmented in C again
        snap = lab.ovl(1, "show")
        inj = snap["inject"]
        assert inj["errors"] >= 1 and inj["fallback_off"] > 0, inj
        assert "refused a write" in snap["tx_path"] and "EIO" in snap["tx_path"], snap["tx_path"]
        assert d.output().count("refused a write") == 1, d.output()
        assert lab.stop(d) == 0
        assert "Traceback" not in d.output()


@needs_module
def test_a_kernel_that_refuses_the_offloads() -> None:
    """The Engine keeps today's path when TUNSETOFFLOAD is refused (an offload bit no kernel has), and says why."""

    def body() -> None:
        from datapath.config import Remote
        from datapath.engine import Engine
        from datapath.io import inject
        from tests.configs import datapath_config

        inject.BASE_OFFLOADS |= 0x8000  # no TUN_F_ bit of that value: EINVAL
        cfg = datapath_config(mode="vxlan", remotes=(Remote("127.0.0.1", "127.0.0.1"),), underlay_mtu=1500,
                              tap_mtu=1450, tap_name="t-refuse")  # fmt: skip
        engine = Engine(cfg)
        try:
            assert engine.inject_tap is None, engine.inject_tap
            assert "refused by the kernel" in engine.inject_note and "TUNSETOFFLOAD" in engine.inject_note
            assert "segmented in C" in engine.describe_tx()
            assert not engine.injecting() and engine.snapshot().inject is None
            # nothing left of the attempt (asked of the kernel: /sys/class/net shows the parent's namespace here)
            assert not inject._device_exists("t-refuse-inj")
        finally:
            engine.close()

    run_isolated(body)


@needs_module
def test_a_device_that_appears_under_the_name_is_never_attached() -> None:
    """A device of the candidate name that appears between the look and TUNSETIFF (here: the look
    says it is not there) is not attached to: IFF_TUN_EXCL, and the next name. Attached, a persistent
    TAP of someone else's would have got our address, sysctls and link state, and kept them."""

    def body() -> None:
        from datapath.io import inject

        sh("ip", "tuntap", "add", "dev", "t-excl-inj", "mode", "tap")  # someone else's, persistent
        assert inject._device_exists("t-excl-inj") and not inject._device_exists("t-excl-inj1")
        real_exists = inject._device_exists
        inject._device_exists = lambda name: False
        try:
            tap = inject.open_inject_tap("t-excl", False)
        finally:
            inject._device_exists = real_exists
        try:
            assert tap.name == "t-excl-inj1", tap.name
        finally:
            tap.close()
        assert "t-excl-inj:" in sh("ip", "-o", "link", "show", "t-excl-inj").stdout  # theirs, still there
        assert not inject._device_exists("t-excl-inj1")  # ours went with its fd

    run_isolated(body)


@pytest.mark.skipif(not os.path.exists("/usr/sbin/nft"), reason="nftables not installed")
def test_a_rule_whose_handle_nft_does_not_echo_is_still_undone(tmp_path: Path) -> None:
    """An nft that inserts the rule but does not echo it (older versions have no JSON echo): the
    rule is found by its comment and deleted on undo, not left in the host's firewall for ever."""
    fake = tmp_path / "nft"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --echo ]; then shift 2; exec /usr/sbin/nft "$@" >/dev/null; fi\n'  # inserted, not echoed
        'exec /usr/sbin/nft "$@"\n'
    )
    fake.chmod(0o755)

    def body() -> None:
        from control import inject as host_inject

        sh("nft", "add", "table", "inet", "hostfw")
        sh("nft", "add", "chain", "inet", "hostfw", "forward", "{ type filter hook forward priority 0; policy drop; }")
        setup = host_inject.HostSetup("t-echo-inj")
        try:
            host_inject._nft_accept(setup, str(fake), "inet", "hostfw", "forward", PORT)
            assert "t-echo-inj" in sh("nft", "list", "chain", "inet", "hostfw", "forward").stdout
        except (host_inject.SetupError, ValueError):
            pass  # refused is fine too, as long as nothing is left behind
        finally:
            setup.undo()
        assert "t-echo-inj" not in sh("nft", "list", "ruleset").stdout

    run_isolated(body)


@needs_module
@pytest.mark.parametrize("path", ["fast", "fast-loop"], ids=["dp-thread", "loop"])
def test_an_injection_tap_deleted_under_the_engine_is_no_longer_read(path: str) -> None:
    """The injection TAP deleted under a running engine (ip link del): its fd is readable for ever
    (tun_chr_poll: EPOLLERR once detached), so the loop must stop reading it, say so once, and
    not call the drain again and again; the TX of super-frames falls back at the next write."""

    def body() -> None:
        import asyncio
        import logging

        from datapath.engine import Engine
        from tests.netns.test_engine import engine_cfg, underlay

        underlay()
        engine = Engine(engine_cfg("vxlan", path))
        assert engine.inject_tap is not None, engine.inject_note
        name = engine.inject_tap.name
        engine.enable_inject()
        calls = [0]
        real_drain = engine.forwarder.inject_drain  # type: ignore[attr-defined]

        def counting_drain() -> int:
            calls[0] += 1
            return int(real_drain())

        engine.forwarder.inject_drain = counting_drain  # type: ignore[attr-defined]
        records: list[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = records.append  # type: ignore[method-assign]
        logging.getLogger("ovl-dp").addHandler(handler)
        loop = asyncio.new_event_loop()
        try:
            engine.start(loop)
            sh("ip", "link", "del", name)
            loop.run_until_complete(asyncio.sleep(0.3))  # a spinning reader runs thousands of times here
            print(f"drain called {calls[0]} time(s) after the injection TAP was deleted")
            assert calls[0] <= 2, calls[0]
            said = [r.getMessage() for r in records if name in r.getMessage() and "gone" in r.getMessage()]
            assert len(said) == 1, [r.getMessage() for r in records]
        finally:
            logging.getLogger("ovl-dp").removeHandler(handler)
            engine.close()
            loop.close()

    run_isolated(body)


@pytest.mark.skipif(not os.path.exists("/usr/sbin/nft"), reason="nftables not installed")
def test_a_failure_after_the_host_setup_undoes_it() -> None:
    """The host is set up (an nft rule inserted), then turning the injection on fails (here: raises,
    as a SIGTERM landing there would): the rule is deleted before the error goes on, since the
    daemon's cleanup only knows a host setup that _set_up_inject returned."""

    def body() -> None:
        import types

        from control import daemon
        from datapath.io.inject import open_inject_tap

        sh("nft", "add", "table", "inet", "hostfw")
        sh("nft", "add", "chain", "inet", "hostfw", "forward", "{ type filter hook forward priority 0; policy drop; }")
        tap = open_inject_tap("t-fail", False)

        def enable_inject() -> None:
            raise KeyboardInterrupt

        engine = types.SimpleNamespace(
            inject_tap=tap,
            cfg=types.SimpleNamespace(
                encap=types.SimpleNamespace(port=PORT), offload=types.SimpleNamespace(inject6="auto")
            ),
            families=frozenset({4}),
            enable_inject=enable_inject,
            fast=True,
        )
        try:
            with pytest.raises(KeyboardInterrupt):
                daemon._set_up_inject(engine)  # type: ignore[arg-type]
            assert tap.name not in sh("nft", "list", "ruleset").stdout
        finally:
            tap.close()

    run_isolated(body)


# ---- issue 11, inject6: IPv6 remotes ------------------------------------------------------------------


def check_wire6(frames: list[bytes], zero_csum: bool = False) -> int:
    """Every VXLAN-over-IPv6 packet of frames is valid: hop limit 64, outer UDP checksum (RFC 8200 8.1; 0 only
    with --udp6-zero-csum-tx), inner TCP checksum. Returns how many carried inner TCP."""
    from scapy.layers.inet6 import IPv6

    tcp_seen = 0
    for raw in frames:
        pkt = Ether(raw)
        ip6, udp = pkt[IPv6], pkt[UDP]
        assert ip6.hlim == 64, ip6.hlim  # written one higher: forwarding took one
        if zero_csum:
            assert udp.chksum == 0
        else:
            assert udp.chksum != 0
            seg = bytes(udp)[: udp.len]
            pseudo = bytes(ip6)[8:40] + struct.pack("!IxxxB", udp.len, 17)
            assert sum16(pseudo + seg) == 0xFFFF, "outer UDP checksum"
        inner = pkt[VXLAN].payload
        if IP in inner and TCP in inner:
            iip = inner[IP]
            l4 = bytes(iip)[iip.ihl * 4 : iip.len]
            pseudo = bytes(iip)[12:20] + struct.pack("!HH", 6, len(l4))
            assert sum16(pseudo + l4) == 0xFFFF, "inner TCP checksum"
            tcp_seen += 1
    return tcp_seen


@needs_module
def test_ipv6_remotes_with_the_kernels_vxlan_device() -> None:
    """Issue 11: over an IPv6 underlay the super-frames go through the injection TAP as outer IPv6 (IPv6 on the
    TAP, force_forwarding there only, never all.forwarding); on a NIC-like wire every segment is valid."""
    with Lab(2, underlay="ipv6") as lab:
        lab.build(container_mtu("vxlan", family=6))
        d = lab.start(1, "--mode", "vxlan", "--remote", lab.underlay_ip(2), "--vni", str(VNI), "--port", str(PORT))
        kernel_vxlan(lab, 2, 1, VNI, PORT)
        nsexec(lab.host(2), "ethtool", "-K", "ul0", "tx", "off")
        out = d.output()
        assert f"net.ipv6.conf.{INJ}.force_forwarding=1" in out and f"no IPv6 on {INJ}" not in out, out
        assert "net.ipv4.conf" not in out.split("host changes:")[1].splitlines()[0]  # no IPv4 remote: none of it
        h1 = lab.host(1)
        assert sh("ip", "netns", "exec", h1, "sysctl", "-n", "net.ipv6.conf.all.forwarding").stdout.strip() == "0"
        assert "inet6" not in sh("ip", "-n", h1, "addr", "show", "dev", INJ).stdout  # no address, no link-local
        assert lab.ping(1, 2, count=3)["loss"] == 0
        assert iperf_bytes(lab, 1, 2) > MIN_TRANSFER  # the veth carries the super-packets whole
        nsexec(h1, "ethtool", "-K", "ul0", *NIC_LIKE)
        cap = RawCapture(lab, lab.host(2), "ul0", f"udp dst port {PORT} and src host {lab.underlay_ip(1)}", "wire6")
        assert iperf_bytes(lab, 1, 2) > MIN_TRANSFER
        assert iperf_bytes(lab, 2, 1) > MIN_TRANSFER
        frames = cap.stop()
        sample = frames[:: max(1, len(frames) // SAMPLE)]
        assert check_wire6(sample) > len(sample) // 3, len(frames)
        snap = lab.ovl(1, "show")
        inj = snap["inject"]
        print("wire:", len(frames), "packets; inject:", inj, "tx_path:", snap["tx_path"])
        assert inj["writes"] > 0 and inj["segments"] > inj["writes"] and inj["errors"] == 0, inj
        assert "kernel segmentation" in snap["tx_path"] and "IPv6 remotes too" in snap["tx_path"], snap["tx_path"]
        assert not {k: v for k, v in snap["drops"].items() if v}, snap["drops"]
        assert lab.stop(d) == 0
        assert not link_exists(lab, 1, INJ)
        assert "Traceback" not in d.output()


@needs_module
def test_ipv6_remotes_fall_back_cleanly_without_the_injection() -> None:
    """A host that does not forward IPv6 from the injection TAP (simulated with --inject6 off: this kernel has
    force_forwarding; test_a_kernel_without_force_forwarding covers its absence): the IPv6 remote's super-frames
    are segmented in C (fallback_other), the IPv4 remote's still injected, traffic flows both ways."""
    with Lab(3, underlay="dual") as lab:
        lab.build(container_mtu("vxlan", family=6))
        d = lab.start(1, "--mode", "vxlan", "--remote", lab.underlay_ip(2, 6), "--remote", lab.underlay_ip(3, 4),
                      "--local", lab.underlay_ip(1, 6), "--local", lab.underlay_ip(1, 4), "--vni", str(VNI),
                      "--port", str(PORT), "--inject6", "off")  # fmt: skip
        kernel_vxlan(lab, 2, 1, VNI, PORT, family=6)
        kernel_vxlan(lab, 3, 1, VNI, PORT, family=4)
        for i in (2, 3):
            nsexec(lab.host(i), "ethtool", "-K", "ul0", "tx", "off")
        out = d.output()
        assert f"no IPv6 on {INJ}" in out and "force_forwarding" not in out, out
        assert iperf_bytes(lab, 1, 2) > MIN_TRANSFER  # IPv6 remote: segmented in C
        inj = lab.ovl(1, "show")["inject"]
        assert inj["fallback_other"] > 0 and inj["writes"] == 0, inj
        assert iperf_bytes(lab, 1, 3) > MIN_TRANSFER  # IPv4 remote: injected
        snap = lab.ovl(1, "show")
        assert snap["inject"]["writes"] > 0 and snap["inject"]["errors"] == 0, snap["inject"]
        assert "IPv6 remotes segmented in C: off (--inject6 off)" in snap["tx_path"], snap["tx_path"]
        assert not {k: v for k, v in snap["drops"].items() if v}, snap["drops"]
        assert lab.stop(d) == 0
        assert "Traceback" not in d.output()


def test_a_kernel_without_force_forwarding() -> None:
    """No net.ipv6.conf.<inj>.force_forwarding (kernels before 6.17; here its name made one the kernel does not
    have): IPv6 stays off on the TAP, setup.ipv6 False with the reason; with IPv6 remotes only nothing could use
    the TAP: SetupError, nothing left behind. Never the global all.forwarding."""

    def body() -> None:
        from control import inject as host_inject
        from datapath.errors import SetupError
        from datapath.io.inject import open_inject_tap

        def conf(tap: str, name: str) -> str:
            with open(f"/proc/sys/net/ipv6/conf/{tap}/{name}") as f:
                return f.read().strip()

        tap = open_inject_tap("t-ff", True)
        try:
            host = host_inject.configure(tap.name, PORT, frozenset({4, 6}))
            assert host.ipv6 and f"net.ipv6.conf.{tap.name}.force_forwarding=1" in host.changes, host.changes
            names = ("force_forwarding", "accept_dad", "accept_ra", "autoconf", "disable_ipv6")
            assert [conf(tap.name, n) for n in names] == ["1", "0", "0", "0", "0"]
            assert conf("all", "forwarding") == "0"
            host.undo()
        finally:
            tap.close()
        host_inject.FORCE_FORWARDING = "force_forwarding_not_in_this_kernel"
        tap = open_inject_tap("t-ff", True)
        try:
            host = host_inject.configure(tap.name, PORT, frozenset({4, 6}))
            assert not host.ipv6 and "force_forwarding_not_in_this_kernel" in host.ipv6_note, host.ipv6_note
            assert f"no IPv6 on {tap.name}" in host.changes and conf(tap.name, "disable_ipv6") == "1", host.changes
            host.undo()
        finally:
            tap.close()
        tap = open_inject_tap("t-ff", True)
        try:
            with pytest.raises(SetupError, match="IPv6 remotes only"):
                host_inject.configure(tap.name, PORT, frozenset({6}))
            assert "state DOWN" in sh("ip", "link", "show", tap.name).stdout
        finally:
            tap.close()
        assert conf("all", "forwarding") == "0"

    run_isolated(body)


@needs_module
@pytest.mark.skipif(not os.path.exists("/usr/sbin/nft"), reason="nftables not installed")
def test_an_ip6_forward_chain_that_drops_by_default() -> None:
    """IPv6 remotes: an ip6 (and an inet) forward chain with policy drop get the accept rule; gone on exit."""
    with Lab(2, underlay="ipv6") as lab:
        lab.build(container_mtu("vxlan", family=6))
        for fam in ("ip6", "inet"):
            nft(lab, "add", "table", fam, "hostfw")
            nft(lab, "add", "chain", fam, "hostfw", "forward", "{ type filter hook forward priority 0; policy drop; }")
            nft(lab, "add", "rule", fam, "hostfw", "forward", "iifname", "br-int", "oifname", "br-int", "accept")
        d = lab.start(1, "--mode", "vxlan", "--remote", lab.underlay_ip(2), "--vni", str(VNI), "--port", str(PORT))
        kernel_vxlan(lab, 2, 1, VNI, PORT)
        nsexec(lab.host(2), "ethtool", "-K", "ul0", "tx", "off")
        for fam in ("ip6", "inet"):
            rules = nft(lab, "-a", "list", "chain", fam, "hostfw", "forward")
            assert f'iifname "{INJ}" udp dport {PORT} accept' in rules, rules
        assert iperf_bytes(lab, 1, 2) > MIN_TRANSFER
        snap = lab.ovl(1, "show")
        assert snap["inject"]["writes"] > 0 and "IPv6 remotes too" in snap["tx_path"], snap
        assert lab.stop(d) == 0
        for fam in ("ip6", "inet"):
            rules = nft(lab, "-a", "list", "chain", fam, "hostfw", "forward")
            assert INJ not in rules and "policy drop" in rules, rules
