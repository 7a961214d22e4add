"""A target for a symbol that has no price yet is kept and trades on the symbol's first bar, as if
decided then (the order manager cannot size it before; it used to drop it for good)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engine.events import BarSet
from engine.strategy import Strategy, StrategyContext
from quantnet.backtest import run_backtest
from quantnet.config import load_config
from strategies.registry import create
from tests.conftest import Scripted, make_bars

FEE, SLIP = 10e-4, 5e-4
LISTS = 30


class Constant(Strategy):
    """0.3 of equity in every symbol, said on every bar."""

    name = "constant"

    def on_bars(self, bars: BarSet, ctx: StrategyContext) -> np.ndarray | None:
        return np.full(len(ctx.symbols), 0.3)


def listing_late() -> pd.DataFrame:
    data = make_bars(("A", "B"), 60, seed=3)
    late = (data["symbol"] == "B") & (data["timestamp"] < data["timestamp"].min() + pd.Timedelta(days=LISTS))
    return data[~late].reset_index(drop=True)


def config(**data: object):
    costs = {"taker_fee_bps": FEE * 1e4, "maker_fee_bps": 0, "slippage_bps": SLIP * 1e4}
    return load_config(None, {"costs": costs, "data": data, "portfolio": {"cash": 100_000}})


@pytest.mark.parametrize("strategy", [Constant(), Scripted({0: [0.3, 0.3]})], ids=["every-bar", "once"])
def test_a_symbol_listing_later_is_bought_on_its_first_bar(strategy):
    data = listing_late()
    result = run_backtest(config(), strategy=strategy, data=data)
    a = data[data["symbol"] == "A"].reset_index(drop=True)
    b = data[data["symbol"] == "B"].reset_index(drop=True)
    # A: decided at bar 0's close, bought at bar 1's open
    a_price = a["open"][1] * (1 + SLIP)
    a_qty = 0.3 * 100_000 / a["close"][0]
    cash = 100_000 - a_qty * a_price * (1 + FEE)
    # B: its first bar is bar 30; sized at its close with bar 30's equity, bought at bar 31's open
    equity_30 = cash + a_qty * a["close"][LISTS]
    b_qty = 0.3 * equity_30 / b["close"][0]
    buys = result.trades[result.trades["side"] == "buy"].set_index("symbol")
    assert list(result.trades["symbol"]) == ["A", "B"]
    assert buys.loc["A", "quantity"] == pytest.approx(a_qty, rel=1e-12)
    assert buys.loc["B", "quantity"] == pytest.approx(b_qty, rel=1e-12)
    assert buys.loc["B", "price"] == pytest.approx(b["open"][1] * (1 + SLIP), rel=1e-12)
    final = cash - b_qty * b["open"][1] * (1 + SLIP) * (1 + FEE) + a_qty * a["close"].iloc[-1]
    final += b_qty * b["close"].iloc[-1]
    assert result.metrics["final_equity"] == pytest.approx(final, rel=1e-12)


def test_a_warm_up_target_for_a_symbol_without_a_bar_on_the_start_day_is_kept():
    days = pd.date_range("2020-01-01", periods=80, freq="D", tz="UTC")
    rising = 100.0 + np.arange(80)
    rows = pd.DataFrame(
        {
            "timestamp": np.r_[days, days],
            "symbol": ["A"] * 80 + ["B"] * 80,
            "open": np.r_[rising, 2 * rising],
            "close": np.r_[rising, 2 * rising],
            "volume": 1.0,
        }
    )
    rows["high"], rows["low"] = rows["close"] + 1, rows["open"] - 1
    start = days[40]
    data = rows[~((rows["symbol"] == "B") & (rows["timestamp"] == start))]  # B: no bar on the start day
    cfg = config(start=str(start.date()))
    result = run_backtest(
        cfg, strategy=create("sma_crossover", {"fast": 3, "slow": 10, "target": 0.4}), data=data
    )
    fills = result.trades.set_index("symbol")
    assert sorted(fills.index) == ["A", "B"]  # both rise: the warm-up says long both
    # A trades from the start day's close, B from its first bar after it (the day after), each at
    # the next bar's open
    assert fills.loc["A", "price"] == pytest.approx(rising[41] * (1 + SLIP))
    assert fills.loc["B", "price"] == pytest.approx(2 * rising[42] * (1 + SLIP))
