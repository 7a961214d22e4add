"""Live bars become ordered cross-sections; missing instruments are NaN, never invented."""

from __future__ import annotations

import numpy as np

from engine.assembler import BarAssembler
from engine.bus import EventBus
from engine.clock import ReplayClock
from engine.events import Bar, BarSet, Heartbeat

MIN = 60 * 10**9


def bar(symbol: str, close_min: int, price: float) -> Bar:
    t = close_min * MIN
    return Bar(t, t, symbol, "1", price, price + 1, price - 1, price, 10.0, t - MIN)


def test_cross_sections_in_order_with_wait_for_missing():
    bus = EventBus("live")
    clock = ReplayClock()
    sets: list[BarSet] = []
    bus.subscribe(BarSet, sets.append)
    asm = BarAssembler(bus, clock, ("A", "B"), wait_ns=5 * 10**9)

    clock.advance(1 * MIN)
    bus.publish(bar("B", 1, 20.0))
    assert sets == []
    bus.publish(bar("A", 1, 10.0))
    assert [s.ts_event for s in sets] == [MIN]
    assert sets[0].close.tolist() == [10.0, 20.0]

    # B is silent at minute 2: after the wait, A's bar goes out with B as NaN
    clock.advance(2 * MIN)
    bus.publish(bar("A", 2, 11.0))
    clock.advance(2 * MIN + 5 * 10**9)
    bus.publish(Heartbeat(clock.now_ns(), clock.now_ns(), "timer"))
    assert [s.ts_event for s in sets] == [MIN, 2 * MIN]
    assert sets[1].close[0] == 11.0 and np.isnan(sets[1].close[1])
    assert asm.incomplete == 1

    # B's minute-2 bar arrives late: dropped, counted, nothing re-published
    bus.publish(bar("B", 2, 21.0))
    assert asm.late == 1 and len(sets) == 2

    # a duplicate bar for the same time is ignored
    clock.advance(3 * MIN)
    bus.publish(bar("A", 3, 12.0))
    bus.publish(bar("A", 3, 99.0))
    bus.publish(bar("B", 3, 22.0))
    assert sets[-1].close.tolist() == [12.0, 22.0]
    assert asm.emitted == 3
