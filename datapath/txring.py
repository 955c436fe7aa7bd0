"""The engine's AF_PACKET TX rings: one per egress device, opened when a next hop first needs it.

:class:`TxRings` sits between the control plane's next hops (control/nexthop.py: for a remote,
the egress device, its MTU, the next hop's MAC and ours) and the C fast path's rings
(:meth:`FastForwarder.set_tx_ring`, :meth:`FastForwarder.set_nexthop`). A device whose ring the
kernel refuses (no CAP_NET_RAW, no AF_PACKET, mmap failing) is remembered and its remotes stay on
the raw socket: the fallback, logged once per device.
"""

from __future__ import annotations

import contextlib
import logging

from datapath.fast import FastForwarder
from datapath.io.ring import TxRing, open_tx_ring

log = logging.getLogger("ovl-dp")

MAX_RINGS = 16  # OVL_RING_MAX in csrc/ovl.h


class TxRings:
    """TX rings by egress device (ifindex) and which remote (slot) leaves through which."""

    def __init__(self, forwarder: FastForwarder) -> None:
        self.fwd = forwarder
        forwarder.enable_tx_rings()
        self.rings: dict[int, tuple[int, TxRing]] = {}  # ifindex -> (C ring index, ring)
        self.refused: dict[int, str] = {}  # ifindex -> why the kernel refused its ring
        self.via: dict[int, int] = {}  # remote slot -> ifindex of its ring

    def _ring(self, ifindex: int, mtu: int) -> int | None:
        """The C index of the ring on ifindex (opened or reopened for mtu), None if refused."""
        have = self.rings.get(ifindex)
        if have is not None and have[1].geometry.max_len == mtu + 14:
            return have[0]
        if have is not None:  # the device's MTU changed: a ring sized for it
            self._drop(ifindex)
        if ifindex in self.refused:
            return None
        used = {i for i, _ in self.rings.values()}
        free = [i for i in range(MAX_RINGS) if i not in used]
        if not free:
            self._refuse(ifindex, f"more than {MAX_RINGS} egress devices")
            return None
        try:
            ring = open_tx_ring(ifindex, mtu)
        except OSError as exc:
            self._refuse(ifindex, exc.strerror or str(exc))
            return None
        try:
            self.fwd.set_tx_ring(free[0], ring)
        except OSError as exc:
            ring.close()
            self._refuse(ifindex, exc.strerror or str(exc))
            return None
        self.rings[ifindex] = (free[0], ring)
        g = ring.geometry
        log.info(
            "TX ring on %s: %d slots of %d bytes (%d KiB)", ring.name, g.frame_nr, g.frame_size, g.bytes >> 10,
            extra={"event": "tx_ring_open", "device": ring.name},
        )  # fmt: skip
        return free[0]

    def _refuse(self, ifindex: int, why: str) -> None:
        self.refused[ifindex] = why
        log.warning(
            "TX ring on device %d refused (%s): its remotes use the raw socket", ifindex, why,
            extra={"event": "tx_ring_refused", "ifindex": ifindex},
        )  # fmt: skip

    def _drop(self, ifindex: int) -> None:
        index, ring = self.rings.pop(ifindex)
        self.fwd.clear_tx_ring(index)
        ring.close()
        for slot in [s for s, i in self.via.items() if i == ifindex]:
            del self.via[slot]

    def set(self, slot: int, ifindex: int, mtu: int, dst: bytes, src: bytes) -> bool:
        """The remote in slot leaves through the ring of ifindex (MTU mtu) to MAC dst from src; False: the raw
        socket (the ring was refused). KeyError for a free slot."""
        index = self._ring(ifindex, mtu)
        if index is None:
            self.clear(slot)
            return False
        self.fwd.set_nexthop(slot, index, dst, src)
        before = self.via.get(slot)
        self.via[slot] = ifindex
        if before is not None and before != ifindex and before not in self.via.values():
            self._drop(before)  # the remote moved to another device: its old ring has nobody left
        return True

    def clear(self, slot: int) -> None:
        """The remote in slot goes through the raw socket (no next hop); a ring nobody uses is closed."""
        ifindex = self.via.pop(slot, None)
        with contextlib.suppress(KeyError):  # a free slot (the remote was removed): C forgot it already
            self.fwd.set_nexthop(slot, None)
        if ifindex is not None and ifindex not in self.via.values():
            self._drop(ifindex)

    def close(self) -> None:
        """Unmap and close every ring."""
        for ifindex in list(self.rings):
            self._drop(ifindex)
