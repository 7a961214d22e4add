"""Both ways the stepper computes a layer (one dense block-diagonal product for small problems,
batched per-market products for large ones) reproduce the full-sequence pass."""

from __future__ import annotations

import numpy as np
import pytest

import models.stepper as stepper_mod
from models import BASELINE_VARIANTS, TRANSFER_VARIANTS, ModelConfig, QuantNet, SignalStepper

MARKETS = {"us": [f"u{i}" for i in range(6)], "jp": ["j0", "j1"], "eu": [f"e{i}" for i in range(9)]}
T = 120


@pytest.mark.parametrize("dense_max", [0, 10**9])
@pytest.mark.parametrize("variant", (*TRANSFER_VARIANTS, *BASELINE_VARIANTS))
def test_dense_and_batched_paths_match_full_sequence(
    variant: str, dense_max: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stepper_mod, "_DENSE_MAX_MACS", dense_max)
    cfg = ModelConfig(variant=variant, transfer_dim=6, decoder_dim=7)  # type: ignore[arg-type]
    model = QuantNet(cfg, MARKETS, seed=3).eval()
    rng = np.random.default_rng(7)
    hist = {k: rng.normal(0.0, 0.02, (T, len(a))) for k, a in MARKETS.items()}
    pad = {k: np.vstack([v, np.full((1, v.shape[1]), np.nan)]) for k, v in hist.items()}
    full = {k: model.signals(k, v)[1:] for k, v in pad.items()}
    stepper = SignalStepper(model)
    assert {layer.dense for layer in stepper._layers} <= {bool(dense_max)}
    assert stepper._head_dense == bool(dense_max)
    stepper.warm_up({"jp": hist["jp"][:30]})
    pos = {"us": 0, "jp": 30, "eu": 0}
    blob = None
    while min(pos.values()) < T:
        due = [k for k in MARKETS if pos[k] < T and rng.random() < 0.6]
        out = stepper.step({k: hist[k][pos[k]] for k in due})
        for k in due:
            np.testing.assert_allclose(out[k], full[k][pos[k]], rtol=0, atol=1e-6)
            pos[k] += 1
        if blob is None and min(pos.values()) > T // 2:
            blob, at = stepper.snapshot(), dict(pos)
    other = SignalStepper(model)
    other.restore(blob)
    for k in MARKETS:
        np.testing.assert_allclose(other.latest(k), full[k][at[k] - 1], rtol=0, atol=1e-6)
