"""Shared fixtures: small price files the tests build themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.events import BarSet
from engine.strategy import Strategy, StrategyContext


class Scripted(Strategy):
    """Target weights decided at given bar indices (NaN: leave as is)."""

    name = "scripted"

    def __init__(self, plan: dict[int, list[float]]) -> None:
        super().__init__()
        self.plan = plan

    def on_bars(self, bars: BarSet, ctx: StrategyContext) -> np.ndarray | None:
        step = self.plan.get(bars.index)
        return None if step is None else np.array(step, dtype=float)


def make_bars(
    symbols: tuple[str, ...] = ("AAA", "BBB"),
    n: int = 300,
    *,
    seed: int = 7,
    start: str = "2020-01-01",
    freq: str = "D",
) -> pd.DataFrame:
    """Random-walk OHLCV in long format, consistent (low <= open, close <= high)."""
    rng = np.random.default_rng(seed)
    times = pd.date_range(start, periods=n, freq=freq, tz="UTC")
    frames = []
    for k, sym in enumerate(symbols):
        close = 100.0 * (k + 1) * np.exp(np.cumsum(rng.normal(0.0003, 0.015, n)))
        opn = np.r_[close[0], close[:-1]] * np.exp(rng.normal(0, 0.003, n))
        high = np.maximum(opn, close) * (1 + rng.uniform(0, 0.01, n))
        low = np.minimum(opn, close) * (1 - rng.uniform(0, 0.01, n))
        frames.append(
            pd.DataFrame(
                {
                    "timestamp": times,
                    "symbol": sym,
                    "open": opn,
                    "high": high,
                    "low": low,
                    "close": close,
                    "volume": rng.uniform(1e3, 1e4, n),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


@pytest.fixture
def bars() -> pd.DataFrame:
    return make_bars()


@pytest.fixture
def prices_csv(tmp_path: Path, bars: pd.DataFrame) -> Path:
    path = tmp_path / "prices.csv"
    bars.to_csv(path, index=False)
    return path
