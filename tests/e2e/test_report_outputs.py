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


def test_benchmark_figures_and_one_vocabulary(tmp_path, prices_csv):
    out = tmp_path / "out"
    args = ["backtest", "--strategy", "sma_crossover", "--param", "fast=5", "--param", "slow=15"]
    result = runner.invoke(
        app, [*args, "--data", str(prices_csv), "--output", str(out), "--benchmark", "BBB"]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    equity = pd.read_csv(out / "equity.csv", parse_dates=["timestamp"])
    # rows are stamped at the bar's close: the benchmark's first row holds the first bar's close
    bbb = pd.read_csv(prices_csv)
    bbb = bbb[bbb["symbol"] == "BBB"]["close"].to_numpy()[: len(equity)]
    assert metrics["benchmark_return"] == pytest.approx(bbb[-1] / bbb[0] - 1, rel=1e-12)
    r, b = equity["equity"].pct_change().to_numpy()[1:], np.diff(bbb) / bbb[:-1]
    slope, intercept = np.polyfit(b, r, 1)
    assert metrics["beta"] == pytest.approx(slope, rel=1e-9)
    assert metrics["alpha"] == pytest.approx(intercept * metrics["periods_per_year"], rel=1e-6)
    for label in (
        "Fills",
        "Round trips (closed)",
        "Fees paid",
        "Funding paid",
        "Benchmark total return",
        "Beta",
    ):
        assert label in result.output, label
    page = (out / "report.html").read_text()
    assert "against BBB" in page and f"{metrics['benchmark_return']:.2%}" in page

    default = tmp_path / "default"
    result = runner.invoke(app, [*args, "--data", str(prices_csv), "--output", str(default)])
    both = pd.read_csv(prices_csv).pivot(index="timestamp", columns="symbol", values="close").to_numpy()
    both = both[: len(equity)]
    want = (both[-1] / both[0]).mean() - 1  # half the capital in each symbol, never rebalanced
    assert json.loads((default / "metrics.json").read_text())["benchmark_return"] == pytest.approx(
        want, rel=1e-12
    )


def test_unknown_benchmark_is_one_line(tmp_path, prices_csv):
    result = runner.invoke(
        app, ["backtest", "--data", str(prices_csv), "--output", str(tmp_path / "o"), "--benchmark", "ZZZ"]
    )
    assert result.exit_code != 0
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "ZZZ" in lines[0] and "AAA" in lines[0], result.output


def test_csv_files_are_written_as_pandas_writes_them(tmp_path):
    """The output CSVs' time columns are formatted by numpy for speed: the text must stay what
    ``DataFrame.to_csv`` writes (scripts parse these files), NaT, other zones and fractions of a
    second included."""
    from quantnet.backtest import write_csv

    stamps = ["1990-04-02 00:00:00", "2021-05-05 13:00:01", None, "2262-04-11 23:47:16"]
    utc = pd.to_datetime(stamps, utc=True)
    frame = pd.DataFrame(
        {
            "timestamp": utc,
            "only_nat": pd.Series([pd.NaT] * 4, dtype="datetime64[ns, UTC]"),
            "fraction": utc + pd.Timedelta(milliseconds=250),
            "tokyo": utc.tz_convert("Asia/Tokyo"),
            "naive": utc.tz_localize(None),
            "qty": [1.5, np.nan, 3.0, 1e-12],
            "symbol": ["A", "B", "", "D"],
        }
    )
    for cols in (list(frame.columns), ["timestamp"], ["only_nat"]):
        write_csv(frame[cols], tmp_path / "ours.csv")
        frame[cols].to_csv(tmp_path / "pandas.csv", index=False)
        assert (tmp_path / "ours.csv").read_text() == (tmp_path / "pandas.csv").read_text(), cols
