"""A small multi-asset backtest recomputed by hand: next-open fills, slippage, fees, a short."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engine.journal import read_journal
from quantnet.backtest import run_backtest
from quantnet.config import load_config
from tests.conftest import Scripted

# (open, high, low, close) per day for two assets
A = [
    (100, 101, 99, 100),
    (102, 103, 101, 102),
    (101, 104, 100, 103),
    (105, 106, 104, 104),
    (103, 105, 102, 102),
]
B = [(50, 51, 49, 50), (49, 50, 48, 49), (48, 49, 47, 47), (46, 47, 45, 46), (47, 48, 46, 48)]


def frame() -> pd.DataFrame:
    days = pd.date_range("2024-01-01", periods=5, freq="D", tz="UTC")
    rows = [
        {"timestamp": d, "symbol": s, "open": o, "high": h, "low": lo, "close": c, "volume": 1.0}
        for s, series in (("A", A), ("B", B))
        for d, (o, h, lo, c) in zip(days, series, strict=True)
    ]
    return pd.DataFrame(rows)


def test_equity_and_trades_match_hand_computation(tmp_path):
    cfg = load_config(
        None,
        {
            "portfolio": {"cash": 10_000},
            "costs": {"taker_fee_bps": 10, "maker_fee_bps": 10, "slippage_bps": 5},
            "data": {"timestamps": "close"},
        },
    )
    plan = {0: [0.5, -0.3], 2: [0.0, np.nan], 3: [np.nan, 0.0]}
    result = run_backtest(cfg, strategy=Scripted(plan), data=frame(), output=tmp_path)

    fee, slip = 0.001, 0.0005
    # bar 0 close: equity 10 000 -> buy 50 A (0.5 * 10 000 / 100), sell 60 B (0.3 * 10 000 / 50)
    a_buy = 102 * (1 + slip)  # filled at bar 1 open, never at bar 0's close
    b_sell = 49 * (1 - slip)
    cash = 10_000 - 50 * a_buy - 50 * a_buy * fee + 60 * b_sell - 60 * b_sell * fee
    eq1 = cash + 50 * 102 - 60 * 49
    eq2 = cash + 50 * 103 - 60 * 47
    a_sell = 105 * (1 - slip)  # bar 2 decision, bar 3 open
    cash += 50 * a_sell - 50 * a_sell * fee
    eq3 = cash - 60 * 46
    b_buy = 47 * (1 + slip)  # bar 3 decision, bar 4 open: the short is covered
    cash += -60 * b_buy - 60 * b_buy * fee
    eq4 = cash

    assert result.equity["equity"].round(2).tolist() == pytest.approx(
        [round(x, 2) for x in (10_000, eq1, eq2, eq3, eq4)], abs=0.005
    )
    assert result.equity["cash"].iloc[-1] == pytest.approx(eq4, abs=0.005)
    trades = result.trades
    assert trades[["symbol", "side"]].values.tolist() == [
        ["A", "buy"],
        ["B", "sell"],
        ["A", "sell"],
        ["B", "buy"],
    ]
    assert trades["quantity"].tolist() == pytest.approx([50, 60, 50, 60])
    assert trades["price"].tolist() == pytest.approx([a_buy, b_sell, a_sell, b_buy])
    assert trades["fee"].round(2).tolist() == pytest.approx(
        [round(q * p * fee, 2) for q, p in ((50, a_buy), (60, b_sell), (50, a_sell), (60, b_buy))]
    )
    days = pd.date_range("2024-01-01", periods=5, freq="D", tz="UTC")
    assert trades["timestamp"].tolist() == [days[1], days[1], days[3], days[4]]

    a_pnl = 50 * (a_sell - a_buy) - 50 * (a_buy + a_sell) * fee
    b_pnl = 60 * (b_sell - b_buy) - 60 * (b_sell + b_buy) * fee
    assert result.metrics["n_trades"] == 2
    assert result.metrics["win_rate"] == pytest.approx(1.0)
    assert a_pnl + b_pnl == pytest.approx(eq4 - 10_000, abs=1e-9)
    assert result.metrics["final_equity"] == pytest.approx(eq4, abs=0.005)

    written = pd.read_csv(tmp_path / "trades.csv")
    assert list(written.columns) == ["timestamp", "symbol", "side", "quantity", "price", "fee", "bar_close"]
    assert len(written) == 4
    curve = pd.read_csv(tmp_path / "equity.csv")
    assert list(curve.columns) == ["timestamp", "equity", "cash", "gross_exposure", "bar_close"]
    assert curve["gross_exposure"].iloc[1] == pytest.approx(50 * 102 + 60 * 49)
    kinds = [e["event"] for e in read_journal(tmp_path / "journal.db")]
    assert kinds.count("Order") == 4 and kinds.count("Fill") == 4 and kinds.count("PositionUpdate") == 4
    # every position change is journaled right after the fill that caused it
    assert [k for k in kinds if k in ("Fill", "PositionUpdate")] == ["Fill", "PositionUpdate"] * 4


def test_portfolio_books_flips_and_dust():
    from engine.events import Fill, Side
    from engine.portfolio import Portfolio

    pf = Portfolio(("X",), 1_000.0)
    pf.on_fill(Fill(1, 1, "a", "X", Side.BUY, 10, 10.0, 0.0))
    pf.on_fill(Fill(2, 2, "b", "X", Side.BUY, 10, 12.0, 0.0))
    assert pf.avg_price[0] == 11.0
    pf.on_fill(Fill(3, 3, "c", "X", Side.SELL, 25, 13.0, 1.0))  # close 20 at +2 each, open 5 short
    assert pf.qty[0] == -5 and pf.avg_price[0] == 13.0 and pf.realized_pnl[0] == 40.0
    assert pf.trade_pnls == [39.0]
    pf.on_fill(Fill(4, 4, "d", "X", Side.BUY, 5, 12.0, 0.0))
    assert pf.qty[0] == 0 and pf.avg_price[0] == 0 and pf.realized_pnl[0] == 45.0
    assert pf.trade_pnls == [39.0, 5.0]
    pf.on_fill(Fill(5, 5, "e", "X", Side.BUY, 1e-15, 12.0, 0.0))  # dust: no position, no crash
    assert pf.qty[0] == 0 and pf.avg_price[0] == 0
    assert pf.cash == pytest.approx(1_000 - 100 - 120 + 325 - 1 - 60)
