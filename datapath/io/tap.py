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
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

import pytun

from datapath.errors import SetupError

TUN_DEVICE = "/dev/net/tun"
IFNAMSIZ = 16  # including the terminating NUL

# <linux/if_tun.h>
TUNGETFEATURES = 0x800454CF
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
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

    def __init__(self, name: str, mac: bytes, mtu: int, offloads: bool = False) -> None:
        if not os.path.exists(TUN_DEVICE):
            raise SetupError(
                f"{TUN_DEVICE} does not exist: load the tun module (modprobe tun) or give the container it"
            )
        self.vnet_hdr_len = 0  # bytes of virtio_net_hdr in front of every read and write
        self.offloads = 0  # TUN_F_* the kernel accepted
        self._dev = self._open(name, offloads and bool(tun_features() & IFF_VNET_HDR))
        try:
            self._dev.hwaddr = mac
            self._dev.mtu = mtu
            self._dev.up()
        except pytun.Error as exc:
            self._dev.close()
            raise SetupError(f"cannot configure TAP {name} (MAC, MTU {mtu}, up): {exc}") from None
        os.set_blocking(self._dev.fileno(), False)
        self.name: str = self._dev.name
        self.mac = mac
        self.mtu = mtu

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
        if not self.vnet_hdr_len:
            return "plain TAP (no virtio header, no offloads)"
        return f"virtio header {self.vnet_hdr_len} bytes, offloads: {offload_names(self.offloads)}"

    def set_mtu(self, mtu: int) -> None:
        """Change the device's MTU (SIOCSIFMTU); SetupError if the kernel refuses it."""
        try:
            self._dev.mtu = mtu
        except pytun.Error as exc:
            raise SetupError(f"cannot set the MTU of TAP {self.name} to {mtu}: {exc}") from None
        self.mtu = mtu

    def fileno(self) -> int:
        """The TAP's file descriptor (non-blocking)."""
        return int(self._dev.fileno())

    def close(self) -> None:
        """Close the fd; the kernel then deletes the interface (it is not persistent)."""
        self._dev.close()


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
