"""The batched pass (models.batched) gives the per-market path's losses and gradients."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from models import TRANSFER_VARIANTS, Market, ModelConfig, QuantNet, TrainConfig, quantnet_loss, train
from models.batched import _ChainLSTM, forward_batched, forward_many_batched
from models.config import BASELINE_VARIANTS

SIZES = (3, 7, 5)


def _model(variant: str, layers: int, dtype: torch.dtype, dropout: float = 0.0) -> QuantNet:
    cfg = ModelConfig(
        variant=variant, transfer_dim=4, decoder_dim=6, encoder_layers=layers, decoder_layers=2,
        transfer_layers=layers, dropout=dropout,
    )  # fmt: skip
    model = QuantNet(cfg, {f"m{i}": [f"a{i}{j}" for j in range(n)] for i, n in enumerate(SIZES)}, seed=1)
    model.to(dtype)
    with torch.no_grad():
        for net in model.markets:
            net.input_scale.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(2))
    return model


def _batch(dtype: torch.dtype, b: int = 4, t: int = 13) -> tuple[list[tuple[int, torch.Tensor]], list]:
    g = torch.Generator().manual_seed(0)
    items = [(i, torch.randn(b, t, n, generator=g, dtype=dtype) * 0.02) for i, n in enumerate(SIZES)]
    targets = [
        (torch.randn(b, t, n, generator=g, dtype=dtype) * 0.02, torch.rand(b, t, n, generator=g) > 0.15)
        for n in SIZES
    ]
    return items, targets


def _loss_and_grads(
    model: QuantNet, batched: bool, dtype: torch.dtype
) -> tuple[float, dict[str, torch.Tensor]]:
    items, targets = _batch(dtype)
    model.zero_grad()
    signals = forward_many_batched(model, items) if batched else [model(i, x)[0] for i, x in items]
    triples = [(s, r, m) for s, (r, m) in zip(signals, targets, strict=True)]
    loss = quantnet_loss(triples, min_bars=3)
    loss.backward()
    return float(loss.detach()), {
        k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None
    }


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("variant", TRANSFER_VARIANTS + BASELINE_VARIANTS)
def test_batched_loss_and_gradients_equal_per_market_path(variant: str, layers: int) -> None:
    model = _model(variant, layers, torch.float64)
    model.train()
    ref_loss, ref = _loss_and_grads(model, False, torch.float64)
    loss, got = _loss_and_grads(model, True, torch.float64)
    assert got.keys() == ref.keys()
    assert abs(loss - ref_loss) < 1e-6
    for k in ref:
        assert torch.allclose(got[k], ref[k], rtol=0.0, atol=1e-6), (k, (got[k] - ref[k]).abs().max())
        assert ref[k].abs().max() > 0, k  # every parameter is reached


def test_batched_float32_matches_to_rounding() -> None:
    """The released configuration (LSTM-linear, 2 + 2 layers) in float32: the per-market path
    itself rounds at ~1e-7 per operation, so agreement is to float32 rounding, not to 1e-12."""
    model = _model("lstm-linear", 2, torch.float32)
    ref_loss, ref = _loss_and_grads(model, False, torch.float32)
    loss, got = _loss_and_grads(model, True, torch.float32)
    assert abs(loss - ref_loss) < 1e-6
    for k in ref:
        assert torch.allclose(got[k], ref[k], rtol=1e-4, atol=1e-5), k


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_chain_backward_is_the_gradient_with_dropout_masks(layers: int) -> None:
    g, h, t, b = 2, 3, 4, 2
    gen = torch.Generator().manual_seed(layers)

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).requires_grad_()

    xw, w_hh = rnd(g, 4 * h, t, b), rnd(layers, g, 4 * h, h, scale=0.5)
    w_ih, bias = rnd(layers - 1, g, 4 * h, h, scale=0.5), rnd(layers - 1, g, 4 * h)
    keep = torch.rand(t + layers, (layers - 1) * g, h, b, generator=gen, dtype=torch.float64) > 0.3
    for mask in (None, keep.double() / 0.7 if layers > 1 else None):

        def f(*a: torch.Tensor, mask: torch.Tensor | None = mask) -> torch.Tensor:
            return _ChainLSTM.apply(*a, mask)

        assert torch.autograd.gradcheck(f, (xw, w_hh, w_ih, bias))


def test_dropout_only_in_training() -> None:
    model = _model("lstm-linear", 2, torch.float64, dropout=0.3)
    items, _ = _batch(torch.float64)
    tm = [(i, x.transpose(0, 1)) for i, x in items]
    model.eval()
    with torch.no_grad():
        ev = forward_batched(model, tm)
        ref = [model(i, x)[0].transpose(0, 1) for i, x in items]
    assert all(torch.allclose(a, r, atol=1e-12) for a, r in zip(ev, ref, strict=True))
    model.train()
    with torch.no_grad():
        torch.manual_seed(5)
        one = forward_batched(model, tm)
        torch.manual_seed(5)
        same = forward_batched(model, tm)
        other = forward_batched(model, tm)
    assert all(torch.equal(a, c) for a, c in zip(one, same, strict=True))
    assert not all(torch.allclose(a, c) for a, c in zip(one, other, strict=True))
    assert not all(torch.allclose(a, e) for a, e in zip(one, ev, strict=True))


@pytest.mark.parametrize(("objective", "cost_bps"), [("sharpe", 0.0), ("vol_scaled", 0.0), ("sharpe", 5.0)])
def test_training_batched_equals_per_market(
    make_markets: Callable[..., list[Market]], objective: str, cost_bps: float
) -> None:
    markets = make_markets(rows=300)
    cfg = ModelConfig(variant="lstm-linear", transfer_dim=4, decoder_dim=4, dropout=0.0)
    tc = TrainConfig(
        steps=6, batch_markets=3, windows_per_market=3, seq_len=32, val_bars=0, seed=3,
        objective=objective, cost_bps=cost_bps, vol_span=10,
    )  # fmt: skip
    runs = []
    for batched in (False, True):
        model = QuantNet(cfg, {m.name: m.assets for m in markets}, seed=3).double()
        res = train(model, markets, tc, batched=batched)
        runs.append(([h["loss"] for h in res.history], model.state_dict()))
    (la, sa), (lb, sb) = runs
    assert len(la) == 6 and max(abs(a - b) for a, b in zip(la, lb, strict=True)) < 1e-6
    assert la[0] != la[-1]  # the weights moved
    for k in sa:
        assert torch.allclose(sa[k].double(), sb[k].double(), atol=1e-6), k


def test_fused_kernel_equals_the_pytorch_recurrence(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled recurrence (models.native) and the TorchScript wavefront it replaces give the
    same loss and gradients; its own backward is the gradient (gradcheck, float64)."""
    import models.batched as mb
    from models.native import lstm_kernel

    if lstm_kernel() is None:
        pytest.skip("no C compiler: the fused kernel is unavailable here")
    t, i, h = 6, 4, 3
    gen = torch.Generator().manual_seed(4)
    for b, strided in ((5, False), (9, True)):  # scalar windows; a full float64 vector and one more
        x = torch.randn(i, t, b, generator=gen, dtype=torch.float64)
        x = (x.transpose(0, 1) if strided else x.transpose(0, 1).contiguous()).requires_grad_()
        w_ih = (torch.randn(4 * h, i, generator=gen, dtype=torch.float64) * 0.5).requires_grad_()
        bias = torch.randn(4 * h, generator=gen, dtype=torch.float64).requires_grad_()
        w_hh = (torch.randn(4 * h, h, generator=gen, dtype=torch.float64) * 0.5).requires_grad_()
        assert torch.autograd.gradcheck(mb._FusedLSTM.apply, (x, w_ih, bias, w_hh))
        # dropout on the output in the same pass: the layer's h times the mask, gradients included
        mask = (torch.rand(t, h, b, generator=gen, dtype=torch.float64) > 0.3).double() / 0.7
        args = (x, w_ih, bias, w_hh)
        assert torch.autograd.gradcheck(lambda *a, mask=mask: mb._FusedLSTM.apply(*a, mask), args)
        out, ref = mb._FusedLSTM.apply(*args, mask), mb._FusedLSTM.apply(*args) * mask
        assert (out - ref).abs().max() < 1e-14
        g = torch.randn(t, h, b, generator=gen, dtype=torch.float64)
        for a, r in zip(torch.autograd.grad(out, args, g), torch.autograd.grad(ref, args, g), strict=True):
            assert (a - r).abs().max() < 1e-12
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        model = _model("lstm-lstm", 2, dtype)
        model.train()
        fused_loss, fused = _loss_and_grads(model, True, dtype)
        with monkeypatch.context() as m:
            m.setattr(mb, "lstm_kernel", lambda: None)
            ref_loss, ref = _loss_and_grads(model, True, dtype)
        assert abs(fused_loss - ref_loss) < tol
        for k in ref:
            assert torch.allclose(fused[k], ref[k], rtol=0.0, atol=tol), (k, (fused[k] - ref[k]).abs().max())


@pytest.mark.parametrize(
    ("dtype", "windows"), [(torch.float64, 20), (torch.float32, 37), (torch.float32, 16)]
)
@pytest.mark.parametrize(("i", "h"), [(9, 6), (10, 5)])  # blocks of 8 and 4 gate rows, 4 and 5 columns
def test_fused_kernel_equals_a_reference_cell(dtype: torch.dtype, windows: int, i: int, h: int) -> None:
    """Full vector blocks of windows and a remainder, against nn.LSTM's cell written out in float64."""
    import models.batched as mb
    from models.native import lstm_kernel

    if lstm_kernel() is None:
        pytest.skip("no C compiler: the fused kernel is unavailable here")
    t, b = 7, windows
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(t, i, b, generator=gen, dtype=torch.float64)
    w_ih = torch.randn(4 * h, i, generator=gen, dtype=torch.float64) * 0.5
    bias = torch.randn(4 * h, generator=gen, dtype=torch.float64)
    w_hh = torch.randn(4 * h, h, generator=gen, dtype=torch.float64) * 0.5
    gy = torch.randn(t, h, b, generator=gen, dtype=torch.float64)
    ours = [v.to(dtype, copy=True).requires_grad_() for v in (x, w_ih, bias, w_hh)]
    y = mb._FusedLSTM.apply(*ours)
    (y * gy.to(dtype)).sum().backward()
    ref = [v.clone().requires_grad_() for v in (x, w_ih, bias, w_hh)]
    x2, wi2, b2, wh2 = ref
    hh, cc, outs = torch.zeros(h, b, dtype=torch.float64), torch.zeros(h, b, dtype=torch.float64), []
    for s in range(t):
        i_, f, g, o = (wi2 @ x2[s] + b2[:, None] + wh2 @ hh).split(h)
        cc = f.sigmoid() * cc + i_.sigmoid() * g.tanh()
        hh = o.sigmoid() * cc.tanh()
        outs.append(hh)
    (torch.stack(outs) * gy).sum().backward()
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    assert (y.double() - torch.stack(outs)).abs().max() < tol
    for a, r in zip(ours, ref, strict=True):
        assert (a.grad.double() - r.grad).abs().max() < tol * max(1.0, r.grad.abs().max().item())


@pytest.mark.parametrize("steps", [5, 21, 40])  # below, at and past whole vectors of steps
@pytest.mark.parametrize("f", [3, 7])  # rows of h: fewer than a block of five; one and two more
def test_fused_head_is_held_sums_of_the_logits(steps: int, f: int) -> None:
    """The fused output layer and objective sums, reading each window's returns off the series'
    carry with its three corrected rows, equal held_sums of the head's doubled logits over the
    written-out returns, and its backward is their gradient (gradcheck, float64)."""
    import models.batched as mb
    from models.loss import CarriedWindows, held_sums
    from models.native import lstm_kernel

    if lstm_kernel() is None:
        pytest.skip("no C compiler: the fused kernel is unavailable here")
    n, b, rows = 6, 9, 60  # assets go four at a time: one block and two single rows
    gen = torch.Generator().manual_seed(2)
    h = torch.randn(f, b, steps, generator=gen, dtype=torch.float64).requires_grad_()
    w = (torch.randn(n, f, generator=gen, dtype=torch.float64) * 0.5).requires_grad_()
    bias = torch.randn(n, generator=gen, dtype=torch.float64).requires_grad_()
    starts = torch.randint(0, rows - steps + 1, (b,), generator=gen)
    starts[0], starts[1] = 0, rows - steps  # the series' first and last rows
    after = torch.randint(0, steps, (n, b), generator=gen)
    at = torch.randint(0, steps, (n, b), generator=gen)
    after[0, :3], at[1, :3] = 0, steps - 1
    at[2, 0] = after[2, 0]  # the same row: set after it is scaled
    keep = (torch.rand(n, b, generator=gen) > 0.5).double()
    value = torch.randn(n, b, generator=gen, dtype=torch.float64)
    carry = torch.randn(n, rows, generator=gen, dtype=torch.float64)
    ret = CarriedWindows(carry, starts, steps, after, keep, at, value)
    dense = ret.dense()
    assert torch.equal(dense[:, :, 0][at != 0], torch.zeros(int((at != 0).sum()), dtype=torch.float64))
    assert torch.equal(dense[2, 0, at[2, 0]], value[2, 0])
    ours = mb._FusedHead.apply(h, w, bias, ret)
    ref = held_sums(2.0 * (torch.einsum("nk,kbt->nbt", w, h) + bias[:, None, None]), dense)
    for x, y in zip(ours, ref, strict=True):
        assert x.shape == (n, b) and (x - y).abs().max() < 1e-12
    assert torch.autograd.gradcheck(lambda *a: mb._FusedHead.apply(*a, ret), (h, w, bias))
    late = CarriedWindows(carry, starts + 1, steps, after, keep, at, value)
    with pytest.raises(IndexError, match="past 60 rows"):
        mb._FusedHead.apply(h, w, bias, late)


def test_fused_dropout_masks_drop_the_share_asked_independently_and_follow_the_seed() -> None:
    import models.batched as mb
    from models.native import lstm_kernel

    if lstm_kernel() is None:
        pytest.skip("no C compiler: the fused kernel is unavailable here")
    like = torch.empty(1000, 10, 100)
    torch.manual_seed(5)
    a = mb._dropout_mask(like.shape, like, 0.7)
    torch.manual_seed(5)
    assert torch.equal(a, mb._dropout_mask(like.shape, like, 0.7))
    assert not torch.equal(a, mb._dropout_mask(like.shape, like, 0.7))
    dropped = (a == 0).flatten().double()
    assert abs(dropped.mean().item() - 0.3) < 0.003  # 6.5 binomial standard deviations
    assert torch.allclose(a[a != 0], torch.tensor(1 / 0.7))
    for lag in (1, 100, 1000):  # neighbours in windows, units and steps
        corr = torch.corrcoef(torch.stack([dropped[:-lag], dropped[lag:]]))[0, 1].item()
        assert abs(corr) < 0.006, lag
