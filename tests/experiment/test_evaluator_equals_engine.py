"""The vectorised evaluator equals the event engine replaying the same positions (a QuantNet
model's and each baseline's), asset by asset, with market-on-close fills, every-bar rebalancing to
target and the same costs: this guards both paths."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engine.events import BarSet
from engine.strategy import Strategy, StrategyContext
from models import ModelConfig, QuantNet
from models.data import markets_from_frame
from quantnet.backtest import run_backtest
from quantnet.config import load_config
from quantnet.experiment.evaluate import BASELINES, baseline_signals, model_signals, strategy_returns


class Replay(Strategy):
    """Emits a precomputed target for each bar time (NaN: none)."""

    name = "replay"

    def __init__(self, targets: dict[int, float]) -> None:
        super().__init__()
        self.targets = targets

    def on_bars(self, bars: BarSet, ctx: StrategyContext) -> np.ndarray | None:
        t = self.targets.get(bars.ts_event)
        return None if t is None else np.array([t])


def _frame() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    days = pd.bdate_range("2019-01-01", periods=160, tz="UTC")
    rows = []
    for j, sym in enumerate(("AA", "BB", "CC")):
        close = 50.0 * (j + 1) * np.exp(np.cumsum(rng.normal(0.0004, 0.012, len(days))))
        close = close.astype(np.float32).astype(np.float64)  # the engine keeps prices in float32
        keep = np.ones(len(days), bool)
        if sym == "BB":
            keep[rng.random(len(days)) < 0.1] = False  # holidays of its own
        prev = close[0]
        for d, c, k in zip(days, close, keep, strict=True):
            if k:  # opens at the previous close: a next-open fill is a fill at that close
                rows.append((d, sym, prev, max(prev, c), min(prev, c), c, 1000.0, "mk"))
                prev = c
    columns = ["timestamp", "symbol", "open", "high", "low", "close", "volume", "market"]
    return pd.DataFrame(rows, columns=columns)


def _engine_returns(
    frame: pd.DataFrame, sym: str, targets: dict[int, float], cost_bps: float, fill_at: str
) -> np.ndarray:
    cfg = load_config(
        None,
        {
            "execution": {"fill_at": fill_at},
            "costs": {"taker_fee_bps": cost_bps, "maker_fee_bps": cost_bps, "slippage_bps": 0.0},
            "portfolio": {"rebalance": "every_bar", "max_weight": 10.0, "cash": 1e6},
            "engine": {"journal": False},
            "data": {"warmup": False, "timestamps": "close"},  # bar times are the labels
        },
    )
    data = frame[frame["symbol"] == sym].drop(columns="market")
    first = min(targets)
    data = data[data["timestamp"].map(lambda t: t.value) >= first]
    res = run_backtest(cfg, strategy=Replay(targets), data=data.reset_index(drop=True))
    eq = res.equity["equity"].to_numpy()
    return eq[1:] / eq[:-1] - 1.0


@pytest.mark.parametrize("cost_bps", [0.0, 10.0])
@pytest.mark.parametrize("fill_at", ["close", "next_open"])
def test_evaluator_equals_engine(cost_bps, fill_at):
    """``next_open`` runs on data whose opens equal the previous close, where a next-open fill is
    priced like a fill at the decision's close; ``close`` is market-on-close itself."""
    frame = _frame()
    (market,) = markets_from_frame(frame[["timestamp", "symbol", "close", "market"]])
    start = 100
    model = QuantNet(ModelConfig(variant="lstm-linear"), {"mk": market.assets}, seed=0)
    strategies = {"quantnet": model_signals(model.signals, market, start=start, warmup=30)}
    for name in BASELINES:
        strategies[name] = baseline_signals(name, market.returns, lookback=20, start=start)
    stamps = market.index.as_unit("ns").asi8
    for name, signals in strategies.items():
        ev = strategy_returns(signals, market, start=start, cost_bps=cost_bps, turnover="rebalance")
        if cost_bps == 0:
            plain = strategy_returns(signals, market, start=start, cost_bps=0)
            np.testing.assert_array_equal(plain.net, ev.net)
        for j, sym in enumerate(market.assets):
            valid = np.isfinite(market.returns[:, j])
            # the asset's bars from the close before the window; each carries the signal for the
            # return that follows it
            bars = [p for p in range(start - 1, len(market) - 1) if valid[p]]
            targets = {int(stamps[p]): float(signals[p + 1, j]) for p in bars}
            got = _engine_returns(frame, sym, targets, cost_bps, fill_at)
            want = ev.net[:, j][np.isfinite(ev.net[:, j])]
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-9, err_msg=f"{name} {sym}")
