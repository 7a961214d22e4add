"""The loss equals an independent NumPy computation of paper eqs. 7-8, masks included."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models import quantnet_loss
from models.loss import VAR_EPS, carried_returns, carry_arrays, held_sums, loss_from_sums


def numpy_loss(
    batch: list[tuple[np.ndarray, np.ndarray, np.ndarray]], a: float, bps: float, min_bars: int = 2
) -> float:
    """Eq. 7 per asset and window, mean over assets with >= min_bars valid bars, then windows; eq. 8
    over markets. Over a return after a gap the position is the signal right after the asset's
    previous bar; costs are charged against that previous held position. Written with explicit
    loops, independently of the torch code."""
    market_values = []
    for s, r, mask in batch:
        windows = []
        for b in range(s.shape[0]):
            ratios = []
            for j in range(s.shape[2]):
                pnl = []
                last_row, last_held = None, None
                for t in range(s.shape[1]):
                    if not mask[b, t, j]:
                        continue
                    held = s[b, t, j] if last_row is None else s[b, last_row + 1, j]
                    cost = 0.0 if last_held is None else abs(held - last_held) * bps * 1e-4
                    pnl.append(held * r[b, t, j] - cost)
                    last_row, last_held = t, held
                if len(pnl) < max(2, min_bars):
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


@pytest.mark.parametrize(("a", "bps", "min_bars"), [(252.0, 0.0, 2), (8760.0, 10.0, 2), (252.0, 10.0, 22)])
def test_loss_matches_numpy_reference(a: float, bps: float, min_bars: int) -> None:
    batch = _batch(1)
    tb = [(torch.tensor(s), torch.tensor(r), torch.tensor(m)) for s, r, m in batch]
    got = float(quantnet_loss(tb, periods_per_year=a, cost_bps=bps, min_bars=min_bars))
    assert got == pytest.approx(numpy_loss(batch, a, bps, min_bars), rel=1e-9, abs=1e-12)


def test_min_bars_leaves_short_assets_out() -> None:
    """30-bar windows with about 24 valid bars per asset: min_bars 22 keeps some, 29 none."""
    batch = _batch(1)
    tb = [(torch.tensor(s), torch.tensor(r), torch.tensor(m)) for s, r, m in batch]
    assert float(quantnet_loss(tb, min_bars=22)) != pytest.approx(float(quantnet_loss(tb)), rel=1e-6)
    with pytest.raises(ValueError, match="29 unmasked returns"):
        quantnet_loss(tb, min_bars=29)


def test_a_gap_holds_the_position_taken_at_the_assets_last_bar() -> None:
    """Hand-computed: one asset, bars at rows 0, 1 and 4 (2, 3 masked). Over row 4's return the
    position is s[2], the signal right after row 1; the cost there is |s[2] - s[1]|."""
    s = torch.tensor([[[0.1], [0.5], [-0.3], [0.9], [0.7]]], dtype=torch.float64, requires_grad=True)
    r = torch.tensor([[[0.01], [0.02], [0.0], [0.0], [-0.04]]], dtype=torch.float64)
    m = torch.tensor([[[True], [True], [False], [False], [True]]])
    bps = 50.0
    pnl = np.array([0.1 * 0.01, 0.5 * 0.02 - 0.4 * bps * 1e-4, -0.3 * -0.04 - 0.8 * bps * 1e-4])
    want = pnl.mean() / math.sqrt(pnl.var(ddof=1) + VAR_EPS) * math.sqrt(252.0)
    loss = quantnet_loss([(s, r, m)], cost_bps=bps)
    assert float(loss.detach()) == pytest.approx(-want, rel=1e-12)
    loss.backward()
    assert s.grad is not None
    assert s.grad[0, 3, 0] == 0 and s.grad[0, 4, 0] == 0 and s.grad[0, 2, 0] != 0  # never held: no gradient


def test_masked_targets_contribute_nothing() -> None:
    batch = _batch(2)
    s = torch.tensor(batch[0][0], requires_grad=True)
    r = torch.tensor(batch[0][1])
    m = torch.tensor(batch[0][2])
    loss = quantnet_loss([(s, r, m)])
    loss.backward()
    # garbage in masked targets changes nothing, and signals never held get no gradient
    r2 = r.clone()
    r2[~m] = 1e3
    assert float(quantnet_loss([(s.detach(), r2, m)])) == pytest.approx(float(loss.detach()), rel=1e-12)
    assert s.grad is not None
    never_held = ~m & ~torch.cat([torch.zeros_like(m[:, :1]), m[:, :-1]], dim=1)
    assert never_held.any() and torch.all(s.grad[never_held] == 0)


def test_markets_weigh_equally_regardless_of_size() -> None:
    batch = _batch(3)
    tb = [(torch.tensor(s), torch.tensor(r), torch.tensor(m)) for s, r, m in batch]
    each = [float(quantnet_loss([x])) for x in tb]
    assert float(quantnet_loss(tb)) == pytest.approx(np.mean(each), rel=1e-12)


def test_all_masked_batch_is_an_error() -> None:
    z = torch.zeros(1, 5, 2)
    with pytest.raises(ValueError, match="unmasked"):
        quantnet_loss([(z, z, torch.zeros(1, 5, 2, dtype=torch.bool))])


def test_training_reads_previous_rows_off_the_series_as_the_loss_computes_them() -> None:
    """Training precomputes each series' last unmasked row once; every window's p_t must equal
    the per-window cummax the loss would do (gaps at window starts included)."""
    from models.loss import previous_rows
    from models.training import _Series

    rng = np.random.default_rng(0)
    m = rng.random((400, 7)) > 0.4
    m[100:140, 2] = False
    last = np.maximum.accumulate(np.where(m, np.arange(400)[:, None], -1), axis=0)
    z = torch.zeros(0)
    s = _Series(0, z, z, torch.as_tensor(m), 300, 400, 50, None, torch.as_tensor(last))
    rows = torch.as_tensor(np.r_[51, 120, rng.integers(51, 301, size=14)][:, None] - 50 + np.arange(50))
    got = s.previous_rows(rows)
    assert torch.equal(got, previous_rows(s.m[rows]))
    assert (got == -1).sum() > 16 * 7  # the first row of each window, and the gap's rows


@pytest.mark.parametrize(("a", "min_bars"), [(252.0, 2), (252.0, 12)])
def test_loss_from_carried_returns_equals_the_held_position_loss(a: float, min_bars: int) -> None:
    """The batched step's loss (sums over each window's carried returns, all markets side by side)
    equals the numpy reference and quantnet_loss, gradients included: windows that start or end
    inside a gap, a run of missing bars, an asset listed late, one with no bar in some windows."""
    rng = np.random.default_rng(3)
    k, b = 16, 5
    series, batch, torch_batch, sums = [], [], [], []
    for n in (3, 6, 2):
        r = rng.normal(0.0005, 0.01, (80, n))
        mask = rng.random((80, n)) > 0.3
        mask[20:29, 0] = False
        mask[:50, -1] = False
        r = np.where(mask, r, 0.0)
        arrays = [torch.tensor(x) for x in carry_arrays(r, mask)]
        starts = rng.integers(1, 80 - k + 1, size=b)
        starts[:2] = (21, 25)  # inside the run of missing bars
        rows = torch.as_tensor(starts[None, :] + np.arange(k)[:, None])  # (T, B)
        s = torch.tensor(np.tanh(rng.normal(size=(k, b, n))), requires_grad=True)
        w, count = carried_returns(*arrays, rows[0], k)
        series.append((s, w, count))
        batch_first = s.detach().numpy().transpose(1, 0, 2)
        rw, mw = r[rows.numpy()].transpose(1, 0, 2), mask[rows.numpy()].transpose(1, 0, 2)
        batch.append((batch_first, rw, mw))
        torch_batch.append((s.transpose(0, 1), torch.tensor(rw), torch.tensor(mw)))
    ref = quantnet_loss(torch_batch, periods_per_year=a, min_bars=min_bars)
    ref_grads = torch.autograd.grad(ref, [s for s, _, _ in series])
    for s, w, _ in series:
        sw = s.permute(2, 1, 0) * w
        sums.append((sw.sum(dim=2), sw.pow(2).sum(dim=2)))
    market = torch.cat([torch.full((s.shape[2],), g) for g, (s, _, _) in enumerate(series)])
    got = loss_from_sums(
        torch.cat([x for x, _ in sums]), torch.cat([y for _, y in sums]),
        torch.cat([c for _, _, c in series]), market, len(series),
        periods_per_year=a, min_bars=min_bars,
    )  # fmt: skip
    grads = torch.autograd.grad(got, [s for s, _, _ in series])
    assert float(got.detach()) == pytest.approx(numpy_loss(batch, a, 0.0, min_bars), rel=1e-9, abs=1e-12)
    assert float(got.detach()) == pytest.approx(float(ref.detach()), rel=1e-12, abs=1e-12)
    for g, gr in zip(grads, ref_grads, strict=True):
        assert torch.allclose(g, gr, rtol=0.0, atol=1e-10)
        assert gr.abs().max() > 0


def test_held_sums_is_differentiable_across_its_slices() -> None:
    """held_sums equals the plain formula and autograd's gradient, 20 assets (two slices)."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20, 3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(20, 3, 6, generator=g, dtype=torch.float64) * (torch.rand(20, 3, 6, generator=g) > 0.3)
    a, s2 = held_sums(z, w)
    sw = (2.0 * torch.sigmoid(z) - 1.0) * w
    assert torch.allclose(a, sw.sum(dim=2), atol=1e-14)
    assert torch.allclose(s2, sw.pow(2).sum(dim=2), atol=1e-14)
    assert torch.autograd.gradcheck(lambda z: held_sums(z, w), (z,))


@pytest.mark.parametrize("n", [1, 8, 13])  # one asset, one block of eight, a block and a remainder
def test_carry_arrays_kernel_equals_their_definition(n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled pass and the numpy scans give the same arrays, and both are their definitions
    written out row by row: gaps, an asset with no bar, bars only at the ends."""
    import models.loss as ml

    rng = np.random.default_rng(n)
    rows = 50
    mask = rng.random((rows, n)) > 0.4
    mask[:, 0] = False
    if n > 1:
        mask[:, 1] = False
        mask[[0, rows - 1], 1] = True
    r = np.where(mask, rng.normal(size=(rows, n)), 0.0)
    want = [np.zeros((n, rows)), np.zeros((n, rows)), np.full((n, rows), rows), np.full((n, rows), -1), None]
    want[4] = np.cumsum(mask, axis=0).T
    for j in range(n):
        for t in range(rows):
            bars = np.flatnonzero(mask[:, j])
            later, earlier = bars[bars >= t], bars[bars <= t]
            if len(later):
                want[2][j, t], want[1][j, t] = later[0], r[later[0], j]
            if len(earlier):
                want[3][j, t] = earlier[-1]
            want[0][j, t] = want[1][j, t] if t and mask[t - 1, j] else 0.0
    got = carry_arrays(r, mask)
    monkeypatch.setattr(ml, "lstm_kernel", lambda: None)
    ref = carry_arrays(r, mask)
    names = ("carry", "next_return", "next_row", "last", "cum")
    for g, f, w, name in zip(got, ref, want, names, strict=True):
        assert g.shape == (n, rows) and g.flags.c_contiguous, name
        assert np.array_equal(g, w) and np.array_equal(f, w), name
