"""Incremental inference reproduces the full-sequence pass bar by bar; warm-up and snapshots."""

from __future__ import annotations

import numpy as np
import pytest

from models import BASELINE_VARIANTS, TRANSFER_VARIANTS, ModelConfig, QuantNet, SignalStepper

MARKETS = {"us": [f"u{i}" for i in range(6)], "jp": ["j0", "j1"], "eu": [f"e{i}" for i in range(9)]}
T = 260


def _model(variant: str, seed: int = 0) -> QuantNet:
    cfg = ModelConfig(variant=variant, transfer_dim=6, decoder_dim=7, dropout=0.3)  # type: ignore[arg-type]
    model = QuantNet(cfg, MARKETS, seed=seed)
    rng = np.random.default_rng(seed)
    for name, assets in MARKETS.items():
        model.fit_input_scale(name, rng.normal(0, 0.02, (50, len(assets))))
    return model.eval()


def _history(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, assets in MARKETS.items():
        r = rng.normal(0.0, 0.02, (T, len(assets)))
        r[rng.random(r.shape) < 0.1] = np.nan
        r[:40, 0] = np.nan  # listed late
        out[name] = r
    return out


def _full(model: QuantNet, hist: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Full-sequence signals aligned with stepping: row t is the signal after feeding bar t."""
    pad = {k: np.vstack([v, np.full((1, v.shape[1]), np.nan)]) for k, v in hist.items()}
    return {k: model.signals(k, v)[1:] for k, v in pad.items()}


@pytest.mark.parametrize("variant", (*TRANSFER_VARIANTS, *BASELINE_VARIANTS))
def test_stepping_reproduces_full_sequence(variant: str) -> None:
    model = _model(variant)
    hist = _history()
    full = _full(model, hist)
    stepper = SignalStepper(model)
    worst = 0.0
    for t in range(T):
        out = stepper.step({k: v[t] for k, v in hist.items()})
        for k in MARKETS:
            worst = max(worst, float(np.abs(out[k] - full[k][t]).max()))
    assert worst < 1e-6
    assert stepper.bars_seen == dict.fromkeys(MARKETS, T)


def test_markets_step_independently_on_their_own_calendars() -> None:
    model = _model("lstm-lstm")
    hist = _history(1)
    full = _full(model, hist)
    stepper = SignalStepper(model)
    pos = dict.fromkeys(MARKETS, 0)
    rng = np.random.default_rng(5)
    while min(pos.values()) < T:
        due = [k for k in MARKETS if pos[k] < T and rng.random() < 0.6]
        out = stepper.step({k: hist[k][pos[k]] for k in due})
        assert set(out) == set(due)
        for k in due:
            np.testing.assert_allclose(out[k], full[k][pos[k]], rtol=0, atol=1e-6)
            pos[k] += 1


def test_warm_up_then_step_matches_and_symbol_mappings_work() -> None:
    model = _model("lstm-linear")
    hist = _history(2)
    full = _full(model, hist)
    stepper = SignalStepper(model)
    warm = stepper.warm_up({k: v[:200] for k, v in hist.items()})
    for k in MARKETS:
        np.testing.assert_allclose(warm[k], full[k][199], rtol=0, atol=1e-6)
    for t in range(200, T):
        row = {k: v[t] for k, v in hist.items()}
        row["jp"] = {a: x for a, x in zip(MARKETS["jp"], hist["jp"][t], strict=True) if np.isfinite(x)}
        out = stepper.step(row)
        for k in MARKETS:
            np.testing.assert_allclose(out[k], full[k][t], rtol=0, atol=1e-6)
    np.testing.assert_allclose(stepper.latest("eu"), full["eu"][-1], rtol=0, atol=1e-6)


def test_snapshot_restore_continues_identically() -> None:
    model = _model("lstm-lstm")
    hist = _history(3)
    a = SignalStepper(model)
    for t in range(100):
        a.step({k: v[t] for k, v in hist.items()})
    blob = a.snapshot()
    b = SignalStepper(model)
    b.restore(blob)
    assert b.bars_seen == a.bars_seen
    for t in range(100, 130):
        row = {k: v[t] for k, v in hist.items()}
        oa, ob = a.step(row), b.step(row)
        for k in MARKETS:
            np.testing.assert_array_equal(oa[k], ob[k])
    with pytest.raises(ValueError, match="different model"):
        SignalStepper(_model("lstm-lstm", seed=9)).restore(blob)
    with pytest.raises(ValueError, match="not a stepper snapshot"):
        b.restore(b"garbage")


def test_reset_and_input_errors() -> None:
    model = _model("linear-lstm")
    stepper = SignalStepper(model, markets=["jp"])
    first = stepper.step_market("jp", [0.01, -0.02])
    stepper.step_market("jp", [0.03, 0.0])
    stepper.reset(["jp"])
    np.testing.assert_array_equal(stepper.step_market("jp", [0.01, -0.02]), first)
    with pytest.raises(ValueError, match="expected 2"):
        stepper.step_market("jp", [0.01])
    with pytest.raises(KeyError, match="unknown asset"):
        stepper.step({"jp": {"zz": 0.1}})
    with pytest.raises(KeyError, match="not in the stepper"):
        stepper.step_market("us", np.zeros(6))
