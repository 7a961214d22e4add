"""No look-ahead: rewriting every bar after time t changes nothing the engine did up to t.

Decisions at t's close may only trade at t+1's open, so equity up to t, every fill up to t and
every order decided up to t must be identical whatever the future holds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantnet.backtest import run_backtest
from quantnet.config import load_config
from strategies.registry import create
from tests.conftest import make_bars

CASES = [
    ("sma_crossover", {"fast": 5, "slow": 20, "short": True}),
    ("ts_momentum", {"lookback": 20, "rebalance_every": 3}),
    ("cs_momentum", {"lookback": 20, "rebalance_every": 2}),
    ("risk_parity", {"lookback": 20, "rebalance_every": 5}),
    ("buy_and_hold", {}),
]


def scramble_after(data: pd.DataFrame, cut: pd.Timestamp, seed: int) -> pd.DataFrame:
    future = data["timestamp"] > cut
    rng = np.random.default_rng(seed)
    shock = np.exp(rng.normal(0, 0.2, future.sum()))
    out = data.copy()
    for col in ("open", "high", "low", "close"):
        out.loc[future, col] = out.loc[future, col] * shock
    return out


@pytest.mark.parametrize(("name", "params"), CASES)
def test_future_bars_do_not_change_the_past(name, params):
    data = make_bars(("AAA", "BBB", "CCC", "DDD"), 120, seed=3)
    cut = pd.Timestamp("2020-03-15", tz="UTC")
    cfg = load_config(None, {"costs": {"taker_fee_bps": 5, "slippage_bps": 2}})
    base = run_backtest(cfg, strategy=create(name, params), data=data)
    other = run_backtest(cfg, strategy=create(name, params), data=scramble_after(data, cut, seed=11))

    # equity rows are labelled like their bars, fills by the bar whose price they took
    upto = base.equity["timestamp"] <= cut
    assert upto.sum() > 30
    pd.testing.assert_frame_equal(base.equity[upto], other.equity[upto])
    past_fills = base.trades["timestamp"] <= cut
    assert past_fills.any()
    other_past = other.trades["timestamp"] <= cut
    pd.testing.assert_frame_equal(base.trades[past_fills], other.trades[other_past])
    # the future really was different, so the check above is not vacuous
    assert base.equity["equity"].iloc[-1] != pytest.approx(other.equity["equity"].iloc[-1])
