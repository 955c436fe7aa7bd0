"""The C MAC table (FastFdb) against the Python reference (Fdb), and the rules of fdb.py directly.

The direct rule tests run on both implementations.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from datapath import fast
from datapath.fdb import Fdb, FdbEntry, FdbFull, Learn
from tests.configs import examples

pytestmark = pytest.mark.skipif(not fast.available(), reason="C fast path not built")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def mac(i: int) -> bytes:
    return bytes([0x02, 0, 0, 0, i >> 8, i & 0xFF])


def table(fdb: Fdb | fast.FastFdb) -> list[FdbEntry]:
    return sorted(fdb.entries(), key=lambda e: (e.vlan, e.mac))


IMPLS = [Fdb, fast.FastFdb]


@pytest.fixture(params=IMPLS, ids=["python", "c"])
def impl(request: pytest.FixtureRequest) -> type[Fdb] | type[fast.FastFdb]:
    return request.param


# -- the rules, on both -------------------------------------------------------------------


def test_learn_refresh_move(impl: type[Fdb]) -> None:
    clock = Clock()
    fdb = impl(10, 300.0, clock)
    assert fdb.lookup(mac(1)) is None
    assert fdb.learn(mac(1), 0) is Learn.LEARNED
    clock.now += 5
    assert fdb.learn(mac(1), 0) is Learn.REFRESHED
    assert fdb.learn(mac(1), 3) is Learn.MOVED
    assert fdb.lookup(mac(1)) == 3
    clock.now += 2
    assert table(fdb) == [FdbEntry(mac(1), 3, False, 2.0)]
    assert fdb.stats() == {"learns": 1, "moves": 1, "refused_full": 0, "aged": 0, "entries": 1}


def test_ageing(impl: type[Fdb]) -> None:
    clock = Clock()
    fdb = impl(10, 10.0, clock)
    fdb.learn(mac(1), 0)
    fdb.learn(mac(2), 0)
    clock.now += 9.5
    assert fdb.lookup(mac(1)) == 0
    fdb.learn(mac(2), 1)  # a move refreshes too
    clock.now += 0.5  # mac 1 is exactly 10 s old: expired
    assert fdb.lookup(mac(1)) is None
    assert fdb.stats()["aged"] == 1 and len(fdb) == 1
    clock.now += 9.4
    assert fdb.expire() == 0
    clock.now += 0.1
    assert len(fdb.entries()) == 1  # expired but not swept: still listed
    assert fdb.expire() == 1 and len(fdb) == 0
    assert fdb.stats()["aged"] == 2
    # An expired entry is relearned as new.
    fdb.learn(mac(3), 0)
    clock.now += 20
    assert fdb.learn(mac(3), 0) is Learn.LEARNED
    assert fdb.stats()["aged"] == 3


def test_ageing_zero_never(impl: type[Fdb]) -> None:
    clock = Clock()
    fdb = impl(10, 0.0, clock)
    fdb.learn(mac(1), 0)
    clock.now += 1e9
    assert fdb.expire() == 0 and fdb.lookup(mac(1)) == 0


def test_static_precedence(impl: type[Fdb]) -> None:
    clock = Clock()
    fdb = impl(2, 10.0, clock)
    fdb.learn(mac(1), 0)
    fdb.add_static(mac(1), 5)  # replaces the learned entry
    assert fdb.learn(mac(1), 0) is Learn.STATIC
    clock.now += 100
    assert fdb.expire() == 0 and fdb.lookup(mac(1)) == 5
    assert table(fdb) == [FdbEntry(mac(1), 5, True, 0.0)]
    fdb.add_static(mac(1), 6)  # re-pinning is allowed at the cap
    assert fdb.lookup(mac(1)) == 6
    assert fdb.remove(mac(1)) and not fdb.remove(mac(1))
    assert fdb.lookup(mac(1)) is None


def test_cap(impl: type[Fdb]) -> None:
    clock = Clock()
    fdb = impl(2, 10.0, clock)
    fdb.add_static(mac(1), 0)
    assert fdb.learn(mac(2), 1) is Learn.LEARNED
    assert fdb.learn(mac(3), 1) is Learn.FULL
    assert fdb.learn(mac(2), 0) is Learn.MOVED  # known entries still update at the cap
    with pytest.raises(FdbFull):
        fdb.add_static(mac(4), 0)
    fdb.add_static(mac(2), 0)  # replacing an entry does not need room
    assert fdb.stats() == {"learns": 1, "moves": 1, "refused_full": 1, "aged": 0, "entries": 2}
    # An expired entry still counts against the cap until it is swept or looked up.
    fdb.remove(mac(2))
    fdb.learn(mac(5), 0)
    clock.now += 10
    assert fdb.learn(mac(6), 0) is Learn.FULL
    assert fdb.lookup(mac(5)) is None
    assert fdb.learn(mac(6), 0) is Learn.LEARNED


def test_bad_arguments(impl: type[Fdb]) -> None:
    with pytest.raises(ValueError):
        impl(0, 1.0)
    with pytest.raises(ValueError):
        impl(1, -1.0)
    fdb = impl(4, 1.0, Clock())
    for vlan in (-1, 4096):
        with pytest.raises(ValueError):
            fdb.learn(mac(1), 0, vlan=vlan)
        with pytest.raises(ValueError):
            fdb.lookup(mac(1), vlan=vlan)


def test_same_mac_in_two_vlans(impl: type[Fdb]) -> None:
    """Learning is per VLAN (as Open vSwitch): one MAC in two VLANs behind two remotes is two entries."""
    clock = Clock()
    fdb = impl(3, 10.0, clock)
    assert fdb.learn(mac(1), 0, vlan=10) is Learn.LEARNED
    assert fdb.learn(mac(1), 1, vlan=20) is Learn.LEARNED  # not a move
    assert fdb.learn(mac(1), 2) is Learn.LEARNED  # VLAN 0: untagged
    assert (fdb.lookup(mac(1), vlan=10), fdb.lookup(mac(1), vlan=20), fdb.lookup(mac(1))) == (0, 1, 2)
    assert fdb.lookup(mac(1), vlan=30) is None
    assert fdb.learn(mac(2), 0, vlan=10) is Learn.FULL  # the cap counts every VLAN's entries
    assert fdb.learn(mac(1), 2, vlan=20) is Learn.MOVED
    fdb.add_static(mac(1), 3, vlan=10)  # pins VLAN 10's entry only
    assert fdb.learn(mac(1), 0, vlan=10) is Learn.STATIC
    assert fdb.learn(mac(1), 0) is Learn.MOVED
    clock.now += 1
    assert table(fdb) == [
        FdbEntry(mac(1), 0, False, 1.0, 0),
        FdbEntry(mac(1), 3, True, 0.0, 10),
        FdbEntry(mac(1), 2, False, 1.0, 20),
    ]
    assert fdb.remove(mac(1), vlan=20) and not fdb.remove(mac(1), vlan=20)
    assert fdb.lookup(mac(1)) == 0 and fdb.lookup(mac(1), vlan=10) == 3
    clock.now += 10
    assert fdb.expire() == 1 and [e.vlan for e in table(fdb)] == [10]
    assert fdb.stats() == {"learns": 3, "moves": 2, "refused_full": 1, "aged": 1, "entries": 1}


def test_flush_all_or_behind_one_remote(impl: type[Fdb]) -> None:
    clock = Clock()
    fdb = impl(10, 300.0, clock)
    for i in range(6):
        fdb.learn(mac(i), i % 3, vlan=i % 2)
    fdb.add_static(mac(7), 1)
    fdb.add_static(mac(8), 2, vlan=5)
    assert fdb.flush(1) == 3  # mac 1, mac 4 and the static mac 7
    assert sorted(e.mac for e in fdb.entries() if e.remote == 1) == []
    assert fdb.flush(1) == 0 and fdb.flush(9) == 0
    assert len(fdb) == 5
    assert fdb.flush() == 5 and len(fdb) == 0 and fdb.entries() == []
    assert fdb.flush() == 0
    # Not counted as aged; the table works as before.
    assert fdb.stats() == {"learns": 6, "moves": 0, "refused_full": 0, "aged": 0, "entries": 0}
    assert fdb.learn(mac(1), 2) is Learn.LEARNED and fdb.lookup(mac(1)) == 2


def test_restore_keeps_the_age(impl: type[Fdb]) -> None:
    """A takeover's import: entries come in with the age they had, then age on from there."""
    clock = Clock()
    fdb = impl(3, 10.0, clock)
    assert fdb.restore(mac(1), 2, age=7.5)
    assert fdb.restore(mac(1), 1, vlan=20, age=0.0)
    assert table(fdb) == [FdbEntry(mac(1), 2, False, 7.5), FdbEntry(mac(1), 1, False, 0.0, 20)]
    clock.now += 2.5  # 10 s since mac 1 was last seen: expired, as if it had stayed in one table
    assert fdb.lookup(mac(1)) is None and fdb.lookup(mac(1), vlan=20) == 1
    assert not fdb.restore(mac(2), 0, age=10.0)  # already past its age: left out
    assert not fdb.restore(mac(2), 0, age=-1.0) and not fdb.restore(mac(2), 0, age=float("nan"))
    # An entry seen more recently here keeps the key; an older one is replaced.
    fdb.learn(mac(3), 0)
    assert not fdb.restore(mac(3), 1, age=1.0)
    clock.now += 3
    assert fdb.restore(mac(3), 1, age=1.0)
    assert fdb.lookup(mac(3)) == 1
    # A static entry is never replaced; at the cap a new key is refused.
    fdb.add_static(mac(4), 0)
    assert not fdb.restore(mac(4), 1, age=0.5)
    assert len(fdb) == 3
    with pytest.raises(FdbFull):
        fdb.restore(mac(5), 0, age=0.5)
    # Not learns, not moves; the only aged entry is mac 1.
    assert fdb.stats() == {"learns": 1, "moves": 0, "refused_full": 0, "aged": 1, "entries": 3}
    never = impl(3, 0.0, clock)  # ageing 0: any age goes in, and never expires
    assert never.restore(mac(1), 0, age=1e6)
    clock.now += 1e6
    assert never.lookup(mac(1)) == 0


def test_set_limits_lower_cap_keeps_entries(impl: type[Fdb]) -> None:
    """A cap below the count keeps every entry and refuses new ones until the count is below it."""
    clock = Clock()
    fdb = impl(8, 300.0, clock)
    for i in range(6):
        fdb.learn(mac(i), 0)
    fdb.set_limits(3, 300.0)
    assert fdb.max_entries == 3 and len(fdb) == 6
    assert fdb.learn(mac(1), 2) is Learn.MOVED  # known entries still move and refresh
    assert fdb.learn(mac(20), 0) is Learn.FULL
    with pytest.raises(FdbFull):
        fdb.add_static(mac(21), 0)
    fdb.add_static(mac(2), 1)  # an existing key may become static
    for i in (0, 3, 4):
        assert fdb.remove(mac(i))
    assert len(fdb) == 3 and fdb.learn(mac(20), 0) is Learn.FULL  # at the cap: still refused
    assert fdb.remove(mac(5)) and fdb.learn(mac(20), 0) is Learn.LEARNED
    assert fdb.stats()["refused_full"] == 2


def test_set_limits_raise_cap_and_change_ageing(impl: type[Fdb]) -> None:
    clock = Clock()
    fdb = impl(4, 300.0, clock)
    for i in range(4):
        fdb.learn(mac(i), i)
    assert fdb.learn(mac(10), 0) is Learn.FULL
    fdb.set_limits(100, 5.0)  # C: the table grows (rehash); the ageing applies to what is there
    assert [fdb.lookup(mac(i)) for i in range(4)] == [0, 1, 2, 3]
    for i in range(10, 60):
        assert fdb.learn(mac(i), 1) is Learn.LEARNED
    assert len(fdb) == 54
    clock.now += 5.0
    assert fdb.expire() == 54
    fdb.learn(mac(1), 0)
    fdb.set_limits(100, 0.0)  # never
    clock.now += 1e5
    assert fdb.lookup(mac(1)) == 0
    for bad in ((0, 1.0), (5, -1.0)):
        with pytest.raises(ValueError):
            fdb.set_limits(*bad)
    assert fdb.max_entries == 100 and fdb.ageing == 0.0  # unchanged by a refusal


def test_fast_fdb_set_limits_beyond_c() -> None:
    fdb = fast.FastFdb(4, 1.0, Clock())
    with pytest.raises(ValueError, match="2\\*\\*28"):
        fdb.set_limits((1 << 28) + 1, 1.0)
    assert fdb.max_entries == 4
    assert fast.lib.ovl_fdb_set_limits(fdb._fdb, 5, float("nan")) == -1


def test_fast_fdb_checks_what_c_cannot_hold() -> None:
    fdb = fast.FastFdb(4, 1.0, Clock())
    with pytest.raises(ValueError):
        fdb.learn(b"\x02\x00", 0)
    with pytest.raises(ValueError):
        fdb.add_static(mac(1), -1)


# -- differential: random operation sequences ---------------------------------------------


class FdbPair(RuleBasedStateMachine):
    """The same operations on Fdb and FastFdb, sharing one fake clock: same answers, same table."""

    @initialize(max_entries=st.sampled_from([1, 2, 3, 5, 8, 40]), ageing=st.sampled_from([0.0, 1.0, 2.5, 300.0]))
    def setup(self, max_entries: int, ageing: float) -> None:
        self.clock = Clock()
        self.py = Fdb(max_entries, ageing, self.clock)
        self.c = fast.FastFdb(max_entries, ageing, self.clock)

    macs = st.integers(0, 12).map(mac)
    remotes = st.integers(0, 3)
    vlans = st.sampled_from([0, 0, 1, 20, 4095])

    @rule(m=macs, r=remotes, v=vlans)
    def learn(self, m: bytes, r: int, v: int) -> None:
        assert self.c.learn(m, r, vlan=v) is self.py.learn(m, r, vlan=v)

    @rule(m=macs, v=vlans)
    def lookup(self, m: bytes, v: int) -> None:
        assert self.c.lookup(m, vlan=v) == self.py.lookup(m, vlan=v)

    @rule(m=macs, r=remotes, v=vlans)
    def add_static(self, m: bytes, r: int, v: int) -> None:
        outcome = []
        for fdb in (self.py, self.c):
            try:
                fdb.add_static(m, r, vlan=v)
                outcome.append("ok")
            except FdbFull:
                outcome.append("full")
        assert outcome[0] == outcome[1]

    @rule(m=macs, r=remotes, v=vlans, age=st.sampled_from([0.0, 0.5, 1.0, 2.5, 1000.0]))
    def restore(self, m: bytes, r: int, v: int, age: float) -> None:
        outcome = []
        for fdb in (self.py, self.c):
            try:
                outcome.append(fdb.restore(m, r, vlan=v, age=age))
            except FdbFull:
                outcome.append(None)
        assert outcome[0] == outcome[1]

    @rule(m=macs, v=vlans)
    def remove(self, m: bytes, v: int) -> None:
        assert self.c.remove(m, vlan=v) == self.py.remove(m, vlan=v)

    @rule()
    def expire(self) -> None:
        assert self.c.expire() == self.py.expire()

    @rule(r=st.none() | remotes)
    def flush(self, r: int | None) -> None:
        assert self.c.flush(r) == self.py.flush(r)

    @rule(max_entries=st.sampled_from([1, 2, 3, 5, 8, 40, 100]), ageing=st.sampled_from([0.0, 1.0, 2.5, 300.0]))
    def set_limits(self, max_entries: int, ageing: float) -> None:
        self.c.set_limits(max_entries, ageing)
        self.py.set_limits(max_entries, ageing)

    @rule(dt=st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.5, 1000.0]))
    def tick(self, dt: float) -> None:
        self.clock.now += dt

    @invariant()
    def same_table(self) -> None:
        assert table(self.c) == table(self.py)
        assert self.c.stats() == self.py.stats()
        assert len(self.c) == len(self.py)


TestFdbPair = FdbPair.TestCase
TestFdbPair.settings = settings(max_examples=examples(300), stateful_step_count=60, deadline=None)


@pytest.mark.parametrize("seed", range(4))
def test_churn_against_reference(seed: int) -> None:
    """Many operations on a larger table: exercises probe chains and backward-shift deletion."""
    rnd = random.Random(seed)
    clock = Clock()
    py, c = Fdb(300, 50.0, clock), fast.FastFdb(300, 50.0, clock)
    for step in range(30000):
        m, r, v = mac(rnd.randrange(500)), rnd.randrange(4), rnd.choice([0, 0, 0, 7, 4094])
        op = rnd.random()
        if op < 0.45:
            assert c.learn(m, r, vlan=v) is py.learn(m, r, vlan=v), step
        elif op < 0.75:
            assert c.lookup(m, vlan=v) == py.lookup(m, vlan=v), step
        elif op < 0.93:
            assert c.remove(m, vlan=v) == py.remove(m, vlan=v), step
        elif op < 0.95:
            full = []
            for fdb in (py, c):
                try:
                    fdb.add_static(m, r, vlan=v)
                    full.append(False)
                except FdbFull:
                    full.append(True)
            assert full[0] == full[1], step
        elif op < 0.96:
            assert c.expire() == py.expire(), step
        elif op < 0.962:
            assert c.flush(r) == py.flush(r), step
        elif op < 0.9625:
            cap, ageing = rnd.choice([(300, 50.0), (150, 50.0), (1000, 50.0), (300, 20.0)])
            c.set_limits(cap, ageing)
            py.set_limits(cap, ageing)
        else:
            clock.now += rnd.random() * 3
        if step % 1000 == 0:
            assert table(c) == table(py), step
    assert table(c) == table(py) and c.stats() == py.stats()
    # Every entry is still reachable through its probe chain after all the deletions.
    for e in table(py):
        assert c.lookup(e.mac, vlan=e.vlan) == py.lookup(e.mac, vlan=e.vlan)


def test_big_table_fill_and_expire() -> None:
    clock = Clock()
    c = fast.FastFdb(5000, 10.0, clock)
    seen = {}
    for i in range(5000):
        assert c.learn(mac(i), i % 7) is Learn.LEARNED
        seen[mac(i)] = clock.now
        if i % 2:
            clock.now += 0.002
    assert c.learn(mac(6000), 0) is Learn.FULL
    clock.now = 1000.0 + 12.5  # about half are past their age
    old = {m for m, t in seen.items() if clock.now - t >= 10.0}
    assert 1000 < len(old) < 4000
    assert c.expire() == len(old) and len(c) == 5000 - len(old)
    for m in seen:
        assert (c.lookup(m) is None) == (m in old)
