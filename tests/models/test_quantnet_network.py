"""Shapes, causality and where gradients flow (shared layer from every market, own params only
from their own market)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import BASELINE_VARIANTS, TRANSFER_VARIANTS, ModelConfig, QuantNet, quantnet_loss

MARKETS = {"us": ["a", "b", "c", "d"], "jp": ["x", "y"], "eu": ["p", "q", "r", "s", "t", "u"]}
ALL = (*TRANSFER_VARIANTS, *BASELINE_VARIANTS)
RECURRENT_PARTS = {  # (h, c) states kept: encoder, transfer, decoder
    "linear-linear": 0,
    "linear-lstm": 1,
    "lstm-linear": 2,
    "lstm-lstm": 3,
    "notransfer-linear": 0,
    "notransfer-lstm": 1,
}


def _model(variant: str, **kw: object) -> QuantNet:
    cfg = ModelConfig(variant=variant, transfer_dim=5, decoder_dim=6, dropout=0.0, **kw)  # type: ignore[arg-type]
    return QuantNet(cfg, MARKETS, seed=0)


@pytest.mark.parametrize("variant", ALL)
def test_shapes_and_range(variant: str) -> None:
    model = _model(variant)
    for name, assets in MARKETS.items():
        x = torch.randn(3, 11, len(assets)) * 0.01
        s, state = model(name, x)
        assert s.shape == (3, 11, len(assets))
        assert bool((s.abs() < 1).all())
        assert sum(p is not None for p in state) == RECURRENT_PARTS[variant]
    assert (model.shared is None) == (variant in BASELINE_VARIANTS)


@pytest.mark.parametrize("variant", ALL)
def test_forward_many_equals_forward(variant: str) -> None:
    model = _model(variant).eval()
    items = [(model.index(n), torch.randn(2, 9, len(a))) for n, a in MARKETS.items()]
    many = model.forward_many(items)
    for (i, x), s in zip(items, many, strict=True):
        torch.testing.assert_close(s, model(i, x)[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("variant", ALL)
def test_signals_are_causal(variant: str) -> None:
    """Changing inputs at t and later never changes a signal before t (no look-ahead)."""
    model = _model(variant).eval()
    x = torch.randn(1, 20, 4)
    y = x.clone()
    y[:, 12:] += 5.0
    s1, s2 = model("us", x)[0], model("us", y)[0]
    torch.testing.assert_close(s1[:, :12], s2[:, :12], rtol=0, atol=0)
    assert not torch.allclose(s1[:, 12:], s2[:, 12:])


@pytest.mark.parametrize("variant", TRANSFER_VARIANTS)
def test_gradients_reach_shared_layer_from_every_market_and_own_params_only(variant: str) -> None:
    model = _model(variant)
    for name, assets in MARKETS.items():
        model.zero_grad(set_to_none=True)
        x = torch.randn(2, 15, len(assets)) * 0.01
        r = torch.randn(2, 15, len(assets)) * 0.01
        s = model.forward_many([(model.index(name), x)])[0]
        quantnet_loss([(s, r, torch.ones_like(r, dtype=torch.bool))]).backward()
        shared = list(model.shared_parameters())
        assert shared and all(p.grad is not None and p.grad.abs().sum() > 0 for p in shared), name
        for other in MARKETS:
            grads = [p.grad for p in model.market_parameters(other)]
            if other == name:
                assert all(g is not None and g.abs().sum() > 0 for g in grads)
            else:
                assert all(g is None for g in grads), (name, other)


def test_baselines_share_nothing() -> None:
    for variant in BASELINE_VARIANTS:
        model = _model(variant)
        assert list(model.shared_parameters()) == []
        total = sum(p.numel() for p in model.parameters())
        assert total == sum(sum(p.numel() for p in model.market_parameters(m)) for m in MARKETS)


def test_seeded_init_is_reproducible_and_keeps_global_rng() -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = _model("lstm-linear")
    after = torch.rand(1)
    b = _model("lstm-linear")
    assert torch.equal(before, after)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_add_market_and_name_errors() -> None:
    model = _model("lstm-lstm")
    i = model.add_market("hk", ["h1", "h2", "h3"], seed=1)
    assert model.index("hk") == i == 3
    assert model("hk", torch.zeros(1, 4, 3))[0].shape == (1, 4, 3)
    with pytest.raises(ValueError, match="already"):
        model.add_market("hk", ["z"])
    with pytest.raises(ValueError, match="unique"):
        model.add_market("kr", ["z", "z"])
    with pytest.raises(KeyError, match="not in the model"):
        model.index("nope")


def test_encodings_are_the_encoder_and_transfer_outputs() -> None:
    """Linear-linear with one layer each: e_t = W x_t / scale + b and z_t = Z e_t + b_Z, with x_t the
    returns of row t-1 (0 for missing entries; row 0 has no past: NaN), recomputed in NumPy."""
    cfg = ModelConfig(variant="linear-linear", transfer_dim=3, encoder_layers=1, transfer_layers=1)
    model = QuantNet(cfg, MARKETS, seed=4)
    rng = np.random.default_rng(0)
    r = rng.normal(0, 0.01, (40, 2))
    r[5, 1] = np.nan
    model.fit_input_scale("jp", r)
    net = model.markets[model.index("jp")]
    x = np.vstack([np.full((1, 2), np.nan), np.nan_to_num(r[:-1])]) / net.input_scale.numpy()
    lin = net.encoder.layers[0]  # type: ignore[union-attr]
    e = x @ lin.weight.detach().numpy().T + lin.bias.detach().numpy()
    shared = model.shared.layers[0]  # type: ignore[union-attr]
    z = e @ shared.weight.detach().numpy().T + shared.bias.detach().numpy()
    np.testing.assert_allclose(model.encodings("jp", r), e, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.encodings("jp", r, part="transfer"), z, rtol=1e-5, atol=1e-6)
    # LSTM encoder: causal, and the decoder on z reproduces the signals
    lstm = _model("lstm-lstm")
    enc = lstm.encodings("us", rng.normal(0, 0.01, (30, 4)), part="transfer")
    assert enc.shape == (30, 5)
    with pytest.raises(ValueError, match="no encoder"):
        _model("notransfer-lstm").encodings("us", r)


def test_encodings_feed_the_signals() -> None:
    model = _model("lstm-linear")
    r = np.random.default_rng(1).normal(0, 0.01, (25, 4))
    z = torch.as_tensor(model.encodings("us", r, part="transfer"), dtype=torch.float32).unsqueeze(0)
    net = model.markets[model.index("us")]
    with torch.no_grad():
        s = torch.tanh(net.head(net.decoder(z[:, 1:])[0]))[0].numpy()  # type: ignore[misc]
    s = np.vstack([np.zeros((1, 4)), s])
    np.testing.assert_allclose(s[1:], model.signals("us", r)[1:], atol=1e-6)  # decoder from zero state
    changed = r.copy()
    changed[10] += 0.05
    a, b = model.encodings("us", r), model.encodings("us", changed)
    np.testing.assert_array_equal(a[1:11], b[1:11])  # row t sees returns before t only
    assert np.isnan(a[0]).all()
    assert not np.allclose(a[11:], b[11:])
