"""Round trips: fills grouped into positions that open from flat and close back to flat (or flip).

The grouping follows the portfolio's own bookkeeping rule by rule (average-cost realised PnL, a
position within 1e-12 of zero is flat, a flip closes the old position with the whole flipping
fill's fee and opens the new one at that fill's price), so the closed round trips' PnLs are the
portfolio's ``trade_pnls`` and their count is ``n_trades`` in ``metrics.json``: one vocabulary,
fills for executions and round trips for positions, everywhere. Funding is not in the fills and
so not in a round trip's PnL; the summary reports it separately.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["COLUMNS", "Prices", "round_trips"]

_EPS = 1e-12

COLUMNS = (
    "symbol",
    "direction",
    "entry_time",
    "exit_time",
    "entry_price",
    "exit_price",
    "quantity",
    "pnl",
    "return",
    "fees",
    "fills",
    "bars",
    "duration_days",
    "mae",
    "mfe",
    "closed",
)


@dataclass(frozen=True, slots=True)
class Prices:
    """Bars by time for the report: ``times`` int64 ns (the equity curve's stamps), ``close``,
    ``high``, ``low`` as time × symbol matrices (NaN where a symbol has no bar)."""

    times: np.ndarray
    symbols: tuple[str, ...]
    close: np.ndarray
    high: np.ndarray | None = None
    low: np.ndarray | None = None

    def column(self, symbol: str) -> int | None:
        try:
            return self.symbols.index(symbol)
        except ValueError:
            return None


def _ns(values: pd.Series) -> np.ndarray:
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        return pd.DatetimeIndex(values).as_unit("ns").asi8
    if pd.api.types.is_integer_dtype(values.dtype):
        return values.to_numpy(dtype=np.int64)
    return pd.DatetimeIndex(pd.to_datetime(values, utc=True)).as_unit("ns").asi8


class _Trip:
    __slots__ = (
        "entry_notional",
        "entry_qty",
        "entry_ts",
        "exit_fill",
        "exit_notional",
        "exit_qty",
        "exit_ts",
        "fees",
        "fills",
        "max_qty",
        "pnl",
        "seq",
        "sign",
        "symbol",
    )

    def __init__(self, symbol: str, position: float, price: float, ts: int, seq: int) -> None:
        self.symbol = symbol
        self.sign = 1.0 if position > 0 else -1.0
        self.entry_ts = ts
        self.exit_ts: int | None = None
        self.exit_fill = math.nan
        self.entry_notional = abs(position) * price
        self.entry_qty = abs(position)
        self.exit_notional = 0.0
        self.exit_qty = 0.0
        self.max_qty = abs(position)
        self.fees = 0.0
        self.fills = 1
        self.pnl = 0.0
        self.seq = seq


def round_trips(trades: pd.DataFrame | None, prices: Prices | None = None) -> pd.DataFrame:
    """One row per round trip, in order of entry, with the columns of :data:`COLUMNS`.

    ``trades``: one row per fill (timestamp, symbol, side ``buy``/``sell``, quantity > 0, price,
    fee), in execution order. Per round trip: ``direction`` long or short; ``entry_price`` the
    average price of the fills that opened or added to it, ``exit_price`` that of the reducing
    fills; ``quantity`` the largest absolute position; ``pnl`` realised PnL (average cost) net of
    every fee of the trip; ``return = pnl / entry notional`` (the notional of the opening and
    adding fills); ``bars`` from the entry fill's bar to the exit fill's and ``duration_days`` the
    calendar time between them; ``closed`` False for a position still open after the last fill:
    its exit is empty and, with ``prices``, its PnL includes the open position marked at the last
    close.

    ``mae``/``mfe`` (with ``prices``): the worst and best price move from the entry price while the
    position was open, in its direction, as fractions (mae ≤ 0 ≤ mfe). Fills are stamped with the
    bar whose price they took (its open for a market order), so the range is the highs and lows of
    the bars from the entry fill's to the one before the exit fill's, and the exit price itself.
    """
    if trades is None or len(trades) == 0:
        return pd.DataFrame({c: [] for c in COLUMNS})
    ts = _ns(trades["timestamp"])
    symbols = trades["symbol"].astype(str).tolist()
    side = np.where(trades["side"].astype(str).str.lower().to_numpy() == "buy", 1.0, -1.0)
    signed_qty = (trades["quantity"].to_numpy(dtype=np.float64) * side).tolist()
    price = trades["price"].to_numpy(dtype=np.float64).tolist()
    fee = trades["fee"].to_numpy(dtype=np.float64).tolist() if "fee" in trades else [0.0] * len(ts)
    stamps = ts.tolist()

    done: list[_Trip] = []
    book: dict[str, tuple[float, float, float, _Trip | None]] = {}  # position, avg cost, acc, trip
    for k, sym in enumerate(symbols):
        old, avg, acc, trip = book.get(sym, (0.0, 0.0, 0.0, None))
        signed, p, f = signed_qty[k], price[k], fee[k]
        new = old + signed
        if abs(new) <= _EPS * max(1.0, abs(old)):
            new = 0.0
        realized = 0.0
        if old != 0.0 and (old > 0) != (signed > 0):
            closed = min(abs(signed), abs(old))
            realized = closed * (p - avg) * (1.0 if old > 0 else -1.0)
            if new == 0.0:
                avg = 0.0
            elif (new > 0) != (old > 0):
                avg = p
            if trip is not None:
                trip.exit_notional += closed * p
                trip.exit_qty += closed
                trip.fills += 1
        elif new != 0.0:
            avg = (avg * abs(old) + p * abs(signed)) / abs(new)
            if trip is None:
                trip = _Trip(sym, new, p, stamps[k], k)
                trip.fills = 0
            else:
                trip.entry_notional += abs(signed) * p
                trip.entry_qty += abs(signed)
                trip.max_qty = max(trip.max_qty, abs(new))
            trip.fills += 1
        else:
            avg = 0.0
        acc += realized - f
        if trip is not None:
            trip.fees += f
        if old != 0.0 and (new == 0.0 or (new > 0) != (old > 0)):
            assert trip is not None
            trip.exit_ts = stamps[k]
            trip.exit_fill = p
            trip.pnl = acc
            done.append(trip)
            acc, trip = 0.0, None
            if new != 0.0:  # a flip: the rest of the fill opens the opposite position here
                trip = _Trip(sym, new, p, stamps[k], k)
        book[sym] = (new, avg, acc, trip)
    still_open = []
    for position, avg, acc, trip in book.values():
        if trip is not None:
            trip.pnl = acc
            still_open.append((trip, position, avg))
    return _frame(done, still_open, prices)


def _frame(
    done: list[_Trip], still_open: list[tuple[_Trip, float, float]], prices: Prices | None
) -> pd.DataFrame:
    trips = sorted(done + [t for t, _, _ in still_open], key=lambda t: t.seq)
    n = len(trips)
    entry_ts = np.array([t.entry_ts for t in trips], dtype=np.int64)
    closed = np.array([t.exit_ts is not None for t in trips], dtype=bool)
    exit_ts = np.array([t.exit_ts if t.exit_ts is not None else 0 for t in trips], dtype=np.int64)
    pnl = np.array([t.pnl for t in trips])
    exit_price = np.array([t.exit_notional / t.exit_qty if t.exit_qty else math.nan for t in trips])
    entry_price = np.array([t.entry_notional / t.entry_qty for t in trips])
    sign = np.array([t.sign for t in trips])
    mae = np.full(n, math.nan)
    mfe = np.full(n, math.nan)
    bars = np.full(n, -1, dtype=np.int64)
    opened = {id(t): (pos, avg) for t, pos, avg in still_open}
    if prices is not None and n:
        times = np.asarray(prices.times, dtype=np.int64)
        high = prices.high if prices.high is not None else prices.close
        low = prices.low if prices.low is not None else prices.close
        i0 = np.searchsorted(times, entry_ts, side="left")
        i1 = np.where(closed, np.searchsorted(times, exit_ts, side="left"), len(times))
        bars = np.where(closed, i1 - i0, len(times) - 1 - i0)
        for k, t in enumerate(trips):
            col = prices.column(t.symbol)
            if col is None:
                continue
            lo, hi = int(i0[k]), int(i1[k])
            end_price = t.exit_fill
            if not closed[k]:
                last = prices.close[:, col]
                valid = np.flatnonzero(np.isfinite(last))
                if len(valid):
                    end_price = float(last[valid[-1]])
                    pos, avg = opened[id(t)]
                    pnl[k] = t.pnl + pos * (end_price - avg)
            h = high[lo:hi, col]
            lw = low[lo:hi, col]
            ends = (end_price, entry_price[k])
            top = max(float(np.nanmax(h)) if len(h) and not np.isnan(h).all() else -math.inf, *ends)
            bottom = min(float(np.nanmin(lw)) if len(lw) and not np.isnan(lw).all() else math.inf, *ends)
            if sign[k] > 0:
                mfe[k], mae[k] = top / entry_price[k] - 1.0, bottom / entry_price[k] - 1.0
            else:
                mfe[k], mae[k] = 1.0 - bottom / entry_price[k], 1.0 - top / entry_price[k]
    notional = np.array([t.entry_notional for t in trips])
    with np.errstate(divide="ignore", invalid="ignore"):
        ret = np.where(notional > 0, pnl / notional, math.nan)
    entry = pd.to_datetime(entry_ts, utc=True)
    exit_ = pd.to_datetime(np.where(closed, exit_ts, 0), utc=True).where(closed, pd.NaT)
    duration = (exit_.asi8 - entry.asi8) / 86_400e9 if n else np.zeros(0)
    return pd.DataFrame(
        {
            "symbol": [t.symbol for t in trips],
            "direction": np.where(sign > 0, "long", "short"),
            "entry_time": entry,
            "exit_time": exit_,
            "entry_price": entry_price,
            "exit_price": np.where(closed, exit_price, math.nan),
            "quantity": np.array([t.max_qty for t in trips]),
            "pnl": pnl,
            "return": ret,
            "fees": np.array([t.fees for t in trips]),
            "fills": np.array([t.fills for t in trips], dtype=np.int64),
            "bars": bars,
            "duration_days": np.where(closed, duration, math.nan),
            "mae": mae,
            "mfe": mfe,
            "closed": closed,
        },
        columns=list(COLUMNS),
    )
