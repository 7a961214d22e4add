"""Portfolio accounting: positions, cash, marked-to-market equity, realised PnL and round trips.

State lives in numpy vectors indexed like the universe, so marking every bar costs a few vector
operations whatever the number of assets. Fills are the only thing that changes positions or cash.
"""

from __future__ import annotations

import math
from functools import reduce
from operator import add, sub

import numpy as np

from engine.bus import EventBus
from engine.events import BarSet, Fill, Funding, PositionUpdate
from engine.numeric import ONE, count_nonzero
from engine.state import capture, restore_into

_EPS = 1e-12
_EPS0 = np.array(_EPS)  # 0-d: see engine.numeric
_YEAR_NS = 365.25 * 86_400e9  # interest accrues on calendar time


class _Series:
    """Append-only float columns that grow by doubling, in rows and in columns: no per-bar
    allocation. A row may be wider than ``width``; only its first ``width`` entries count."""

    __slots__ = ("data", "n", "width")

    def __init__(self, width: int, capacity: int) -> None:
        self.data = np.empty((max(capacity, 16), width))
        self.n = 0
        self.width = width

    def next_row(self) -> np.ndarray:
        if self.n == len(self.data):
            grown = np.empty((2 * len(self.data), self.data.shape[1]))
            grown[: self.n] = self.data
            self.data = grown
        row = self.data[self.n]
        self.n += 1
        return row

    def extend(self, k: int) -> np.ndarray:
        """The next ``k`` rows, to be written by the caller."""
        if self.n + k > len(self.data):
            grown = np.empty((max(2 * len(self.data), self.n + k), self.data.shape[1]))
            grown[: self.n] = self.data[: self.n]
            self.data = grown
        block = self.data[self.n : self.n + k]
        self.n += k
        return block

    def add_column(self) -> None:
        """One more column, zero in the rows already written."""
        if self.width == self.data.shape[1]:
            grown = np.empty((len(self.data), max(2 * self.width, 4)))
            grown[: self.n, : self.width] = self.data[: self.n, : self.width]
            self.data = grown
        self.data[: self.n, self.width] = 0.0
        self.width += 1

    def view(self) -> np.ndarray:
        return self.data[: self.n, : self.width]


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
        borrow_rate: float = 0.0,
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
        self.borrow_rate = float(borrow_rate)
        self.borrow_cost = 0.0
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
        # market values are recorded only for symbols that have had a position, in the order of
        # their first fill, so a wide universe that is mostly never held costs no memory per bar
        self._positions = _Series(0, capacity) if record_positions else None
        self._recorded = np.zeros(n, dtype=bool)
        self._columns = np.zeros(0, dtype=np.intp)
        self._all_recorded = False
        self._single = n == 1
        self._held = 0  # symbols with a position
        if bus is not None:
            bus.subscribe(Fill, self.on_fill)
            bus.subscribe(Funding, self.on_funding)
            bus.subscribe(BarSet, self.on_bars)

    # events ---------------------------------------------------------------------------------

    def on_bars(self, bars: BarSet) -> None:
        close = bars.close
        last = self.last_price
        qty = self.qty
        if self.cash < 0.0 and self.borrow_rate and self.ts:
            # negative cash (leverage) pays interest for the time it was held, on calendar time
            cost = -self.cash * self.borrow_rate * (bars.ts_event - self.ts) / _YEAR_NS
            self.cash -= cost
            self.borrow_cost += cost
        self.ts = ts = bars.ts_event
        cash = self.cash
        if self._single:  # one symbol: the same products and sums as below, on Python floats
            c = float(close[0])
            if c == c:
                last[0] = c
            else:
                c = float(last[0])
            q = float(qty[0])
            self.equity = equity = cash + q * c
            self.gross_exposure = gross = abs(q) * c
        elif self._held:
            np.copyto(last, close, where=close == close)
            self.equity = equity = cash + float(np.dot(qty, last))
            self.gross_exposure = gross = float(np.dot(np.abs(qty), last))
        else:  # no position: nothing to mark but the prices
            np.copyto(last, close, where=close == close)
            self.equity = equity = cash
            self.gross_exposure = gross = 0.0
        self._times.append(ts)
        row = self._curve.next_row()
        row[0] = equity
        row[1] = cash
        row[2] = gross
        if self._positions is not None:
            row = self._positions.next_row()
            if self._all_recorded:
                if self._single:
                    row[0] = q * c
                else:
                    np.multiply(qty, last, out=row)
            elif len(self._columns):
                cols = self._columns
                np.multiply(qty[cols], last[cols], out=row[: len(cols)])

    def mark_span(self, times: list[int], close: np.ndarray, *, complete: bool = False) -> None:
        """Book a run of bars on which nothing traded (no fill, no funding) at once: the same
        marks, equity, exposure and position values :meth:`on_bars` records one bar at a time,
        with the same arithmetic (a book without positions is worth its cash; one symbol's value
        is one product; wider books with positions take the same dot product per bar).
        ``complete``: the caller knows every symbol has a bar on every one of these bars."""
        k = len(times)
        if not k:
            return
        last = self.last_price
        if not complete and np.isnan(close).any():  # a symbol without a bar keeps its last price
            marks = np.vstack([last[None, :], close])
            seen = np.where(marks == marks, np.arange(k + 1)[:, None], 0)
            np.maximum.accumulate(seen, axis=0, out=seen)
            marks = np.take_along_axis(marks, seen, axis=0)[1:]
        else:
            marks = close
        qty = self.qty
        cash = self.cash
        cash_at = np.full(k, cash)
        if cash < 0.0 and self.borrow_rate and self.ts:  # what on_bars charges bar by bar
            steps = np.diff(np.asarray([self.ts, *times], dtype=np.float64))
            cash_at = cash * np.cumprod(1.0 + self.borrow_rate * steps / _YEAR_NS)
            self.borrow_cost += cash - float(cash_at[-1])
            self.cash = float(cash_at[-1])
        curve = self._curve.extend(k)
        if not self._held:
            curve[:, 0] = cash_at
            curve[:, 2] = 0.0
        elif self._single:
            q = float(qty[0])
            np.multiply(marks[:, 0], q, out=curve[:, 0])
            curve[:, 0] += cash_at
            np.multiply(marks[:, 0], abs(q), out=curve[:, 2])
        else:
            size = np.abs(qty)
            for r, row in enumerate(marks):
                curve[r, 0] = cash_at[r] + float(qty @ row)
                curve[r, 2] = float(size @ row)
        curve[:, 1] = cash_at
        self._times.extend(times)
        if self._positions is not None:
            block = self._positions.extend(k)
            if self._all_recorded:
                np.multiply(marks, qty, out=block)
            elif len(self._columns):
                cols = self._columns
                np.multiply(marks[:, cols], qty[cols], out=block[:, : len(cols)])
        last[:] = marks[-1]
        self.ts = times[-1]
        self.equity = float(curve[-1, 0])
        self.gross_exposure = float(curve[-1, 2])

    def _record(self, i: int) -> None:
        """Start recording symbol ``i``'s market value; once every symbol is recorded, put the
        columns in universe order so that each bar is one vector product again."""
        series = self._positions
        assert series is not None
        series.add_column()
        self._recorded[i] = True
        self._columns = np.append(self._columns, i)
        if len(self._columns) == len(self.symbols):
            order = np.argsort(self._columns)
            series.data = np.ascontiguousarray(series.data[:, order])
            self._columns = self._columns[order]
            self._all_recorded = True

    def on_fill(self, fill: Fill) -> None:
        i = self.index.get(fill.symbol)
        if i is None:
            raise KeyError(f"fill for {fill.symbol!r}, which is not in the portfolio's universe")
        if not (fill.quantity > 0 and math.isfinite(fill.price) and fill.price > 0):
            raise ValueError(f"refusing fill with quantity {fill.quantity} and price {fill.price}: {fill}")
        if not self._recorded[i] and self._positions is not None:
            self._record(i)
        signed = fill.quantity * fill.side
        price = fill.price
        qty = self.qty
        old = float(qty[i])
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
        qty[i] = new
        self._held += (new != 0.0) - (old != 0.0)
        self.avg_price[i] = avg
        pnl = self.realized_pnl
        pnl[i] += realized
        fee = fill.fee
        self.cash -= signed * price + fee
        self.fees += fee
        self.turnover_notional += fill.quantity * price
        self.n_fills += 1
        if self.last_price[i] == 0.0:
            self.last_price[i] = price
        acc = self._trade_acc
        acc[i] += realized - fee
        if old != 0.0 and (new == 0.0 or (new > 0) != (old > 0)):
            self.trade_pnls.append(float(acc[i]))
            acc[i] = 0.0
        bus = self._bus
        if bus is not None and bus.wants(PositionUpdate):
            bus.publish(PositionUpdate(fill.ts_event, fill.ts_init, fill.symbol, new, avg, float(pnl[i])))

    def book_fills(
        self, idx: np.ndarray, quantity: np.ndarray, signed: np.ndarray, price: np.ndarray, fee: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`on_fill` for fills of distinct symbols ``idx``, in that order, at once: the same
        arithmetic elementwise (each symbol's book sees only its own fill) and the same sums in
        the same order for cash, fees and turnover (``signed``: each ``quantity`` times +1 buy or
        -1 sell). The caller has checked what ``on_fill`` refuses (positive quantities, positive
        finite prices, symbols of the universe) and that every symbol has a mark (a last price
        above 0: the order manager sizes no other). Returns each symbol's new quantity and
        average price (what its PositionUpdate carries)."""
        if self._positions is not None and not self._all_recorded:
            for i in idx.tolist():
                if not self._recorded[i]:
                    self._record(i)
        qty, avg_price, count = self.qty, self.avg_price, count_nonzero
        k = len(idx)
        every = k == len(qty)  # distinct and ascending: idx is every symbol, in order
        old = qty if every else qty[idx]  # only read until the new books are written, at the end
        avg = avg_price if every else avg_price[idx]
        new = old + signed
        size = np.abs(old)
        den = np.abs(new)
        tiny = np.maximum(size, ONE)
        np.multiply(tiny, _EPS0, tiny)
        tiny = np.less_equal(den, tiny)
        flats = count(tiny)
        if flats:
            new[tiny] = 0.0
            den[tiny] = 1.0  # divided by, then replaced: a flat book's average price is 0
        # on_fill's old != 0 and (old > 0) != (signed > 0): old with the fill's sign is another
        # number only then (a zero, of either sign, equals its copy)
        closing = np.copysign(old, signed)
        closing = np.not_equal(closing, old)
        traded = quantity  # |signed|: a quantity times +1 or -1
        out = avg * size
        out += price * traded
        out /= den
        closes = count(closing)
        ended = None
        if closes:
            realized = np.minimum(traded, size)
            realized *= price - avg
            # x 1.0 long, x -1.0 short (on_fill's 1.0 if old > 0 else -1.0), x 0 where nothing
            # closes: 0.0 or -0.0, which add to a P&L and subtract a fee as 0.0 does
            realized *= np.copysign(closing, old)
            np.copyto(out, avg, where=closing)  # a reduction keeps its average price
            # a closing fill larger than the position flips it (exactly equal: flat, a tiny)
            ended = np.greater(traded, size)
            ended &= closing
            if count(ended):
                np.copyto(out, price, where=ended)  # a flip opens at the fill's price
            if flats:
                ended |= tiny & closing
            if every:
                self.realized_pnl += realized
            else:
                self.realized_pnl[idx] += realized
            gain = realized - fee
        else:
            gain = -fee  # 0.0 - fee: the same number
        if flats:
            out[tiny] = 0.0
        self._held += count(new) - count(old)
        if every:
            qty[:] = new
            avg_price[:] = out
        else:
            qty[idx] = new
            avg_price[idx] = out
        # cash, fees and turnover move fill by fill, in order, as on_fill moves them
        cost = signed * price
        cost += fee
        self.cash = reduce(sub, cost.tolist(), self.cash)
        self.fees = reduce(add, fee.tolist(), self.fees)
        self.turnover_notional = reduce(add, np.multiply(quantity, price).tolist(), self.turnover_notional)
        self.n_fills += k
        acc = self._trade_acc
        if every:
            acc += gain
        else:
            acc[idx] += gain
        if ended is not None and count(ended):
            for i in idx[ended].tolist():
                self.trade_pnls.append(float(acc[i]))
                acc[i] = 0.0
        return new, out

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
        "borrow_cost",
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
        self._held = int(np.count_nonzero(self.qty))

    def drop_history(self) -> None:
        """Forget the per-bar history (times, equity curve, position values, trade P&Ls) kept for
        a backtest's report: a process running for weeks has it in its journal instead, and kept
        here it would grow with every bar."""
        self._times.clear()
        self._curve.n = 0
        self.trade_pnls.clear()
        if self._positions is not None:
            self._positions.n = 0

    def take(self, i: int, qty: float, avg_price: float, mark: float) -> None:
        """Set symbol ``i``'s position to what the venue holds (an adoption): quantity, average
        price and, when given (> 0), the mark; equity is re-marked by the :meth:`set_cash` that
        follows."""
        self.qty[i] = qty
        self.avg_price[i] = avg_price if qty else 0.0
        if mark > 0:
            self.last_price[i] = mark
        self._held = int(np.count_nonzero(self.qty))

    def set_cash(self, cash: float) -> None:
        """Set cash to the venue's (an adoption) and re-mark equity at the last prices."""
        self.cash = cash
        self.equity = cash + float(np.nansum(self.qty * self.last_price))

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

    def positions(self) -> tuple[np.ndarray, tuple[str, ...]] | None:
        """Market value per bar of each symbol that has had a position, and those symbols, in
        universe order (symbols never held were worth 0 on every bar)."""
        if self._positions is None:
            return None
        order = np.argsort(self._columns, kind="stable")
        values = self._positions.view()
        if not self._all_recorded:
            values = values[:, order]
        return values, tuple(self.symbols[i] for i in self._columns[order])
