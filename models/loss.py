"""The QuantNet objective (paper eqs. 7-8): annualised Sharpe per asset, averaged per market, then
over markets with equal weight, so a market with many assets does not dominate the shared layer.

Masked entries (missing returns) are left out of every mean and variance. The optional cost charges
``cost_bps`` basis points per unit of |s_t - s_{t-1}| inside the window at every unmasked t, so
training sees turnover; the first bar of a window pays nothing (its previous position is unknown).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

VAR_EPS = 1e-12


def sharpe_ratios(
    signals: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    periods_per_year: float = 252.0,
    cost_bps: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Per-(window, asset) annualised Sharpe of ``s·r - cost`` over the time axis and its validity.

    Shapes ``(B, T, n)``; returns ``(B, n)`` ratios and a ``(B, n)`` bool mask of assets with at least
    two unmasked bars (a Sharpe needs a variance). Uses the sample standard deviation (ddof=1).
    """
    m = mask.to(signals.dtype)
    pnl = signals * returns
    if cost_bps:
        turnover = torch.zeros_like(signals)
        turnover[:, 1:] = (signals[:, 1:] - signals[:, :-1]).abs()
        pnl = pnl - cost_bps * 1e-4 * turnover
    pnl = pnl * m
    count = m.sum(dim=1)
    mean = pnl.sum(dim=1) / count.clamp(min=1.0)
    dev = (pnl - mean.unsqueeze(1)) * m
    var = dev.pow(2).sum(dim=1) / (count - 1.0).clamp(min=1.0)
    ratio = mean / torch.sqrt(var + VAR_EPS) * math.sqrt(periods_per_year)
    return ratio, count >= 2


def market_sharpe(
    signals: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    periods_per_year: float = 252.0,
    cost_bps: float = 0.0,
) -> Tensor | None:
    """Eq. 7 for one market: mean over its valid assets, then over windows; None if nothing valid."""
    ratio, valid = sharpe_ratios(signals, returns, mask, periods_per_year=periods_per_year, cost_bps=cost_bps)
    v = valid.to(ratio.dtype)
    n_valid = v.sum(dim=-1)
    has = n_valid > 0
    if not bool(has.any()):
        return None
    per_window = (torch.where(valid, ratio, torch.zeros_like(ratio))).sum(dim=-1) / n_valid.clamp(min=1.0)
    return per_window[has].mean()


def quantnet_loss(
    batch: Sequence[tuple[Tensor, Tensor, Tensor]],
    *,
    periods_per_year: float = 252.0,
    cost_bps: float = 0.0,
) -> Tensor:
    """Eq. 8: minus the equal-weight mean over markets of their eq. 7 Sharpe.

    ``batch`` holds one ``(signals, returns, mask)`` triple per market, each ``(B, T, n_i)``.
    """
    values = [
        s
        for sig, ret, msk in batch
        if (s := market_sharpe(sig, ret, msk, periods_per_year=periods_per_year, cost_bps=cost_bps))
        is not None
    ]
    if not values:
        raise ValueError("no market in the batch has two unmasked returns for any asset")
    return -torch.stack(values).mean()
