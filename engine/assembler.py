"""Live bars, one instrument at a time, into the cross-sections strategies consume.

Replay publishes whole cross-sections; a websocket delivers one bar per instrument, in any order.
The assembler waits until every instrument of the universe has closed a bar for a time, or until
``wait_ns`` has passed since that close, and then publishes one BarSet in time order. An instrument
that is still missing is NaN in that BarSet (no return, no trade), never a made-up price; its bar,
if it turns up afterwards, is logged and counted as late and dropped.
"""

from __future__ import annotations

import numpy as np
import structlog

from engine.bus import EventBus
from engine.clock import Clock
from engine.events import Bar, BarSet, Heartbeat

log = structlog.get_logger("engine.assembler")


class _Slot:
    __slots__ = ("count", "values")

    def __init__(self, n: int) -> None:
        self.values = np.full((5, n), np.nan)
        self.count = 0


class BarAssembler:
    def __init__(self, bus: EventBus, clock: Clock, symbols: tuple[str, ...], *, wait_ns: int) -> None:
        self.bus = bus
        self.clock = clock
        self.symbols = symbols
        self.index = {s: i for i, s in enumerate(symbols)}
        self.wait_ns = wait_ns
        self.last_emitted = -1
        self.emitted = 0
        self.late = 0
        self.incomplete = 0
        self._pending: dict[int, _Slot] = {}
        bus.subscribe(Bar, self.on_bar)
        bus.subscribe(Heartbeat, self.on_heartbeat)

    def on_bar(self, bar: Bar) -> None:
        i = self.index.get(bar.symbol)
        if i is None:
            return
        if bar.ts_event <= self.last_emitted:
            self.late += 1
            log.warning("late bar dropped", symbol=bar.symbol, ts_event=bar.ts_event, late=self.late)
            return
        slot = self._pending.get(bar.ts_event)
        if slot is None:
            slot = self._pending[bar.ts_event] = _Slot(len(self.symbols))
        if slot.values[3, i] == slot.values[3, i]:
            return
        slot.values[:, i] = (bar.open, bar.high, bar.low, bar.close, bar.volume)
        slot.count += 1
        if slot.count == len(self.symbols):
            self._flush(bar.ts_event)
        else:
            self._flush_expired(self.clock.now_ns())

    def on_heartbeat(self, _: Heartbeat) -> None:
        self._flush_expired(self.clock.now_ns())

    def _flush_expired(self, now: int) -> None:
        expired = [ts for ts in self._pending if ts + self.wait_ns <= now]
        if expired:
            self._flush(max(expired))

    def _flush(self, upto: int) -> None:
        """Publish every pending time up to ``upto``, oldest first."""
        for ts in sorted(t for t in self._pending if t <= upto):
            slot = self._pending.pop(ts)
            if slot.count < len(self.symbols):
                self.incomplete += 1
                missing = [self.symbols[j] for j in np.flatnonzero(np.isnan(slot.values[3]))]
                log.warning("bars missing at close", ts_event=ts, missing=missing)
            v = slot.values
            self.last_emitted = ts
            self.emitted += 1
            self.bus.publish(BarSet(ts, self.clock.now_ns(), self.symbols, v[0], v[1], v[2], v[3], v[4]))
