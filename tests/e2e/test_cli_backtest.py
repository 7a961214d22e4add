"""The `quantnet backtest` command as scripts use it: options, outputs and clear errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from quantnet.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _outside_the_repo(tmp_path, monkeypatch):
    """Run where no config.toml lies, so only the options under test apply."""
    monkeypatch.chdir(tmp_path)


def test_sma_crossover_on_a_csv(tmp_path, prices_csv):
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "backtest",
            "--strategy",
            "sma_crossover",
            "--param",
            "fast=10",
            "--param",
            "slow=30",
            "--param",
            "target=0.45",
            "--fee-bps",
            "10",
            "--slippage-bps",
            "2",
            "--cash",
            "50000",
            "--data",
            str(prices_csv),
            "--start",
            "2020-02-01",
            "--end",
            "2020-09-30",
            "--output",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Sharpe" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    equity = pd.read_csv(out / "equity.csv", parse_dates=["timestamp"])
    trades = pd.read_csv(out / "trades.csv")
    assert equity["timestamp"].iloc[0] == pd.Timestamp("2020-02-01", tz="UTC")  # labelled as in the data
    assert equity["timestamp"].iloc[-1] == pd.Timestamp("2020-09-30", tz="UTC")
    assert equity["equity"].iloc[0] == pytest.approx(50_000)
    assert metrics["final_equity"] == pytest.approx(equity["equity"].iloc[-1])
    assert len(trades) == metrics["n_fills"] > 0
    # every fill pays 10 bps on its notional
    assert (trades["fee"] - trades["quantity"] * trades["price"] * 0.001).abs().max() < 1e-9
    # entries are sized at 45% of equity per asset, never more than the two assets can hold
    assert (equity["gross_exposure"] / equity["equity"]).max() < 0.95
    html = (out / "report.html").read_text()
    assert "Plotly.newPlot" in html and "Sharpe" in html


def test_bad_param_is_a_clear_error(prices_csv, tmp_path):
    result = runner.invoke(
        app,
        [
            "backtest",
            "--strategy",
            "sma_crossover",
            "--param",
            "fast=50",
            "--param",
            "slow=20",
            "--data",
            str(prices_csv),
            "--output",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 2
    assert "fast (50) must be shorter than slow (20)" in result.output


def test_unknown_strategy_and_bad_data(tmp_path, prices_csv):
    result = runner.invoke(app, ["backtest", "--strategy", "nope", "--data", str(prices_csv)])
    assert result.exit_code == 2 and "unknown strategy 'nope'" in result.output
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,symbol,close\n2020-01-01,A,1\n2020-01-01,A,2\n")
    result = runner.invoke(app, ["backtest", "--data", str(bad), "--output", str(tmp_path / "o")])
    assert result.exit_code == 2 and "duplicate timestamp" in result.output


def test_negative_fee_names_the_flag_typed(prices_csv, tmp_path):
    result = runner.invoke(app, ["backtest", "--fee-bps", "-3", "--data", str(prices_csv)])
    assert result.exit_code == 2
    assert "--fee-bps must be at least 0, got -3" in result.output
    assert "costs.taker_fee_bps" not in result.output
