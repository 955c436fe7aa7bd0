"""The injection TAP: where VXLAN super-frames leave whole, for the kernel to route and segment.

A second TAP next to the bridge TAP, opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, a
24-byte virtio header (TUNSETVNETHDRSZ: struct virtio_net_hdr_v1_hash_tunnel, which carries
the tunnel offsets) and TUNSETOFFLOAD(CSUM | TSO4 | TSO6 | UDP_TUNNEL_GSO, plus
UDP_TUNNEL_GSO_CSUM when outer UDP checksums are wanted). The C path (csrc/inject.c) writes
each super-frame to it with outer Ethernet / IPv4 (or IPv6) / UDP / VXLAN headers in front; the kernel
takes the frame in as if it came from a wire, forwards it to the underlay and segments it
there. What the host needs for that (the link up, an address, three sysctls, maybe a
firewall rule) is the control plane's (control/inject.py); this module only opens the device.

:func:`open_inject_tap` raises :class:`InjectRefused` when the kernel refuses any step
(kernels before 6.17 have no UDP tunnel GSO for TAPs): the daemon then keeps today's path.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct

from datapath.io.tap import (
    IFF_NO_PI,
    IFF_TAP,
    IFF_VNET_HDR,
    IFNAMSIZ,
    TUN_DEVICE,
    TUN_F_CSUM,
    TUN_F_TSO4,
    TUN_F_TSO6,
    TUNSETOFFLOAD,
    TUNSETVNETHDRSZ,
    _link_facts,
)

TUNSETIFF = 0x400454CA
IFF_TUN_EXCL = 0x8000  # TUNSETIFF creates the device or fails (EBUSY): never attaches to one that is there
# <linux/if_tun.h> of kernels 6.17+ (older headers lack them)
TUN_F_UDP_TUNNEL_GSO = 0x080
TUN_F_UDP_TUNNEL_GSO_CSUM = 0x100
INJECT_VNET_HDR_LEN = 24  # struct virtio_net_hdr_v1_hash_tunnel
BASE_OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_UDP_TUNNEL_GSO
SUFFIX = "-inj"
NAME_TRIES = 10


class InjectRefused(Exception):
    """The kernel (or the host) does not give us an injection TAP; the message says which step."""


def inject_names(tap: str) -> list[str]:
    """Candidate names of the injection TAP of TAP tap, at most 15 characters each.

    ``<tap>-inj`` if it fits, else the TAP's name cut short; then ``-inj1``..``-inj9`` (a takeover
    runs two daemons for one TAP at once, each with its own injection TAP).
    """
    out = []
    for k in range(NAME_TRIES):
        suffix = SUFFIX + (str(k) if k else "")
        out.append(tap[: IFNAMSIZ - 1 - len(suffix)] + suffix)
    return out


class InjectTap:
    """An open, non-blocking injection TAP (down, no address: control/inject.py configures it)."""

    def __init__(self, name: str, fd: int, mac: bytes, offloads: int) -> None:
        self.name = name
        self.mac = mac
        self.offloads = offloads
        self._fd = fd

    @property
    def udp_tunnel_csum(self) -> bool:
        """The kernel completes outer UDP checksums (TUN_F_UDP_TUNNEL_GSO_CSUM)."""
        return bool(self.offloads & TUN_F_UDP_TUNNEL_GSO_CSUM)

    def describe(self) -> str:
        """One line: name, offloads."""
        csum = ", outer UDP checksums" if self.udp_tunnel_csum else ", outer UDP checksum 0"
        return f"injection TAP {self.name} (virtio header {INJECT_VNET_HDR_LEN} bytes, udp_tunnel_gso{csum})"

    def fileno(self) -> int:
        """The fd (non-blocking)."""
        return self._fd

    def close(self) -> None:
        """Close the fd: the kernel deletes the device, and with it its addresses and sysctls."""
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = -1


def _device_exists(name: str) -> bool:
    """A network device of that name is in this network namespace (asked of the kernel: /sys/class/net
    shows the namespace sysfs was mounted in, which after a bare unshare or nsenter is another one)."""
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def open_inject_tap(tap: str, udp_csum: bool, extra_offloads: int = 0) -> InjectTap:
    """Open the injection TAP of TAP tap: the first free name of :func:`inject_names`.

    udp_csum: ask for TUN_F_UDP_TUNNEL_GSO_CSUM too (outer UDP checksums); extra_offloads: more
    TUN_F_* bits to ask for (tests use one the kernel refuses). InjectRefused says what failed.
    """
    if not os.path.exists(TUN_DEVICE):
        raise InjectRefused(f"{TUN_DEVICE} does not exist")
    offloads = BASE_OFFLOADS | (TUN_F_UDP_TUNNEL_GSO_CSUM if udp_csum else 0) | extra_offloads
    for name in inject_names(tap):
        # Never attach to a device that is there (a persistent TAP of someone else's, an old one):
        # skipped here, and IFF_TUN_EXCL refuses one that appears in between.
        if _device_exists(name):
            continue
        fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
        try:
            ifr = struct.pack(f"{IFNAMSIZ}sH", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_TUN_EXCL)
            try:
                fcntl.ioctl(fd, TUNSETIFF, ifr)
            except OSError as exc:
                if exc.errno in (errno.EBUSY, errno.EEXIST):  # it appeared since the look above
                    os.close(fd)
                    fd = -1
                    continue
                raise InjectRefused(f"cannot create TAP {name}: {exc.strerror}") from None
            try:
                fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", INJECT_VNET_HDR_LEN))
            except OSError as exc:
                raise InjectRefused(f"TUNSETVNETHDRSZ {INJECT_VNET_HDR_LEN} refused: {exc.strerror}") from None
            try:
                fcntl.ioctl(fd, TUNSETOFFLOAD, offloads)
            except OSError as exc:
                raise InjectRefused(
                    f"TUNSETOFFLOAD 0x{offloads:x} (UDP tunnel GSO) refused: {exc.strerror} (needs Linux 6.17+)"
                ) from None
            os.set_blocking(fd, False)
            mac, _ = _link_facts(name)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        return InjectTap(name, fd, mac, offloads)
    raise InjectRefused(f"no free name for the injection TAP (tried {', '.join(inject_names(tap))})")
