"""The report's metrics (benchmark, rolling, calendar, drawdown periods) against independent
computations: OLS by numpy.polyfit, loops over the statistics module, calendars grouped by hand."""

from __future__ import annotations

import math
import statistics
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.metrics import (
    benchmark_stats,
    buy_and_hold,
    calendar_returns,
    drawdown_periods,
    equity_returns,
    rolling_stats,
)


def test_benchmark_stats_are_ols_and_active_return_ratios() -> None:
    rng = np.random.default_rng(7)
    b = rng.normal(0.0004, 0.01, 500)
    r = 0.0002 + 0.6 * b + rng.normal(0, 0.004, 500)
    got = benchmark_stats(r, b, 252)
    slope, intercept = np.polyfit(b, r, 1)
    assert got["beta"] == pytest.approx(slope, rel=1e-9)
    assert got["alpha"] == pytest.approx(intercept * 252, rel=1e-9)
    assert got["correlation"] == pytest.approx(statistics.correlation(list(r), list(b)), rel=1e-9)
    active = [x - y for x, y in zip(r, b, strict=True)]
    te = statistics.stdev(active) * math.sqrt(252)
    assert got["tracking_error"] == pytest.approx(te, rel=1e-9)
    assert got["information_ratio"] == pytest.approx(statistics.fmean(active) * 252 / te, rel=1e-9)
    assert 0.5 < got["beta"] < 0.7  # the slope the data was built with


def test_benchmark_stats_degenerate() -> None:
    same = benchmark_stats([0.01, -0.02, 0.03], [0.01, -0.02, 0.03], 252)
    assert same["beta"] == pytest.approx(1.0) and same["alpha"] == pytest.approx(0.0, abs=1e-12)
    assert same["tracking_error"] == 0.0 and math.isnan(same["information_ratio"])
    flat = benchmark_stats([0.01, -0.02, 0.03], [0.0, 0.0, 0.0], 252)
    assert math.isnan(flat["beta"]) and math.isnan(flat["alpha"]) and flat["tracking_error"] > 0
    assert all(math.isnan(v) for v in benchmark_stats([0.01], [0.02], 252).values())
    nan_dropped = benchmark_stats([np.nan, 0.01, -0.02, 0.03], [0.5, 0.01, -0.02, 0.03], 252)
    assert nan_dropped["tracking_error"] == 0.0
    with pytest.raises(ValueError, match="equal length"):
        benchmark_stats([0.1, 0.2], [0.1], 252)


def test_buy_and_hold_equal_weight_with_a_late_listing_and_a_gap() -> None:
    closes = np.array(
        [
            [10.0, np.nan],
            [11.0, np.nan],
            [12.0, 50.0],
            [np.nan, 55.0],  # first asset has no bar: keeps 12
            [9.0, 45.0],
        ]
    )
    # half the capital in each; the second half waits in cash until 50
    want = [1.0, (1.1 + 1) / 2, (1.2 + 1) / 2, (1.2 + 1.1) / 2, (0.9 + 0.9) / 2]
    assert buy_and_hold(closes) == pytest.approx(want, rel=1e-12)
    assert buy_and_hold(closes[:, 0]) == pytest.approx([1.0, 1.1, 1.2, 1.2, 0.9], rel=1e-12)


def test_rolling_stats_match_a_loop() -> None:
    rng = np.random.default_rng(1)
    r = rng.normal(0.001, 0.02, 120)
    r[50] = np.nan
    sharpe, vol = rolling_stats(r, 20, 365)
    for t in range(len(r)):
        window = r[max(0, t - 19) : t + 1]
        if t < 19 or np.isnan(window).any():
            assert math.isnan(sharpe[t]) and math.isnan(vol[t]), t
            continue
        sd = statistics.stdev(window)
        assert vol[t] == pytest.approx(sd * math.sqrt(365), rel=1e-9)
        assert sharpe[t] == pytest.approx(statistics.fmean(window) / sd * math.sqrt(365), rel=1e-9)
    flat_sharpe, flat_vol = rolling_stats(np.zeros(30), 10, 252)
    assert np.isnan(flat_sharpe).all() and (flat_vol[9:] == 0).all()
    with pytest.raises(ValueError, match="at least 2"):
        rolling_stats(r, 1, 252)


def _by_hand_periods(stamps: list[datetime], equity: list[float], key) -> dict:
    last: dict = {}
    for t, e in zip(stamps, equity, strict=True):
        last[key(t)] = e  # the period's last value
    out, prev = {}, equity[0]
    for k in sorted(last):
        out[k] = last[k] / prev - 1
        prev = last[k]
    return out


def test_calendar_returns_match_grouping_by_hand() -> None:
    rng = np.random.default_rng(5)
    index = pd.date_range("2019-12-30 12:00", periods=900, freq="7h", tz="UTC")
    equity = 100 * np.cumprod(1 + rng.normal(0, 0.01, len(index)))
    got = calendar_returns(index, equity)
    stamps = [t.to_pydatetime() for t in index]
    for name, key, fmt in (
        ("daily", lambda t: (t.year, t.month, t.day), "%Y-%m-%d"),
        ("monthly", lambda t: (t.year, t.month), "%Y-%m"),
        ("yearly", lambda t: t.year, "%Y"),
    ):
        want = _by_hand_periods(stamps, list(equity), key)
        series = got[name]
        assert len(series) == len(want), name
        assert series.to_numpy() == pytest.approx(list(want.values()), rel=1e-12), name
        unit = {"daily": "day", "monthly": "month", "yearly": "year"}[name]
        best_key = max(want, key=want.get)
        assert got["best"][unit][1] == pytest.approx(want[best_key], rel=1e-12)
        assert got["worst"][unit][1] == pytest.approx(min(want.values()), rel=1e-12)
        label = datetime(*(best_key if isinstance(best_key, tuple) else (best_key,)), *([1] * 3))
        assert got["best"][unit][0] == label.replace(tzinfo=UTC).strftime(fmt)[: len(got["best"][unit][0])]
    # the months compound to the years and the years to the whole
    assert np.prod(1 + got["yearly"].to_numpy()) == pytest.approx(equity[-1] / equity[0], rel=1e-12)
    empty = calendar_returns(np.array([], dtype=np.int64), np.array([]))
    assert empty["best"]["month"] is None and len(empty["monthly"]) == 0


def _drawdowns_by_loop(equity: list[float]) -> list[tuple[int, int, int | None, float]]:
    out, peak_i, in_dd, trough_i = [], 0, False, 0
    for i, e in enumerate(equity):
        if e >= equity[peak_i]:
            if in_dd:
                out.append((peak_i, trough_i, i, 1 - equity[trough_i] / equity[peak_i]))
                in_dd = False
            peak_i = i
        else:
            if not in_dd or e < equity[trough_i]:
                trough_i = i if (not in_dd or e < equity[trough_i]) else trough_i
            in_dd = True
    if in_dd:
        out.append((peak_i, trough_i, None, 1 - equity[trough_i] / equity[peak_i]))
    return sorted(out, key=lambda d: -d[3])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-0.2, 0.2), min_size=1, max_size=80))
def test_drawdown_periods_match_a_loop(returns: list[float]) -> None:
    equity = list(100 * np.cumprod(1 + np.array(returns)))
    index = pd.date_range("2020-01-01", periods=len(equity), freq="D", tz="UTC")
    got = drawdown_periods(index.as_unit("ns").asi8, np.array(equity), top=5)
    every = _drawdowns_by_loop(equity)
    want = every[:5]
    assert [round(d["depth"], 12) for d in got] == [round(w[3], 12) for w in want]
    depths = [round(w[3], 12) for w in every]
    for d, (s, t, e, depth) in zip(got, want, strict=True):
        if depths.count(round(depth, 12)) > 1:
            continue  # ties: any of the equal drawdowns may come first
        assert (d["start"], d["trough"]) == (index[s], index[t])
        assert d["recovery"] == (index[e] if e is not None else None)
        assert d["bars"] == (e if e is not None else len(equity) - 1) - s
        assert d["days"] == d["bars"]  # daily bars


def test_drawdown_periods_worked_example() -> None:
    equity = np.array([100, 120, 90, 110, 125, 100, 80, 130, 120.0])
    index = pd.date_range("2021-01-01", periods=len(equity), freq="D", tz="UTC")
    got = drawdown_periods(index.as_unit("ns").asi8, equity)
    assert [round(d["depth"], 12) for d in got] == [round(1 - 80 / 125, 12), 0.25, round(1 - 120 / 130, 12)]
    first = got[0]
    assert (first["start"], first["trough"], first["recovery"]) == (index[4], index[6], index[7])
    assert (first["bars"], first["trough_bars"], first["recovery_bars"]) == (3, 2, 1)
    assert got[2]["recovery"] is None and got[2]["bars"] == 1
    assert drawdown_periods(index[:2], np.array([1.0, 2.0])) == []


def test_equity_returns() -> None:
    assert equity_returns(np.array([100.0, 110.0, 0.0, 5.0]))[:2] == pytest.approx([0.1, -1.0])
    assert math.isnan(equity_returns(np.array([100.0, 110.0, 0.0, 5.0]))[2])
    assert len(equity_returns(np.array([1.0]))) == 0
