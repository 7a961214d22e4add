"""QuantNet's precomputed decisions are its bar-by-bar answers to the last bit (markets with and
without bars, a late listing, warm-up, thresholds and caps), so a backtest served from them, the
every-bar batched replay included, trades exactly as one that asks the model on every bar."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import quantnet.backtest as backtest
from connectors.replay import BarMatrix
from engine.strategy import StrategyContext, StrategyError
from models import ModelConfig, QuantNet, markets_from_frame, save_checkpoint
from quantnet.config import load_config
from strategies.registry import create
from tests.conftest import make_bars

MARKET = {"A": "m1", "B": "m1", "C": "m2", "D": "m2", "E": "m2", "F": "m3"}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    markets: dict[str, list[str]] = {}
    for symbol, market in MARKET.items():
        markets.setdefault(market, []).append(symbol)
    path = tmp_path_factory.mktemp("model") / "q.pt"
    daily = make_bars(tuple(MARKET), 100, seed=1)
    known = markets_from_frame(daily.assign(market=daily["symbol"].map(MARKET)))
    save_checkpoint(path, QuantNet(ModelConfig(), markets, seed=1), data=known, periods_per_year=252.0)
    return path


def holed(n: int = 240) -> pd.DataFrame:
    """Daily bars with holes: B misses every 5th bar, market m3 (F) has none for bars 30-39, E lists
    at bar 20."""
    data = make_bars(tuple(MARKET), n, seed=6)
    day = (data["timestamp"] - data["timestamp"].min()).dt.days
    drop = (data["symbol"] == "B") & (day % 5 == 2)
    drop |= (data["symbol"] == "F") & day.between(30, 39)
    drop |= (data["symbol"] == "E") & (day < 20)
    return data[~drop].reset_index(drop=True)


PARAMS = [
    {"min_change": 0.0},
    {"min_change": 0.001, "threshold": 0.02, "max_gross": 0.1, "max_position": 0.02, "warmup": 10},
    {"min_change": 0.0, "vol_target": None, "budget": "market", "warmup": 0},
    {"min_change": 0.0, "max_gross": 0.1, "warmup": 5},  # runs of bars sized at once, scaled down
]


@pytest.mark.parametrize("params", PARAMS)
def test_precomputed_decisions_equal_the_bar_by_bar_answers(model_path, params):
    matrix = BarMatrix.from_frame(holed())
    ahead = create("quantnet", {"model": str(model_path), **params})
    ahead.on_start(matrix.symbols)
    decisions = ahead.precompute(matrix.close)
    live = create("quantnet", {"model": str(model_path), **params})
    live.on_start(matrix.symbols)
    ctx = StrategyContext(matrix.symbols, 0)
    got = {}
    for bars in matrix.bar_sets():
        answer = live.on_bars(bars, ctx)
        if answer is not None:
            got[bars.index] = answer
    assert decisions is not None and len(got) > 30
    assert list(got) == decisions.index.tolist()
    np.testing.assert_array_equal(np.array(list(got.values())), decisions.targets)
    # precomputing leaves the strategy's own state as it was: it still answers bar by bar
    again = create("quantnet", {"model": str(model_path), **params})
    again.on_start(matrix.symbols)
    first = next(iter(matrix.bar_sets()))
    assert again.precompute(matrix.close) is not None
    assert again.stepper.bars_seen == dict.fromkeys(again.stepper.markets, 0)
    again.on_bars(first, ctx)
    assert again.stepper.bars_seen["m1"] == 1


def test_portfolio_vol_is_not_precomputed(model_path):
    matrix = BarMatrix.from_frame(holed(60))
    strategy = create("quantnet", {"model": str(model_path), "portfolio_vol": 0.1})
    strategy.on_start(matrix.symbols)
    assert strategy.precompute(matrix.close) is None


@pytest.mark.parametrize("rebalance", ["every_bar", "on_change"])
def test_backtest_from_precomputed_decisions_equals_asking_every_bar(model_path, rebalance, monkeypatch):
    data = holed()
    cfg = load_config(
        None,
        {"portfolio": {"rebalance": rebalance}, "costs": {"taker_fee_bps": 10, "slippage_bps": 2}},
    )
    params = {"model": str(model_path), "min_change": 0.0}
    fast = backtest.run_backtest(cfg, strategy=create("quantnet", params), data=data)
    monkeypatch.setattr(backtest, "replay_every_bar", lambda *a, **k: False)
    monkeypatch.setattr(backtest, "replay_quiet", lambda *a, **k: False)
    slow = backtest.run_backtest(cfg, strategy=create("quantnet", params), data=data)
    assert len(fast.trades) > 200
    pd.testing.assert_frame_equal(fast.trades, slow.trades, check_exact=True)
    pd.testing.assert_frame_equal(fast.equity, slow.equity, check_exact=True)
    assert fast.settings["max_gross_target"] == slow.settings["max_gross_target"]


def test_bars_of_another_length_are_refused_when_precomputed(model_path):
    hourly = make_bars(tuple(MARKET), 80, seed=4, freq="h")
    cfg = load_config(None, {"portfolio": {"rebalance": "every_bar"}})
    with pytest.raises(StrategyError, match="trained on 1-day bars, this data has 1-hour bars"):
        backtest.run_backtest(cfg, strategy=create("quantnet", {"model": str(model_path)}), data=hourly)


def test_precomputed_decisions_see_no_future_bar(model_path):
    """The look-ahead check (later bars scrambled after each cut) finds no decision that changed:
    the precompute reads each bar's past only, as on_bars does."""
    from quantnet.lookahead import check_lookahead

    cfg = load_config(None, {"portfolio": {"rebalance": "on_change"}})
    report = check_lookahead(
        cfg, lambda: create("quantnet", {"model": str(model_path), "min_change": 0.0}), holed(160), cuts=3
    )
    assert report.decisions > 80
    assert report.change is None
