"""What a forwarder is, and which one the engine gets.

A forwarder holds the packet logic of one datapath: per batch it reads frames
from the TAP, classifies them against the FDB, encapsulates and sends them
(``from_tap``), and receives tunnel packets, checks and decapsulates them,
learns, and writes the inner frames to the TAP (``from_tunnel``). Two
implementations keep the same behaviour, held equal by the differential tests:
the C fast path (:class:`datapath.fast.FastForwarder`) and the pure-Python
reference (:class:`datapath.pypath.PyForwarder`).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from datapath import pypath
from datapath.config import Config, Remote
from datapath.counters import Snapshot
from datapath.errors import SetupError
from datapath.fdb import FdbEntry, FdbFull

log = logging.getLogger("ovl-dp")


class FdbView(Protocol):
    """The part of a forwarder's MAC table the engine and the control plane use (rules in datapath.fdb)."""

    def expire(self) -> int:
        """Remove every learned entry past its age; how many."""
        ...

    def entries(self) -> list[FdbEntry]:
        """All entries, unordered."""
        ...

    def add_static(self, mac: bytes, remote: int, *, vlan: int = 0) -> None:
        """Pin mac in vlan to remote (slot); FdbFull at the cap."""
        ...

    def restore(self, mac: bytes, remote: int, *, vlan: int = 0, age: float = 0.0) -> bool:
        """A learned entry carried over (a takeover), last seen age seconds ago; whether it went in (FdbFull)."""
        ...

    def remove(self, mac: bytes, *, vlan: int = 0) -> bool:
        """Forget mac in vlan; whether it was there."""
        ...

    def flush(self, remote: int | None = None) -> int:
        """Remove every entry (learned and static) behind remote, or all; how many."""
        ...

    def set_limits(self, max_entries: int, ageing: float) -> None:
        """A new size cap and ageing (a cap below the count keeps the entries, refuses new ones)."""
        ...


class Forwarder(Protocol):
    """What both the C and the Python forwarder provide (see datapath.pypath).

    Remotes are slots (indices the FDB stores): ``add_remote`` takes the lowest free
    one, ``remove_remote`` frees one and purges the FDB entries behind it, ``remotes``
    lists those in use in slot order with the clock value of the last delivered
    packet from each (None if none yet). Called between batches, never during one.
    """

    @property
    def fdb(self) -> FdbView:
        """The MAC table."""
        ...

    def from_tap(self, tap_fd: int, send_sock: socket.socket) -> int:
        """Read a batch from the TAP, encapsulate and send it; frames read."""
        ...

    def from_tunnel(self, recv_sock: socket.socket, tap_fd: int) -> int:
        """Receive a batch from the underlay (an IPv4 or IPv6 socket), decapsulate, learn, write to the TAP;
        packets received."""
        ...

    def set_send6(self, sock: socket.socket | None) -> None:
        """The raw IPv6 socket packets to IPv6 remotes leave through (from_tap's is the IPv4 one)."""
        ...

    def snapshot(self) -> Snapshot:
        """A copy of every counter (per remote: those in use, in slot order)."""
        ...

    def add_remote(self, remote: Remote) -> int:
        """Add a resolved remote in the lowest free slot; the slot (ValueError: already there, or full)."""
        ...

    def remove_remote(self, slot: int) -> int:
        """Remove the remote in slot and purge the FDB entries behind it; how many (KeyError: a free slot)."""
        ...

    def set_remote_local(self, slot: int, local: str) -> None:
        """Send to the remote in slot from local (the underlay's address changed); its FDB entries and
        counters stay. KeyError for a free slot."""
        ...

    def remotes(self) -> list[tuple[int, Remote, float | None]]:
        """(slot, remote, clock at its last delivered packet or None) of the remotes in use, in slot order."""
        ...


def fast_path_available() -> bool:
    """True if the C module is built."""
    from datapath import fast

    return fast.available()


def make_forwarder(
    cfg: Config,
    fast: bool,
    clock: Callable[[], float] = time.monotonic,
    tap_vnet: int = 0,
    udp_gro: bool = False,
    gso_socks: Sequence[socket.socket] = (),
    rx_super: bool = False,
) -> Forwarder:
    """The C forwarder if asked for and built, else the Python reference.

    tap_vnet: the TAP's virtio header length; udp_gro, gso_socks: underlay offloads (C only);
    rx_super: receive super-packets whole (C only; the Python path reads 64 KiB and passes them on).
    SetupError if the static FDB entries do not fit the FDB.
    """
    try:
        if fast:
            from datapath import fast as fastpath

            if fastpath.available():
                return fastpath.FastForwarder(
                    cfg, clock, tap_vnet=tap_vnet, udp_gro=udp_gro, gso_socks=gso_socks, rx_super=rx_super
                )
            log.warning("C fast path is not built (pip install -e . compiles it); using the pure-Python path")
        if tap_vnet or udp_gro or gso_socks:
            raise ValueError("the pure-Python forwarder needs a plain TAP and plain sockets")
        return pypath.PyForwarder(cfg, clock)
    except FdbFull as exc:
        raise SetupError(f"the static FDB entries do not fit the FDB ({exc}): raise the FDB size") from None
