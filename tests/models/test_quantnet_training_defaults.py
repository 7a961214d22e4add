"""Training as the paper and its released code do it: batch and learning-rate defaults, dropout
per part, short assets out of a window's loss, a smoothed selection criterion after min_steps, and
the deep-momentum (vol-scaled) objective."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
import torch

from models import Market, ModelConfig, QuantNet, TrainConfig, evaluate, train
from models.data import vol_scale

TINY = dict(transfer_dim=3, decoder_dim=3, encoder_layers=1, decoder_layers=1, dropout=0.0)


def test_defaults_sit_in_the_papers_ranges() -> None:
    cfg = TrainConfig()
    assert 16 <= cfg.batch_markets * cfg.windows_per_market <= 96  # Table 3: QuantNet batch 16-96
    assert cfg.learning_rate("lstm-linear") == 0.01 and cfg.learning_rate("notransfer-lstm") == 0.001
    assert cfg.learning_rate("notransfer-linear") == 0.001
    assert TrainConfig(lr=0.05).learning_rate("notransfer-lstm") == 0.05
    assert cfg.grad_clip > 0
    # min_bars: max(20, k/4), at most k/2
    assert [cfg.window_min_bars(k) for k in (252, 100, 40, 16, 4)] == [63, 25, 20, 8, 2]
    assert TrainConfig(min_bars=5).window_min_bars(252) == 5


@pytest.mark.parametrize(("lr", "same"), [(0.001, True), (0.01, False)])
def test_no_transfer_models_train_at_the_released_rate(
    make_markets: Callable[..., list[Market]], lr: float, same: bool
) -> None:
    markets = make_markets(rows=200)
    base = dict(steps=3, batch_markets=3, seq_len=16, val_bars=0, grad_clip=0.0)

    def fit(**kw: object) -> dict[str, torch.Tensor]:
        model = QuantNet(
            ModelConfig(variant="notransfer-lstm", **TINY), {m.name: m.assets for m in markets}, seed=1
        )  # type: ignore[arg-type]
        train(model, markets, TrainConfig(**{**base, **kw}))  # type: ignore[arg-type]
        return model.state_dict()

    default, explicit = fit(), fit(lr=lr)
    equal = all(torch.equal(a, b) for a, b in zip(default.values(), explicit.values(), strict=True))
    assert equal is same


def test_dropout_per_part() -> None:
    cfg = ModelConfig(
        variant="lstm-lstm", encoder_layers=2, decoder_layers=2, transfer_layers=2, dropout=0.3,
        encoder_dropout=0.5, decoder_dropout=0.0,
    )  # fmt: skip
    model = QuantNet(cfg, {"m": ("a", "b")}, seed=0)
    net = model.markets[0]
    assert net.encoder.lstm.dropout == 0.5  # type: ignore[union-attr]
    assert model.shared.lstm.dropout == 0.3  # type: ignore[union-attr]
    assert net.decoder.lstm.dropout == 0.0  # type: ignore[union-attr]


def test_an_asset_short_of_min_bars_gets_no_gradient(make_markets: Callable[..., list[Market]]) -> None:
    """Asset 0 of market 0 has a bar only every fifth row: 20% of any window, below min_bars
    (k/2 for these short windows), so its output weights never move; the other assets' do."""
    (m,) = make_markets(sizes=(3,), rows=160, missing=0.0)
    r = m.returns.copy()
    r[np.arange(len(r)) % 5 != 0, 0] = np.nan
    sparse = Market(m.name, m.assets, m.index, r)
    model = QuantNet(ModelConfig(variant="lstm-linear", **TINY), {m.name: m.assets}, seed=0)  # type: ignore[arg-type]
    head = model.markets[0].head
    w0, b0 = head.weight.detach().clone(), head.bias.detach().clone()
    cfg = TrainConfig(steps=5, seq_len=20, windows_per_market=3, val_bars=0, lr=0.05)
    assert cfg.window_min_bars(20) == 10
    train(model, [sparse], cfg)
    assert torch.equal(head.weight[0], w0[0]) and head.bias[0] == b0[0]
    assert not torch.equal(head.weight[1], w0[1])
    # with min_bars 2 the sparse asset trains too
    model2 = QuantNet(ModelConfig(variant="lstm-linear", **TINY), {m.name: m.assets}, seed=0)  # type: ignore[arg-type]
    train(model2, [sparse], cfg.model_copy(update={"min_bars": 2}))
    assert not torch.equal(model2.markets[0].head.weight[0], w0[0])


def test_kept_weights_are_the_best_smoothed_check_after_min_steps(
    make_markets: Callable[..., list[Market]],
) -> None:
    markets = make_markets(rows=300)
    cfg = TrainConfig(
        steps=60, batch_markets=3, seq_len=16, val_bars=80, eval_every=5, val_smoothing=3, min_steps=20,
        patience=0, lr=0.05, windows_per_market=2,
    )  # fmt: skip
    model = QuantNet(ModelConfig(variant="lstm-linear", **TINY), {m.name: m.assets for m in markets}, seed=2)  # type: ignore[arg-type]
    result = train(model, markets, cfg)
    checks = [(h["step"], h["val_sharpe"]) for h in result.history if "val_sharpe" in h]
    assert [s for s, _ in checks] == list(range(5, 61, 5))
    vals = np.array([v for _, v in checks])
    smooth = np.array([vals[max(0, i - 2) : i + 1].mean() for i in range(len(vals))])
    eligible = [i for i, (s, _) in enumerate(checks) if s >= 20]
    best = max(eligible, key=lambda i: smooth[i])
    assert result.best_step == checks[best][0]
    assert result.best_val_sharpe == pytest.approx(vals[best], abs=1e-12)
    assert result.history[-1]["best_step"] == result.best_step
    # without smoothing and min_steps: the raw best check
    early = train(
        QuantNet(ModelConfig(variant="lstm-linear", **TINY), {m.name: m.assets for m in markets}, seed=2),  # type: ignore[arg-type]
        markets,
        cfg.model_copy(update={"min_steps": 0, "val_smoothing": 1}),
    )
    raw = [h["val_sharpe"] for h in early.history if "val_sharpe" in h]
    assert early.best_step == 5 * (int(np.argmax(raw)) + 1)


def test_vol_scale_is_the_strategys_ewm_sizing_from_past_returns() -> None:
    rng = np.random.default_rng(3)
    r = rng.normal(0, 0.01, (80, 3)) * np.array([1.0, 2.0, 0.5])
    r[0, 1] = np.nan
    r[10:14, 2] = np.nan
    got = vol_scale(r, vol_target=0.15, span=10, periods_per_year=252.0)
    ewm = pd.DataFrame(r**2).ewm(span=10, adjust=False, ignore_na=True).mean().shift(1)
    want = 0.15 / np.sqrt(252.0 * ewm.to_numpy())
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert np.isnan(got[0]).all() and np.isnan(got[1, 1]) and np.isfinite(got[2, 1])


def test_vol_scaled_objective_scores_positions_s_times_target_over_sigma(
    make_markets: Callable[..., list[Market]],
) -> None:
    """evaluate(vol_scaled=...) equals the Sharpe of s·0.15/σ_t times r, cost on the change of that
    position, recomputed in NumPy from the model's signals (gap-free data; rows without a σ yet
    sit out)."""
    _, m = make_markets(sizes=(3, 3), rows=120, missing=0.0)  # the second market has no late listing
    model = QuantNet(ModelConfig(variant="lstm-linear", **TINY), {m.name: m.assets}, seed=0)  # type: ignore[arg-type]
    s = model.signals(m.name, m.returns)
    v = vol_scale(m.returns, vol_target=0.15, span=20, periods_per_year=252.0)
    assert np.isnan(v[1]).all() and np.isfinite(v[2:]).all()  # row 0's return is 0: no σ before row 2
    w, r = (s * v)[2:], m.returns[2:]
    pnl = w * r
    pnl[1:] -= 10e-4 * np.abs(np.diff(w, axis=0))
    want = np.mean(pnl.mean(0) / pnl.std(0, ddof=1)) * np.sqrt(252.0)
    got = evaluate(model, [m], rows="all", cost_bps=10.0, vol_scaled=(0.15, 20))["mean"]
    assert got == pytest.approx(want, rel=1e-5)
    plain = evaluate(model, [m], rows="all", cost_bps=10.0)["mean"]
    assert abs(plain - want) > 1e-3
    cfg = TrainConfig(steps=3, seq_len=16, val_bars=30, eval_every=3, min_steps=0, objective="vol_scaled")
    result = train(model, [m], cfg)
    assert result.best_val_sharpe == pytest.approx(
        evaluate(
            model, [m.rows(0, 120)], rows="val", splits=result.splits, seq_len=16, vol_scaled=(0.15, 60)
        )["mean"],
        abs=1e-6,
    )
