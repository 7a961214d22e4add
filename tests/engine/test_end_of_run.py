"""What a backtest leaves unfinished is listed where a user reads the results: the summary,
metrics.json and the report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
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


def delisting_data() -> tuple:
    data = make_bars(("A", "B"), 60, seed=8)
    last_b = data["timestamp"].min() + pd.Timedelta(days=39)  # B's data ends on day 39 of 60
    data = data[(data["symbol"] == "A") | (data["timestamp"] <= last_b)].reset_index(drop=True)
    return data, last_b


@pytest.mark.parametrize("stop", [None, 0.9])
def test_a_position_whose_data_ends_is_closed_at_its_last_close(tmp_path, stop):
    data, last_b = delisting_data()
    risk = {"stop_loss": stop} if stop else {}
    cfg = load_config(None, {"risk": risk, "costs": {"slippage_bps": 0, "taker_fee_bps": 10}})
    plan = {0: [0.4, 0.4], 50: [0.4, 0.1]}  # the later target for B is refused: it is delisted
    result = run_backtest(cfg, strategy=Scripted(plan), data=data, output=tmp_path)
    b = data[data["symbol"] == "B"]
    trades = result.trades[result.trades["symbol"] == "B"].reset_index(drop=True)
    assert list(trades["side"]) == ["buy", "sell"]
    bought = trades["quantity"][0]
    # closed on the 5th bar without B's data, at its last close, for no fee
    assert trades["quantity"][1] == pytest.approx(bought)
    assert trades["price"][1] == pytest.approx(b["close"].iloc[-1])
    assert trades["fee"][1] == 0.0
    assert trades["timestamp"][1] == last_b + pd.Timedelta(days=5)  # the bar it was settled on
    # the settlement changes no equity (B was marked at that close), and A alone moves it after
    a = data[data["symbol"] == "A"]["close"].to_numpy()
    a_qty = result.trades[result.trades["symbol"] == "A"]["quantity"].iloc[0]
    eq = result.equity["equity"].to_numpy()
    np.testing.assert_allclose(np.diff(eq[45:]), a_qty * np.diff(a[45:]), rtol=1e-9)

    listed = json.loads((tmp_path / "metrics.json").read_text())["force_closed"]
    assert len(listed) == 1 and listed[0]["symbol"] == "B"
    assert listed[0]["quantity"] == pytest.approx(bought)
    assert listed[0]["orders_cancelled"] == (1 if stop else 0)
    assert pd.Timestamp(listed[0]["last_bar"]) == last_b
    assert pd.Timestamp(listed[0]["closed_on"]) == last_b + pd.Timedelta(days=5)
    events = [e for e in result.risk_events if e["rule"] == "delisted"]
    assert len(events) == 1 and "B delisted" in events[0]["message"]
    assert "B delisted" in (tmp_path / "report.html").read_text()
    lines = end_lines(result)
    assert lines[0].startswith("1 symbol(s) delisted") and lines[1].strip().startswith("B:")
    # nothing of B is working at the end, and the later target was refused, not left waiting
    assert all(o["symbol"] != "B" for o in result.settings["open_orders"])
    assert not result.positions["B"].iloc[-1]


def test_delisting_can_be_turned_off_and_waits_for_its_bar_count():
    data, _ = delisting_data()
    for after, closed in ((0, False), (5, True), (20, True), (21, False)):
        cfg = load_config(None, {"data": {"delist_after_bars": after}})
        result = run_backtest(cfg, strategy=Scripted({0: [0.4, 0.4]}), data=data)
        assert bool(result.settings["force_closed"]) is closed, after
        assert bool(result.positions["B"].iloc[-1] == 0) is closed
