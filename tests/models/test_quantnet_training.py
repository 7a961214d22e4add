"""Training learns, is reproducible, keeps validation out of reach, and stops early."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import models.training
from models import Market, ModelConfig, QuantNet, TrainConfig, dated_splits, evaluate, train
from models.data import model_arrays

SMALL = ModelConfig(
    variant="lstm-linear", transfer_dim=4, decoder_dim=4, encoder_layers=1, decoder_layers=1, dropout=0.0
)
CFG = TrainConfig(
    steps=120,
    batch_markets=3,
    windows_per_market=4,
    seq_len=32,
    lr=0.02,
    eval_every=20,
    patience=0,
    seed=3,
    val_bars=120,
)


def _fit(markets: list[Market], cfg: TrainConfig = CFG) -> tuple[QuantNet, models.training.TrainResult]:
    model = QuantNet(SMALL, {m.name: m.assets for m in markets}, seed=cfg.seed)
    return model, train(model, markets, cfg)


def _sharpe(model: QuantNet, markets: list[Market], rows: str) -> float:
    splits = dated_splits(markets, CFG.test_bars, CFG.val_bars)
    return evaluate(model, markets, rows=rows, splits=splits, seq_len=CFG.seq_len)["mean"]  # type: ignore[arg-type]


def _shuffle_training_rows(markets: list[Market], seed: int) -> list[Market]:
    """Permute the time order of each market's training rows; validation rows stay as they were."""
    rng = np.random.default_rng(seed)
    splits = dated_splits(markets, CFG.test_bars, CFG.val_bars)
    out = []
    for m in markets:
        v0 = splits.bounds(m)[0]
        r = m.returns.copy()
        r[:v0] = r[rng.permutation(v0)]
        out.append(Market(m.name, m.assets, m.index, r))
    return out


def test_training_raises_sharpe_well_above_untrained(make_markets: Callable[..., list[Market]]) -> None:
    markets = make_markets()
    untrained = QuantNet(SMALL, {m.name: m.assets for m in markets}, seed=CFG.seed)
    before = _sharpe(untrained, markets, "train")
    model, result = _fit(markets)
    after = _sharpe(model, markets, "train")
    assert after > 2.0 and after > before + 1.5, (before, after)
    assert result.best_val_sharpe is not None and result.best_val_sharpe > 1.5


def test_fixed_seed_gives_identical_results(make_markets: Callable[..., list[Market]]) -> None:
    markets = make_markets(rows=300)
    cfg = CFG.model_copy(update={"steps": 25, "eval_every": 10})
    (a, ra), (b, rb), (c, _) = (
        _fit(markets, cfg),
        _fit(markets, cfg),
        _fit(markets, cfg.model_copy(update={"seed": 4})),
    )
    assert [h["loss"] for h in ra.history] == [h["loss"] for h in rb.history]
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert any(
        not torch.equal(va, vc)
        for va, vc in zip(a.state_dict().values(), c.state_dict().values(), strict=True)
    )


def test_training_keeps_the_collector_off_the_heap_and_hands_it_back(
    make_markets: Callable[..., list[Market]],
) -> None:
    """train() freezes the heap for its loop (no full collections over it) and unfreezes it after,
    also when it fails; a caller's own freeze is left alone."""
    import gc

    markets = make_markets(rows=300)
    cfg = CFG.model_copy(update={"steps": 3, "eval_every": 3})
    seen: list[int] = []
    _fit(markets, cfg.model_copy(update={"steps": 1}))
    model = QuantNet(SMALL, {m.name: m.assets for m in markets}, seed=cfg.seed)
    train(model, markets, cfg, callback=lambda rec: seen.append(gc.get_freeze_count()))
    assert len(seen) == 3 and min(seen) > 1000 and gc.get_freeze_count() == 0
    with pytest.raises(ValueError):
        train(model, markets, cfg, callback=lambda rec: (_ for _ in ()).throw(ValueError("stop")))
    assert gc.get_freeze_count() == 0 and gc.isenabled()
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        train(model, markets, cfg)
        assert 0.99 * frozen < gc.get_freeze_count() <= frozen  # neither refrozen nor thawed
    finally:
        gc.unfreeze()


def test_shuffled_targets_do_not_carry_over_to_validation(make_markets: Callable[..., list[Market]]) -> None:
    """Shuffling the training rows destroys what can be learnt; if nothing leaks from the future,
    the validation Sharpe of that run is chance level. One evaluation at the end, so picking the
    best checkpoint on validation cannot inflate it."""
    markets = make_markets(sizes=(4,) * 6)
    cfg = CFG.model_copy(update={"batch_markets": 6, "eval_every": CFG.steps})
    real, _ = _fit(markets, cfg)
    shuffled, _ = _fit(_shuffle_training_rows(markets, 0), cfg)
    real_val = _sharpe(real, markets, "val")
    shuffled_val = _sharpe(shuffled, markets, "val")
    assert real_val > 1.5
    assert shuffled_val < 0.75 and shuffled_val < real_val - 1.5, (real_val, shuffled_val)


def test_the_leakage_check_has_teeth(
    make_markets: Callable[..., list[Market]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a planted look-ahead bug (input at t = return at t), the same shuffled run scores high."""

    def leaky(returns: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        _, y, m = model_arrays(returns)
        return y.copy(), y, m

    monkeypatch.setattr(models.training, "model_arrays", leaky)
    markets = make_markets(sizes=(4,) * 6)
    cfg = CFG.model_copy(update={"batch_markets": 6, "eval_every": CFG.steps})
    shuffled, _ = _fit(_shuffle_training_rows(markets, 0), cfg)
    assert _sharpe(shuffled, markets, "val") > 3.0


def test_input_scale_is_fitted_on_training_rows_only(make_markets: Callable[..., list[Market]]) -> None:
    markets = make_markets(rows=300)
    cfg = CFG.model_copy(update={"steps": 2})
    a, _ = _fit(markets, cfg)
    changed = []
    splits = dated_splits(markets, cfg.test_bars, cfg.val_bars)
    for m in markets:
        r = m.returns.copy()
        r[splits.bounds(m)[0] :] *= 10
        changed.append(Market(m.name, m.assets, m.index, r))
    b, _ = _fit(changed, cfg)
    for m in markets:
        scale = a.markets[a.index(m.name)].input_scale
        assert torch.equal(scale, b.markets[b.index(m.name)].input_scale)
        assert not torch.allclose(scale, torch.ones_like(scale))


def test_early_stopping_keeps_best_weights_and_logs(
    tmp_path: Path, make_markets: Callable[..., list[Market]]
) -> None:
    markets = make_markets(rows=300)
    cfg = CFG.model_copy(update={"steps": 400, "eval_every": 5, "patience": 2, "lr": 0.2})
    log = tmp_path / "run" / "log.jsonl"
    model, result = _fit_logged(markets, cfg, log)
    assert result.stopped_early and result.steps < 400
    assert _sharpe(model, markets, "val") == pytest.approx(result.best_val_sharpe, abs=1e-5)
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(lines) == result.steps
    assert {"step", "loss", "train_sharpe", "elapsed"} <= set(lines[0])
    assert lines[4]["val_sharpe"] is not None
    csv_log = tmp_path / "log.csv"
    _fit_logged(markets, cfg.model_copy(update={"steps": 6}), csv_log)
    rows = list(csv.DictReader(csv_log.open()))
    assert len(rows) == 6 and rows[4]["val_sharpe"] != ""


def _fit_logged(
    markets: list[Market], cfg: TrainConfig, log: Path
) -> tuple[QuantNet, models.training.TrainResult]:
    model = QuantNet(SMALL, {m.name: m.assets for m in markets}, seed=cfg.seed)
    seen: list[dict[str, object]] = []
    result = train(model, markets, cfg, log_path=log, callback=seen.append)
    assert len(seen) == result.steps
    return model, result
