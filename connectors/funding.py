"""Simulated perpetual funding for backtests and paper trading.

A perpetual swap settles funding at fixed instants (Bybit: every 8 hours from 00:00 UTC): the
position's value times the rate moves from longs to shorts when the rate is positive. A backtest
that ignores it overstates carry trades on perpetuals. Here the rate is a constant from config
(an average; the venue's history varies), applied at every funding instant a bar passes, on the
position held after the bar's opening fills, at the bar's close. Each payment is a ``Funding``
event, so the portfolio books it and the journal keeps it like any other cash movement.
"""

from __future__ import annotations

import numpy as np

from engine.bus import EventBus
from engine.clock import Clock
from engine.config import CostConfig
from engine.events import BarSet, Funding, PositionUpdate

_HOUR_NS = 3_600_000_000_000


class SimulatedFunding:
    def __init__(self, bus: EventBus, clock: Clock, symbols: tuple[str, ...], costs: CostConfig) -> None:
        self.bus = bus
        self.clock = clock
        self.symbols = symbols
        self.index = {s: i for i, s in enumerate(symbols)}
        self.rate = costs.funding_rate_bps / 1e4
        self.interval_ns = int(costs.funding_interval_hours * _HOUR_NS)
        self.qty = np.zeros(len(symbols))
        self.price = np.zeros(len(symbols))
        self.last_ts: int | None = None
        self.payments = 0
        bus.subscribe(BarSet, self.on_bars)
        bus.subscribe(PositionUpdate, self.on_position)

    def on_position(self, update: PositionUpdate) -> None:
        i = self.index.get(update.symbol)
        if i is not None:
            self.qty[i] = update.quantity

    def on_bars(self, bars: BarSet) -> None:
        """Settle the funding instants in (previous bar's close, this bar's close], on the position
        after this bar's opening fills (subscribe after the broker) at this bar's close."""
        ts = bars.ts_event
        np.copyto(self.price, bars.close, where=bars.close == bars.close)
        if self.last_ts is not None and self.rate:
            instants = ts // self.interval_ns - self.last_ts // self.interval_ns
            if instants > 0 and self.qty.any():
                self._pay(instants, ts)
        self.last_ts = ts

    def _pay(self, instants: int, ts: int) -> None:
        settle = (ts // self.interval_ns) * self.interval_ns
        now = self.clock.now_ns()
        for i in np.flatnonzero(self.qty):
            amount = instants * self.rate * float(self.qty[i]) * float(self.price[i])
            self.payments += 1
            self.bus.publish(
                Funding(
                    settle, now, self.symbols[i], float(self.qty[i]), float(self.price[i]), self.rate, amount
                )
            )
