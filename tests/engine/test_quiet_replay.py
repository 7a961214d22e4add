"""Skipping quiet bars changes nothing: a backtest whose strategy precomputes its decisions gives
the same equity curve, positions, fills and metrics as the same backtest publishing every bar."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import quantnet.backtest as backtest
from connectors.replay import BarMatrix
from engine.events import BarSet
from engine.strategy import Decisions, Strategy, StrategyContext
from quantnet.config import load_config
from strategies.registry import create
from tests.conftest import make_bars


class Planned(Strategy):
    """Targets at given bars, known in advance (as a precomputing strategy declares them)."""

    name = "planned"

    def __init__(self, plan: dict[int, list[float]]) -> None:
        super().__init__()
        self.plan = plan

    def precompute(self, closes: np.ndarray) -> Decisions:
        index = sorted(self.plan)
        return Decisions(np.array(index, dtype=np.int64), np.array([self.plan[i] for i in index]))

    def on_bars(self, bars: BarSet, ctx: StrategyContext) -> np.ndarray | None:
        step = self.plan.get(bars.index)
        return None if step is None else np.array(step, dtype=float)


def both(cfg_over: dict, make_strategy, data: pd.DataFrame, monkeypatch) -> tuple:
    cfg = load_config(None, {"costs": {"taker_fee_bps": 7, "slippage_bps": 3}, **cfg_over})
    calls: list[bool] = []
    real = backtest.replay_quiet

    def spy(*args, **kwargs):
        calls.append(real(*args, **kwargs))
        return calls[-1]

    monkeypatch.setattr(backtest, "replay_quiet", spy)
    quiet = backtest.run_backtest(cfg, strategy=make_strategy(), data=data)
    assert calls == [True]  # the quiet path was taken
    monkeypatch.setattr(backtest, "replay_quiet", lambda *a, **k: False)
    full = backtest.run_backtest(cfg, strategy=make_strategy(), data=data)
    return quiet, full


def assert_same(quiet, full) -> None:
    pd.testing.assert_frame_equal(quiet.equity, full.equity, check_exact=True)
    pd.testing.assert_frame_equal(quiet.positions, full.positions, check_exact=True)
    pd.testing.assert_frame_equal(quiet.trades, full.trades, check_exact=True)
    assert quiet.metrics == pytest.approx(full.metrics, nan_ok=True, rel=0, abs=0)
    assert quiet.settings["force_closed"] == full.settings["force_closed"]


@pytest.mark.parametrize("params", [{"quantity": 3}, {"short": True}, {}])
@pytest.mark.parametrize("symbols", [("A",), ("A", "B", "C")])
def test_sma_crossover_skipping_quiet_bars_equals_every_bar(params, symbols, monkeypatch):
    data = make_bars(symbols, 400, seed=21)
    params = {"fast": 4, "slow": 9, **params}
    quiet, full = both({}, lambda: create("sma_crossover", params), data, monkeypatch)
    assert len(quiet.trades) > 20
    assert_same(quiet, full)


@pytest.mark.parametrize("fill_at", ["next_open", "close"])
def test_holes_delisting_and_warmup_skip_the_same_way(fill_at, monkeypatch):
    """Symbols missing on some bars keep their last price, one ends early (delisted with a
    position), targets decided during warm-up trade on the first bar."""
    data = make_bars(("A", "B", "C"), 120, seed=4)
    data = data.drop(data[(data["symbol"] == "B") & (data.index % 5 == 1)].index)
    data = data.drop(data[(data["symbol"] == "C") & (data["timestamp"] > "2020-03-20")].index)
    plan = {
        3: [0.3, 0.2, 0.4],
        10: [0.3, -0.2, np.nan],
        40: [0.0, 0.25, 0.1],
        41: [0.1, np.nan, np.nan],
        95: [np.nan, 0.0, 0.2],
    }
    over = {"data": {"start": "2020-01-06"}, "execution": {"fill_at": fill_at}}
    quiet, full = both(over, lambda: Planned(plan), data, monkeypatch)
    assert len(quiet.trades) >= 8
    assert quiet.settings["force_closed"]
    assert_same(quiet, full)


def test_precomputed_sma_decisions_equal_the_bar_by_bar_answers():
    data = make_bars(("A", "B"), 300, seed=8)
    matrix = BarMatrix.from_frame(data)
    for params in ({"fast": 3, "slow": 7, "short": True}, {"fast": 10, "slow": 30, "quantity": 5}):
        strategy = create("sma_crossover", params)
        strategy.on_start(matrix.symbols)
        decisions = strategy.precompute(matrix.close)
        assert decisions is not None and len(decisions.index) > 10
        live = create("sma_crossover", params)
        live.on_start(matrix.symbols)
        ctx = StrategyContext(matrix.symbols, 0)
        got: dict[int, np.ndarray] = {}
        for bars in matrix.bar_sets():
            answer = live.on_bars(bars, ctx)
            if answer is not None:
                got[bars.index] = answer
        assert list(got) == decisions.index.tolist()
        np.testing.assert_array_equal(np.array(list(got.values())), decisions.targets)


def test_sma_crossover_with_missing_bars_declares_nothing():
    data = make_bars(("A", "B"), 100, seed=2)
    data = data.drop(index=data.index[7])
    matrix = BarMatrix.from_frame(data)
    strategy = create("sma_crossover", {})
    strategy.on_start(matrix.symbols)
    assert strategy.precompute(matrix.close) is None


def test_another_bar_listener_gets_every_bar():
    """A component listening to bars (here a counter on the bus) sees every one of them."""
    data = make_bars(("A",), 200, seed=3)
    seen: list[int] = []
    original = backtest.assemble

    def wired(*args, **kwargs):
        node = original(*args, **kwargs)
        node.bus.subscribe(BarSet, lambda bars: seen.append(bars.index))
        return node

    cfg = load_config(None, {})
    try:
        backtest.assemble = wired  # type: ignore[assignment]
        result = backtest.run_backtest(cfg, strategy=create("sma_crossover", {"quantity": 1}), data=data)
    finally:
        backtest.assemble = original  # type: ignore[assignment]
    assert seen == list(range(200))
    assert len(result.equity) == 200


def test_a_subclass_changing_on_bars_is_asked_bar_by_bar():
    """A precompute inherited from the class whose on_bars a subclass changed no longer speaks for
    it: the subclass's own answers decide (here: always flat after the first bar, so no trade)."""
    from strategies.baselines import SmaCrossover

    class Contrarian(SmaCrossover):
        def on_bars(self, bars, ctx):  # type: ignore[no-untyped-def]
            out = super().on_bars(bars, ctx)
            return None if out is None else np.zeros_like(out)

    data = make_bars(("A",), 200, seed=3)
    result = backtest.run_backtest(
        load_config(None, {}), strategy=Contrarian(SmaCrossover.Params(fast=3, slow=8)), data=data
    )
    assert len(result.trades) == 0


def test_planned_answers_equal_asking_the_strategy_in_any_order():
    """A host serving precomputed rows answers as the host asking bar by bar: the same targets,
    None for a row that sets nothing, the same running gross of the standing targets (rows with
    and without gaps, past 1: the leverage warning's sum), also when bars are asked again out of
    order (a replay after a restore)."""
    from engine.bus import EventBus
    from engine.clock import ReplayClock
    from engine.strategy import StrategyHost

    nan = float("nan")
    plan = {
        2: [0.5, 0.4, 0.3],
        3: [nan, nan, nan],  # sets nothing: no signal
        5: [0.2, nan, 0.9],
        8: [0.1, 0.7, 0.6],
        9: [-0.3, 0.05, 1e-17],
    }
    data = make_bars(("A", "B", "C"), 12, seed=4)
    matrix = BarMatrix.from_frame(data)
    bars = list(matrix.bar_sets())
    order = [*range(12), 5, 2, 9, 0, 8, 11]

    def host() -> StrategyHost:
        return StrategyHost(Planned(plan), EventBus(), ReplayClock(), matrix.symbols, max_weight=1.0)

    served, asked = host(), host()
    served.use(served.strategy.precompute(matrix.close), matrix.ts_event)
    assert served.planned and not asked.planned
    for t in order:
        got, want = served.decide(bars[t]), asked.decide(bars[t])
        assert (got is None) == (want is None), t
        if want is not None:
            np.testing.assert_array_equal(got, want)
        assert served.max_gross_target == asked.max_gross_target
    assert served.max_gross_target == float(np.add.reduce(np.abs([0.2, 0.4, 0.9])))  # bar 5 on bar 2's
