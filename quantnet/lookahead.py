"""Look-ahead analysis: does any decision depend on bars that had not closed when it was made?

The strategy is replayed once on the data, then once per cut point with every bar after the cut
scrambled (each symbol's later rows permuted among themselves, so they stay valid bars). A decision
made at or before the cut may only use bars up to the cut, so it must be identical in both
replays; the first one that differs is look-ahead. Both of a strategy's paths are covered: its
``on_bars`` and its ``precompute`` (which is handed the whole price matrix at once, where future
bars are easiest to touch by mistake).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from connectors.replay import BarMatrix
from engine.bus import EventBus
from engine.events import Signal
from engine.strategy import Strategy
from quantnet.backtest import run_backtest
from quantnet.config import AppConfig

_PRICES = ("open", "high", "low", "close", "volume")


@dataclass(frozen=True, slots=True)
class Change:
    """The first decision that differed once the bars after ``cut`` were scrambled."""

    cut: pd.Timestamp
    at: pd.Timestamp
    symbol: str
    before: float
    after: float


@dataclass(frozen=True, slots=True)
class LookaheadReport:
    strategy: str
    cuts: list[pd.Timestamp]
    decisions: int
    change: Change | None


def _decisions(
    cfg: AppConfig, make: Callable[[], Strategy], data: pd.DataFrame
) -> list[tuple[int, np.ndarray]]:
    seen: list[tuple[int, np.ndarray]] = []

    def watch(bus: EventBus) -> None:
        bus.subscribe(Signal, lambda s: seen.append((s.ts_event, np.array(s.targets, dtype=float))))

    run_backtest(cfg, strategy=make(), data=data, observe=watch)
    return seen


def scramble_after(data: pd.DataFrame, cut: pd.Timestamp, seed: int) -> pd.DataFrame:
    """``data`` with each symbol's rows after ``cut`` given the prices of another of its later
    rows (a random permutation); rows up to ``cut`` are untouched."""
    rng = np.random.default_rng(seed)
    out = data.copy()
    cols = [c for c in _PRICES if c in out.columns]
    later = out["timestamp"] > cut
    for _, idx in out.index[later].groupby(out.loc[later, "symbol"]).items():
        if len(idx) > 1:
            out.loc[idx, cols] = out.loc[rng.permutation(idx), cols].to_numpy()
    return out


def check_lookahead(
    cfg: AppConfig,
    make: Callable[[], Strategy],
    data: pd.DataFrame,
    *,
    cuts: int = 5,
    seed: int = 0,
) -> LookaheadReport:
    """Replay ``data`` once as is and once per cut (evenly spaced over the middle 80% of the
    bar times) with the bars after it scrambled; report the earliest changed decision."""
    times = pd.DatetimeIndex(pd.unique(data["timestamp"])).sort_values()
    if len(times) < 3:
        raise ValueError(f"look-ahead check needs at least 3 bar times, the data has {len(times)}")
    matrix = BarMatrix.from_frame(data, timestamps=cfg.data.timestamps)
    closes = matrix.ts_event  # the engine's stamp of each bar time: decisions carry it
    positions = np.unique(np.linspace(0.1, 0.9, cuts) * (len(times) - 1)).astype(int)
    positions = positions[positions < len(times) - 1]
    symbols = tuple(matrix.symbols)
    base = _decisions(cfg, make, data)
    change: Change | None = None
    for k, pos in enumerate(positions):
        cut, upto = times[pos], int(closes[pos])
        other = _decisions(cfg, make, scramble_after(data, cut, seed + k))
        found = _first_difference(
            [d for d in base if d[0] <= upto], [d for d in other if d[0] <= upto], symbols
        )
        if found is not None:
            at, symbol, before, after = found
            label = times[min(int(np.searchsorted(closes, at)), len(times) - 1)]
            if change is None or label < change.at:
                change = Change(cut, label, symbol, before, after)
    name = make().name
    return LookaheadReport(name, [times[p] for p in positions], len(base), change)


def _first_difference(
    a: list[tuple[int, np.ndarray]], b: list[tuple[int, np.ndarray]], symbols: tuple[str, ...]
) -> tuple[int, str, float, float] | None:
    """The first (time, symbol, before, after) where two decision sequences part; a decision one
    run made and the other did not counts as NaN (no change) in the other."""
    ta = {t: v for t, v in a}
    tb = {t: v for t, v in b}
    nan = np.full(len(symbols), np.nan)
    for t in sorted(ta.keys() | tb.keys()):
        va, vb = ta.get(t, nan), tb.get(t, nan)
        same = (va == vb) | (np.isnan(va) & np.isnan(vb))
        if not same.all():
            i = int(np.flatnonzero(~same)[0])
            return t, symbols[i], float(va[i]), float(vb[i])
    return None
