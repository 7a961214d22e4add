"""Markets: named groups of assets with aligned returns, built from long-format OHLCV frames.

Returns are simple close-to-close returns on the market's own time grid (the union of its assets'
bar times). Where an asset has no bar (a holiday, not yet listed) its return is NaN and masked,
never forward-filled into a fake zero return; the return after a gap runs from the asset's previous
close. The model input for the return at row t is row t-1 (paper eq. 3), with missing entries fed
as 0; see :func:`model_arrays`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

# What the model sees; stored in checkpoints and checked on load so preprocessing cannot drift.
FEATURES: dict[str, object] = {
    "input": "returns",
    "returns": "simple, from the asset's previous close in the market's grid",
    "input_lag": 1,
    "missing_input": "zero",
    "missing_target": "masked",
    "normalisation": "none",
}


@dataclass(frozen=True, slots=True, eq=False)
class Market:
    """One market: ``returns[t, j]`` is asset j's return from row t-1 to row t, NaN when missing."""

    name: str
    assets: tuple[str, ...]
    index: pd.DatetimeIndex
    returns: np.ndarray

    def __post_init__(self) -> None:
        r = self.returns
        if r.ndim != 2 or r.shape != (len(self.index), len(self.assets)):
            raise ValueError(
                f"market {self.name!r}: returns shape {r.shape} does not match "
                f"{len(self.index)} timestamps × {len(self.assets)} assets"
            )
        if len(set(self.assets)) != len(self.assets):
            raise ValueError(f"market {self.name!r}: duplicate asset names")
        if np.isinf(r).any():
            raise ValueError(f"market {self.name!r}: infinite returns")

    @property
    def n_assets(self) -> int:
        return len(self.assets)

    def __len__(self) -> int:
        return len(self.index)

    def rows(self, start: int, stop: int) -> Market:
        return Market(self.name, self.assets, self.index[start:stop], self.returns[start:stop])

    def date_range(self) -> tuple[str, str]:
        if len(self) == 0:
            return ("", "")
        return (self.index[0].isoformat(), self.index[-1].isoformat())


Part = Literal["train", "val", "test", "all"]


@dataclass(frozen=True, slots=True)
class Splits:
    """Train, validation and test blocks on one calendar shared by every market.

    The test block is the last ``test_bars`` bars of the union of all markets' bar times, the
    validation block the ``val_bars`` bars before it, training everything earlier: one start date
    per block for all markets, so no market trains on dates another one validates or tests on (the
    shared layer would carry that information across). A market without rows in a block simply
    has none there. ``*_start`` and ``*_end`` are the first and last bar times of a block (None:
    the block is empty); ``interval_s`` is the calendar's median bar spacing in seconds.
    """

    first: pd.Timestamp
    last: pd.Timestamp
    val_start: pd.Timestamp | None
    test_start: pd.Timestamp | None
    train_end: pd.Timestamp | None
    val_end: pd.Timestamp | None
    val_bars: int
    test_bars: int
    interval_s: float

    def bounds(self, market: Market) -> tuple[int, int]:
        """(first validation row, first test row) of ``market``: training rows are ``[0, v0)``,
        validation ``[v0, t0)``, test ``[t0, len)``."""
        n = len(market)
        t0 = n if self.test_start is None else int(market.index.searchsorted(self.test_start, "left"))
        v0 = t0 if self.val_start is None else int(market.index.searchsorted(self.val_start, "left"))
        return min(v0, t0), t0

    def rows(self, market: Market, part: Part) -> tuple[int, int]:
        v0, t0 = self.bounds(market)
        return {"train": (0, v0), "val": (v0, t0), "test": (t0, len(market)), "all": (0, len(market))}[part]

    def part(self, market: Market, part: Part) -> Market:
        return market.rows(*self.rows(market, part))

    def to_meta(self) -> dict[str, object]:
        """Plain values for checkpoint metadata (ISO times; None for an empty block)."""

        def iso(t: pd.Timestamp | None) -> str | None:
            return None if t is None else t.isoformat()

        return {
            "calendar": "union of all markets' bar times",
            "first": iso(self.first),
            "last": iso(self.last),
            "train_end": iso(self.train_end),
            "val_start": iso(self.val_start),
            "val_end": iso(self.val_end),
            "test_start": iso(self.test_start),
            "val_bars": self.val_bars,
            "test_bars": self.test_bars,
            "interval_s": self.interval_s,
        }

    @classmethod
    def from_meta(cls, meta: dict[str, object]) -> Splits:
        def ts(key: str) -> pd.Timestamp | None:
            v = meta.get(key)
            return None if v is None else pd.Timestamp(str(v))

        first, last = ts("first"), ts("last")
        if first is None or last is None:
            raise ValueError("split metadata lacks the calendar's first and last bar")
        return cls(
            first, last, ts("val_start"), ts("test_start"), ts("train_end"), ts("val_end"),
            int(meta.get("val_bars") or 0), int(meta.get("test_bars") or 0),  # type: ignore[call-overload]
            float(meta.get("interval_s") or 0.0),  # type: ignore[arg-type]
        )  # fmt: skip


def union_calendar(markets: Sequence[Market]) -> pd.DatetimeIndex:
    """Every bar time of any market, sorted and distinct."""
    stamps = [m.index for m in markets if len(m)]
    if not stamps:
        return pd.DatetimeIndex([], tz="UTC")
    out = stamps[0]
    for ix in stamps[1:]:
        out = out.union(ix)
    return pd.DatetimeIndex(out).sort_values().unique()


def dated_splits(markets: Sequence[Market], test_bars: int, val_bars: int) -> Splits:
    """Dated splits on the union calendar of ``markets``: test = its last ``test_bars`` bars,
    validation = the ``val_bars`` before, training = the rest. Refuses a calendar too short to
    leave any training bars."""
    if test_bars < 0 or val_bars < 0:
        raise ValueError("test_bars and val_bars must be >= 0")
    cal = union_calendar(markets)
    if len(cal) == 0:
        raise ValueError("no bars: the markets are empty")
    held = test_bars + val_bars
    if held >= len(cal):
        raise ValueError(
            f"the calendar has {len(cal)} bars ({cal[0].date()} .. {cal[-1].date()}); "
            f"{test_bars} test + {val_bars} validation bars leave none for training"
        )
    n = len(cal)
    test_start = cal[n - test_bars] if test_bars else None
    val_start = cal[n - held] if val_bars else None
    val_end = cal[n - test_bars - 1] if val_bars else None
    ns = cal.as_unit("ns").asi8
    interval = float(np.median(np.diff(ns))) / 1e9 if n > 1 else 0.0
    return Splits(
        cal[0], cal[-1], val_start, test_start, cal[n - held - 1], val_end, val_bars, test_bars, interval
    )


def returns_from_closes(closes: np.ndarray) -> np.ndarray:
    """Simple returns of a (time × asset) close matrix, NaN where the asset has no close.

    A return after a gap runs from the asset's previous close (what a position held through the
    gap earns, and what a live feed computes from its last price); the gap rows themselves stay
    NaN, never zero. The first close of an asset has no return.
    """
    c = np.asarray(closes, dtype=np.float64)
    rows, cols = c.shape
    valid = np.isfinite(c)
    last = np.maximum.accumulate(np.where(valid, np.arange(rows)[:, None], -1), axis=0)
    prev = np.vstack([np.full((1, cols), -1), last[:-1]])
    has = valid & (prev >= 0)
    out = np.full_like(c, np.nan)
    col = np.broadcast_to(np.arange(cols), c.shape)
    out[has] = c[has] / c[prev[has], col[has]] - 1.0
    return out


def markets_from_frame(df: pd.DataFrame, *, name: str | None = None) -> list[Market]:
    """Markets from a long-format frame (timestamp, symbol, close, ...).

    With a ``market`` column each group is a market; otherwise the whole frame is one market called
    ``name``. Assets are ordered by symbol so the order is reproducible from the data alone.
    """
    missing = [c for c in ("timestamp", "symbol", "close") if c not in df.columns]
    if missing:
        raise ValueError(f"frame lacks column(s) {', '.join(missing)}")
    if "market" in df.columns:
        groups = [(str(k), g) for k, g in df.groupby("market", sort=True)]
    else:
        if not name:
            raise ValueError("frame has no 'market' column: pass name=")
        groups = [(name, df)]
    out = []
    for market, g in groups:
        if g.duplicated(["timestamp", "symbol"]).any():
            raise ValueError(f"market {market!r}: duplicate (timestamp, symbol) rows")
        close = g.pivot(index="timestamp", columns="symbol", values="close").sort_index()
        close = close.reindex(columns=sorted(close.columns, key=str))
        values = close.to_numpy(dtype=np.float64)
        if (values[np.isfinite(values)] <= 0).any():
            raise ValueError(f"market {market!r}: non-positive close price")
        r = returns_from_closes(values)[1:]
        index = pd.DatetimeIndex(close.index[1:])
        out.append(Market(market, tuple(str(s) for s in close.columns), index, np.ascontiguousarray(r)))
    return out


def vol_scale(returns: np.ndarray, *, vol_target: float, span: int, periods_per_year: float) -> np.ndarray:
    """vol_target / σ_t per (row, asset), σ_t the annualised EWM volatility (span ``span``, squared
    returns not demeaned, seeded by the asset's first return) of the asset's returns before row t:
    the factor the ``quantnet`` strategy sizes row t's position with (deep-momentum sizing). NaN
    where no estimate exists yet or it is zero."""
    r = np.asarray(returns, dtype=np.float64)
    alpha = 2.0 / (span + 1.0)
    var = np.full(r.shape[1], np.nan)
    before = np.full(r.shape, np.nan)
    for t in range(len(r)):
        before[t] = var
        row = r[t]
        fresh = np.isfinite(row)
        sq = row * row
        first = fresh & np.isnan(var)
        var = np.where(first, sq, var)
        var = np.where(fresh & ~first, var + alpha * (sq - var), var)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = vol_target / np.sqrt(before * periods_per_year)
    return np.where(np.isfinite(out), out, np.nan)


def model_arrays(returns: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs, targets, mask) aligned on rows: the signal computed from ``inputs[: t + 1]`` (returns up
    to t-1) trades ``targets[t]``. Row 0 has no past, so its input is zeros."""
    r = np.asarray(returns, dtype=np.float64)
    mask = np.isfinite(r)
    targets = np.where(mask, r, 0.0)
    inputs = np.zeros_like(targets)
    inputs[1:] = targets[:-1]
    return inputs, targets, mask


def infer_periods_per_year(markets: Sequence[Market]) -> float:
    """Bars per year from the bar spacing and calendar: 252 for weekday daily bars, 365 (or the
    24/7 hourly equivalent) for markets that trade every day; avoids sqrt(252) on hourly crypto."""
    spacings, per_day = [], []
    weekdays = np.zeros(7)
    seen: dict[int, tuple[float, float, np.ndarray]] = {}  # markets often share one index object
    for m in markets:
        if len(m) < 2:
            continue
        if id(m.index) not in seen:
            ix = m.index
            seen[id(ix)] = (
                float(np.median(np.diff(ix.as_unit("ns").asi8))),
                len(ix) / max(1, ix.normalize().nunique()),
                np.bincount(ix.day_of_week, minlength=7),
            )
        spacing, days, counts = seen[id(m.index)]
        spacings.append(spacing)
        per_day.append(days)
        weekdays += counts
    if not spacings:
        return 252.0
    # 24/7 when (nearly) every weekday carries a real share of the bars, as engine.metrics decides:
    # an odd Saturday session must not turn an exchange calendar into a 365-day one
    round_the_clock = np.count_nonzero(weekdays >= 0.25 * weekdays.max()) >= 6
    days_per_year = 365.0 if round_the_clock else 252.0
    step_s = float(np.median(spacings)) / 1e9
    if step_s >= 20 * 3600:
        days = max(1.0, round(step_s / 86400))
        return days_per_year if days == 1 else 365.25 / days
    return days_per_year * float(np.median(per_day))
