"""Checkpoint round trip, metadata, refusal of mismatched data, transfer to a new market."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from models import (
    CheckpointMismatch,
    Market,
    ModelConfig,
    QuantNet,
    SignalStepper,
    TrainConfig,
    check_assets,
    load_checkpoint,
    save_checkpoint,
    train,
)

SMALL = {"transfer_dim": 4, "decoder_dim": 4, "encoder_layers": 1, "decoder_layers": 1, "dropout": 0.0}
QUICK = TrainConfig(steps=20, batch_markets=2, seq_len=16, lr=0.02, eval_every=10, patience=0, val_bars=40)


def _trained(markets: list[Market], variant: str = "lstm-lstm") -> QuantNet:
    model = QuantNet(ModelConfig(variant=variant, **SMALL), {m.name: m.assets for m in markets}, seed=0)
    train(model, markets, QUICK)
    return model


def test_round_trip_gives_identical_signals(
    tmp_path: Path, make_markets: Callable[..., list[Market]]
) -> None:
    markets = make_markets(rows=200)
    model = _trained(markets)
    path = tmp_path / "m.pt"
    meta = save_checkpoint(path, model, train_config=QUICK, data=markets, periods_per_year=252.0)
    ckpt = load_checkpoint(path)
    for m in markets:
        np.testing.assert_array_equal(ckpt.model.signals(m.name, m.returns), model.signals(m.name, m.returns))
    a, b = SignalStepper(model), SignalStepper.from_checkpoint(path)
    assert a.fingerprint == b.fingerprint
    for t in range(30):
        row = {m.name: m.returns[t] for m in markets}
        oa, ob = a.step(row), b.step(row)
        for m in markets:
            np.testing.assert_array_equal(oa[m.name], ob[m.name])
    assert ckpt.meta == meta


def test_metadata_is_complete_and_plain(tmp_path: Path, make_markets: Callable[..., list[Market]]) -> None:
    markets = make_markets(rows=120)
    model = QuantNet(ModelConfig(variant="linear-lstm", **SMALL), {m.name: m.assets for m in markets}, seed=0)
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, train_config=QUICK, data=markets, periods_per_year=252.0)
    raw = torch.load(path, weights_only=True)  # plain python metadata: loads without pickled code
    meta = raw["meta"]
    assert meta["variant"] == "linear-lstm"
    assert meta["model"]["transfer_dim"] == 4
    assert [m["name"] for m in meta["markets"]] == [m.name for m in markets]
    assert meta["markets"][1]["assets"] == list(markets[1].assets)
    assert meta["features"]["input_lag"] == 1
    assert "training rows" in meta["features"]["normalisation"]  # the default train_std, stated
    assert meta["input_scaling"]["method"] == "train_std"
    assert meta["train"]["seq_len"] == 16
    assert meta["data"]["start"] == markets[0].index[0].isoformat()
    assert meta["data"]["markets"]["mkt2"]["rows"] == 120
    assert {"torch", "numpy", "python"} <= set(meta["versions"])


def test_mismatched_assets_are_refused(tmp_path: Path, make_markets: Callable[..., list[Market]]) -> None:
    markets = make_markets(rows=60)
    model = QuantNet(ModelConfig(**SMALL), {m.name: m.assets for m in markets}, seed=0)
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, data=markets)
    ckpt = load_checkpoint(path)
    a = list(markets[0].assets)
    with pytest.raises(CheckpointMismatch, match="different order"):
        check_assets(ckpt.model, {"mkt0": [a[1], a[0], *a[2:]]})
    with pytest.raises(CheckpointMismatch, match="missing from data: m0a3"):
        check_assets(ckpt.model, {"mkt0": a[:3]})
    with pytest.raises(CheckpointMismatch, match="not in model: zz"):
        check_assets(ckpt.model, {"mkt0": [*a, "zz"]})
    with pytest.raises(CheckpointMismatch, match="not in the model"):
        check_assets(ckpt.model, {"other": ["x"]})
    with pytest.raises(CheckpointMismatch, match="different order"):
        SignalStepper.from_checkpoint(path, expect_assets={"mkt0": a[::-1]})
    assert check_assets(ckpt.model, {"other": ["x"]}, allow_new=True) == ["other"]
    bad = Market("mkt0", tuple(a[::-1]), markets[0].index, markets[0].returns)
    with pytest.raises(CheckpointMismatch):
        train(ckpt.model, [bad], QUICK)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    p = tmp_path / "x.pt"
    torch.save({"state_dict": {}}, p)
    with pytest.raises(CheckpointMismatch, match="not a QuantNet checkpoint"):
        load_checkpoint(p)
    p.write_bytes(b"junk")
    with pytest.raises(CheckpointMismatch, match="not a loadable"):
        load_checkpoint(p)


@pytest.mark.parametrize("mode", ["frozen", "partial", "full"])
def test_transfer_to_a_new_market(
    tmp_path: Path, make_markets: Callable[..., list[Market]], mode: str
) -> None:
    old = make_markets(rows=200, sizes=(4, 3))
    model = _trained(old, "lstm-linear")
    path = tmp_path / "base.pt"
    save_checkpoint(path, model, train_config=QUICK, data=old)
    base = load_checkpoint(path)
    (new,) = make_markets(seed=7, rows=120, sizes=(5,))
    new = Market("new", new.assets, new.index, new.returns)
    assert check_assets(base.model, [new], allow_new=True) == ["new"]
    base.model.add_market("new", new.assets, seed=1)
    shared0 = [p.detach().clone() for p in base.model.shared_parameters()]
    old0 = [p.detach().clone() for p in base.model.market_parameters("mkt0")]
    cfg = QUICK.model_copy(update={"shared": mode})
    train(base.model, [new], cfg)
    shared1 = list(base.model.shared_parameters())
    changed = any(not torch.equal(a, b) for a, b in zip(shared0, shared1, strict=True))
    assert changed == (mode != "frozen")
    assert all(p.requires_grad for p in shared1)  # freezing is undone after training
    assert all(torch.equal(a, b) for a, b in zip(old0, base.model.market_parameters("mkt0"), strict=True))
    out = tmp_path / "tuned.pt"
    meta = save_checkpoint(out, base.model, train_config=cfg, data=[new], previous=base.meta)
    assert set(meta["data"]["markets"]) == {"mkt0", "mkt1", "new"}
    assert load_checkpoint(out).markets["new"] == new.assets


def test_feature_normalisation_states_the_scaling_and_old_files_still_load(
    tmp_path: Path, make_markets: Callable[..., list[Market]]
) -> None:
    markets = make_markets(rows=60)
    cfg = ModelConfig(**{**SMALL, "input_scaling": "none"})
    model = QuantNet(cfg, {m.name: m.assets for m in markets}, seed=0)
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, data=markets)
    assert load_checkpoint(path).meta["features"]["normalisation"] == "none"
    blob = torch.load(path, weights_only=True)
    blob["meta"]["features"]["input_lag"] = 2  # any other feature setting still refuses
    torch.save(blob, path)
    with pytest.raises(CheckpointMismatch, match="feature settings"):
        load_checkpoint(path)
