"""The loss equals an independent NumPy computation of paper eqs. 7-8, masks included."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models import quantnet_loss
from models.loss import VAR_EPS


def numpy_loss(batch: list[tuple[np.ndarray, np.ndarray, np.ndarray]], a: float, bps: float) -> float:
    """Eq. 7 per asset and window, mean over assets with >= 2 valid bars, then windows; eq. 8 over
    markets. Written with explicit loops, independently of the torch code."""
    market_values = []
    for s, r, mask in batch:
        windows = []
        for b in range(s.shape[0]):
            ratios = []
            for j in range(s.shape[2]):
                pnl = []
                for t in range(s.shape[1]):
                    if not mask[b, t, j]:
                        continue
                    cost = abs(s[b, t, j] - s[b, t - 1, j]) * bps * 1e-4 if t > 0 else 0.0
                    pnl.append(s[b, t, j] * r[b, t, j] - cost)
                if len(pnl) < 2:
                    continue
                p = np.array(pnl)
                ratios.append(p.mean() / math.sqrt(p.var(ddof=1) + VAR_EPS) * math.sqrt(a))
            if ratios:
                windows.append(np.mean(ratios))
        if windows:
            market_values.append(np.mean(windows))
    return -float(np.mean(market_values))


def _batch(seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for b, t, n in [(2, 30, 4), (1, 30, 7), (3, 30, 2)]:
        s = np.tanh(rng.normal(size=(b, t, n)))
        r = rng.normal(0.0005, 0.01, (b, t, n))
        mask = rng.random((b, t, n)) > 0.2
        mask[0, :, 0] = False  # an asset with no data at all in a window
        mask[0, 1:, -1] = False  # and one with a single bar
        out.append((s, np.where(mask, r, 0.0), mask))
    return out


@pytest.mark.parametrize(("a", "bps"), [(252.0, 0.0), (8760.0, 10.0)])
def test_loss_matches_numpy_reference(a: float, bps: float) -> None:
    batch = _batch(1)
    tb = [(torch.tensor(s), torch.tensor(r), torch.tensor(m)) for s, r, m in batch]
    got = float(quantnet_loss(tb, periods_per_year=a, cost_bps=bps))
    assert got == pytest.approx(numpy_loss(batch, a, bps), rel=1e-9, abs=1e-12)


def test_masked_entries_contribute_nothing() -> None:
    batch = _batch(2)
    s = torch.tensor(batch[0][0], requires_grad=True)
    r = torch.tensor(batch[0][1])
    m = torch.tensor(batch[0][2])
    loss = quantnet_loss([(s, r, m)])
    loss.backward()
    # garbage in masked targets changes nothing, and masked signals get no gradient
    r2 = r.clone()
    r2[~m] = 1e3
    assert float(quantnet_loss([(s.detach(), r2, m)])) == pytest.approx(float(loss.detach()), rel=1e-12)
    assert s.grad is not None
    assert torch.all(s.grad[~m] == 0)


def test_markets_weigh_equally_regardless_of_size() -> None:
    batch = _batch(3)
    tb = [(torch.tensor(s), torch.tensor(r), torch.tensor(m)) for s, r, m in batch]
    each = [float(quantnet_loss([x])) for x in tb]
    assert float(quantnet_loss(tb)) == pytest.approx(np.mean(each), rel=1e-12)


def test_all_masked_batch_is_an_error() -> None:
    z = torch.zeros(1, 5, 2)
    with pytest.raises(ValueError, match="unmasked"):
        quantnet_loss([(z, z, torch.zeros(1, 5, 2, dtype=torch.bool))])
