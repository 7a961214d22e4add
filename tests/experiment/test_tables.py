"""Table 1 aggregation and the significance tests against direct computations."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from models.data import Market
from quantnet.experiment.evaluate import strategy_returns
from quantnet.experiment.tables import asset_metrics, significance, table1


def test_table1_median_mad_and_seed_spread():
    seeds = [{"sharpe": [1.0, 2.0, 4.0, math.nan]}, {"sharpe": [0.0, 1.0, 5.0]}]
    t = table1({"m": seeds}, metrics=("sharpe",))["m"]["sharpe"]
    # per seed: median 2 and 1; MAD around the mean: (4/3+1/3+5/3)/3 = 10/9 and (2+1+3)/3 = 2
    assert t["median"] == pytest.approx(1.5) and t["median_sd"] == pytest.approx(np.std([2, 1], ddof=1))
    assert t["mad"] == pytest.approx((10 / 9 + 2) / 2)
    assert t["seeds"] == 2


def test_asset_metrics_timing_and_turnover():
    rng = np.random.default_rng(0)
    r = rng.normal(0.001, 0.01, (253, 2))
    m = Market("m", ("a", "b"), pd.bdate_range("2020-01-01", periods=253, tz="UTC"), r)
    s = np.ones_like(r)
    s[:, 1] = np.where(np.arange(253) % 2, 1.0, -1.0)
    ar = strategy_returns(s, m, start=1, cost_bps=10)
    out = asset_metrics(ar, 252.0, net=True)
    # always long: no timing skill, one unit bought once over 252 bars (a year)
    assert math.isnan(out["timing_sharpe"][0])
    assert out["turnover"][0] == pytest.approx(1.0)
    assert out["avg_position"][0] == pytest.approx(1.0)
    assert out["turnover"][1] == pytest.approx(1 + 2 * 251)
    y = ar.net[:, 0]
    assert out["sharpe"][0] == pytest.approx(y.mean() / y.std(ddof=1) * math.sqrt(252))
    slope, intercept = np.polyfit(r[1:, 0], y, 1)
    assert slope == pytest.approx(1.0, abs=1e-3)
    assert out["timing_alpha"][0] == pytest.approx(intercept * 252, rel=1e-9)


def test_significance_is_scipy():
    rng = np.random.default_rng(2)
    x, y = rng.normal(0.3, 1, 50), rng.normal(0, 1, 50)
    y[3] = np.nan
    out = significance(x, y)
    ok = np.isfinite(y)
    assert out["wilcoxon_p"] == pytest.approx(stats.wilcoxon(x[ok], y[ok]).pvalue)
    assert out["ks_p"] == pytest.approx(stats.ks_2samp(x[ok], y[ok]).pvalue)
    assert out["n"] == 49
