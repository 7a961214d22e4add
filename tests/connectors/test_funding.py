"""Perpetual funding in backtests: paid by longs, received by shorts, at each 8-hour instant, on
the position held then, booked in cash and the journal."""

from __future__ import annotations

import pandas as pd
import pytest

from engine.journal import read_journal
from quantnet.backtest import run_backtest
from quantnet.config import load_config
from tests.conftest import Scripted


def hourly(prices: dict[str, list[float]]) -> pd.DataFrame:
    times = pd.date_range("2024-01-01 00:00", periods=len(next(iter(prices.values()))), freq="h", tz="UTC")
    return pd.DataFrame(
        [
            {"timestamp": t, "symbol": s, "open": p, "high": p, "low": p, "close": p, "volume": 1.0}
            for s, path in prices.items()
            for t, p in zip(times, path, strict=True)
        ]
    )


def test_funding_is_charged_on_positions_at_each_instant(tmp_path):
    # bars labelled by open time: bar k covers [k h, k+1 h) and closes at k+1 h
    btc = [100.0] * 6 + [110.0] * 14  # 20 hourly bars: closes 01:00 .. 20:00
    eth = [50.0] * 20
    cfg = load_config(
        None,
        {
            "portfolio": {"cash": 10_000},
            "costs": {"taker_fee_bps": 0, "maker_fee_bps": 0, "slippage_bps": 0, "funding_rate_bps": 1.0},
            "data": {"timestamps": "open", "calendar": "24/7"},
        },
    )
    # decided at the 01:00 close, filled at 01:00 (bar 1 open): long 10 BTC, short 40 ETH
    plan = {0: [0.1, -0.2]}
    result = run_backtest(
        cfg, strategy=Scripted(plan), data=hourly({"BTC": btc, "ETH": eth}), output=tmp_path
    )
    # instants passed while positioned: 08:00 (bar closing 08:00, BTC close 110) and 16:00
    expected = 2 * 1e-4 * (10 * 110.0) + 2 * 1e-4 * (-40 * 50.0)
    assert result.metrics["funding"] == pytest.approx(expected)
    pnl = 10 * (110 - 100)
    assert result.equity["equity"].iloc[-1] == pytest.approx(10_000 + pnl - expected)
    journal = list(read_journal(tmp_path / "journal.db"))
    paid = [(e["symbol"], e["amount"]) for e in journal if e["event"] == "Funding"]
    assert paid == [("BTC", pytest.approx(0.11)), ("ETH", pytest.approx(-0.2))] * 2


def test_no_funding_unless_configured():
    cfg = load_config(None, {"data": {"calendar": "24/7"}})
    result = run_backtest(cfg, strategy=Scripted({0: [0.5]}), data=hourly({"BTC": [100.0] * 30}))
    assert result.metrics["funding"] == 0.0
