"""The vectorised evaluator: per-asset strategy returns of any signal matrix over the test window,
for the learned models and the four classical baselines of the paper's appendix B.

Conventions (the same as the training loss, :mod:`models.loss`): ``signals[t, j]`` is computed from
rows before t and is the position held over ``returns[t, j]`` (the paper's s(t)·r(t+1)). An asset
trades only at its own bars: over a return that follows a gap it holds the signal computed right
after its previous bar (the last tradable position), and the return runs from that bar's close. The
evaluation starts flat at the close before the first test row; a trade costs ``cost_bps`` per unit
of position change, charged on the return it opens:

    net(t) = h(t)·r(t) − cost·|h(t) − h(t⁻)|        (t⁻: the asset's previous bar in the window)

``turnover="rebalance"`` charges instead what a constant-weight book that trades every bar back to
its target pays: |h(t) − h(t⁻)·(1 + r(t⁻)) / (1 + net(t⁻))| (the position drifts with the price
between trades). That is what the event engine pays with ``rebalance = "every_bar"`` and fills at
the close; it equals the signal convention at zero cost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from models.data import Market

BASELINES: tuple[str, ...] = ("buy_and_hold", "risk_parity", "ts_momentum", "cs_momentum")
Turnover = Literal["signal", "rebalance"]


@dataclass(frozen=True, slots=True)
class AssetReturns:
    """Per-asset series over the evaluated rows (NaN where the asset has no return)."""

    index: pd.DatetimeIndex
    position: np.ndarray  # held over each row's return
    asset: np.ndarray  # the asset's own return
    gross: np.ndarray
    net: np.ndarray
    turnover: np.ndarray  # |position change| charged on each row


def _last_valid_before(valid: np.ndarray) -> np.ndarray:
    """Row of each asset's last valid entry strictly before each row (-1: none)."""
    rows = np.arange(len(valid))[:, None]
    last = np.maximum.accumulate(np.where(valid, rows, -1), axis=0)
    return np.vstack([np.full((1, valid.shape[1]), -1), last[:-1]])


def strategy_returns(
    signals: np.ndarray,
    market: Market,
    *,
    start: int,
    cost_bps: float = 0.0,
    turnover: Turnover = "signal",
) -> AssetReturns:
    """Gross and net per-asset returns of ``signals`` (rows × assets, aligned with the market's
    rows) over rows ``start`` to the end."""
    r = market.returns
    s = np.asarray(signals, dtype=np.float64)
    if s.shape != r.shape:
        raise ValueError(f"signals shape {s.shape} does not match market {market.name!r} {r.shape}")
    if not 1 <= start < len(r):
        raise ValueError(f"start row {start} outside 1..{len(r) - 1}")
    valid = np.isfinite(r)
    lv = _last_valid_before(valid)
    # a decision can trade at an asset's bar at or after the close before the window
    tradable = lv >= start - 1
    pos = np.take_along_axis(s, np.clip(lv + 1, 0, len(r) - 1), axis=0)
    pos = np.where(tradable, pos, 0.0)[start:]
    rw, vw = r[start:], valid[start:]
    pos = np.where(vw, pos, np.nan)
    rz = np.where(vw, rw, 0.0)
    cost = cost_bps * 1e-4
    if turnover == "signal":
        lvw = _last_valid_before(vw)
        prev = np.where(lvw >= 0, np.take_along_axis(np.nan_to_num(pos), np.clip(lvw, 0, None), 0), 0.0)
        tv = np.where(vw, np.abs(np.nan_to_num(pos) - prev), np.nan)
        gross = np.where(vw, np.nan_to_num(pos) * rz, np.nan)
        net = gross - cost * tv
    else:
        gross, net, tv = _rebalance(np.nan_to_num(pos), rz, vw, cost)
    return AssetReturns(market.index[start:], pos, np.where(vw, rw, np.nan), gross, net, tv)


def _rebalance(pos: np.ndarray, r: np.ndarray, valid: np.ndarray, cost: float):
    """Exact turnover of a per-asset book rebalanced to its target at every bar (a loop over rows,
    vectorised over assets: the drift depends on the previous net return)."""
    drift = np.zeros(pos.shape[1])
    gross = np.full(pos.shape, np.nan)
    net = np.full(pos.shape, np.nan)
    tv = np.full(pos.shape, np.nan)
    for t in range(len(pos)):
        v = valid[t]
        h = pos[t]
        change = np.abs(h - drift)
        g = h * r[t]
        n = g - cost * change
        gross[t] = np.where(v, g, np.nan)
        net[t] = np.where(v, n, np.nan)
        tv[t] = np.where(v, change, np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            moved = h * (1.0 + r[t]) / (1.0 + n)
        drift = np.where(v, np.where(np.isfinite(moved), moved, 0.0), drift)
    return gross, net, tv


# -- classical baselines (appendix B), conventional signs ---------------------------------------


def _rolling(returns: np.ndarray, lookback: int, lo: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count, mean and sample variance of each asset's returns over the ``lookback`` rows ending at
    each row, for rows ``lo..``; sums start ``lookback`` rows before ``lo`` to keep them small."""
    base = max(0, lo - lookback)
    r = returns[base:]
    v = np.isfinite(r)
    x = np.where(v, r, 0.0)

    def window_sum(a: np.ndarray) -> np.ndarray:
        c = np.vstack([np.zeros((1, a.shape[1])), np.cumsum(a, axis=0)])
        hi = np.arange(1, len(a) + 1)
        return c[hi] - c[np.maximum(hi - lookback, 0)]

    n = window_sum(v.astype(np.float64))
    s1 = window_sum(x)
    mean = np.divide(s1, n, out=np.zeros_like(s1), where=n > 0)
    s2 = window_sum(x * x) - n * mean * mean
    var = np.divide(s2, n - 1, out=np.full_like(s2, np.nan), where=n > 1)
    cut = lo - base
    return n[cut:], mean[cut:], np.maximum(var[cut:], 0.0)


def baseline_signals(
    name: str, returns: np.ndarray, *, lookback: int = 252, quantile: float = 0.33, start: int = 1
) -> np.ndarray:
    """Signals of a baseline (rows × assets; row t decided at the close of row t − 1 from the
    ``lookback`` returns ending there), for rows ``start`` on (earlier rows: 0).

    buy_and_hold: 1. risk_parity: 1/σ_j normalised to mean 1 over the assets with history.
    ts_momentum: the sign of the mean return (long past winners). cs_momentum: +1 for the top
    ``quantile`` of assets by mean return, −1 for the bottom, 0 between. An asset needs
    ``max(2, lookback // 2)`` returns in the window (else 0), as the engine's baselines do. Unit
    positions (the paper scales by the mean return itself) keep costs and returns in the units of
    the learned models' positions.
    """
    r = np.asarray(returns, dtype=np.float64)
    out = np.zeros_like(r)
    if name == "buy_and_hold":
        out[start:] = 1.0
        return out
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; available: {', '.join(BASELINES)}")
    lo = start - 1  # decision rows
    n, mean, var = _rolling(r, lookback, lo)
    enough = n >= max(2, lookback // 2)
    # the asset must have a bar at the decision row to be ranked or weighted
    live = enough & np.isfinite(r[lo:])
    if name == "ts_momentum":
        sig = np.where(live, np.sign(mean), 0.0)
    elif name == "risk_parity":
        vol = np.sqrt(var)
        inv = np.where(live & (vol > 0), 1.0 / np.where(vol > 0, vol, 1.0), 0.0)
        count = (inv > 0).sum(axis=1, keepdims=True)
        total = inv.sum(axis=1, keepdims=True)
        sig = np.divide(inv * count, total, out=np.zeros_like(inv), where=total > 0)
    else:
        sig = _cross_sectional(mean, live, quantile)
    out[start:] = sig[: len(r) - start]
    return out


def _cross_sectional(mean: np.ndarray, live: np.ndarray, quantile: float) -> np.ndarray:
    sig = np.zeros_like(mean)
    for t in range(len(mean)):
        idx = np.flatnonzero(live[t])
        k = int(np.floor(len(idx) * quantile + 1e-9))
        if k == 0:
            continue
        ranked = idx[np.argsort(mean[t, idx], kind="stable")]
        sig[t, ranked[-k:]] = 1.0
        sig[t, ranked[:k]] = -1.0
    return sig


def model_signals(
    signal_fn: Callable[[str, np.ndarray], np.ndarray], market: Market, *, start: int, warmup: int
) -> np.ndarray:
    """A model's signals (``signal_fn(market, returns)``, e.g. ``QuantNet.signals``: row t from
    rows before t, zero state at the first row given) for rows ``start`` on, run from ``warmup``
    rows before the decision at row ``start`` − 1, as a deployed model is warmed up."""
    lo = max(0, start - 1 - warmup)
    out = np.zeros(market.returns.shape)
    out[lo:] = signal_fn(market.name, market.returns[lo:])
    out[:start] = 0.0
    return out
