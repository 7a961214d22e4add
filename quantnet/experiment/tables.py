"""Per-asset metrics of evaluated strategies and the paper's Table 1 built from them.

Table 1 reports, per strategy, the median across all assets (of every market) of each metric and
its mean absolute deviation (around the mean, as ``pandas.Series.mad`` did). A learned model is
scored once per seed; its cell is the mean ± standard deviation over seeds of those per-seed
medians (and MADs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from engine.metrics import performance
from quantnet.experiment.evaluate import AssetReturns

TABLE_METRICS: tuple[str, ...] = (
    "annual_return",
    "annual_volatility",
    "sharpe",
    "sortino",
    "calmar",
    "downside_risk",
    "max_drawdown",
    "skewness",
    "kurtosis",
)
EXTRA_METRICS: tuple[str, ...] = ("turnover", "avg_position", "timing_sharpe", "timing_alpha")
ALL_METRICS = TABLE_METRICS + EXTRA_METRICS


def _sharpe(x: np.ndarray, ppy: float) -> float:
    x = x[np.isfinite(x)]
    if len(x) < 2:
        return math.nan
    sd = float(np.std(x, ddof=1))
    return float(np.mean(x)) / sd * math.sqrt(ppy) if sd > 1e-12 else math.nan


def asset_metrics(ar: AssetReturns, ppy: float, *, net: bool) -> dict[str, list[float]]:
    """Every metric per asset (lists in asset order; NaN where undefined).

    turnover: Σ|Δposition| per year. avg_position: the mean position. timing_sharpe: Sharpe of the
    position demeaned over the window times the asset's return (gross), so a model that is merely
    long a rising market scores about 0. timing_alpha: the annualised intercept of the strategy's
    returns regressed on the asset's own return.
    """
    series = ar.net if net else ar.gross
    out: dict[str, list[float]] = {k: [] for k in ALL_METRICS}
    for j in range(series.shape[1]):
        v = np.isfinite(series[:, j])
        y, r, h, tv = series[v, j], ar.asset[v, j], ar.position[v, j], ar.turnover[v, j]
        perf = performance(y, ppy)
        for k in TABLE_METRICS:
            out[k].append(perf[k])
        n = len(y)
        out["turnover"].append(float(tv.sum()) / (n / ppy) if n else math.nan)
        out["avg_position"].append(float(h.mean()) if n else math.nan)
        out["timing_sharpe"].append(_sharpe((h - h.mean()) * r, ppy) if n else math.nan)
        if n >= 3 and np.var(r) > 0:
            beta = float(np.cov(y, r, ddof=1)[0, 1] / np.var(r, ddof=1))
            out["timing_alpha"].append((float(y.mean()) - beta * float(r.mean())) * ppy)
        else:
            out["timing_alpha"].append(math.nan)
    return out


def median_mad(values: Sequence[float]) -> tuple[float, float]:
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        return math.nan, math.nan
    return float(np.median(x)), float(np.mean(np.abs(x - x.mean())))


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        return math.nan, math.nan
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0


def table1(
    per_seed: Mapping[str, Sequence[Mapping[str, Sequence[float]]]], metrics: Sequence[str] = ALL_METRICS
) -> dict[str, dict[str, dict[str, float]]]:
    """``{strategy: {metric: {median, mad, median_sd, mad_sd, seeds}}}`` from each strategy's list of
    per-seed ``{metric: per-asset values}`` (a baseline has one entry)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, seeds in per_seed.items():
        row: dict[str, dict[str, float]] = {}
        for k in metrics:
            meds, mads = zip(*(median_mad(s[k]) for s in seeds), strict=True)
            m, m_sd = mean_sd(meds)
            d, d_sd = mean_sd(mads)
            row[k] = {"median": m, "mad": d, "median_sd": m_sd, "mad_sd": d_sd, "seeds": len(seeds)}
        out[name] = row
    return out


def per_asset_mean(seeds: Sequence[Mapping[str, Sequence[float]]], metric: str) -> np.ndarray:
    """A metric per asset averaged over seeds (NaN-aware), for paired tests across strategies."""
    stack = np.array([np.asarray(s[metric], dtype=np.float64) for s in seeds])
    with np.errstate(all="ignore"):
        count = np.isfinite(stack).sum(axis=0)
        total = np.nansum(stack, axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def significance(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Wilcoxon signed-rank (paired by asset) and two-sample Kolmogorov-Smirnov tests of x against y
    (x: QuantNet, y: a No-Transfer model): statistics, two-sided p-values, and the median of x − y."""
    from scipy import stats

    ok = np.isfinite(x) & np.isfinite(y)
    a, b = x[ok], y[ok]
    out = {"n": float(len(a)), "median_diff": float(np.median(a - b)) if len(a) else math.nan}
    if len(a) >= 2 and np.any(a != b):
        w = stats.wilcoxon(a, b)
        out.update(wilcoxon_stat=float(w.statistic), wilcoxon_p=float(w.pvalue))
    else:
        out.update(wilcoxon_stat=math.nan, wilcoxon_p=math.nan)
    if len(a) >= 1:
        ks = stats.ks_2samp(a, b)
        out.update(ks_stat=float(ks.statistic), ks_p=float(ks.pvalue))
    else:
        out.update(ks_stat=math.nan, ks_p=math.nan)
    return out
