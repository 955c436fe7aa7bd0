"""The AF_PACKET TX ring in a lab: what reaches the wire, next hops that change, and the raw-socket fallback.

ovl-dp on lab hosts (control.lab.hosts) with ``--tx-ring auto`` (the default) sends its outer
packets through a TX ring on ul0 once control/nexthop.py has resolved the remote's next hop.
A capture on the peer checks the frames byte for byte where it matters: the Ethernet header
(the next hop's MAC and ours), a valid IPv4 header checksum, DF (GRE) with id 0 or no DF (VXLAN) with an
id of its own, TTL 64, and for VXLAN
the UDP checksum (0, or valid with ``--udp-csum``) — as the raw socket sends them, which the
``--tx-ring off`` runs show on the same checks.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from typing import Any

import pytest

from control.lab.hosts import Lab
from control.lab.shell import mac_of, nsexec, sh
from control.procs import wait_until
from datapath import fast
from datapath.config import Remote
from datapath.io import ring
from tests.configs import datapath_config
from tests.interop_util import Capture
from tests.isolated import run_isolated
from tests.netns.netutil import ip

NH_MAC = bytes.fromhex("02aabbccddee")
OUR_MAC = bytes.fromhex("021122334455")
REMOTES = (Remote("10.0.0.2", "10.0.0.1"), Remote("10.0.1.2", "10.0.1.1"))


def frame(n: int) -> bytes:
    return b"\xff" * 6 + bytes.fromhex("020000000001") + b"\x08\x00" + bytes(n)


pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("no_leftovers")]


def watch(lab: Lab, i: int) -> dict[str, Any]:
    return dict(lab.ovl(i, "show")["watch"])


def log_of(lab: Lab, i: int) -> str:
    return lab.daemons[i].output()


def wait_nexthop(lab: Lab, i: int, text: str) -> None:
    """Until host i's daemon logged a next hop line containing text."""
    wait_until(
        f"h{i}: next hop {text}", lambda: any("next hop" in ln and text in ln for ln in log_of(lab, i).splitlines()),
        timeout=10, detail=lambda: log_of(lab, i)[-3000:],
    )  # fmt: skip


def check_outer(frame: bytes, src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, udp_csum: bool) -> int:
    """The checks of the module docstring on one captured frame; its IP id."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    e = Ether(frame)
    assert (e.src, e.dst, e.type) == (src_mac, dst_mac, 0x0800)
    ip = e[IP]
    df = "" if e[IP].proto == 17 else "DF"  # the default --df: VXLAN unset (the kernel's vxlan), GRE set (gretap)
    assert (ip.src, ip.dst, ip.ttl, str(ip.flags)) == (src_ip, dst_ip, 64, df)
    # DF: id 0, as the kernel's raw path leaves it; no DF (the packet may be fragmented on its way): an id of
    # its own, which the raw path's kernel picks and the ring's C gives (RFC 6864 4.1)
    assert ip.id == 0 if df else ip.id != 0
    assert ip.len == len(bytes(ip))
    again = IP(bytes(ip))
    del again.chksum
    assert IP(bytes(again)).chksum == ip.chksum, "IPv4 header checksum"
    if UDP in e:
        if udp_csum:
            u = IP(bytes(ip))
            del u[UDP].chksum
            assert IP(bytes(u))[UDP].chksum == ip[UDP].chksum != 0, "UDP checksum"
        else:
            assert ip[UDP].chksum == 0
    return int(ip.id)


@pytest.mark.parametrize(
    ("mode", "extra"),
    # VXLAN with --inject off: TCP super-frames otherwise leave through the injection TAP (the
    # kernel segments them), and the ring carries only the ACKs and small frames.
    [
        ("gre", ()),
        ("vxlan", ("--inject", "off")),
        ("vxlan", ("--udp-csum", "--inject", "off")),
        ("gre", ("--tx-ring", "off")),
        ("vxlan", ("--tx-ring", "off", "--inject", "off")),
    ],
    ids=["gre", "vxlan", "vxlan-udp-csum", "gre-ring-off", "vxlan-ring-off"],
)
def test_ring_frames_on_the_wire(mode: str, extra: tuple[str, ...]) -> None:
    ring = "--tx-ring" not in extra
    with Lab(2) as lab:
        lab.build()
        lab.start_mesh(mode, *extra)
        if ring:
            wait_nexthop(lab, 1, lab.underlay_ip(2))
            wait_nexthop(lab, 2, lab.underlay_ip(1))
        bpf = "ip proto 47" if mode == "gre" else "udp dst port 4789"
        cap = Capture(lab, lab.host(2), "ul0", f"{bpf} and src host {lab.underlay_ip(1)}", "txring")
        assert lab.ping(1, 2, count=5, interval=0.05)["loss"] == 0
        r = lab.iperf3(1, 2, 1)
        assert r["end"]["sum_received"]["bytes"] > 1_000_000
        frames = cap.stop()
        w1, w2 = watch(lab, 1), watch(lab, 2)
        print(f"{mode} {extra}: h1 {w1}\nh2 {w2}; {len(frames)} frames captured")
        if ring:
            assert w1["nexthops"] == 1 and w1["ring_tx"] > 1000 and w1["ring_send_errors"] == 0
            assert w2["ring_tx"] > 0
        else:
            assert "nexthops" not in w1 and "ring_tx" not in w1 and "TX ring" not in log_of(lab, 1)
        assert len(frames) > 100
        src_mac, dst_mac = mac_of(lab.host(1), "ul0"), mac_of(lab.host(2), "ul0")
        # Every frame is a full scapy dissection: a sample of at most ~2,000 spread over the whole
        # capture (with --inject off a second of iperf3 is some 100,000 frames).
        ids = [
            check_outer(f, src_mac, dst_mac, lab.underlay_ip(1), lab.underlay_ip(2), "--udp-csum" in extra)
            for f in frames[:: max(1, len(frames) // 2000)]
        ]
        assert len(set(ids)) > (1 if mode == "vxlan" else 0), "one IP id for every packet without DF"
        assert "Traceback" not in log_of(lab, 1) + log_of(lab, 2)


def test_neighbour_mac_change_is_followed() -> None:
    with Lab(2) as lab:
        lab.build()
        lab.start_mesh("gre")
        old = mac_of(lab.host(2), "ul0")
        wait_nexthop(lab, 1, old)
        assert lab.ping(1, 2, count=3, interval=0.05)["loss"] == 0
        new = "02:00:5e:10:20:30"
        sh("ip", "-n", lab.host(2), "link", "set", "ul0", "address", new)
        # What the kernel would learn from the peer (a gratuitous ARP, a probe): the entry's MAC changes.
        sh("ip", "-n", lab.host(1), "neigh", "replace", lab.underlay_ip(2), "lladdr", new, "dev", "ul0", "nud", "stale")
        wait_nexthop(lab, 1, new)
        assert lab.ping(1, 2, count=5, interval=0.05)["loss"] == 0  # ring frames to the old MAC would be lost
        w = watch(lab, 1)
        # A frame or two may go by the raw socket while the entry is being resolved again
        # (the fallback); none may go by the ring to the old MAC (the pings above).
        assert w["nexthop_changes"] >= 2 and w["ring_fallback"] <= 5, w
        print(f"after the MAC change: {w}")


def test_route_via_a_gateway_is_followed() -> None:
    with Lab(3) as lab:
        lab.build()
        gw = lab.host(3)
        for key in (
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.send_redirects=0",
            "net.ipv4.conf.ul0.send_redirects=0",
        ):
            nsexec(gw, "sysctl", "-qw", key)
        lab.start_mesh("gre", hosts=range(1, 3))
        wait_nexthop(lab, 1, f"next hop {lab.underlay_ip(2)} ")
        # h1 reaches h2 through h3 now: the ring frames must go to h3's MAC.
        sh("ip", "-n", lab.host(1), "route", "add", f"{lab.underlay_ip(2)}/32", "via", lab.underlay_ip(3))
        wait_nexthop(lab, 1, f"next hop {lab.underlay_ip(3)} ")
        cap = Capture(lab, gw, "ul0", f"ip proto 47 and src host {lab.underlay_ip(1)}", "via-gw")
        assert lab.ping(1, 2, count=5, interval=0.05)["loss"] == 0
        frames = cap.stop()
        gw_mac = mac_of(gw, "ul0")
        to_gw = [f for f in frames if f[:6] == bytes.fromhex(gw_mac.replace(":", ""))]
        assert len(to_gw) >= 5, f"{len(frames)} frames, {len(to_gw)} to the gateway's MAC"
        for f in to_gw:
            check_outer(f, mac_of(lab.host(1), "ul0"), gw_mac, lab.underlay_ip(1), lab.underlay_ip(2), False)
        # The route goes: straight to h2 again.
        sh("ip", "-n", lab.host(1), "route", "del", f"{lab.underlay_ip(2)}/32")
        wait_until(
            "next hop back to h2",
            lambda: log_of(lab, 1).rsplit("next hop ", 1)[-1].startswith(f"{lab.underlay_ip(2)} "),
            timeout=10,
        )
        assert lab.ping(1, 2, count=3, interval=0.05)["loss"] == 0
        # (h1 may have had no neighbour entry for h2 any more: then a packet or two went the raw way while
        # the kernel resolved it, counted as ring_fallback; that is the fallback doing its job.)
        w = watch(lab, 1)
        print(f"after the route went: {w}")
        assert w["ring_send_errors"] == 0 and w["ring_tx"] > 0


def test_remote_added_at_run_time_gets_its_next_hop() -> None:
    with Lab(3) as lab:
        lab.build()
        lab.start(1, "--mode", "vxlan", "--remote", lab.underlay_ip(2))
        lab.start(3, "--mode", "vxlan", "--remote", lab.underlay_ip(1))
        wait_nexthop(lab, 1, f"next hop {lab.underlay_ip(2)} ")
        sh("ip", "netns", "exec", lab.host(1), sys.executable, "-m", "control.cli", "remote", "add", lab.underlay_ip(3))
        wait_nexthop(lab, 1, f"next hop {lab.underlay_ip(3)} ")
        assert watch(lab, 1)["nexthops"] == 2
        assert lab.ping(1, 3, count=5, interval=0.05)["loss"] == 0
        sh("ip", "netns", "exec", lab.host(1), sys.executable, "-m", "control.cli", "remote", "del", lab.underlay_ip(3))
        wait_until("h1: one next hop", lambda: watch(lab, 1)["nexthops"] == 1, timeout=10)
        w = watch(lab, 1)
        assert w["ring_tx"] > 0 and w["ring_send_errors"] == 0


# A point-to-point underlay without Ethernet headers (as WireGuard or OpenVPN give): a TUN device on each
# host, its packets carried to the other host's in UDP by this relay (one per host, a lab process).
TUN_RELAY = """
import fcntl, os, select, socket, struct, sys
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", b"tun0", 0x0001 | 0x1000))  # TUNSETIFF: IFF_TUN | IFF_NO_PI
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 7000))
print("ready", flush=True)
while True:
    r = select.select([fd, s], [], [])[0]
    if fd in r:
        s.sendto(os.read(fd, 65536), (sys.argv[2], 7000))
    if s in r:
        os.write(fd, s.recv(65536))
"""


def test_remote_without_an_ethernet_next_hop_uses_the_raw_socket() -> None:
    """GRE over a TUN underlay (no Ethernet header, no neighbour): nothing to put in a ring frame, the raw socket
    carries it (the ring's fallback, counted)."""
    with Lab(2) as lab:
        lab.build(container_mtu=1300)
        inner = {1: "10.77.0.1", 2: "10.77.0.2"}
        for i, j in ((1, 2), (2, 1)):
            h = lab.host(i)
            proc = subprocess.Popen(
                ["ip", "netns", "exec", h, sys.executable, "-c", TUN_RELAY, lab.underlay_ip(i), lab.underlay_ip(j)],
                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            lab.procs.append(proc)
            assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
            sh("ip", "-n", h, "link", "set", "tun0", "mtu", "1400", "up")
            sh("ip", "-n", h, "addr", "add", f"{inner[i]}/30", "dev", "tun0")
        lab.start(1, "--mode", "gre", "--remote", inner[2])
        lab.start(2, "--mode", "gre", "--remote", inner[1])
        wait_until(
            "h1: raw socket", lambda: "tun0 is not an Ethernet device" in log_of(lab, 1), timeout=10,
            detail=lambda: log_of(lab, 1)[-3000:],
        )  # fmt: skip
        assert lab.ping(1, 2, count=5, interval=0.05)["loss"] == 0
        w = watch(lab, 1)
        print(f"over a TUN underlay: {w}")
        assert w["nexthops"] == 0 and w["ring_tx"] == 0 and w["ring_fallback"] >= 5
        assert "TX ring on" not in log_of(lab, 1)


def test_ring_mode_counts_what_goes_the_raw_way() -> None:
    """from_tap in a namespace of its own: a socketpair stands in for the TAP, a UDP socket for the raw one, and
    the ring is on lo (its frames go nowhere)."""

    def body() -> None:
        ip("link", "set", "lo", "up")
        lo_ring = ring.open_tx_ring(socket.if_nametoindex("lo"), 1500)
        try:
            _ring_mode(lo_ring)
        finally:
            lo_ring.close()

    run_isolated(body)


def _ring_mode(lo_ring: ring.TxRing) -> None:
    s = socket

    fwd = fast.FastForwarder(
        datapath_config(mode="gre", remotes=REMOTES, underlay_mtu=1500, tap_mtu=1476, tap_offloads=False)
    )
    a, b = s.socketpair(s.AF_UNIX, s.SOCK_DGRAM)
    raw = s.socket(s.AF_INET, s.SOCK_DGRAM)  # sendmmsg to it fails (not a raw socket): tx_error, still counted
    try:
        a.setblocking(False)
        b.send(frame(100))
        fwd.from_tap(a.fileno(), raw)
        assert fwd.ring_counters()["ring_fallback"] == 0  # ring mode off: nothing counted
        fwd.enable_tx_rings()
        fwd.set_tx_ring(0, lo_ring)
        fwd.set_nexthop(1, 0, NH_MAC, OUR_MAC)
        b.send(frame(100))  # flooded: slot 0 raw, slot 1 into the ring (sent on lo)
        fwd.from_tap(a.fileno(), raw)
        c = fwd.ring_counters()
        assert (c["ring_fallback"], c["ring_tx"], c["ring_sends"], c["ring_full"]) == (1, 1, 1, 0)
        assert [r["tx_packets"] for r in fwd.snapshot().remotes] == [0, 1]
        fwd.clear_tx_ring(0)
    finally:
        for x in (a, b, raw):
            x.close()


def test_engine_remove_remote_forgets_its_ring_next_hop() -> None:
    """A remote removed loses its next hop with its slot (C); the engine's ring bookkeeping too, so a remote
    added again in that slot is not reported as on a ring (the keeper then sets its next hop again), and a
    ring nobody uses any more is closed."""
    from datapath import fast
    from datapath.config import Remote
    from datapath.engine import Engine
    from tests.isolated import run_isolated
    from tests.netns.test_engine import LOCAL, REMOTE, engine_cfg, skip_without_c, underlay

    skip_without_c("fast")

    def body() -> None:
        underlay()
        eng = Engine(engine_cfg("gre", "fast"))
        try:
            assert eng.tx_rings is not None and isinstance(eng.forwarder, fast.FastForwarder)
            lo = socket.if_nametoindex("lo")
            assert eng.set_nexthop(REMOTE, lo, 1500, b"\x02" * 6, b"\x04" * 6)
            assert eng.ring_remotes() == {REMOTE} and eng.tx_rings.rings
            eng.remove_remote(REMOTE)
            eng.add_remote(Remote(REMOTE, LOCAL))  # the same slot again
            assert eng.ring_remotes() == frozenset()
            assert eng.tx_rings.rings == {}  # nobody sends through lo's ring now: closed
        finally:
            eng.close()

    run_isolated(body)


def test_ring_of_a_device_nobody_leaves_through_any_more_is_closed() -> None:
    """A remote whose route moves to another device: the old device's ring, now unused, is closed (else the
    rings of every device ever used stay mapped, and after 16 new devices are refused)."""
    from datapath import fast
    from datapath.config import Remote
    from datapath.txring import TxRings
    from tests.configs import datapath_config
    from tests.isolated import run_isolated
    from tests.netns.netutil import ip
    from tests.netns.test_engine import skip_without_c

    skip_without_c("fast")

    def body() -> None:
        ip("link", "add", "d0", "type", "veth", "peer", "name", "d1")
        ip("link", "set", "d0", "up")
        lo, d0 = socket.if_nametoindex("lo"), socket.if_nametoindex("d0")
        fwd = fast.FastForwarder(
            datapath_config(mode="gre", remotes=(Remote("10.0.0.2", "10.0.0.1"),), underlay_mtu=1500, tap_mtu=1476)
        )
        rings = TxRings(fwd)
        try:
            assert rings.set(0, lo, 1500, b"\x02" * 6, b"\x04" * 6)
            assert rings.set(0, d0, 1500, b"\x02" * 6, b"\x06" * 6)
            assert set(rings.rings) == {d0}
        finally:
            rings.close()

    run_isolated(body)
