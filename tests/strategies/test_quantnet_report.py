"""A QuantNet backtest's report shows the model: its training and validation windows shaded where
they overlap the run, its validation Sharpe, per-market Sharpe and P&L, and its settings."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from models.checkpoint import save_checkpoint
from models.config import ModelConfig
from models.data import Market, dated_splits
from models.network import QuantNet
from quantnet.backtest import run_backtest
from quantnet.config import AppConfig
from tests.conftest import make_bars

MARKETS = {"m1": ("A", "B"), "m2": ("C", "D", "E")}


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def test_quantnet_report_shows_the_model(tmp_path):
    data = make_bars(tuple("ABCDE"), 160, seed=2)
    wide = data.pivot(index="timestamp", columns="symbol", values="close")
    markets = [
        Market(m, assets, wide.index, wide[list(assets)].pct_change().to_numpy())
        for m, assets in MARKETS.items()
    ]
    splits = dated_splits(markets, test_bars=60, val_bars=40)
    model = QuantNet(ModelConfig(variant="lstm-linear", transfer_dim=4, decoder_dim=4), MARKETS, seed=3)
    path = tmp_path / "model.pt"
    save_checkpoint(
        path, model, data=markets, splits=splits, periods_per_year=252.0, extra={"best_val_sharpe": 0.4321}
    )
    cfg = AppConfig.model_validate(
        {
            "engine": {"journal": False},
            "data": {"timestamps": "close"},
            "strategy": {"name": "quantnet", "params": {"model": str(path), "warmup": 10}},
        }
    )
    # the run covers the validation block (in sample) and the test block
    run = data[data["timestamp"] >= splits.val_start]
    result = run_backtest(cfg, data=run, output=tmp_path / "out")
    info = result.strategy_info
    assert info["markets"] == {m: list(a) for m, a in MARKETS.items()}
    assert [w["name"] for w in info["windows"]] == ["training", "validation"]
    assert pd.Timestamp(info["windows"][1]["start"]) == splits.val_start

    page = (tmp_path / "out" / "report.html").read_text()
    figs = json.loads(re.search(r'id="qn-figures">(.*?)</script>', page, re.S).group(1))
    shapes = figs["fig-equity"]["layout"]["shapes"]
    # training ends before the run: only validation is shaded, from the run's first row to val_end
    assert len(shapes) == 1
    assert shapes[0]["x1"] == pytest.approx(splits.val_end.value / 1e6)
    model_html = page.split('id="model"')[1].split("<h2")[0]
    assert "0.432" in model_html and "lstm-linear" in model_html and "model.transfer_dim" in model_html
    assert "before this backtest: out of sample" in model_html  # the training window
    # per-market P&L adds up to the run's P&L (no funding)
    rows = re.findall(
        r"<td>(m[12])</td><td class=\"n\">\d+</td>.*?<td class=\"n[^\"]*\">([-\d,.]+)</td></tr>", model_html
    )
    assert [m for m, _ in rows] == ["m1", "m2"]
    total = sum(float(v.replace(",", "")) for _, v in rows)
    eq = result.equity["equity"].to_numpy()
    assert total == pytest.approx(eq[-1] - eq[0], abs=0.011 * len(rows))  # shown to the cent
    assert np.isfinite(eq).all()
