"""The batched every-bar replay (quantnet.every_bar) changes nothing: with every asset re-targeted on
every bar, costs, holes in the data and drawdown/daily-loss limits that halt and restrict trading,
it gives the same fills, equity curve, positions, metrics, risk events and journal records, to
the last bit, as the same backtest publishing every order, fill and update on the bus."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import quantnet.backtest as backtest
from engine.events import BarSet
from engine.journal import read_journal
from engine.strategy import Decisions, Strategy, StrategyContext
from quantnet import every_bar
from quantnet.config import load_config
from tests.conftest import make_bars


class Dense(Strategy):
    """New random target weights for every asset on every bar (NaN now and then: no change),
    precomputed or bar by bar."""

    name = "dense"

    def __init__(self, n_bars: int, n_assets: int, *, seed: int = 0, precompute: bool = True) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        self.plan = rng.uniform(-0.45, 0.45, (n_bars, n_assets))
        self.plan[rng.random((n_bars, n_assets)) < 0.05] = np.nan
        self.plan[::17] = np.nan  # bars without a signal: the standing targets are traded again
        self._precompute = precompute

    def precompute(self, closes: np.ndarray) -> Decisions | None:
        if not self._precompute:
            return None
        index = np.flatnonzero(~np.isnan(self.plan).all(axis=1))
        return Decisions(index, self.plan[index])

    def on_bars(self, bars: BarSet, ctx: StrategyContext) -> np.ndarray | None:
        row = self.plan[bars.index]
        return None if np.isnan(row).all() else row.copy()


def run_both(cfg_over: dict, make_strategy, data: pd.DataFrame, tmp_path, monkeypatch) -> tuple:
    cfg = load_config(
        None,
        {
            "costs": {"taker_fee_bps": 7, "slippage_bps": 3},
            **cfg_over,
            "portfolio": {"rebalance": "every_bar", **cfg_over.get("portfolio", {})},
        },
    )
    taken: list[bool] = []
    real = every_bar.replay_every_bar

    def spy(*args, **kwargs):
        taken.append(real(*args, **kwargs))
        return taken[-1]

    monkeypatch.setattr(backtest, "replay_every_bar", spy)
    fast = backtest.run_backtest(cfg, strategy=make_strategy(), data=data, journal_path=tmp_path / "fast.db")
    monkeypatch.setattr(backtest, "replay_every_bar", lambda *a, **k: False)
    slow = backtest.run_backtest(cfg, strategy=make_strategy(), data=data, journal_path=tmp_path / "slow.db")
    return (
        taken,
        fast,
        slow,
        list(read_journal(tmp_path / "fast.db")),
        list(read_journal(tmp_path / "slow.db")),
    )


def assert_same(fast, slow, fast_journal, slow_journal) -> None:
    pd.testing.assert_frame_equal(fast.trades, slow.trades, check_exact=True)
    pd.testing.assert_frame_equal(fast.equity, slow.equity, check_exact=True)
    pd.testing.assert_frame_equal(fast.positions, slow.positions, check_exact=True)
    assert fast.metrics == pytest.approx(slow.metrics, nan_ok=True, rel=0, abs=0)
    assert fast.risk_events == slow.risk_events
    assert fast.settings["open_orders"] == slow.settings["open_orders"]
    assert fast.settings["max_gross_target"] == slow.settings["max_gross_target"]
    assert fast.settings["trading_state"] == slow.settings["trading_state"]
    assert len(fast_journal) == len(slow_journal)
    assert fast_journal == slow_journal  # every order, update, fill, position change, risk event


def holed(symbols: tuple[str, ...], n: int, seed: int) -> pd.DataFrame:
    """Random walks with one symbol missing every 7th bar and one listing late."""
    data = make_bars(symbols, n, seed=seed)
    data = data.drop(data[(data["symbol"] == symbols[1]) & (data.index % 7 == 3)].index)
    late = data["timestamp"] < data["timestamp"].iloc[0] + pd.Timedelta(days=10)
    return data.drop(data[(data["symbol"] == symbols[-1]) & late].index).reset_index(drop=True)


@pytest.mark.parametrize("fill_at", ["next_open", "close"])
@pytest.mark.parametrize("precompute", [True, False])
def test_batched_every_bar_equals_the_event_path(fill_at, precompute, tmp_path, monkeypatch):
    symbols = ("A", "B", "C", "D", "E")
    data = holed(symbols, 260, seed=5)
    over = {"execution": {"fill_at": fill_at}, "costs": {"taker_fee_bps": 7, "slippage_bps": 3}}
    taken, fast, slow, fj, sj = run_both(
        over, lambda: Dense(260, 5, seed=1, precompute=precompute), data, tmp_path, monkeypatch
    )
    assert taken == [True]
    assert len(fast.trades) > 900  # about one fill per asset and bar
    assert {r["event"] for r in fj} == {"Order", "OrderUpdate", "Fill", "PositionUpdate"}
    assert_same(fast, slow, fj, sj)


@pytest.mark.parametrize("fill_at", ["next_open", "close"])
def test_drawdown_halt_and_daily_loss_limits_give_the_same_run(fill_at, tmp_path, monkeypatch):
    """The daily-loss limit restricts trading to reductions on some days and the drawdown limit
    halts and flattens mid-run: those bars go through the bus, the others are batched, and the
    whole run matches the event path, its risk events and journal included."""
    symbols = ("A", "B", "C", "D")
    data = make_bars(symbols, 300, seed=11)
    over = {
        "execution": {"fill_at": fill_at},
        "risk": {"max_daily_loss": 0.012, "max_drawdown": 0.12},
    }
    taken, fast, slow, fj, sj = run_both(over, lambda: Dense(300, 4, seed=2), data, tmp_path, monkeypatch)
    assert taken == [True]
    rules = {e["rule"] for e in fast.risk_events}
    assert {"daily_loss", "daily_loss_reset", "max_drawdown"} <= rules
    assert fast.settings["trading_state"] == "halted"
    assert any(r["event"] == "RiskEvent" for r in fj)
    assert_same(fast, slow, fj, sj)


@pytest.mark.parametrize("fill_at", ["next_open", "close"])
def test_warm_up_targets_and_a_delisting_go_through_the_bus_the_same_way(fill_at, tmp_path, monkeypatch):
    """Targets decided during the warm-up before ``start`` stand for the first bar; a symbol whose
    data ends early is delisted with its position (later orders for it would be refused)."""

    class Windowed(Dense):
        window = 6  # warm-up bars before the start

    data = make_bars(("A", "B", "C", "D"), 200, seed=12)
    ends = data["timestamp"] > data["timestamp"].iloc[0] + pd.Timedelta(days=150)
    data = data.drop(data[(data["symbol"] == "C") & ends].index).reset_index(drop=True)
    over = {"execution": {"fill_at": fill_at}, "data": {"start": "2020-01-20"}}
    taken, fast, slow, fj, sj = run_both(over, lambda: Windowed(200, 4, seed=6), data, tmp_path, monkeypatch)
    assert taken == [True]
    assert fast.settings["warmup_bars"] == 6
    assert [c["symbol"] for c in fast.settings["force_closed"]] == ["C"]
    assert fast.settings["force_closed"] == slow.settings["force_closed"]
    assert_same(fast, slow, fj, sj)


def test_units_targets_and_leverage_with_borrowing(tmp_path, monkeypatch):
    """Targets in units, and weights summing past 1 (negative cash paying interest)."""

    class Units(Dense):
        units = True

        def __init__(self) -> None:
            super().__init__(200, 3, seed=3)
            self.plan = np.round(self.plan * 40)

    data = make_bars(("A", "B", "C"), 200, seed=9)
    over = {"costs": {"taker_fee_bps": 7, "slippage_bps": 3, "borrow_rate": 0.05}}
    taken, fast, slow, fj, sj = run_both(over, Units, data, tmp_path, monkeypatch)
    assert taken == [True]
    assert len(fast.trades) > 300
    assert_same(fast, slow, fj, sj)

    taken, fast, slow, fj, sj = run_both(
        {"costs": {"borrow_rate": 0.08}, "portfolio": {"max_weight": 1.0}},
        lambda: _Levered(200, 3),
        data,
        tmp_path / "lev",
        monkeypatch,
    )
    assert taken == [True]
    assert (fast.equity["cash"] < 0).any() and fast.metrics["borrow_cost"] > 0
    assert_same(fast, slow, fj, sj)


class _Levered(Dense):
    def __init__(self, n_bars: int, n_assets: int) -> None:
        super().__init__(n_bars, n_assets, seed=4)
        self.plan = np.abs(self.plan) + 0.3  # three assets at 0.3-0.75 each: gross up to 2.25


def test_exits_or_other_listeners_keep_the_event_path(tmp_path, monkeypatch):
    """A stop-loss (resting exit orders the risk manager keeps in step with every fill) is not
    batched: the replay declines and the event path gives the run."""
    data = make_bars(("A", "B", "C"), 120, seed=2)
    over = {"risk": {"stop_loss": 0.02, "max_drawdown": 0.3}}
    taken, fast, slow, fj, sj = run_both(over, lambda: Dense(120, 3), data, tmp_path, monkeypatch)
    assert taken == [False]
    assert any(r["event"] == "Order" and r["strategy"] == "risk" for r in fj)
    assert_same(fast, slow, fj, sj)
