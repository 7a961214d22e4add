"""Portfolio accounting: positions, cash, marked-to-market equity, realised PnL and round trips.

State lives in numpy vectors indexed like the universe, so marking every bar costs a few vector
operations whatever the number of assets. Fills are the only thing that changes positions or cash.
"""

from __future__ import annotations

import math

import numpy as np

from engine.bus import EventBus
from engine.events import BarSet, Fill, Funding, PositionUpdate
from engine.state import capture, restore_into

_EPS = 1e-12


class _Series:
    """Append-only float columns that grow by doubling: no per-bar allocation."""

    __slots__ = ("data", "n")

    def __init__(self, width: int, capacity: int) -> None:
        self.data = np.empty((max(capacity, 16), width))
        self.n = 0

    def next_row(self) -> np.ndarray:
        if self.n == len(self.data):
            grown = np.empty((2 * len(self.data), self.data.shape[1]))
            grown[: self.n] = self.data
            self.data = grown
        row = self.data[self.n]
        self.n += 1
        return row

    def view(self) -> np.ndarray:
        return self.data[: self.n]


class Portfolio:
    """Multi-asset book. Quantities are signed (negative = short); cash moves with every fill."""

    def __init__(
        self,
        symbols: tuple[str, ...],
        cash: float,
        bus: EventBus | None = None,
        *,
        capacity: int = 1024,
        record_positions: bool = True,
    ) -> None:
        if not math.isfinite(cash) or cash <= 0:
            raise ValueError(f"initial cash must be positive and finite, got {cash}")
        n = len(symbols)
        self.symbols = symbols
        self.index = {s: i for i, s in enumerate(symbols)}
        self.initial_cash = float(cash)
        self.cash = float(cash)
        self.qty = np.zeros(n)
        self.avg_price = np.zeros(n)
        self.realized_pnl = np.zeros(n)
        self.last_price = np.zeros(n)
        self.fees = 0.0
        self.funding = 0.0
        self.turnover_notional = 0.0
        self.n_fills = 0
        self.trade_pnls: list[float] = []
        self._trade_acc = np.zeros(n)
        self.equity = float(cash)
        self.gross_exposure = 0.0
        self.ts = 0
        self._bus = bus
        self._times: list[int] = []
        self._curve = _Series(3, capacity)
        self._positions = _Series(n, capacity) if record_positions else None
        if bus is not None:
            bus.subscribe(Fill, self.on_fill)
            bus.subscribe(Funding, self.on_funding)
            bus.subscribe(BarSet, self.on_bars)

    # events ---------------------------------------------------------------------------------

    def on_bars(self, bars: BarSet) -> None:
        close = bars.close
        last = self.last_price
        np.copyto(last, close, where=close == close)
        qty = self.qty
        self.ts = bars.ts_event
        self.equity = equity = self.cash + float(qty @ last)
        self.gross_exposure = gross = float(np.abs(qty) @ last)
        self._times.append(bars.ts_event)
        row = self._curve.next_row()
        row[0] = equity
        row[1] = self.cash
        row[2] = gross
        if self._positions is not None:
            np.multiply(qty, last, out=self._positions.next_row())

    def on_fill(self, fill: Fill) -> None:
        i = self.index.get(fill.symbol)
        if i is None:
            raise KeyError(f"fill for {fill.symbol!r}, which is not in the portfolio's universe")
        if not (fill.quantity > 0 and math.isfinite(fill.price) and fill.price > 0):
            raise ValueError(f"refusing fill with quantity {fill.quantity} and price {fill.price}: {fill}")
        signed = fill.quantity * fill.side
        price = fill.price
        old = float(self.qty[i])
        new = old + signed
        if abs(new) <= _EPS * max(1.0, abs(old)):
            new = 0.0
        realized = 0.0
        avg = float(self.avg_price[i])
        if old != 0.0 and (old > 0) != (signed > 0):
            closed = min(abs(signed), abs(old))
            realized = closed * (price - avg) * (1.0 if old > 0 else -1.0)
            if new == 0.0:
                avg = 0.0
            elif (new > 0) != (old > 0):
                avg = price
        elif new != 0.0:
            avg = (avg * abs(old) + price * abs(signed)) / abs(new)
        else:  # a fill too small to leave a position
            avg = 0.0
        self.qty[i] = new
        self.avg_price[i] = avg
        self.realized_pnl[i] += realized
        self.cash -= signed * price + fill.fee
        self.fees += fill.fee
        self.turnover_notional += fill.quantity * price
        self.n_fills += 1
        self.last_price[i] = price if self.last_price[i] == 0.0 else self.last_price[i]
        self._trade_acc[i] += realized - fill.fee
        if old != 0.0 and (new == 0.0 or (new > 0) != (old > 0)):
            self.trade_pnls.append(float(self._trade_acc[i]))
            self._trade_acc[i] = 0.0
        if self._bus is not None:
            self._bus.publish(
                PositionUpdate(
                    fill.ts_event, fill.ts_init, fill.symbol, new, avg, float(self.realized_pnl[i])
                )
            )

    def on_funding(self, funding: Funding) -> None:
        i = self.index.get(funding.symbol)
        if i is None or not math.isfinite(funding.amount):
            raise ValueError(f"refusing funding payment {funding}")
        self.cash -= funding.amount
        self.funding += funding.amount
        self._trade_acc[i] -= funding.amount

    # state ----------------------------------------------------------------------------------

    _STATE = (
        "cash",
        "qty",
        "avg_price",
        "realized_pnl",
        "last_price",
        "fees",
        "funding",
        "turnover_notional",
        "n_fills",
        "_trade_acc",
        "equity",
        "gross_exposure",
        "ts",
    )

    def state(self) -> dict[str, object]:
        """The book a restart resumes from (the per-bar history is journaled, not kept here)."""
        return capture(self, self._STATE)

    def restore(self, saved: dict[str, object]) -> None:
        restore_into(self, saved)

    # views ----------------------------------------------------------------------------------

    def weights(self) -> np.ndarray:
        """Current market value per asset as a fraction of equity."""
        if self.equity <= 0:
            return np.zeros_like(self.qty)
        return self.qty * self.last_price / self.equity

    def unrealized_pnl(self) -> np.ndarray:
        return self.qty * (self.last_price - self.avg_price)

    def times(self) -> np.ndarray:
        return np.asarray(self._times, dtype=np.int64)

    def curve(self) -> np.ndarray:
        """Columns equity, cash, gross exposure; one row per bar."""
        return self._curve.view()

    def positions(self) -> np.ndarray | None:
        """Market value per asset per bar."""
        return None if self._positions is None else self._positions.view()
