"""The TAP device: the bridge-facing end of the tunnel.

Opened with python-pytun (IFF_TAP | IFF_NO_PI), given a fixed MAC and MTU,
brought up and switched to non-blocking so that one readiness event can be
drained in a batch. Closing the fd removes a non-persistent TAP, and with it
any bridge port.
"""

from __future__ import annotations

import errno
import os

import pytun

from datapath.errors import SetupError

TUN_DEVICE = "/dev/net/tun"
IFNAMSIZ = 16  # including the terminating NUL


class Tap:
    """An open, up, non-blocking TAP device."""

    def __init__(self, name: str, mac: bytes, mtu: int) -> None:
        if not os.path.exists(TUN_DEVICE):
            raise SetupError(
                f"{TUN_DEVICE} does not exist: load the tun module (modprobe tun) or give the container it"
            )
        try:
            self._dev = pytun.TunTapDevice(name=name, flags=pytun.IFF_TAP | pytun.IFF_NO_PI)
        except pytun.Error as exc:
            raise SetupError(_explain_open_error(name, exc)) from None
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

    def fileno(self) -> int:
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
