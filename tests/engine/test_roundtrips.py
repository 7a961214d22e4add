"""Round trips: the portfolio's own trade PnLs, a worked example by hand, and MAE/MFE from bars."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.events import Fill, Side
from engine.portfolio import Portfolio
from engine.roundtrips import COLUMNS, Prices, round_trips

DAY = 86_400 * 10**9


def frame(fills: list[tuple[int, str, str, float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(fills, columns=["timestamp", "symbol", "side", "quantity", "price", "fee"]).assign(
        timestamp=lambda f: pd.to_datetime(f["timestamp"], utc=True)
    )


fill_st = st.tuples(
    st.sampled_from(["A", "B"]),
    st.sampled_from(["buy", "sell"]),
    st.sampled_from([1.0, 2.0, 3.0, 0.5]),
    st.floats(50, 150),
    st.floats(0, 2),
)


@settings(max_examples=80, deadline=None)
@given(st.lists(fill_st, min_size=1, max_size=40))
def test_closed_round_trips_are_the_portfolios_trade_pnls(fills: list) -> None:
    pf = Portfolio(("A", "B"), 1e6)
    rows = []
    for k, (sym, side, qty, price, fee) in enumerate(fills):
        pf.on_fill(
            Fill(k * DAY, k * DAY, str(k), sym, Side.BUY if side == "buy" else Side.SELL, qty, price, fee)
        )
        rows.append((k * DAY, sym, side, qty, price, fee))
    trips = round_trips(frame(rows))
    closed = trips[trips["closed"]]
    # the portfolio appends a PnL when a position closes; order by exit to compare
    got = closed.sort_values("exit_time", kind="stable")["pnl"].tolist()
    assert got == pytest.approx(pf.trade_pnls, rel=1e-9, abs=1e-9)
    assert trips["fees"].sum() == pytest.approx(sum(f[4] for f in fills), abs=1e-9)
    assert trips["fills"].sum() >= len(fills)  # a flipping fill belongs to both trips


def test_worked_example_long_add_reduce_flip_and_open() -> None:
    trades = frame(
        [
            (0 * DAY, "A", "buy", 10, 100.0, 1.0),  # open long 10 @ 100
            (1 * DAY, "A", "buy", 10, 110.0, 1.0),  # add: avg 105, entry notional 2100
            (2 * DAY, "A", "sell", 5, 120.0, 1.0),  # reduce: +75
            (3 * DAY, "A", "sell", 25, 90.0, 2.0),  # close 15 @ 90 (-225), open short 10 @ 90
            (5 * DAY, "A", "buy", 10, 80.0, 1.0),  # close the short: +100
            (6 * DAY, "B", "sell", 2, 50.0, 0.5),  # still open
        ]
    )
    close = np.array([[100, 50], [110, 50], [120, 50], [90, 50], [85, 50], [80, 50], [80, 45.0]])
    high = close + 5
    low = close - 5
    times = np.arange(7, dtype=np.int64) * DAY
    trips = round_trips(trades, Prices(times, ("A", "B"), close, high, low))
    assert list(trips.columns) == list(COLUMNS)
    first, short, open_b = (trips.iloc[i] for i in range(3))
    assert first["direction"] == "long" and first["pnl"] == pytest.approx(75 - 225 - 5)
    assert first["entry_price"] == pytest.approx(105) and first["quantity"] == 20
    assert first["exit_price"] == pytest.approx((5 * 120 + 15 * 90) / 20)
    assert first["return"] == pytest.approx(-155 / 2100)
    assert first["fees"] == pytest.approx(5.0) and first["fills"] == 4
    assert (first["bars"], first["duration_days"]) == (3, 3.0)
    # highs and lows of bars 0..2 and the exit price 90: best 125, worst min(95, 90)
    assert first["mfe"] == pytest.approx(125 / 105 - 1) and first["mae"] == pytest.approx(90 / 105 - 1)
    assert short["direction"] == "short" and short["pnl"] == pytest.approx(100 - 1)
    assert short["entry_time"] == pd.Timestamp(3 * DAY, tz="UTC") and short["fills"] == 2
    assert short["mfe"] == pytest.approx(1 - 80 / 90) and short["mae"] == pytest.approx(1 - 95 / 90)
    assert not open_b["closed"] and pd.isna(open_b["exit_time"]) and math.isnan(open_b["exit_price"])
    # short 2 @ 50 marked at the last close 45: +10, less the 0.5 fee
    assert open_b["pnl"] == pytest.approx(9.5)
    assert trips["closed"].tolist() == [True, True, False]


def test_no_fills() -> None:
    assert list(round_trips(pd.DataFrame()).columns) == list(COLUMNS)
    assert len(round_trips(None)) == 0
