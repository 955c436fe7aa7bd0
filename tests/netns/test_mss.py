"""TCP MSS clamping (``--clamp-mss``) with real TCP connections in the two-host lab.

The containers keep MTU 1500 while the tunnel fits only 1450 bytes of inner IP packet (VXLAN over a 1500
underlay): their TSO super-frames pass the Linux bridge into the TAP (a GSO frame is not held to the TAP's
MTU), and ovl-dp cuts them into segments of the MSS the endpoints agreed on (1460 - 12 of timestamps), each
too big for the underlay: dropped as tx_too_big. No ICMP "too big" ever reaches an endpoint (nft drops ICMP
type 3 code 4 and ICMPv6 type 2 in both containers, and TCP's own MTU probing is off there), so without
clamping the transfer stalls; with ``--clamp-mss auto`` the SYN and SYN-ACK carry an MSS that fits, and it
completes.

The clamp runs on host 2 only: the SYN from container 1 is clamped on receive (host 2's rx), the SYN-ACK
from container 2 on send (host 2's tx), so both directions are tested. Each endpoint captures the SYN it
receives (an AF_PACKET socket in its namespace, as tcpdump would) and reports its MSS option.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from control.lab.hosts import Lab
from control.lab.peers import kernel_vxlan
from control.lab.shell import nsexec

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("no_leftovers")]

VNI = 5001
KERNEL_PORT = 8472  # the kernel vxlan peer's UDP port (and ovl-dp's --port towards it)
PORT = 7777
TRANSFER = 4_000_000  # bytes the client sends; the server answers "done" once it has read them all
STALL_WAIT = 8  # seconds a client without clamping waits for "done" (it never comes: no segment fits)
DONE_WAIT = 120  # seconds a client with clamping may take (the Python path on 2 shared cores included)
NO_ICMP = """
table inet ovl_mss_test {
    chain in {
        type filter hook input priority 0; policy accept;
        icmp type 3 icmp code 4 counter drop
        icmpv6 type 2 counter drop
    }
}
"""

# One end of a TCP connection, run inside a container: argv role family address port interface bytes timeout.
# It captures (AF_PACKET on interface, opened before any connection) the SYN (server) or SYN-ACK (client)
# it receives and prints its MSS option, the bytes moved and whether the transfer completed, as JSON.
PEER = r"""
import json, socket, struct, sys
role, fam, addr, port, ifname, nbytes, timeout = sys.argv[1:8]
port, nbytes, timeout = int(port), int(nbytes), float(timeout)
family = socket.AF_INET6 if fam == "6" else socket.AF_INET
cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
cap.bind((ifname, 0))

def syn_mss(want_ack):
    cap.setblocking(False)
    while True:
        try:
            frame, where = cap.recvfrom(65536)
        except BlockingIOError:
            return None
        if where[2] == socket.PACKET_OUTGOING:
            continue
        etype, off = struct.unpack_from("!H", frame, 12)[0], 14
        if etype == 0x0800 and frame[off + 9] == 6:
            l4 = off + (frame[off] & 15) * 4
        elif etype == 0x86DD and frame[off + 6] == 6:
            l4 = off + 40
        else:
            continue
        sport, dport = struct.unpack_from("!HH", frame, l4)
        flags = frame[l4 + 13]
        if not flags & 2 or bool(flags & 16) != want_ack or port not in (sport, dport):
            continue
        i, end = l4 + 20, l4 + (frame[l4 + 12] >> 4) * 4
        while i < end and frame[i] != 0:
            if frame[i] == 1:
                i += 1
                continue
            if frame[i] == 2:
                return struct.unpack_from("!H", frame, i + 2)[0]
            i += max(frame[i + 1], 2)
        return 0

out = {"done": False, "bytes": 0}
if role == "server":
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, port))
    srv.listen(1)
    print("listening", flush=True)
    srv.settimeout(timeout)
    conn, _ = srv.accept()
    conn.settimeout(timeout)
    try:
        while out["bytes"] < nbytes:
            b = conn.recv(1 << 16)
            if not b:
                break
            out["bytes"] += len(b)
        conn.sendall(b"done")
        out["done"] = out["bytes"] == nbytes
    except OSError as exc:
        out["error"] = str(exc)
    out["syn_mss"] = syn_mss(False)
else:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((addr, port))
        s.sendall(bytes(nbytes))
        out["done"] = s.recv(4) == b"done"
        out["bytes"] = nbytes
    except OSError as exc:
        out["error"] = str(exc)
    out["syn_mss"] = syn_mss(True)
print(json.dumps(out), flush=True)
"""


def _endpoints(lab: Lab, v6: bool) -> str:
    """Set up both containers (no ICMP too big, no TCP MTU probing, IPv6 addresses); the address of 2."""
    for i in (1, 2):
        c = lab.container(i)
        subprocess.run(["ip", "netns", "exec", c, "nft", "-f", "-"], input=NO_ICMP, text=True, check=True)
        nsexec(c, "sysctl", "-qw", "net.ipv4.tcp_mtu_probing=0")
        if v6:
            nsexec(c, "ip", "addr", "add", f"fd00:20::{i}/64", "dev", "eth0", "nodad")
    return "fd00:20::2" if v6 else lab.overlay_ip(2)


def _connection(lab: Lab, v6: bool, far: str, wait: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """One TCP transfer from container 1 to container 2; (the server's report, the client's)."""
    fam = "6" if v6 else "4"
    base = [sys.executable, "-c", PEER]
    srv = subprocess.Popen(
        ["ip", "netns", "exec", lab.container(2), *base, "server", fam, far, str(PORT), "eth0", str(TRANSFER),
         str(wait + 5)], stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    lab.procs.append(srv)  # type: ignore[arg-type]  # the lab stops it (by PID) if this test fails
    assert srv.stdout is not None and srv.stdout.readline().strip() == "listening"
    client = nsexec(lab.container(1), *base, "client", fam, far, str(PORT), "eth0", str(TRANSFER), str(wait),
                    timeout=wait + 30)  # fmt: skip
    server_out, _ = srv.communicate(timeout=wait + 30)
    return json.loads(server_out), json.loads(client.stdout)


def _start(lab: Lab, i: int, *extra: str) -> None:
    other = 2 if i == 1 else 1
    lab.start(i, "--mode", "vxlan", "--remote", lab.underlay_ip(other), "--vni", str(VNI), *extra)


def _stalls_then_completes(
    lab: Lab, v6: bool, clamp: str, want: int, *extra: str, ovs: bool = False, kernel_peer: bool = False
) -> None:
    """Host 2 runs ovl-dp, host 1 ovl-dp without clamping or (kernel_peer) the kernel's vxlan device."""
    far = _endpoints(lab, v6)
    if kernel_peer:
        kernel_vxlan(lab, 1, 2, VNI, KERNEL_PORT)
        extra = (*extra, "--port", str(KERNEL_PORT))
    else:
        _start(lab, 1, *extra)
    _start(lab, 2, *extra)
    lab.ping(1, 2, count=2)  # the tunnel works for small packets
    # Without clamping: the endpoints agree on an MSS the tunnel cannot carry; no ICMP tells them.
    server, client = _connection(lab, v6, far, STALL_WAIT)
    assert not client["done"] and not server["done"], (server, client)
    assert server["bytes"] < TRANSFER
    assert server["syn_mss"] == client["syn_mss"] == (1440 if v6 else 1460), (server, client)
    snap = lab.ovl(2, "show")
    if not ovs and not kernel_peer:  # the super-frames passed the Linux bridge; their segments did not fit
        assert snap["drops"]["tx_too_big"] + lab.ovl(1, "show")["drops"]["tx_too_big"] > 0, snap
    # (OVS sends frames to the TAP through a packet socket, which refuses those beyond the TAP's MTU; the
    # kernel's vxlan device drops what does not fit and answers with an ICMP that nft drops.)
    assert snap["stats"]["mss_clamped"] == 0
    # Host 2 again, clamping: the same connection completes, both ends saw the clamped MSS.
    assert lab.stop(lab.daemons[2]) == 0
    _start(lab, 2, "--clamp-mss", clamp, *extra)
    server, client = _connection(lab, v6, far, DONE_WAIT)
    assert server["done"] and client["done"], (server, client)
    assert server["syn_mss"] == want, server  # the SYN, clamped by host 2 on receive
    assert client["syn_mss"] == want, client  # the SYN-ACK, clamped by host 2 on send
    stats = lab.ovl(2, "show")["stats"]
    assert stats["mss_clamped"] >= 2, stats  # (a retransmitted SYN would be clamped again)
    said = "auto (IPv4 1410, IPv6 1390 in untagged frames)" if clamp == "auto" else f"to {clamp}"
    assert f"TCP MSS clamping: {said}" in lab.daemons[2].output()
    logs = lab.daemons[2].output() + ("" if kernel_peer else lab.daemons[1].output())
    assert "Traceback" not in logs


@pytest.mark.parametrize(("v6", "want"), [(False, 1410), (True, 1390)], ids=["ipv4", "ipv6"])
def test_clamp_auto_c_path(v6: bool, want: int) -> None:
    """C path with TAP offloads, Linux bridges: 1500 - VXLAN 50 - IP - TCP headers."""
    with Lab(2) as lab:
        lab.build(container_mtu=1500)
        _stalls_then_completes(lab, v6, "auto", want)


@pytest.mark.parametrize(("vlan_map", "want"), [(False, 1406), (True, 1410)], ids=["trunk", "mapped"])
def test_clamp_auto_vlan_tagged(vlan_map: bool, want: int) -> None:
    """The seed scenario's OVS bridges, the containers access ports of VLAN 20, the TAP a trunk: the tagged
    frames cross as they are (the 802.1Q tag travels: 4 bytes less), or (--vlan-map 20=5020) untagged in
    their own VNI, the tag stripped and re-inserted around the clamp (the tag does not count)."""
    with Lab(2) as lab:
        lab.build(container_mtu=1500, bridge="ovs", tag=20)
        extra = ["--vlan-map", "20=5020"] if vlan_map else []
        _stalls_then_completes(lab, False, "auto", want, *extra, ovs=True)


def test_clamp_fixed_and_python_path_with_iperf3() -> None:
    """--clamp-mss 1200 gives 1200 (IPv6, the pure-Python datapath); then an iperf3 run completes too."""
    with Lab(2) as lab:
        lab.build(container_mtu=1500)
        _stalls_then_completes(lab, True, "1200", 1200, "--no-fast-path")
        result = lab.iperf3(1, 2, 2)
        assert "error" not in result, result
        assert result["end"]["sum_received"]["bytes"] > 0


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_clamp_against_the_kernels_vxlan_device(v6: bool) -> None:
    """Host 1 runs the kernel's vxlan device (it does not clamp), host 2 ovl-dp: one end clamping is enough.
    The underlay veths keep their offloads: the kernel's SYN arrives with only the pseudo-header seed as its
    TCP checksum, which the clamp leaves and the RX plan completes over the clamped option."""
    with Lab(2) as lab:
        lab.build(container_mtu=1500)
        _stalls_then_completes(lab, v6, "auto", 1390 if v6 else 1410, kernel_peer=True)
