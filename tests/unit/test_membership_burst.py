"""control.membership.keeper._Burst: sink calls that come together share one sink.changes()."""

from __future__ import annotations

import asyncio

from control.membership.keeper import BURST_HOLD, _Burst
from tests.sinks import ChangeRecorder as Sink


def test_calls_in_one_turn_of_the_loop_share_one_change() -> None:
    async def main() -> None:
        sink = Sink()
        burst = _Burst(sink, clock=lambda: 0.0)  # type: ignore[arg-type]
        for _ in range(3):
            burst.enter()
        assert (sink.opened, sink.depth) == (1, 1)
        await asyncio.sleep(0)  # the loop turns: the change ends
        assert (sink.opened, sink.closed, sink.depth) == (1, 1, 0)
        burst.enter()  # the next burst
        assert (sink.opened, sink.depth) == (2, 1)
        burst.close()
        burst.close()  # idempotent, and the pending call_soon finds nothing to close
        await asyncio.sleep(0)
        assert (sink.opened, sink.closed, sink.depth) == (2, 2, 0)
        assert sink.max_depth == 1, "a change opened inside another"

    asyncio.run(main())


def test_a_long_burst_is_cut_every_burst_hold() -> None:
    """The loop does not turn for a while (a listing of many members): a call BURST_HOLD after the change
    opened ends it and opens the next, so the data path is never held for long."""

    async def main() -> None:
        now = [100.0]
        sink = Sink()
        burst = _Burst(sink, clock=lambda: now[0])  # type: ignore[arg-type]
        burst.enter()
        now[0] += BURST_HOLD / 2
        burst.enter()
        assert sink.opened == 1
        now[0] += BURST_HOLD
        burst.enter()  # older than BURST_HOLD: closed, a new one opened
        assert (sink.opened, sink.closed, sink.depth) == (2, 1, 1)
        await asyncio.sleep(0)
        assert (sink.opened, sink.closed, sink.depth) == (2, 2, 0)
        assert sink.max_depth == 1, "a change opened inside another"

    asyncio.run(main())
