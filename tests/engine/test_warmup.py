"""Warm-up: with a start date, the strategy sees the bars it needs from before it, without trading,
and its standing targets trade from the first bar of the range."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantnet.backtest import run_backtest
from quantnet.config import load_config
from strategies.registry import create
from tests.conftest import make_bars


def run(data: pd.DataFrame, *, warmup: bool):
    cfg = load_config(None, {"data": {"start": "2020-03-01", "warmup": warmup}, "costs": {"slippage_bps": 0}})
    return run_backtest(
        cfg, strategy=create("sma_crossover", {"fast": 5, "slow": 20, "target": 0.4}), data=data
    )


def trending(n: int = 120) -> pd.DataFrame:
    """A rises every day (fast SMA above slow), B falls (below)."""
    days = pd.date_range("2020-01-01", periods=n, freq="D", tz="UTC")
    rows = []
    for sym, path in (("A", 100 + np.arange(n)), ("B", 300 - np.arange(n))):
        rows += [
            {"timestamp": d, "symbol": sym, "open": p, "high": p + 1, "low": p - 1, "close": p, "volume": 1.0}
            for d, p in zip(days, path.astype(float), strict=True)
        ]
    return pd.DataFrame(rows)


def test_indicators_are_ready_at_the_start():
    warm, cold = run(trending(), warmup=True), run(trending(), warmup=False)
    start = pd.Timestamp("2020-03-01", tz="UTC")  # the first bar, labelled as in the data
    for result in (warm, cold):
        assert result.equity["timestamp"].iloc[0] == start
        assert result.equity["equity"].iloc[0] == pytest.approx(100_000)  # nothing traded before
        assert result.settings["timestamps"] == len(result.equity)
        assert result.settings["bars"] == result.bars == 2 * len(result.equity)  # A and B each time
    assert warm.settings["warmup_bars"] == 20 and cold.settings["warmup_bars"] == 0
    # the standing target (A long, from the warm-up) is sent at the first close, filled next open
    assert warm.trades[["timestamp", "symbol", "side"]].values.tolist() == [
        [start + pd.Timedelta(days=1), "A", "buy"]
    ]
    # without warm-up the averages need 20 bars of the range first
    assert cold.trades["timestamp"].min() == start + pd.Timedelta(days=20)


def test_positions_follow_the_full_history_crossover():
    data = make_bars(("A", "B"), 200, seed=21)
    result = run(data, warmup=True)
    closes = data.pivot(index="timestamp", columns="symbol", values="close")
    above = (closes.rolling(5).mean() > closes.rolling(20).mean()).loc["2020-03-01":]
    held = (result.positions > 0).to_numpy()
    # the position at bar k's close was decided at bar k-1's close
    np.testing.assert_array_equal(held[1:], above.to_numpy()[:-1])


def test_start_after_the_data_is_a_clear_error():
    from connectors.replay import DataError

    with pytest.raises(DataError, match="no bars from 2030-01-01 on"):
        run_backtest(
            load_config(None, {"data": {"start": "2030-01-01"}}),
            strategy=create("buy_and_hold", {}),
            data=make_bars(("A",), 30),
        )
