"""The vectorised evaluator and baselines against loops and pandas written from the definitions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.data import Market
from quantnet.experiment.evaluate import baseline_signals, model_signals, strategy_returns


def market(rows: int = 120, n: int = 4, seed: int = 0, holes: float = 0.1) -> Market:
    rng = np.random.default_rng(seed)
    r = rng.normal(0.0005, 0.01, (rows, n))
    r[rng.random((rows, n)) < holes] = np.nan
    r[:30, -1] = np.nan  # listed late
    index = pd.bdate_range("2020-01-01", periods=rows, tz="UTC")
    return Market("m", tuple(f"a{j}" for j in range(n)), index, r)


def reference(signals: np.ndarray, r: np.ndarray, start: int, cost: float) -> tuple[np.ndarray, np.ndarray]:
    """Per asset, bar by bar: hold the signal computed right after the asset's previous bar, if
    that bar is at or after the close before the window; flat before; pay cost·|change|."""
    gross = np.full((len(r) - start, r.shape[1]), np.nan)
    net = gross.copy()
    for j in range(r.shape[1]):
        held = 0.0
        for t in range(start, len(r)):
            if not np.isfinite(r[t, j]):
                continue
            prev_bar = max((p for p in range(t) if np.isfinite(r[p, j])), default=-1)
            h = signals[prev_bar + 1, j] if prev_bar >= start - 1 else 0.0
            gross[t - start, j] = h * r[t, j]
            net[t - start, j] = h * r[t, j] - cost * abs(h - held)
            held = h
    return gross, net


def test_hand_computed_single_asset_with_a_gap():
    r = np.array([[0.01], [0.02], [np.nan], [-0.01], [0.03]])
    s = np.array([[0.0], [0.5], [1.0], [-1.0], [0.25]])
    m = Market("m", ("a",), pd.bdate_range("2021-01-04", periods=5, tz="UTC"), r)
    out = strategy_returns(s, m, start=1, cost_bps=100)
    # row 1: s[1]=0.5 from flat; row 3 (after the gap): s[2]=1.0, decided after row 1's bar;
    # row 4: s[4]=0.25
    np.testing.assert_allclose(out.position[:, 0], [0.5, np.nan, 1.0, 0.25], equal_nan=True)
    np.testing.assert_allclose(out.gross[:, 0], [0.01, np.nan, -0.01, 0.0075], equal_nan=True)
    np.testing.assert_allclose(
        out.net[:, 0], [0.01 - 0.005, np.nan, -0.01 - 0.005, 0.0075 - 0.0075], equal_nan=True
    )


@pytest.mark.parametrize("start", [1, 40, 90])
def test_matches_a_bar_by_bar_loop(start):
    m = market()
    s = np.tanh(np.random.default_rng(1).normal(size=m.returns.shape))
    out = strategy_returns(s, m, start=start, cost_bps=10)
    gross, net = reference(s, m.returns, start, 10e-4)
    np.testing.assert_allclose(out.gross, gross, atol=1e-15, equal_nan=True)
    np.testing.assert_allclose(out.net, net, atol=1e-15, equal_nan=True)


def test_rebalance_turnover_equals_signal_turnover_at_zero_cost_and_tracks_drift():
    m = market(holes=0.0)
    s = np.full(m.returns.shape, 0.5)
    sig = strategy_returns(s, m, start=50, cost_bps=0)
    reb = strategy_returns(s, m, start=50, cost_bps=0, turnover="rebalance")
    np.testing.assert_array_equal(sig.net, reb.net)
    reb = strategy_returns(s, m, start=50, cost_bps=10, turnover="rebalance")
    # a constant half position drifts: the second bar trades h - h(1+r)/(1+h r)
    r0, r1 = m.returns[50, 0], m.returns[51, 0]
    drifted = 0.5 * (1 + r0) / (1 + 0.5 * r0 - 10e-4 * 0.5)
    assert reb.turnover[1, 0] == pytest.approx(abs(0.5 - drifted), abs=1e-15)
    assert reb.net[1, 0] == pytest.approx(0.5 * r1 - 10e-4 * abs(0.5 - drifted), abs=1e-15)


def test_model_signals_are_warmed_up_and_flat_before_start():
    m = market()
    calls = []

    def fn(name, r):
        calls.append(len(r))
        return np.cumsum(np.nan_to_num(r), axis=0)

    out = model_signals(fn, m, start=60, warmup=20)
    assert calls == [len(m) - 39]
    assert (out[:60] == 0).all()
    np.testing.assert_array_equal(out[60:], np.cumsum(np.nan_to_num(m.returns[39:]), axis=0)[21:])


def pandas_baseline(name: str, r: np.ndarray, lookback: int, q: float) -> np.ndarray:
    df = pd.DataFrame(r)
    roll = df.rolling(lookback, min_periods=max(2, lookback // 2))
    mean, std = roll.mean(), roll.std(ddof=1)
    live = mean.notna() & df.notna()
    if name == "ts_momentum":
        sig = np.sign(mean).where(live, 0.0)
    elif name == "risk_parity":
        inv = (1 / std).where(live & (std > 0), 0.0)
        sig = inv.div(inv.sum(axis=1), axis=0).mul((inv > 0).sum(axis=1), axis=0).fillna(0.0)
    else:
        rows = []
        for t in range(len(df)):
            row = pd.Series(0.0, index=df.columns)
            alive = mean.iloc[t][live.iloc[t]].sort_values(kind="stable")
            k = int(np.floor(len(alive) * q + 1e-9))
            if k:
                row[alive.index[-k:]] = 1.0
                row[alive.index[:k]] = -1.0
            rows.append(row)
        sig = pd.DataFrame(rows)
    out = np.zeros_like(r)
    out[1:] = sig.to_numpy()[:-1]  # decided at the close of the row before
    return out


@pytest.mark.parametrize("name", ["ts_momentum", "risk_parity", "cs_momentum"])
def test_baselines_match_pandas(name):
    m = market(rows=200, n=7, seed=3)
    got = baseline_signals(name, m.returns, lookback=40, quantile=0.33, start=1)
    want = pandas_baseline(name, m.returns, 40, 0.33)
    np.testing.assert_allclose(got, want, atol=1e-9)
    later = baseline_signals(name, m.returns, lookback=40, quantile=0.33, start=150)
    np.testing.assert_allclose(later[150:], want[150:], atol=1e-9)
    assert (later[:150] == 0).all()


def test_buy_and_hold_is_one():
    m = market()
    assert (baseline_signals("buy_and_hold", m.returns, start=5)[5:] == 1).all()
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_signals("nope", m.returns)
