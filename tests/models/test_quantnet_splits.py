"""Dated splits: one calendar for every market, and nothing of the test block reaches training."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
import torch

from models import (
    Market,
    ModelConfig,
    QuantNet,
    TrainConfig,
    dated_splits,
    load_checkpoint,
    markets_from_frame,
    save_checkpoint,
    train,
)

SMALL = ModelConfig(
    variant="lstm-linear", transfer_dim=3, decoder_dim=3, encoder_layers=1, decoder_layers=1, dropout=0.1
)


def _staggered() -> list[Market]:
    """Three markets on different calendars: a long one, a short one that starts late, and one
    that trades every other business day."""
    cal = pd.bdate_range("2020-01-01", periods=100, tz="UTC")
    rng = np.random.default_rng(1)

    def mk(name: str, index: pd.DatetimeIndex) -> Market:
        return Market(name, (f"{name}0", f"{name}1"), index, rng.normal(0, 0.01, (len(index), 2)))

    return [mk("long", cal), mk("late", cal[60:]), mk("odd", cal[::2])]


def test_blocks_start_on_one_date_for_all_markets() -> None:
    markets = _staggered()
    cal = pd.bdate_range("2020-01-01", periods=100, tz="UTC")
    s = dated_splits(markets, test_bars=20, val_bars=15)
    # independently: the union calendar is `cal`; test = its last 20 bars, validation the 15 before
    assert s.test_start == cal[80] and s.val_start == cal[65]
    assert s.train_end == cal[64] and s.val_end == cal[79] and s.last == cal[99] and s.first == cal[0]
    assert s.interval_s == 86400.0
    for m in markets:
        v0, t0 = s.bounds(m)
        assert (m.index[:v0] < cal[65]).all() and (m.index[v0:t0] >= cal[65]).all()
        assert (m.index[v0:t0] < cal[80]).all() and (m.index[t0:] >= cal[80]).all()
    late = markets[1]
    assert s.bounds(late) == (5, 20)  # rows 60..64 train, 65..79 validation, 80..99 test
    odd = markets[2]  # bars at 0, 2, ..., 98: 33 train (0..64), 7 validation (66..78), 10 test
    assert s.bounds(odd) == (33, 40) and len(odd) == 50
    meta = s.to_meta()
    assert meta["test_start"] == cal[80].isoformat() and meta["val_end"] == cal[79].isoformat()
    assert type(s).from_meta(meta) == s


def test_calendar_too_short_is_refused() -> None:
    with pytest.raises(ValueError, match="leave none for training"):
        dated_splits(_staggered(), test_bars=60, val_bars=40)
    s = dated_splits(_staggered(), test_bars=0, val_bars=0)
    assert s.val_start is None and s.test_start is None and s.train_end == s.last
    assert s.bounds(_staggered()[0]) == (100, 100)


def _frame(seed: int) -> pd.DataFrame:
    """Two markets of AR(1) closes; the second starts later (a short history)."""
    rng = np.random.default_rng(seed)
    days = pd.bdate_range("2019-01-01", periods=260, tz="UTC")
    rows = []
    for market, n, first in (("a", 3, 0), ("b", 2, 90)):
        r = np.zeros((len(days), n))
        eps = rng.normal(0, 0.01, r.shape)
        for t in range(1, len(days)):
            r[t] = 0.3 * r[t - 1] + eps[t]
        close = 100 * np.cumprod(1 + r, axis=0)
        for t in range(first, len(days)):
            for j in range(n):
                rows.append((days[t], f"{market}{j}", close[t, j], market))
    return pd.DataFrame(rows, columns=["timestamp", "symbol", "close", "market"])


def _fit(frame: pd.DataFrame) -> tuple[QuantNet, object]:
    markets = markets_from_frame(frame)
    cfg = TrainConfig(
        steps=30, batch_markets=2, windows_per_market=3, seq_len=20, eval_every=5, patience=0,
        test_bars=60, val_bars=40, seed=5,
    )  # fmt: skip
    model = QuantNet(SMALL, {m.name: m.assets for m in markets}, seed=5)
    return model, train(model, markets, cfg)


def test_perturbing_test_window_prices_leaves_trained_weights_unchanged() -> None:
    """Prices on test-block dates are multiplied by noise (and some removed): training,
    validation (model selection), input scaling and the kept weights must be bit-identical. As
    controls, the same perturbation from the last validation bar changes the validation scores,
    and from the last training bar the weights."""
    frame = _frame(0)
    days = np.sort(frame["timestamp"].unique())
    test_start = days[-60]
    rng = np.random.default_rng(9)

    def perturb(since: np.datetime64) -> pd.DataFrame:
        f = frame.copy()
        hit = f["timestamp"] >= since
        f.loc[hit, "close"] *= np.exp(rng.normal(0, 0.05, int(hit.sum())))
        return f.drop(f.index[hit & (rng.random(len(f)) < 0.2)]).reset_index(drop=True)

    base, res = _fit(frame)
    moved, res2 = _fit(perturb(test_start))
    assert res.splits == res2.splits and res.splits.test_start == pd.Timestamp(test_start)  # type: ignore[attr-defined]
    for (k, a), b in zip(base.state_dict().items(), moved.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert [h.get("val_sharpe") for h in res.history] == [h.get("val_sharpe") for h in res2.history]  # type: ignore[attr-defined]
    _, from_val = _fit(perturb(days[-61]))
    assert [h.get("val_sharpe") for h in from_val.history] != [h.get("val_sharpe") for h in res.history]  # type: ignore[attr-defined]
    from_train, _ = _fit(perturb(days[-101]))
    assert any(
        not torch.equal(a, b)
        for a, b in zip(base.state_dict().values(), from_train.state_dict().values(), strict=True)
    )


def test_checkpoint_records_the_blocks_and_bar_interval(tmp_path, make_markets: Callable[..., list[Market]]):
    markets = make_markets(rows=200)
    cfg = TrainConfig(steps=3, batch_markets=3, seq_len=16, eval_every=3, test_bars=50, val_bars=30)
    model = QuantNet(SMALL, {m.name: m.assets for m in markets}, seed=0)
    result = train(model, markets, cfg)
    save_checkpoint(tmp_path / "m.pt", model, train_config=cfg, data=markets, splits=result.splits)
    ckpt = load_checkpoint(tmp_path / "m.pt")
    index = markets[0].index  # every synthetic market shares one business-day index
    assert ckpt.splits == result.splits
    assert ckpt.splits.test_start == index[150] and ckpt.splits.val_start == index[120]  # type: ignore[union-attr]
    assert ckpt.meta["splits"]["train_end"] == index[119].isoformat()
    assert ckpt.bar_interval_s == 86400.0
    assert ckpt.meta["data"]["markets"]["mkt1"] | {} == {
        "start": index[0].isoformat(), "end": index[-1].isoformat(), "rows": 200,
        "train_rows": 120, "val_rows": 30, "test_rows": 50,
    }  # fmt: skip
    scaling = ckpt.meta["input_scaling"]
    assert scaling["method"] == "train_std"
    expected = np.nanstd(markets[1].returns[:120], axis=0, ddof=1)
    np.testing.assert_allclose(scaling["std"]["mkt1"], expected, rtol=1e-6)
