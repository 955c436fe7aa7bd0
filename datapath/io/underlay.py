"""The underlay's sockets, and what the routing table says about each remote.

Send: one raw socket (IPPROTO_RAW, which implies IP_HDRINCL) for every
encapsulation, because the datapath builds the outer IPv4 header itself: the
VXLAN UDP source port must vary per inner flow, which a bound UDP socket cannot
do. Receive: the socket an encapsulation asks for (:meth:`Encap.open_recv_socket`):
a UDP socket bound to a port, or a raw socket of an IP protocol, opened here.
"""

from __future__ import annotations

import errno
import socket
import sys

from datapath.errors import SetupError

IP_MTU = 14  # <linux/in.h>: path MTU of a connected socket
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DONT = 0  # never DF
IP_PMTUDISC_DO = 2  # DF on every packet
SOCKET_BUFFER = 4 << 20  # room for bursts from a batch
SOL_UDP = 17
UDP_SEGMENT = 103  # Linux 4.18
UDP_GRO = 104  # Linux 5.0
UDP_GSO_SOCKETS = 8  # the pool of UDP_SEGMENT senders (OVL_GSO_SOCKETS in C is the most)
# The kernel's default net.ipv4.ip_local_port_range, where RFC 7348 §5 and
# udp_flow_src_port() put flow-hashed source ports (61000 itself is excluded).
SRC_PORT_MIN, SRC_PORT_MAX = 32768, 61000


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


def _raw(proto: int, what: str) -> socket.socket:
    """A raw IPv4 socket of proto; what names it in the error ("GRE": "a raw GRE socket")."""
    try:
        return socket.socket(socket.AF_INET, socket.SOCK_RAW, proto)
    except PermissionError:
        kind = f"raw {what} socket" if what else "raw socket"
        raise SetupError(f"cannot open a {kind}: permission denied (run as root or with CAP_NET_RAW)") from None


def open_send_socket() -> socket.socket:
    """Non-blocking raw IPv4 socket that sends packets whose IPv4 header we built.

    Non-blocking: a full send buffer must never stall the loop (the datapath counts it as tx_full).
    """
    sock = _raw(socket.IPPROTO_RAW, "")
    _grow_buffer(sock, socket.SO_SNDBUF)
    sock.setblocking(False)
    return sock


def open_udp_socket(bind: str, port: int) -> socket.socket:
    """Non-blocking UDP socket bound to bind:port, for receiving; SetupError if the port is taken."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((bind, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise SetupError(
                f"UDP port {port} is already in use on {bind} "
                "(another ovl-dp, or a kernel vxlan device with this dstport?)"
            ) from None
        raise SetupError(f"cannot bind UDP {bind}:{port}: {exc.strerror}") from None
    _grow_buffer(sock, socket.SO_RCVBUF)
    sock.setblocking(False)
    return sock


def open_raw_socket(bind: str, proto: int, what: str) -> socket.socket:
    """Non-blocking raw socket of IP protocol proto (it hands over the outer IPv4 header too)."""
    sock = _raw(proto, what)
    if bind != "0.0.0.0":
        try:
            sock.bind((bind, 0))
        except OSError as exc:
            sock.close()
            raise SetupError(f"cannot bind to local address {bind}: {exc.strerror}") from None
    _grow_buffer(sock, socket.SO_RCVBUF)
    sock.setblocking(False)
    return sock


def enable_udp_gro(sock: socket.socket) -> bool:
    """Ask for coalesced UDP datagrams (UDP_GRO); False where the kernel has no such option."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def enable_recv_tos(sock: socket.socket) -> None:
    """Ask for the outer DS field of every received packet (cmsg IP_TOS / IPV6_TCLASS), for ECN (RFC 6040).

    A raw IPv4 socket hands over the outer header anyway; the cmsg is asked for there too.
    SetupError where the kernel refuses (it never has since Linux 2.2 / 2.6.14).
    """
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVTCLASS, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
    except OSError as exc:
        raise SetupError(f"cannot ask for the outer TOS of received packets: {exc.strerror}") from None


def received_tos(ancdata: list[tuple[int, int, bytes]], packet: bytes, raw_ipv4: bool) -> int:
    """The outer DS field of a packet recvmsg returned with ancdata (IP_TOS / IPV6_TCLASS), or of its own
    outer IPv4 header (raw_ipv4: a raw IPv4 socket delivers it); 0 if neither says (csrc/ecn.c ecn_rx_tos)."""
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == socket.IP_TOS and len(data) >= 1:
            return data[0]
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_TCLASS and len(data) >= 4:
            return int.from_bytes(data[:4], sys.byteorder) & 0xFF
    if raw_ipv4 and len(packet) >= 20 and packet[0] >> 4 == 4:
        return packet[1]
    return 0


def set_gso_df(sock: socket.socket, df: bool) -> None:
    """DF on every packet the kernel builds for a UDP GSO socket (IP_PMTUDISC_DO), or never (DONT)."""
    sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO if df else IP_PMTUDISC_DONT)


def open_gso_sockets(bind: str, ttl: int, count: int = UDP_GSO_SOCKETS, df: bool = True) -> list[socket.socket]:
    """UDP sockets for UDP_SEGMENT sends, bound to source ports spread over the local port range; [] if unsupported.

    The kernel builds the outer headers: DF (IP_PMTUDISC_DO; df False: never, IP_PMTUDISC_DONT), ttl,
    a UDP checksum. The C path passes each send's TOS and TTL as cmsgs (csrc/ecn.c) and sends packets
    whose DF the socket cannot give through the raw socket.
    """
    socks: list[socket.socket] = []
    span = (SRC_PORT_MAX - SRC_PORT_MIN) // count
    try:
        for i in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(sock)
            sock.getsockopt(SOL_UDP, UDP_SEGMENT)  # ENOPROTOOPT before Linux 4.18
            set_gso_df(sock, df)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
            _grow_buffer(sock, socket.SO_SNDBUF)
            sock.setblocking(False)  # the C path sends with MSG_DONTWAIT anyway; never a stalled loop
            for port in range(SRC_PORT_MIN + i * span, SRC_PORT_MIN + (i + 1) * span):
                try:
                    sock.bind((bind, port))
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


# -- sockets received from another process (a takeover) ------------------------------------------


def adopt_socket(fd: int, made: list[socket.socket]) -> socket.socket:
    """A socket object on fd (family, type and protocol asked of the kernel), appended to made.

    SetupError if fd is not a socket.
    """
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise SetupError(f"a received fd is not a socket ({exc.strerror})") from None
    made.append(sock)
    return sock


def check_socket(sock: socket.socket, what: str, kind: int, proto: int, bound: tuple[str, int | None] | None) -> None:
    """SetupError unless sock is an AF_INET socket of kind and proto bound to bound (address, port or
    None for any; bound None: not checked)."""
    problems = []
    if sock.family != socket.AF_INET or sock.type != kind or sock.proto != proto:
        problems.append(f"it is ({sock.family!r}, {sock.type!r}, protocol {sock.proto}), not (AF_INET, "
                        f"{socket.SocketKind(kind)!r}, protocol {proto})")  # fmt: skip
    elif bound is not None:
        addr, port = sock.getsockname()[:2]
        if addr != bound[0] or (bound[1] is not None and port != bound[1]):
            want = f"{bound[0]}:{bound[1] if bound[1] is not None else '*'}"
            problems.append(f"it is bound to {addr}:{port}, not {want}")
    if problems:
        raise SetupError(f"the received {what} socket does not match this configuration: {problems[0]}")


def udp_gro_on(sock: socket.socket) -> bool | None:
    """Whether UDP_GRO is on on sock; None where the kernel cannot say."""
    try:
        return bool(sock.getsockopt(SOL_UDP, UDP_GRO))
    except OSError:
        return None
