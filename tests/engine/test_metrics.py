"""Metrics against figures recomputed here by other means (loops, ``statistics``), and annualisation."""

from __future__ import annotations

import itertools
import math
import statistics

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.metrics import backtest_metrics, performance, periods_per_year

DAY_NS = 86_400 * 10**9

# A hand-made equity path: up 10%, down 10%, up 10%, up 10%, down 20%, up 10%.
EQUITY = [100.0, 110.0, 99.0, 108.9, 119.79, 95.832, 105.4152]
RETURNS = [0.10, -0.10, 0.10, 0.10, -0.20, 0.10]


def ns(index: pd.DatetimeIndex) -> np.ndarray:
    return index.as_unit("ns").asi8


def by_hand(returns: list[float], ppy: float) -> dict[str, float]:
    """The definitions, written out with loops and the statistics module."""
    mean = statistics.fmean(returns)
    sd = statistics.stdev(returns)
    downside = math.sqrt(sum(min(r, 0.0) ** 2 for r in returns) / len(returns))
    value, peak, worst = 1.0, 1.0, 0.0
    for r in returns:
        value *= 1 + r
        peak = max(peak, value)
        worst = max(worst, (peak - value) / peak)
    return {
        "annual_return": mean * ppy,
        "sharpe": mean / sd * math.sqrt(ppy),
        "sortino": mean * ppy / (downside * math.sqrt(ppy)),
        "max_drawdown": worst,
        "calmar": mean * ppy / worst,
        "cagr": value ** (ppy / len(returns)) - 1,
    }


def test_returns_of_the_equity_path() -> None:
    got = [b / a - 1 for a, b in itertools.pairwise(EQUITY)]
    assert got == pytest.approx(RETURNS, abs=1e-12)


def test_performance_matches_hand_computation() -> None:
    m = performance(np.array(RETURNS), 252)
    ref = by_hand(RETURNS, 252)
    for key, value in ref.items():
        assert m[key] == pytest.approx(value, rel=1e-12), key
    # Drawdown worked out on paper: peak 119.79 (after 4 periods), trough 95.832 → exactly 20%.
    assert m["max_drawdown"] == pytest.approx(0.20, abs=1e-12)
    # Sum of returns 0.1 over 6 periods; squared negatives 0.01 + 0.04 over 6 periods.
    assert m["annual_return"] == pytest.approx(0.1 / 6 * 252)
    assert m["downside_risk"] == pytest.approx(math.sqrt(0.05 / 6) * math.sqrt(252))
    assert m["calmar"] == pytest.approx(0.1 / 6 * 252 / 0.20)
    assert m["annual_volatility"] == pytest.approx(statistics.stdev(RETURNS) * math.sqrt(252))


def test_skewness_and_excess_kurtosis() -> None:
    r = [0.01, 0.02, -0.03, 0.05, 0.0, -0.01, 0.04]
    mu = sum(r) / len(r)
    m2 = sum((x - mu) ** 2 for x in r) / len(r)
    m3 = sum((x - mu) ** 3 for x in r) / len(r)
    m4 = sum((x - mu) ** 4 for x in r) / len(r)
    m = performance(np.array(r), 252)
    assert m["skewness"] == pytest.approx(m3 / m2**1.5)
    assert m["kurtosis"] == pytest.approx(m4 / m2**2 - 3)
    normal = np.random.default_rng(1).normal(0, 0.01, 200_000)
    big = performance(normal, 252)
    assert abs(big["skewness"]) < 0.02 and abs(big["kurtosis"]) < 0.05


def test_degenerate_series_give_nan_not_errors() -> None:
    empty = performance(np.array([]), 252)
    assert all(math.isnan(v) for v in empty.values())
    assert all(math.isnan(v) for v in performance(np.array([np.nan, np.nan]), 252).values())
    flat = performance(np.full(50, 0.001), 252)
    assert math.isnan(flat["sharpe"]) and math.isnan(flat["skewness"]) and math.isnan(flat["kurtosis"])
    assert flat["annual_volatility"] == 0.0 and flat["max_drawdown"] == 0.0
    assert math.isnan(flat["sortino"]) and math.isnan(flat["calmar"])
    zero = performance(np.zeros(10), 252)
    assert zero["annual_return"] == 0.0 and math.isnan(zero["sharpe"])
    one = performance(np.array([0.05]), 252)
    assert math.isnan(one["annual_volatility"]) and one["annual_return"] == pytest.approx(0.05 * 252)
    wiped = performance(np.array([0.1, -1.0, 0.0]), 252)
    assert wiped["cagr"] == -1.0 and wiped["max_drawdown"] == pytest.approx(1.0)
    for m in (empty, flat, zero, one, wiped):
        assert not any(math.isinf(v) for v in m.values())


def test_nan_entries_are_dropped_as_missing() -> None:
    padded = np.array([np.nan, np.nan, *RETURNS, np.inf])
    assert performance(padded, 252) == pytest.approx(performance(np.array(RETURNS), 252))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-0.5, 0.5), min_size=3, max_size=60), st.floats(0.1, 10.0))
def test_properties(returns: list[float], scale: float) -> None:
    m = performance(np.array(returns), 252)
    assert 0.0 <= m["max_drawdown"] <= 1.0
    assert m["downside_risk"] >= 0.0
    if not math.isnan(m["sharpe"]):
        # Sharpe does not change when every return is scaled by a positive constant.
        scaled = performance(np.array(returns) * min(scale, 1.0), 252)
        assert scaled["sharpe"] == pytest.approx(m["sharpe"], rel=1e-6, abs=1e-9)


def test_backtest_metrics_on_the_hand_made_path() -> None:
    times = ns(pd.bdate_range("2021-01-04", periods=len(EQUITY), tz="UTC"))
    gross = np.array([0.0, 110.0, 0.0, 54.45, 119.79, 0.0, 52.7076])
    pnls = [5.0, -2.0, 3.0, 0.0, -1.0]
    m = backtest_metrics(
        times,
        np.array(EQUITY),
        gross,
        trade_pnls=pnls,
        turnover_notional=700.0,
        n_fills=9,
        periods_per_year=252,
    )
    ref = by_hand(RETURNS, 252)
    for key in ("sharpe", "sortino", "calmar", "max_drawdown"):
        assert m[key] == pytest.approx(ref[key], rel=1e-9), key
    assert m["total_return"] == pytest.approx(105.4152 / 100 - 1)
    assert m["final_equity"] == 105.4152
    assert m["win_rate"] == pytest.approx(2 / 5)  # 5 and 3 win; the break-even trade does not
    assert m["profit_factor"] == pytest.approx((5 + 3) / (2 + 1))
    assert m["n_trades"] == 5 and m["n_fills"] == 9 and m["n_periods"] == 6
    mean_equity = sum(EQUITY) / len(EQUITY)
    assert m["turnover"] == pytest.approx(700.0 / mean_equity * 252 / 6)
    assert m["exposure"] == pytest.approx((0 + 1 + 0 + 0.5 + 1 + 0 + 0.5) / 7)
    assert m["time_in_market"] == pytest.approx(4 / 7)
    assert m["years"] == pytest.approx(8 / 365.25)  # Mon 4 Jan .. Tue 12 Jan 2021


def test_backtest_metrics_without_trades_or_bars() -> None:
    times = ns(pd.date_range("2021-01-01", periods=3, tz="UTC"))
    flat = backtest_metrics(
        times,
        np.full(3, 1000.0),
        np.zeros(3),
        trade_pnls=[],
        turnover_notional=0.0,
        n_fills=0,
        periods_per_year=365,
    )
    assert flat["total_return"] == 0.0 and flat["turnover"] == 0.0 and flat["exposure"] == 0.0
    assert math.isnan(flat["win_rate"]) and math.isnan(flat["profit_factor"]) and math.isnan(flat["sharpe"])
    only_wins = backtest_metrics(
        times,
        np.full(3, 1.0),
        np.zeros(3),
        trade_pnls=[1.0],
        turnover_notional=0,
        n_fills=2,
        periods_per_year=1,
    )
    assert only_wins["win_rate"] == 1.0 and math.isnan(only_wins["profit_factor"])
    empty = backtest_metrics(
        np.array([], dtype=np.int64),
        np.array([]),
        np.array([]),
        trade_pnls=[],
        turnover_notional=0.0,
        n_fills=0,
        periods_per_year=252,
    )
    assert math.isnan(empty["final_equity"]) and math.isnan(empty["turnover"])
    with pytest.raises(ValueError, match="one entry per bar"):
        backtest_metrics(
            times, np.ones(2), np.zeros(3), trade_pnls=[], turnover_notional=0, n_fills=0, periods_per_year=1
        )


def exchange_days(n: int) -> pd.DatetimeIndex:
    """Weekdays without a few holidays, labelled at 00:00 UTC."""
    days = pd.bdate_range("2019-01-02", periods=n + 5, tz="UTC")
    return days.delete([k for k in (10, 40, 80, 120, 200) if k < n])[:n]


def test_annualisation_daily_exchange() -> None:
    t = ns(exchange_days(400))
    assert periods_per_year(t) == 252
    assert periods_per_year(t + DAY_NS) == 252  # stamped at the close: Tuesday..Saturday
    assert periods_per_year(t, "exchange") == 252


def test_annualisation_daily_crypto() -> None:
    t = ns(pd.date_range("2021-01-01", periods=400, freq="D", tz="UTC"))
    assert periods_per_year(t) == 365
    assert periods_per_year(t, "24/7") == 365 == periods_per_year(t, "crypto")


def test_annualisation_hourly_crypto() -> None:
    t = ns(pd.date_range("2021-01-01", periods=24 * 30, freq="h", tz="UTC"))
    assert periods_per_year(t) == 365 * 24
    assert periods_per_year(t[:36]) == 365 * 24  # shorter than a week: round-the-clock hours
    # a few missing hours do not move the median spacing
    assert periods_per_year(np.delete(t, [5, 6, 7, 300])) == 365 * 24


def test_annualisation_minute_bars() -> None:
    sessions = pd.bdate_range("2024-01-02", periods=15, tz="UTC") + pd.Timedelta("14:30:00")
    t = np.concatenate([ns(day + pd.to_timedelta(np.arange(390), "min")) for day in sessions])
    assert periods_per_year(t) == pytest.approx(252 * 390)
    crypto = ns(pd.date_range("2024-01-01", periods=20_000, freq="min", tz="UTC"))
    assert periods_per_year(crypto) == pytest.approx(365 * 24 * 60)


def test_annualisation_weekly_monthly_override_and_errors() -> None:
    assert periods_per_year(ns(pd.date_range("2020-01-03", periods=60, freq="W-FRI", tz="UTC"))) == 52
    assert periods_per_year(ns(pd.date_range("2020-01-31", periods=40, freq="ME", tz="UTC"))) == 12
    t = ns(exchange_days(50))
    assert periods_per_year(t, override=260) == 260
    assert periods_per_year(t, "24/7") == 365
    assert periods_per_year(t[:1]) == 252
    assert periods_per_year(exchange_days(50)) == 252  # pandas input works too
    with pytest.raises(ValueError, match="unknown calendar"):
        periods_per_year(t, "lunar")
    with pytest.raises(ValueError, match="positive"):
        periods_per_year(t, override=0)


def fx_days(n: int) -> pd.DatetimeIndex:
    """FX daily bars: Sunday to Friday, no Saturday."""
    days = pd.date_range("2019-01-06", periods=2 * n, freq="D", tz="UTC")
    return days[days.day_of_week != 5][:n]


def test_annualisation_daily_fx_six_day_weeks() -> None:
    t = ns(fx_days(600))
    six_day = 365 * 6 / 7  # about 313 bars a year, not 365 (Sharpe sqrt(365/313) = 8% too high)
    assert periods_per_year(t) == pytest.approx(six_day)
    assert periods_per_year(t + DAY_NS) == pytest.approx(six_day)  # stamped at the close: Mon..Sat
    assert periods_per_year(t, "24/6") == pytest.approx(six_day)
    assert periods_per_year(ns(exchange_days(50)), "24/6") == pytest.approx(six_day)
    bars_per_year = len(t) / ((t[-1] - t[0]) / DAY_NS / 365)  # what the data actually has
    assert periods_per_year(t) == pytest.approx(bars_per_year, rel=0.01)
