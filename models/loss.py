"""The QuantNet objective (paper eqs. 7-8): annualised Sharpe per asset, averaged per market, then
over markets with equal weight, so a market with many assets does not dominate the shared layer.

Masked entries (missing returns) are left out of every mean and variance. An asset trades only at
its own bars: over a return that follows a gap (masked rows) it holds the signal computed right
after its previous bar, h_t = s_{p+1} with p its previous unmasked row, never a signal computed
from other assets' bars during the gap (those could not have been traded). The optional cost
charges ``cost_bps`` basis points per unit of |h_t - h_p| at every unmasked t, so training sees
turnover; an asset's first bar in a window pays nothing (its previous position is unknown). This
is the experiment evaluator's convention, so what is trained is what is scored.

An asset with fewer than ``min_bars`` unmasked bars in a window is left out of that window's
mean: a Sharpe over three bars is noise, and its gradient can dwarf a full asset's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from models.native import lstm_kernel

VAR_EPS = 1e-12


def sharpe_ratios(
    signals: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    periods_per_year: float = 252.0,
    cost_bps: float = 0.0,
    min_bars: int = 2,
    prev: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-(window, asset) annualised Sharpe of ``h·r - cost`` over the time axis and its validity.

    Shapes ``(B, T, n)``; returns ``(B, n)`` ratios and a ``(B, n)`` bool mask of assets with at least
    ``max(2, min_bars)`` unmasked bars (a Sharpe needs a variance). Uses the sample standard
    deviation (ddof=1). ``prev``: :func:`previous_rows` of ``mask`` when the caller has it already.
    """
    m = mask.to(signals.dtype)
    held, prev_row = held_positions(signals, mask, prev)
    pnl = held * returns
    if cost_bps:
        prev = torch.gather(held, 1, prev_row.clamp(min=0))
        turnover = torch.where(prev_row >= 0, (held - prev).abs(), torch.zeros_like(held))
        pnl = pnl - cost_bps * 1e-4 * turnover
    pnl = pnl * m
    count = m.sum(dim=1)
    mean = pnl.sum(dim=1) / count.clamp(min=1.0)
    dev = (pnl - mean.unsqueeze(1)) * m
    var = dev.pow(2).sum(dim=1) / (count - 1.0).clamp(min=1.0)
    ratio = mean / torch.sqrt(var + VAR_EPS) * math.sqrt(periods_per_year)
    return ratio, count >= max(2, min_bars)


def previous_rows(mask: Tensor) -> Tensor:
    """p_t: the previous unmasked row of each asset in the window before row t (-1: none).
    Shape ``(B, T, n)``, int64. It depends on the mask alone, so a caller that knows the masks in
    advance (training: one series, many windows) can compute it outside the autograd graph."""
    T = mask.shape[1]
    rows = torch.arange(T, device=mask.device).view(1, T, 1).expand_as(mask)
    last = torch.where(mask, rows, torch.full_like(rows, -1)).cummax(dim=1).values
    return torch.cat([torch.full_like(last[:, :1], -1), last[:, :-1]], dim=1)


def held_positions(signals: Tensor, mask: Tensor, prev: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(h, p): the position held over each row's return, h_t = s_{p_t + 1}, and p_t, the previous
    unmasked row of the asset in the window (-1: none, the bar before is outside the window; then
    h_t = s_t). Without gaps h = s. Shapes ``(B, T, n)``; differentiable in ``signals``. ``prev``:
    :func:`previous_rows` of ``mask``, if already known."""
    if prev is None:
        prev = previous_rows(mask)
    T = signals.shape[1]
    rows = torch.arange(T, device=signals.device).view(1, T, 1)
    held = torch.gather(signals, 1, torch.where(prev >= 0, prev + 1, rows))
    return held, prev


def market_sharpe(
    signals: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    periods_per_year: float = 252.0,
    cost_bps: float = 0.0,
    min_bars: int = 2,
    prev: Tensor | None = None,
) -> Tensor | None:
    """Eq. 7 for one market: mean over its valid assets, then over windows; None if nothing valid."""
    ratio, valid = sharpe_ratios(
        signals, returns, mask, periods_per_year=periods_per_year, cost_bps=cost_bps,
        min_bars=min_bars, prev=prev,
    )  # fmt: skip
    v = valid.to(ratio.dtype)
    n_valid = v.sum(dim=-1)
    has = n_valid > 0
    if not bool(has.any()):
        return None
    per_window = (torch.where(valid, ratio, torch.zeros_like(ratio))).sum(dim=-1) / n_valid.clamp(min=1.0)
    return per_window[has].mean()


def quantnet_loss(
    batch: Sequence[tuple[Tensor, Tensor, Tensor] | tuple[Tensor, Tensor, Tensor, Tensor]],
    *,
    periods_per_year: float = 252.0,
    cost_bps: float = 0.0,
    min_bars: int = 2,
) -> Tensor:
    """Eq. 8: minus the equal-weight mean over markets of their eq. 7 Sharpe.

    ``batch`` holds one ``(signals, returns, mask)`` triple per market, each ``(B, T, n_i)``, or
    ``(signals, returns, mask, prev)`` with :func:`previous_rows` of the mask.
    """
    kw = {"periods_per_year": periods_per_year, "cost_bps": cost_bps, "min_bars": min_bars}
    values = [
        s
        for sig, ret, msk, *prev in batch
        if (s := market_sharpe(sig, ret, msk, prev=prev[0] if prev else None, **kw)) is not None  # type: ignore[arg-type]
    ]
    if not values:
        raise ValueError(
            f"no market in the batch has {max(2, min_bars)} unmasked returns for any asset in any window"
        )
    return -torch.stack(values).mean()


def carry_arrays(
    returns: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A series' arrays for :func:`carried_returns` from its (T_all, n) returns (missing as 0) and
    mask, each (n, T_all): carry, next_return, next_row, last, cum. With the compiled kernel, one
    pass each way per asset (0.9 vs 2.8 ms a 1008 x 78 series, most of it the first touches of the
    new arrays; a train() call builds them for every market); else numpy, each scan along
    contiguous rows."""
    rows, n = mask.shape
    r = np.ascontiguousarray(returns, dtype=np.float64)
    m = np.ascontiguousarray(mask, dtype=np.bool_)
    lib = lstm_kernel()
    if lib is not None:
        carry, nxt_r = np.empty((n, rows)), np.empty((n, rows))
        nxt, last = np.empty((n, rows), dtype=np.int64), np.empty((n, rows), dtype=np.int64)
        cum = np.empty((n, rows), dtype=np.int32)
        lib.carry_arrays(rows, n, *(a.ctypes.data for a in (r, m, carry, nxt_r, nxt, last, cum)))
        return carry, nxt_r, nxt, last, cum
    r, m = np.ascontiguousarray(r.T), np.ascontiguousarray(m.T)
    idx = np.arange(rows)
    last = np.maximum.accumulate(np.where(m, idx, -1), axis=1)
    nxt = np.ascontiguousarray(np.minimum.accumulate(np.where(m, idx, rows)[:, ::-1], axis=1)[:, ::-1])
    at = np.minimum(nxt, rows - 1)
    nxt_r = np.where(nxt < rows, np.take_along_axis(r, at, axis=1), 0.0)
    carry = np.zeros_like(nxt_r)
    carry[:, 1:] = m[:, :-1] * nxt_r[:, 1:]
    # int32 sums: numpy's int64 cumsum took four times as long (rows < 2**31)
    return carry, nxt_r, nxt, last, np.cumsum(m, axis=1, dtype=np.int32)


@dataclass(frozen=True, slots=True)
class CarriedWindows:
    """B windows' carried returns (:func:`carried_windows`) as they are built: window b of asset r
    is the series' row segment ``carry[r, starts[b] : starts[b] + steps]`` but for three rows, so a
    kernel reads them in place instead of an (n, B, steps) tensor through memory. Row 0 is 0; row
    ``after`` is multiplied by ``keep``, then row ``at`` is set to ``value`` (each (n, B))."""

    carry: Tensor  # (n, T_all)
    starts: Tensor  # (B,) int64
    steps: int
    after: Tensor  # (n, B) int64, in 0..steps-1
    keep: Tensor  # (n, B), 0 or 1
    at: Tensor  # (n, B) int64, in 0..steps-1
    value: Tensor  # (n, B)

    def dense(self) -> Tensor:
        """The (n, B, steps) returns."""
        n, b = self.after.shape
        steps = (self.starts[:, None] + torch.arange(self.steps, device=self.starts.device)).flatten()
        w = self.carry.index_select(1, steps).view(n, b, self.steps)  # twice unfold's indexing
        w[:, :, 0] = 0.0
        after = self.after.unsqueeze(2)
        w.scatter_(2, after, w.gather(2, after) * self.keep.unsqueeze(2))
        w.scatter_(2, self.at.unsqueeze(2), self.value.unsqueeze(2))
        return w


def carried_windows(
    carry: Tensor,
    next_return: Tensor,
    next_row: Tensor,
    last: Tensor,
    starts: Tensor,
    k: int,
    scale: Tensor | None = None,
) -> CarriedWindows:
    """The windows of one series' rows start..start + k - 1 for each of ``starts`` (B,) (row 1 or
    later): per asset and window, the return each row's signal earns, ``w`` of
    :func:`carried_returns`. ``scale`` (n, T_all): a position scale per row (the vol_scaled
    objective), by which ``carry`` is then already multiplied."""
    starts = starts.to(torch.int64)
    end = starts + k
    final = last[:, end - 1]
    keep = (final + 1 >= end).to(carry.dtype)
    after = (final + 1 - starts).clamp_(0, k - 1)
    first = next_row[:, starts]
    at = (first - starts).clamp_(max=k - 1)
    value = next_return[:, starts] * (first < end)
    if scale is not None:
        value = value * scale.gather(1, at + starts)
    return CarriedWindows(carry, starts, k, after, keep, at, value)


def carried_returns(
    carry: Tensor,
    next_return: Tensor,
    next_row: Tensor,
    last: Tensor,
    cum: Tensor,
    starts: Tensor,
    k: int,
) -> tuple[Tensor, Tensor]:
    """(w, count) for :func:`loss_from_sums`: the windows of one series' rows start..start + k - 1
    for each of ``starts`` (B,) (row 1 or later), assets first: w (n, B, k), count (n, B).

    With held positions (:func:`held_positions`) every unmasked return r_t is earned by the signal
    of one row j = p_t + 1 (t itself when the asset has no earlier bar in the window), so
    Σ_t h_t·r_t = Σ_j s_j·w_j and Σ_t (h_t·r_t)² = Σ_j (s_j·w_j)², with w_j = r_t for that t and 0
    at rows no return is held from. Series arrays (n, T_all), from :func:`carry_arrays`: ``carry``
    m_{j-1}·r_{u(j)}, u(j) the first unmasked row ≥ j; ``next_return`` r_{u(j)}; ``next_row`` u(j)
    (T_all where none); ``last`` the last unmasked row ≤ j (-1: none); ``cum`` the running count of
    unmasked rows. In a window the carry is right but at three rows: the first (it reads the row
    before the window), the one after the last unmasked row (its return is after the window) and
    the first unmasked row (it earns its own return). ``count`` is each asset's number of unmasked
    rows in the window.
    """
    w = carried_windows(carry, next_return, next_row, last, starts, k).dense()
    return w, window_counts(cum, starts, k)


def window_counts(cum: Tensor, starts: Tensor, k: int) -> Tensor:
    """Each asset's unmasked rows in the windows of rows start..start + k - 1, (n, B), from the
    series' running count ``cum`` (n, T_all) (:func:`carry_arrays`); starts at row 1 or later."""
    return cum[:, starts + (k - 1)] - cum[:, starts - 1]


def loss_from_sums(
    a: Tensor,
    s2: Tensor,
    count: Tensor,
    market: Tensor,
    n_markets: int,
    *,
    periods_per_year: float = 252.0,
    min_bars: int = 2,
) -> Tensor:
    """:func:`quantnet_loss` without turnover cost from per-(asset, window) sums, all markets'
    assets one after another (N, B): ``a`` = Σ_t h_t·r_t·m_t, ``s2`` = Σ_t (h_t·r_t)²·m_t, ``count`` =
    Σ_t m_t; ``market`` (N,) each asset's market in 0..n_markets-1. The variance is
    (s2 - a²/count)/(count - 1), equal to the two-pass form of :func:`sharpe_ratios`."""
    cnt = count.to(a.dtype)
    mean = a / cnt.clamp(min=1.0)
    var = (s2 - mean * a).clamp(min=0.0) / (cnt - 1.0).clamp(min=1.0)
    ratio = mean / torch.sqrt(var + VAR_EPS) * math.sqrt(periods_per_year)
    valid = (count >= max(2, min_bars)).to(a.dtype)
    onehot = torch.nn.functional.one_hot(market, n_markets).to(a.dtype).t()
    n_valid = onehot @ valid  # (G, B)
    per_window = (onehot @ (ratio * valid)) / n_valid.clamp(min=1.0)
    has = (n_valid > 0).to(a.dtype)
    windows = has.sum(dim=1)
    scored = windows > 0
    if not bool(scored.any()):
        raise ValueError(
            f"no market in the batch has {max(2, min_bars)} unmasked returns for any asset in any window"
        )
    value = (per_window * has).sum(dim=1)[scored] / windows[scored]
    return -value.mean()


# assets per slice of held_sums: a slice's few passes then stay in the core's cache
_SUM_ROWS = 16


class _HeldSums(torch.autograd.Function):
    """(Σ_t s·w, Σ_t (s·w)²) with s = 2·sigmoid(z) - 1 over (n, B, T) slices, without the
    intermediate (n, T, B) tensors autograd would keep: the backward recomputes the sigmoid."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, z: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        a = z.new_empty(z.shape[:2])
        s2 = torch.empty_like(a)
        minus1 = z.new_full((1,), -1.0)
        for lo in range(0, z.shape[0], _SUM_ROWS):
            sl = slice(lo, lo + _SUM_ROWS)
            sw = torch.sigmoid(z[sl])
            torch.add(minus1, sw, alpha=2.0, out=sw)
            sw.mul_(w[sl])
            torch.sum(sw, dim=2, out=a[sl])
            torch.sum(sw.square_(), dim=2, out=s2[sl])
        ctx.save_for_backward(z, w)
        return a, s2

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, ga: Tensor, gs2: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        z, w = ctx.saved_tensors  # type: ignore[attr-defined]
        dz = torch.empty_like(z)
        minus1 = z.new_full((1,), -1.0)
        ga3, gs3 = ga.unsqueeze(2), (gs2 * 2.0).unsqueeze(2)
        for lo in range(0, z.shape[0], _SUM_ROWS):
            sl = slice(lo, lo + _SUM_ROWS)
            sg = torch.sigmoid(z[sl])
            out = dz[sl]
            torch.add(minus1, sg, alpha=2.0, out=out)  # s
            out.mul_(w[sl]).mul_(gs3[sl]).add_(ga3[sl]).mul_(w[sl])  # dL/ds = (ga + 2·gs2·s·w)·w
            out.mul_(sg).mul_(torch.sub(1.0, sg).mul_(2.0))  # ds/dz = 2σ(1 - σ)
        return dz, None


def held_sums(z: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """(Σ_t s_t·w_t, Σ_t (s_t·w_t)²) over the last axis of (n, B, T) tensors, s = 2·sigmoid(z) - 1 the
    signals of :func:`models.batched.logits_batched`, w from :func:`carried_returns`: the sums
    :func:`loss_from_sums` takes, differentiable in ``z``."""
    return _HeldSums.apply(z, w)  # type: ignore[no-any-return]
