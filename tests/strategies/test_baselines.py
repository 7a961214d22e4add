"""Baselines against independent pandas computations of their definitions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from connectors.replay import BarMatrix
from engine.bus import EventBus, replay
from engine.clock import ReplayClock
from engine.events import BarSet, Signal
from engine.strategy import StrategyHost
from strategies.registry import StrategyError, create
from tests.conftest import make_bars


def signals(name: str, params: dict, data: pd.DataFrame) -> tuple[BarMatrix, pd.DataFrame]:
    """Run a strategy alone on the bus; return the targets it held after every bar."""
    matrix = BarMatrix.from_frame(data, timestamps="close")
    bus = EventBus()
    clock = ReplayClock()
    StrategyHost(create(name, params), bus, clock, matrix.symbols)
    held = np.full(len(matrix.symbols), np.nan)
    rows: list[np.ndarray] = []
    got: list[Signal] = []
    bus.subscribe(Signal, got.append)

    def record(_: object) -> None:
        while got:
            sig = got.pop()
            np.copyto(held, sig.targets, where=~np.isnan(sig.targets))
        rows.append(held.copy())

    bus.subscribe(BarSet, record)
    replay(bus, matrix.bar_sets(), clock)
    return matrix, pd.DataFrame(rows, columns=list(matrix.symbols))


@pytest.mark.parametrize("gaps", [False, True])
def test_sma_crossover_matches_rolling_means(gaps):
    data = make_bars(("A", "B", "C"), 200, seed=5)
    if gaps:  # B is missing on some days: its averages run over its own bars only
        data = data.drop(data[(data["symbol"] == "B") & (data.index % 7 == 3)].index)
    matrix, held = signals("sma_crossover", {"fast": 5, "slow": 15, "target": 0.3, "short": True}, data)
    for sym in matrix.symbols:
        closes = data[data["symbol"] == sym].set_index("timestamp")["close"]
        fast, slow = closes.rolling(5).mean(), closes.rolling(15).mean()
        expected = np.where(fast > slow, 0.3, -0.3)
        expected[:14] = np.nan
        got = held[sym].to_numpy()[np.isin(matrix.ts_event, closes.index.as_unit("ns").asi8)]
        np.testing.assert_array_equal(got, expected)


def test_cs_momentum_ranks_by_mean_return():
    data = make_bars(("A", "B", "C", "D", "E", "F"), 80, seed=9)
    _, held = signals("cs_momentum", {"lookback": 20, "rebalance_every": 10, "quantile": 0.34}, data)
    closes = data.pivot(index="timestamp", columns="symbol", values="close")
    bar = 20 + 10 * 3  # a rebalance bar: decided on returns of the 20 bars up to it
    mean = closes.pct_change().iloc[bar - 19 : bar + 1].mean()
    order = mean.sort_values().index
    row = held.iloc[bar]
    each = 1 / 6 * 6 / (2 * 2)
    assert set(row[row > 0].index) == set(order[-2:]) and set(row[row < 0].index) == set(order[:2])
    assert row[order[-1]] == pytest.approx(each) and row[order[0]] == pytest.approx(-each)
    assert row.sum() == pytest.approx(0.0)


def test_risk_parity_is_inverse_volatility():
    data = make_bars(("A", "B", "C"), 60, seed=2)
    _, held = signals("risk_parity", {"lookback": 30, "rebalance_every": 100}, data)
    closes = data.pivot(index="timestamp", columns="symbol", values="close")
    vol = closes.pct_change().iloc[1:31].std()
    expected = (1 / vol) / (1 / vol).sum()
    pd.testing.assert_series_equal(held.iloc[30], expected, check_names=False, atol=1e-12)


def test_ts_momentum_is_sign_of_mean_return():
    data = make_bars(("A", "B", "C", "D"), 60, seed=4)
    _, held = signals("ts_momentum", {"lookback": 25, "rebalance_every": 100}, data)
    closes = data.pivot(index="timestamp", columns="symbol", values="close")
    expected = np.sign(closes.pct_change().iloc[1:26].mean()) / 4
    pd.testing.assert_series_equal(held.iloc[25], expected, check_names=False)


def test_unknown_parameter_is_refused():
    with pytest.raises(StrategyError, match=r"strategy risk_parity: unknown parameter 'lookbak'"):
        create("risk_parity", {"lookbak": 3})


def test_sma_crossover_with_a_quantity_trades_units_at_the_next_open():
    """``quantity`` holds a fixed number of units (not a weight) whatever equity does: every fill
    is that many units at the next bar's open, and the final equity is the hand-booked one."""
    from quantnet.backtest import run_backtest
    from quantnet.config import load_config

    data = make_bars(("A", "B"), 300, seed=11)
    cfg = load_config(
        None,
        {
            "portfolio": {"cash": 50_000},
            "costs": {"taker_fee_bps": 10, "slippage_bps": 0},
            "data": {"timestamps": "close"},
        },
    )
    result = run_backtest(
        cfg, strategy=create("sma_crossover", {"fast": 5, "slow": 20, "quantity": 3}), data=data
    )
    cash, final, expected = 50_000.0, 0.0, []
    for sym in ("A", "B"):
        rows = data[data["symbol"] == sym].reset_index(drop=True)
        close, opn = rows["close"], rows["open"].to_numpy()
        want = np.where(close.rolling(5).mean() > close.rolling(20).mean(), 3.0, 0.0)
        held = 0.0
        for t in range(19, len(rows) - 1):
            if want[t] != held:
                side = 1.0 if want[t] > held else -1.0
                price = opn[t + 1]
                cash -= side * 3.0 * price + 3.0 * price * 0.001
                held = want[t]
                expected.append((rows["timestamp"][t + 1], sym, "buy" if side > 0 else "sell", price))
        final += held * close.iloc[-1]
    trades = result.trades
    assert len(trades) > 10
    assert (trades["quantity"] == 3.0).all()
    got = sorted(zip(trades["timestamp"], trades["symbol"], trades["side"], trades["price"], strict=True))
    assert got == sorted(expected)
    assert result.equity["equity"].iloc[-1] == pytest.approx(cash + final, rel=1e-12)


def test_sma_crossover_refuses_a_target_and_a_quantity():
    with pytest.raises(StrategyError, match="not both"):
        create("sma_crossover", {"target": 0.5, "quantity": 3})
