"""The TAP device: the bridge-facing end of the tunnel.

Opened with python-pytun (IFF_TAP | IFF_NO_PI), given a fixed MAC and MTU,
brought up and switched to non-blocking so that one readiness event can be
drained in a batch. Closing the fd removes a non-persistent TAP, and with it
any bridge port.

With ``offloads=True`` (the C fast path) the TAP is opened with IFF_VNET_HDR
if TUNGETFEATURES lists it: every read and write then starts with a 10-byte
virtio_net_hdr (TUNSETVNETHDRSZ), and TUNSETOFFLOAD asks the kernel to hand
over partial checksums (TUN_F_CSUM) and TCP super-frames (TSO4, TSO6,
TSO_ECN), trying smaller sets when one is refused. Anything refused falls
back, in the end to the plain TAP; ``vnet_hdr_len`` and ``offloads`` say
what is on.

:meth:`Tap.adopt` takes over the fd of a TAP another process opened (``ovl-dp
run --takeover``, the fd received over SCM_RIGHTS): what the other process
claims (name, virtio header, MAC, MTU) is checked against the kernel
(TUNGETIFF, TUNGETVNETHDRSZ, SIOCGIFHWADDR, SIOCGIFMTU) before it is used.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct

import pytun

from datapath.errors import SetupError
from datapath.io.qdisc import set_root_qdisc

TUN_DEVICE = "/dev/net/tun"
IFNAMSIZ = 16  # including the terminating NUL

# <linux/if_tun.h>
TUNGETFEATURES = 0x800454CF
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUNGETIFF = 0x800454D2
TUNGETVNETHDRSZ = 0x800454D7
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
SIOCGIFMTU = 0x8921
SIOCSIFMTU = 0x8922
SIOCGIFHWADDR = 0x8927
IFREQ_SIZE = 40
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
VNET_HDR_LEN = 10  # struct virtio_net_hdr (OVL_VNET_HDR_LEN in C)

# Tried in this order; the first the kernel accepts wins.
OFFLOAD_SETS = (
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN,
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
    TUN_F_CSUM | TUN_F_TSO4,
    TUN_F_CSUM,
)
_OFFLOAD_NAMES = ((TUN_F_CSUM, "csum"), (TUN_F_TSO4, "tso4"), (TUN_F_TSO6, "tso6"), (TUN_F_TSO_ECN, "tso_ecn"))


def tun_features() -> int:
    """The IFF_* flags the tun driver supports (TUNGETFEATURES), 0 if it cannot tell."""
    try:
        fd = os.open(TUN_DEVICE, os.O_RDWR)
    except OSError:
        return 0
    try:
        return int(struct.unpack("I", fcntl.ioctl(fd, TUNGETFEATURES, bytes(4)))[0])
    except OSError:
        return 0
    finally:
        os.close(fd)


def offload_names(flags: int) -> str:
    """TUN_F_* flags as text, e.g. "csum tso4 tso6"; "none" for 0."""
    return " ".join(name for bit, name in _OFFLOAD_NAMES if flags & bit) or "none"


class Tap:
    """An open, up, non-blocking TAP device."""

    def __init__(self, name: str, mac: bytes, mtu: int, offloads: bool = False, qdisc: str = "keep") -> None:
        """qdisc: "noqueue" replaces the kernel's default root qdisc (datapath.io.qdisc), "keep" leaves it;
        a refused noqueue keeps the default, and ``qdisc`` says which one the TAP has."""
        if not os.path.exists(TUN_DEVICE):
            raise SetupError(
                f"{TUN_DEVICE} does not exist: load the tun module (modprobe tun) or give the container it"
            )
        self._dev: pytun.TunTapDevice | None = None
        self.vnet_hdr_len = 0  # bytes of virtio_net_hdr in front of every read and write
        self.offloads = 0  # TUN_F_* the kernel accepted
        dev = self._open(name, offloads and bool(tun_features() & IFF_VNET_HDR))
        try:
            dev.hwaddr = mac
            dev.mtu = mtu
            dev.up()
        except pytun.Error as exc:
            dev.close()
            raise SetupError(f"cannot configure TAP {name} (MAC, MTU {mtu}, up): {exc}") from None
        os.set_blocking(dev.fileno(), False)
        self._dev = dev
        self._fd = int(dev.fileno())
        self.name: str = dev.name
        self.mac = mac
        self.mtu = mtu
        self.qdisc = "default"  # the root qdisc: "noqueue", or "default" (the kernel's) with why
        if qdisc == "noqueue":
            why = set_root_qdisc(socket.if_nametoindex(self.name), "noqueue")
            self.qdisc = f"default (noqueue refused: {why})" if why else "noqueue"

    @classmethod
    def adopt(cls, fd: int, name: str, mac: bytes, mtu: int, vnet_hdr_len: int, offloads: int) -> Tap:
        """The TAP behind fd (opened by another process), once the kernel confirms what is claimed.

        name, mac, mtu, vnet_hdr_len: what the other process says; offloads: the TUN_F_* flags it set
        (there is no getter: they are set again, which changes nothing when they are the same).
        SetupError, naming the difference, if the fd is not that TAP; fd is not closed then.
        """
        try:
            ifr = fcntl.ioctl(fd, TUNGETIFF, bytes(IFREQ_SIZE))
        except OSError as exc:
            raise SetupError(f"the received TAP fd is not a TUN/TAP device (TUNGETIFF: {exc.strerror})") from None
        got_name = ifr[:IFNAMSIZ].split(b"\0", 1)[0].decode(errors="replace")
        (flags,) = struct.unpack_from("H", ifr, IFNAMSIZ)
        problems = []
        if got_name != name:
            problems.append(f"it is {got_name!r}, not {name!r}")
        if flags & (IFF_TAP | IFF_NO_PI) != IFF_TAP | IFF_NO_PI:
            problems.append(f"flags 0x{flags:x} are not IFF_TAP | IFF_NO_PI")
        hdr = 0
        if flags & IFF_VNET_HDR:
            hdr = int(struct.unpack("i", fcntl.ioctl(fd, TUNGETVNETHDRSZ, bytes(4)))[0])
        if hdr != vnet_hdr_len:
            problems.append(f"its virtio header is {hdr} bytes, not {vnet_hdr_len}")
        if not problems:
            got_mac, got_mtu = _link_facts(name)
            if got_mac != mac:
                problems.append(f"its MAC is {got_mac.hex(':')}, not {mac.hex(':')}")
            if got_mtu != mtu:
                problems.append(f"its MTU is {got_mtu}, not {mtu}")
        if not problems and offloads:
            try:
                fcntl.ioctl(fd, TUNSETOFFLOAD, offloads)
            except OSError as exc:
                problems.append(f"offloads {offload_names(offloads)} refused ({exc.strerror})")
        if problems:
            raise SetupError(f"the received TAP fd does not match TAP {name}: {'; '.join(problems)}")
        tap = cls.__new__(cls)
        tap._dev = None
        tap._fd = fd
        tap.vnet_hdr_len, tap.offloads = vnet_hdr_len, offloads
        tap.name, tap.mac, tap.mtu = name, mac, mtu
        tap.qdisc = "as the previous daemon left it"
        os.set_blocking(fd, False)
        return tap

    def _open(self, name: str, vnet_hdr: bool) -> pytun.TunTapDevice:
        flags = pytun.IFF_TAP | pytun.IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
        try:
            dev = pytun.TunTapDevice(name=name, flags=flags)
        except pytun.Error as exc:
            if vnet_hdr:  # a kernel that lists the flag but refuses it: the plain TAP
                return self._open(name, False)
            raise SetupError(_explain_open_error(name, exc)) from None
        if vnet_hdr:
            try:
                fcntl.ioctl(dev.fileno(), TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
            except OSError:
                dev.close()
                return self._open(name, False)
            self.vnet_hdr_len = VNET_HDR_LEN
            for flags in OFFLOAD_SETS:
                try:
                    fcntl.ioctl(dev.fileno(), TUNSETOFFLOAD, flags)
                except OSError:
                    continue
                self.offloads = flags
                break
        return dev

    def describe(self) -> str:
        """One line on what the TAP does: plain, or its virtio header and offloads."""
        qdisc = f", qdisc {self.qdisc}"
        if not self.vnet_hdr_len:
            return f"plain TAP (no virtio header, no offloads){qdisc}"
        return f"virtio header {self.vnet_hdr_len} bytes, offloads: {offload_names(self.offloads)}{qdisc}"

    def set_mtu(self, mtu: int) -> None:
        """Change the device's MTU (SIOCSIFMTU); SetupError if the kernel refuses it."""
        try:
            if self._dev is not None:
                self._dev.mtu = mtu
            else:  # an adopted TAP (a takeover): by name, as pytun does
                req = struct.pack(f"{IFNAMSIZ}si", self.name.encode(), mtu).ljust(IFREQ_SIZE, b"\0")
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    fcntl.ioctl(sock.fileno(), SIOCSIFMTU, req)
        except (pytun.Error, OSError) as exc:
            raise SetupError(f"cannot set the MTU of TAP {self.name} to {mtu}: {exc}") from None
        self.mtu = mtu

    def fileno(self) -> int:
        """The TAP's file descriptor (non-blocking)."""
        return self._fd

    def close(self) -> None:
        """Close the fd; the kernel then deletes the interface (it is not persistent) once no process
        holds an fd of it (after a takeover the new process does)."""
        if self._dev is not None:
            self._dev.close()
        elif self._fd >= 0:
            os.close(self._fd)
        self._fd = -1


def _link_facts(name: str) -> tuple[bytes, int]:
    """(MAC, MTU) of interface name in this network namespace (SIOCGIFHWADDR, SIOCGIFMTU)."""
    req = struct.pack(f"{IFNAMSIZ}s", name.encode()).ljust(IFREQ_SIZE, b"\0")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        hw = fcntl.ioctl(sock.fileno(), SIOCGIFHWADDR, req)
        mtu = fcntl.ioctl(sock.fileno(), SIOCGIFMTU, req)
    return bytes(hw[IFNAMSIZ + 2 : IFNAMSIZ + 8]), int(struct.unpack_from("i", mtu, IFNAMSIZ)[0])


def _explain_open_error(name: str, exc: pytun.Error) -> str:
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    text = str(exc)
    if code in (errno.EPERM, errno.EACCES) or "Operation not permitted" in text:
        return f"cannot create TAP {name}: permission denied (run as root or with CAP_NET_ADMIN)"
    if code == errno.EBUSY or "busy" in text:
        return f"cannot create TAP {name}: it is in use by another process (is another ovl-dp running?)"
    if code == errno.EINVAL or "Invalid argument" in text:
        return f"cannot create TAP {name}: an interface of that name exists and is not a TAP"
    return f"cannot create TAP {name}: {text}"
