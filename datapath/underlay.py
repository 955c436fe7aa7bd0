"""The tunnel sockets, and what the routing table says about each remote.

Send: one raw socket (IPPROTO_RAW, which implies IP_HDRINCL) for both modes,
because the datapath builds the outer IPv4 header itself: the VXLAN UDP
source port must vary per inner flow, which a bound UDP socket cannot do.
Receive: a UDP socket bound to the VXLAN port, or a raw IPPROTO_GRE socket
(which hands over the outer IPv4 header as well).
"""

from __future__ import annotations

import errno
import socket

from datapath.config import DatapathConfig
from datapath.errors import SetupError
from datapath.ipv4 import IPPROTO_GRE

IP_MTU = 14  # <linux/in.h>: path MTU of a connected socket
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DO = 2  # DF on every packet
SOCKET_BUFFER = 4 << 20  # room for bursts from a batch
SOL_UDP = 17
UDP_SEGMENT = 103  # Linux 4.18
UDP_GRO = 104  # Linux 5.0
UDP_GSO_SOCKETS = 8  # the pool of UDP_SEGMENT senders (OVL_GSO_SOCKETS in C is the most)
SRC_PORT_MIN, SRC_PORT_MAX = 32768, 61000  # as the C flow-hash source ports


def route_to(remote: str) -> tuple[str, int]:
    """(local source address, path MTU) the kernel would use towards remote."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((remote, 9))  # discard port; nothing is sent
        except OSError as exc:
            raise SetupError(f"no route to remote {remote}: {exc.strerror}") from None
        local = probe.getsockname()[0]
        mtu = probe.getsockopt(socket.IPPROTO_IP, IP_MTU)
    return local, mtu


def _grow_buffer(sock: socket.socket, option: int) -> None:
    # The kernel caps at net.core.[rw]mem_max; a smaller buffer only costs bursts.
    sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)


def open_send_socket() -> socket.socket:
    """Raw IPv4 socket that sends packets whose IPv4 header we built."""
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    except PermissionError:
        raise SetupError("cannot open a raw socket: permission denied (run as root or with CAP_NET_RAW)") from None
    _grow_buffer(sock, socket.SO_SNDBUF)
    return sock


def enable_udp_gro(sock: socket.socket) -> bool:
    """Ask for coalesced UDP datagrams (UDP_GRO); False where the kernel has no such option."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def open_gso_sockets(cfg: DatapathConfig, count: int = UDP_GSO_SOCKETS) -> list[socket.socket]:
    """UDP sockets for UDP_SEGMENT sends, bound to source ports spread over 32768-60999; [] if unsupported.

    The kernel builds the outer headers: DF (IP_PMTUDISC_DO), cfg.ttl, a UDP checksum.
    """
    socks: list[socket.socket] = []
    span = (SRC_PORT_MAX - SRC_PORT_MIN) // count
    try:
        for i in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(sock)
            sock.getsockopt(SOL_UDP, UDP_SEGMENT)  # ENOPROTOOPT before Linux 4.18
            sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, cfg.ttl)
            _grow_buffer(sock, socket.SO_SNDBUF)
            for port in range(SRC_PORT_MIN + i * span, SRC_PORT_MIN + (i + 1) * span):
                try:
                    sock.bind((cfg.bind, port))
                    break
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE:
                        raise
            else:
                raise OSError(errno.EADDRINUSE, "no free source port")
    except OSError:
        for sock in socks:
            sock.close()
        return []
    return socks


def open_recv_socket(cfg: DatapathConfig) -> socket.socket:
    """Non-blocking socket that receives tunnel packets: UDP on cfg.port, or raw GRE."""
    if cfg.mode == "vxlan":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((cfg.bind, cfg.port))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise SetupError(
                    f"UDP port {cfg.port} is already in use on {cfg.bind} "
                    "(another ovl-dp, or a kernel vxlan device with this dstport?)"
                ) from None
            raise SetupError(f"cannot bind UDP {cfg.bind}:{cfg.port}: {exc.strerror}") from None
    else:
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_GRE)
        except PermissionError:
            raise SetupError(
                "cannot open a raw GRE socket: permission denied (run as root or with CAP_NET_RAW)"
            ) from None
        if cfg.bind != "0.0.0.0":
            try:
                sock.bind((cfg.bind, 0))
            except OSError as exc:
                sock.close()
                raise SetupError(f"cannot bind to local address {cfg.bind}: {exc.strerror}") from None
    _grow_buffer(sock, socket.SO_RCVBUF)
    sock.setblocking(False)
    return sock
