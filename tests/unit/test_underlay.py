"""datapath/io/underlay.py on loopback: the receiving UDP socket, UDP_GRO, the UDP GSO pool, raw sockets.

route_to needs routes of the test's own and is in tests/netns/test_underlay.py.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from datapath.errors import SetupError
from datapath.io import underlay
from datapath.io.underlay import SRC_PORT_MAX, SRC_PORT_MIN

LO = "127.0.0.1"
NOT_LOCAL = "192.0.2.77"  # TEST-NET-1: never an address of this host
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="raw sockets need CAP_NET_RAW")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LO, 0))
        return int(s.getsockname()[1])


def grown(sysctl: str) -> int:
    """What the kernel gives for SOCKET_BUFFER: capped at net.core.[rw]mem_max, then doubled."""
    cap = int(Path(f"/proc/sys/net/core/{sysctl}").read_text())
    return 2 * min(underlay.SOCKET_BUFFER, cap)


@pytest.fixture
def closing() -> Iterator[list[socket.socket]]:
    """Sockets the test opened; closed afterwards whatever happens."""
    socks: list[socket.socket] = []
    yield socks
    for s in socks:
        s.close()


def test_constants() -> None:
    assert (SRC_PORT_MIN, SRC_PORT_MAX) == (32768, 61000)
    assert (underlay.UDP_SEGMENT, underlay.UDP_GRO, underlay.SOL_UDP) == (103, 104, socket.IPPROTO_UDP)


def test_open_udp_socket(closing: list[socket.socket]) -> None:
    port = free_port()
    sock = underlay.open_udp_socket(LO, port)
    closing.append(sock)
    assert sock.type == socket.SOCK_DGRAM and sock.getsockname() == (LO, port)
    assert not sock.getblocking()
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= grown("rmem_max")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        tx.sendto(b"hello", (LO, port))
    sock.settimeout(30)
    assert sock.recvfrom(100)[0] == b"hello"


def test_port_in_use(closing: list[socket.socket]) -> None:
    port = free_port()
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closing.append(holder)
    holder.bind((LO, port))
    before = open_fds()
    with pytest.raises(SetupError) as info:
        underlay.open_udp_socket(LO, port)
    assert str(info.value) == (
        f"UDP port {port} is already in use on {LO} (another ovl-dp, or a kernel vxlan device with this dstport?)"
    )
    assert open_fds() == before  # the refused socket is closed


def test_port_in_use_by_a_wildcard_bind(closing: list[socket.socket]) -> None:
    port = free_port()
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closing.append(holder)
    holder.bind(("0.0.0.0", port))
    with pytest.raises(SetupError, match=f"UDP port {port} is already in use on {LO}"):
        underlay.open_udp_socket(LO, port)


def test_bind_to_an_address_not_ours() -> None:
    before = open_fds()
    with pytest.raises(SetupError) as info:
        underlay.open_udp_socket(NOT_LOCAL, free_port())
    assert str(info.value).startswith(f"cannot bind UDP {NOT_LOCAL}:")
    assert os.strerror(errno.EADDRNOTAVAIL) in str(info.value)
    assert open_fds() == before


def test_enable_udp_gro(closing: list[socket.socket]) -> None:
    sock = underlay.open_udp_socket(LO, free_port())
    closing.append(sock)
    assert sock.getsockopt(underlay.SOL_UDP, underlay.UDP_GRO) == 0
    assert underlay.enable_udp_gro(sock) is True
    assert sock.getsockopt(underlay.SOL_UDP, underlay.UDP_GRO) == 1


def test_enable_udp_gro_refused(closing: list[socket.socket]) -> None:
    """A socket without the option (here a TCP one) reports False instead of raising."""
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    closing.append(tcp)
    assert underlay.enable_udp_gro(tcp) is False


def test_open_gso_sockets(closing: list[socket.socket]) -> None:
    socks = underlay.open_gso_sockets(LO, ttl=9)
    closing.extend(socks)
    assert len(socks) == underlay.UDP_GSO_SOCKETS == 8
    span = (SRC_PORT_MAX - SRC_PORT_MIN) // len(socks)
    ports = [s.getsockname()[1] for s in socks]
    assert len(set(ports)) == len(ports)
    for i, (s, port) in enumerate(zip(socks, ports, strict=True)):
        assert SRC_PORT_MIN + i * span <= port < SRC_PORT_MIN + (i + 1) * span < SRC_PORT_MAX + 1
        assert s.getsockname()[0] == LO and s.type == socket.SOCK_DGRAM
        assert s.getsockopt(socket.IPPROTO_IP, socket.IP_TTL) == 9
        assert s.getsockopt(socket.IPPROTO_IP, underlay.IP_MTU_DISCOVER) == underlay.IP_PMTUDISC_DO
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= grown("wmem_max")


def test_gso_socket_skips_a_port_in_use(closing: list[socket.socket]) -> None:
    """A taken port moves that socket to the next free one in its share of the range."""
    count = 3
    span = (SRC_PORT_MAX - SRC_PORT_MIN) // count
    first_free = None
    for port in range(SRC_PORT_MIN, SRC_PORT_MIN + span - 1):
        holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            holder.bind((LO, port))
        except OSError:
            holder.close()
            continue
        closing.append(holder)
        first_free = port
        break
    assert first_free is not None
    socks = underlay.open_gso_sockets(LO, ttl=64, count=count)
    closing.extend(socks)
    assert len(socks) == count
    assert first_free < socks[0].getsockname()[1] < SRC_PORT_MIN + span


def test_gso_sockets_on_an_address_not_ours_are_none() -> None:
    before = open_fds()
    assert underlay.open_gso_sockets(NOT_LOCAL, ttl=64) == []
    assert open_fds() == before  # every socket opened so far is closed again


@needs_root
def test_open_send_socket(closing: list[socket.socket]) -> None:
    sock = underlay.open_send_socket()
    closing.append(sock)
    assert sock.type == socket.SOCK_RAW and sock.proto == socket.IPPROTO_RAW
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= grown("wmem_max")


@needs_root
def test_open_raw_socket(closing: list[socket.socket]) -> None:
    sock = underlay.open_raw_socket(LO, 47, "GRE")
    closing.append(sock)
    assert sock.proto == 47 and sock.getsockname()[0] == LO and not sock.getblocking()
    wild = underlay.open_raw_socket("0.0.0.0", 47, "GRE")
    closing.append(wild)
    assert wild.getsockname()[0] == "0.0.0.0"


@needs_root
def test_open_raw_socket_on_an_address_not_ours() -> None:
    before = open_fds()
    with pytest.raises(SetupError, match=f"cannot bind to local address {NOT_LOCAL}: "):
        underlay.open_raw_socket(NOT_LOCAL, 47, "GRE")
    assert open_fds() == before


def test_raw_socket_without_privileges(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> socket.socket:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(underlay.socket, "socket", refuse)
    with pytest.raises(SetupError) as info:
        underlay.open_raw_socket(LO, 47, "GRE")
    assert str(info.value) == "cannot open a raw GRE socket: permission denied (run as root or with CAP_NET_RAW)"
    with pytest.raises(SetupError, match="cannot open a raw socket: permission denied"):
        underlay.open_send_socket()
