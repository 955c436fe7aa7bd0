"""The underlay's sockets, and what the routing table says about each remote.

Send: one raw socket per underlay family (IPPROTO_RAW, which implies IP_HDRINCL /
IPV6_HDRINCL) for every encapsulation, because the datapath builds the outer IPv4 or
IPv6 header itself: the VXLAN UDP source port must vary per inner flow, which a bound
UDP socket cannot do. Receive: the socket an encapsulation asks for
(:meth:`Encap.open_recv_socket`): a UDP socket bound to a port, or a raw socket of an IP
protocol, opened here, of the family of the address it binds to (an IPv6 one with
IPV6_V6ONLY, so that an IPv4 socket can have the same port).
"""

from __future__ import annotations

import errno
import socket
import sys

from datapath.errors import SetupError

IP_MTU = 14  # <linux/in.h>: path MTU of a connected socket
IPV6_MTU = 24  # <linux/in6.h>: path MTU of a connected IPv6 socket
IPV6_RECVPKTINFO = 49  # <linux/in6.h>: IPV6_PKTINFO control messages (the destination address)
UDP_NO_CHECK6_TX = 101  # <linux/udp.h>: send UDP over IPv6 with checksum 0 (RFC 6935)
UDP_NO_CHECK6_RX = 102  # <linux/udp.h>: accept UDP over IPv6 with checksum 0
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


def family(addr: str) -> socket.AddressFamily:
    """AF_INET6 for an IPv6 address in text form, else AF_INET."""
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def any_address(fam: socket.AddressFamily) -> str:
    """The wildcard address of a family: 0.0.0.0 or ::."""
    return "::" if fam == socket.AF_INET6 else "0.0.0.0"


def route_to(remote: str, what: str = "remote") -> tuple[str, int]:
    """(local source address, path MTU) the kernel would use towards remote (IPv4 or IPv6); what names it in
    the SetupError when there is no route ("remote", "etcd endpoint")."""
    fam = family(remote)
    with socket.socket(fam, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((remote, 9))  # discard port; nothing is sent
        except OSError as exc:
            raise SetupError(f"no route to {what} {remote}: {exc.strerror}") from None
        local = probe.getsockname()[0]
        if fam == socket.AF_INET6:
            mtu = probe.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU)
        else:
            mtu = probe.getsockopt(socket.IPPROTO_IP, IP_MTU)
    return local, mtu


def _grow_buffer(sock: socket.socket, option: int) -> None:
    # The kernel caps at net.core.[rw]mem_max; a smaller buffer only costs bursts.
    sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)


def _raw(proto: int, what: str, fam: socket.AddressFamily = socket.AF_INET) -> socket.socket:
    """A raw socket of proto and family fam; what names it in the error ("GRE": "a raw GRE socket")."""
    try:
        return socket.socket(fam, socket.SOCK_RAW, proto)
    except PermissionError:
        kind = f"raw {what} socket" if what else "raw socket"
        raise SetupError(f"cannot open a {kind}: permission denied (run as root or with CAP_NET_RAW)") from None
    except OSError as exc:
        if fam == socket.AF_INET6 and exc.errno == errno.EAFNOSUPPORT:
            raise SetupError("cannot open an IPv6 socket: IPv6 is disabled on this host") from None
        raise


def open_send_socket(fam: socket.AddressFamily = socket.AF_INET) -> socket.socket:
    """Non-blocking raw socket of family fam that sends packets whose IPv4 / IPv6 header we built.

    Non-blocking: a full send buffer must never stall the loop (the datapath counts it as tx_full).
    (AF_INET6 with IPPROTO_RAW: the kernel sets IPV6_HDRINCL itself.)
    """
    sock = _raw(socket.IPPROTO_RAW, "IPv6" if fam == socket.AF_INET6 else "", fam)
    _grow_buffer(sock, socket.SO_SNDBUF)
    sock.setblocking(False)
    return sock


def open_udp_socket(bind: str, port: int, zero_csum_rx: bool = False) -> socket.socket:
    """Non-blocking UDP socket bound to bind:port, for receiving; SetupError if the port is taken.

    An IPv6 bind address gives an AF_INET6 socket with IPV6_V6ONLY, which with zero_csum_rx
    accepts datagrams with UDP checksum 0 (UDP_NO_CHECK6_RX; RFC 6936), as the kernel's
    vxlan with udp6zerocsumrx; without it the kernel drops them.
    """
    fam = family(bind)
    try:
        sock = socket.socket(fam, socket.SOCK_DGRAM)
    except OSError as exc:
        if fam == socket.AF_INET6 and exc.errno == errno.EAFNOSUPPORT:
            raise SetupError("cannot open an IPv6 socket: IPv6 is disabled on this host") from None
        raise
    if fam == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if zero_csum_rx:
            sock.setsockopt(SOL_UDP, UDP_NO_CHECK6_RX, 1)
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
    """Non-blocking raw socket of IP protocol proto, of bind's family (IPv4: it hands over the outer
    IPv4 header too; IPv6: it does not, and IPV6_RECVPKTINFO gives the destination address)."""
    fam = family(bind)
    sock = _raw(proto, what, fam)
    if fam == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
    if bind not in ("0.0.0.0", "::"):
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
    whose DF the socket cannot give through the raw socket. IPv4 only (an IPv6 remote's packets leave
    through the raw IPv6 socket).
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


def check_socket(
    sock: socket.socket,
    what: str,
    kind: int,
    proto: int,
    bound: tuple[str, int | None] | None,
    fam: socket.AddressFamily = socket.AF_INET,
) -> None:
    """SetupError unless sock is a socket of family fam, kind and proto bound to bound (address, port or
    None for any; bound None: not checked)."""
    problems = []
    if sock.family != fam or sock.type != kind or sock.proto != proto:
        problems.append(f"it is ({sock.family!r}, {sock.type!r}, protocol {sock.proto}), not ({fam.name}, "
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
