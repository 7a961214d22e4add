"""What a backtest leaves unfinished is listed where a user reads the results: the summary,
metrics.json and the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from quantnet.backtest import run_backtest
from quantnet.cli import app
from quantnet.commands.backtest import end_lines
from quantnet.config import load_config
from tests.conftest import Scripted, make_bars

NAN = float("nan")


def test_orders_still_working_at_the_end_are_listed(tmp_path):
    data = make_bars(("A", "B"), 20, seed=5)
    cfg = load_config(None, {"risk": {"stop_loss": 0.5}, "costs": {"slippage_bps": 0}})
    # A bought on bar 1 (its stop, 50% below, is never reached); B ordered on the last bar
    plan = {0: [0.5, NAN], 19: [NAN, 0.3]}
    result = run_backtest(cfg, strategy=Scripted(plan), data=data, output=tmp_path)
    a_fill = result.trades.iloc[0]
    assert list(result.trades["symbol"]) == ["A"]
    b_close = data[data["symbol"] == "B"]["close"].iloc[-1]
    equity = result.equity["equity"].iloc[-1]

    listed = json.loads((tmp_path / "metrics.json").read_text())["open_orders"]
    by_symbol = {o["symbol"]: o for o in listed}
    assert sorted(by_symbol) == ["A", "B"]
    stop, buy = by_symbol["A"], by_symbol["B"]
    assert (stop["side"], stop["type"], stop["tag"]) == ("sell", "stop", "stop_loss")
    assert stop["quantity"] == pytest.approx(a_fill["quantity"])
    assert stop["price"] == pytest.approx(a_fill["price"] * 0.5)
    assert (buy["side"], buy["type"], buy["price"]) == ("buy", "market", None)
    assert buy["quantity"] == pytest.approx(0.3 * equity / b_close)

    lines = end_lines(result)
    assert lines[0].startswith("2 order(s) still working at the end")
    assert any(line.strip().startswith("A sell") and "stop" in line for line in lines[1:])
    assert any(line.strip().startswith("B buy") and "market" in line for line in lines[1:])

    report = (tmp_path / "report.html").read_text()
    for order in listed:
        assert order["client_id"] in report


def test_the_command_prints_working_orders_and_says_nothing_when_there_are_none(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bars.csv"
    make_bars(("A",), 30, seed=2).to_csv(path, index=False)
    (tmp_path / "risk.toml").write_text("[risk]\nstop_loss = 0.5\n")
    runner = CliRunner()
    args = ["backtest", "--strategy", "buy_and_hold", "--data", str(path), "--output", str(tmp_path / "o")]
    with_stop = runner.invoke(app, [*args, "--config", str(tmp_path / "risk.toml")])
    assert with_stop.exit_code == 0, with_stop.output
    assert "1 order(s) still working at the end" in with_stop.output
    assert "A sell" in with_stop.output
    plain = runner.invoke(app, args)
    assert plain.exit_code == 0, plain.output
    assert "still working" not in plain.output
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["open_orders"] == []
    assert np.isfinite(json.loads((tmp_path / "o" / "metrics.json").read_text())["final_equity"])
