"""What `quantnet backtest` writes for the report: round_trips.csv agrees with metrics.json."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from quantnet.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _outside_the_repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_round_trips_csv_is_the_metrics_trades(tmp_path, prices_csv):
    out = tmp_path / "out"
    args = ["backtest", "--strategy", "sma_crossover", "--param", "fast=5", "--param", "slow=15"]
    result = runner.invoke(app, [*args, "--data", str(prices_csv), "--output", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    trips = pd.read_csv(out / "round_trips.csv", parse_dates=["entry_time", "exit_time"])
    fills = pd.read_csv(out / "trades.csv")
    closed = trips[trips["closed"]]
    assert len(closed) == metrics["n_trades"] > 5
    wins, losses = closed["pnl"][closed["pnl"] > 0], closed["pnl"][closed["pnl"] < 0]
    assert len(wins) / len(closed) == pytest.approx(metrics["win_rate"], rel=1e-12)
    assert wins.sum() / -losses.sum() == pytest.approx(metrics["profit_factor"], rel=1e-9)
    assert trips["fees"].sum() == pytest.approx(metrics["fees"], rel=1e-9)
    assert trips["fees"].sum() == pytest.approx(fills["fee"].sum(), rel=1e-9)
    assert (closed["exit_time"] > closed["entry_time"]).all()
    assert (closed["mae"] <= 0).all() and (closed["mfe"] >= 0).all()
    # a long round trip's PnL is its quantity times the price move, less its fees, when it is
    # opened and closed by one fill each
    simple = closed[(closed["fills"] == 2) & (closed["direction"] == "long")]
    assert len(simple)
    move = simple["quantity"] * (simple["exit_price"] - simple["entry_price"]) - simple["fees"]
    assert np.allclose(simple["pnl"], move, rtol=1e-9)
