"""The MAC table (forwarding database): (VLAN, inner MAC) -> remote index.

Pure-Python reference of the C table in ``csrc/fdb.c``; both follow the
rules written here, and a differential test drives them with the same
operation sequences.

- Entries are keyed by VLAN and MAC, as Open vSwitch learns per VLAN: the
  same MAC in two VLANs is two entries, each with its own remote. The VLAN
  is the 802.1Q VID of the frame on the bridge side, 0 for untagged.
- Learned entries age out ``ageing`` seconds after they were last seen
  (0 = never), like the Linux bridge and Open vSwitch (default 300 s).
- Static entries never age, are never moved by learning and are never evicted.
- The table holds at most ``max_entries`` entries, static included; learning
  beyond the cap is refused and counted, the frame is still delivered.
- Cap and ageing can change at run time (:meth:`Fdb.set_limits`): a new ageing
  applies to the entries already there; a cap below the current count keeps
  every entry, and refuses learning (and static entries for new keys) until the
  count is below the cap again, as at the cap.
- :meth:`Fdb.restore` enters a learned entry carried over from another table
  (a takeover, ``ovl-dp run --takeover``) with the age it had there: it ages
  from that age on, and is not counted as a learn. A static entry, or a live
  entry seen more recently, keeps the key; an entry already past the ageing
  time is left out; at the cap it is refused (FdbFull).
- :meth:`Fdb.flush` removes every entry, or every entry behind one remote,
  learned and static alike (when a remote goes away); not counted as aged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from datapath.counters import FDB_FIELDS
from datapath.ether import VLAN_ID_MAX

DEFAULT_AGEING = 300.0
DEFAULT_MAX_ENTRIES = 4096


class Learn(IntEnum):
    """Outcome of :meth:`Fdb.learn`; values match ``OVL_LEARN_*`` in C."""

    REFRESHED = 0  # known at this remote: timestamp renewed
    LEARNED = 1  # new entry
    MOVED = 2  # known at another remote: now at this one
    STATIC = 3  # a static entry: left as it is
    FULL = 4  # new, but the table is at its cap: refused


class FdbFull(Exception):
    """Raised by :meth:`Fdb.add_static` when the table is at its cap."""


@dataclass(frozen=True)
class FdbEntry:
    """One row of the table as shown to the control plane."""

    mac: bytes
    remote: int
    static: bool
    age: float  # seconds since last seen (0 for static)
    vlan: int = 0  # 802.1Q VID on the bridge side, 0 = untagged


@dataclass
class _Slot:
    remote: int
    static: bool
    last_seen: float


def check_vlan(vlan: int) -> int:
    """vlan if it is a 12-bit VLAN ID (0 = untagged), else ValueError."""
    if not 0 <= vlan <= VLAN_ID_MAX:
        raise ValueError(f"VLAN {vlan} out of range 0..{VLAN_ID_MAX}")
    return vlan


def check_limits(max_entries: int, ageing: float) -> None:
    """ValueError unless the cap is at least 1 and the ageing time not negative (both tables)."""
    if max_entries < 1:
        raise ValueError("max_entries must be at least 1")
    if ageing < 0:
        raise ValueError("ageing must not be negative")


class Fdb:
    """(VLAN, MAC) -> remote index table with ageing, static entries and a hard cap."""

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        ageing: float = DEFAULT_AGEING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_limits(max_entries, ageing)
        self.max_entries = max_entries
        self.ageing = ageing
        self._clock = clock
        self._table: dict[tuple[int, bytes], _Slot] = {}
        self._stats = dict.fromkeys(FDB_FIELDS, 0)

    def __len__(self) -> int:
        return len(self._table)

    def _expired(self, slot: _Slot, now: float) -> bool:
        return not slot.static and self.ageing > 0 and now - slot.last_seen >= self.ageing

    def _get_live(self, key: tuple[int, bytes], now: float) -> _Slot | None:
        slot = self._table.get(key)
        if slot is not None and self._expired(slot, now):
            del self._table[key]
            self._stats["aged"] += 1
            return None
        return slot

    def lookup(self, mac: bytes, *, vlan: int = 0) -> int | None:
        """Remote index for mac in vlan, or None if unknown (an expired entry is removed here)."""
        slot = self._get_live((check_vlan(vlan), bytes(mac)), self._clock())
        return None if slot is None else slot.remote

    def learn(self, mac: bytes, remote: int, *, vlan: int = 0) -> Learn:
        """Record that mac was seen in vlan behind remote."""
        now = self._clock()
        key = (check_vlan(vlan), bytes(mac))
        slot = self._get_live(key, now)
        if slot is not None:
            if slot.static:
                return Learn.STATIC
            slot.last_seen = now
            if slot.remote == remote:
                return Learn.REFRESHED
            slot.remote = remote
            self._stats["moves"] += 1
            return Learn.MOVED
        if len(self._table) >= self.max_entries:
            self._stats["refused_full"] += 1
            return Learn.FULL
        self._table[key] = _Slot(remote, False, now)
        self._stats["learns"] += 1
        return Learn.LEARNED

    def add_static(self, mac: bytes, remote: int, *, vlan: int = 0) -> None:
        """Pin mac in vlan to remote; replaces a learned entry. Raises FdbFull at the cap."""
        key = (check_vlan(vlan), bytes(mac))
        if key not in self._table and len(self._table) >= self.max_entries:
            raise FdbFull(f"FDB full ({self.max_entries} entries)")
        self._table[key] = _Slot(remote, True, 0.0)

    def restore(self, mac: bytes, remote: int, *, vlan: int = 0, age: float = 0.0) -> bool:
        """A learned entry carried over from another table, last seen age seconds ago (see the module
        docstring); True if entered, False if left out. Raises FdbFull at the cap."""
        now = self._clock()
        key = (check_vlan(vlan), bytes(mac))
        if not age >= 0 or (self.ageing > 0 and age >= self.ageing):
            return False
        last_seen = now - age
        slot = self._get_live(key, now)
        if slot is not None:
            if slot.static or slot.last_seen >= last_seen:
                return False
            slot.remote, slot.last_seen = remote, last_seen
            return True
        if len(self._table) >= self.max_entries:
            raise FdbFull(f"FDB full ({self.max_entries} entries)")
        self._table[key] = _Slot(remote, False, last_seen)
        return True

    def remove(self, mac: bytes, *, vlan: int = 0) -> bool:
        """Forget mac in vlan (static or learned); True if it was there."""
        return self._table.pop((check_vlan(vlan), bytes(mac)), None) is not None

    def flush(self, remote: int | None = None) -> int:
        """Remove every entry (learned and static) behind remote, or all of them; returns how many."""
        if remote is None:
            n = len(self._table)
            self._table.clear()
            return n
        gone = [key for key, slot in self._table.items() if slot.remote == remote]
        for key in gone:
            del self._table[key]
        return len(gone)

    def set_limits(self, max_entries: int, ageing: float) -> None:
        """A new size cap and ageing time (see the module docstring for a cap below the count)."""
        check_limits(max_entries, ageing)
        self.max_entries = max_entries
        self.ageing = ageing

    def expire(self) -> int:
        """Remove every learned entry past its age; returns how many."""
        now = self._clock()
        old = [key for key, slot in self._table.items() if self._expired(slot, now)]
        for key in old:
            del self._table[key]
        self._stats["aged"] += len(old)
        return len(old)

    def entries(self) -> list[FdbEntry]:
        """All entries (expired ones not yet swept included), unordered."""
        now = self._clock()
        return [
            FdbEntry(mac, s.remote, s.static, 0.0 if s.static else now - s.last_seen, vlan)
            for (vlan, mac), s in self._table.items()
        ]

    def stats(self) -> dict[str, int]:
        """Counters: learns, moves, refused_full, aged; plus the current entry count."""
        return {**self._stats, "entries": len(self._table)}
