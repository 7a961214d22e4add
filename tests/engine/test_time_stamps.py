"""Times a user reads are the data's own labels: a fill is stamped when its price traded, an
equity row like the bar it was marked on. The engine's own stamps (a bar's close) stay in
``bar_close``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engine.journal import read_journal
from quantnet.backtest import run_backtest
from quantnet.config import load_config
from tests.conftest import Scripted

NAN = float("nan")


def bars(times: pd.DatetimeIndex) -> pd.DataFrame:
    n = len(times)
    close = 100.0 + np.arange(n, dtype=float)
    opn = close - 0.5
    return pd.DataFrame(
        {
            "timestamp": times,
            "symbol": "A",
            "open": opn,
            "high": close + 1,
            "low": opn - 1,
            "close": close,
            "volume": 1.0,
        }
    )


def run(data: pd.DataFrame, tmp_path, fill_at: str = "next_open", timestamps: str = "open"):
    cfg = load_config(
        None,
        {"execution": {"fill_at": fill_at}, "data": {"timestamps": timestamps}},
    )
    return run_backtest(cfg, strategy=Scripted({3: [0.5], 6: [0.0]}), data=data, output=tmp_path)


@pytest.mark.parametrize("fill_at", ["next_open", "close"])
def test_daily_fills_and_equity_carry_the_trading_date(tmp_path, fill_at):
    days = pd.bdate_range("2006-10-30", periods=10, tz="UTC")  # Mon 30 Oct .. Fri 10 Nov
    result = run(bars(days), tmp_path, fill_at)
    # equity rows: one per bar, labelled like it; the engine's close stamp alongside
    assert list(result.equity["timestamp"]) == list(days)
    assert list(result.equity["bar_close"]) == list(days + pd.Timedelta(days=1))
    # decided on bar 3 (Thu 2 Nov) and bar 6 (Tue 7 Nov): at the next open, Fri 3 Nov and Wed 8 Nov
    # (not Saturday 4 Nov, the close stamp of the Friday bar); market-on-close: Thu 2 and Tue 7
    step = 1 if fill_at == "next_open" else 0
    expected = [days[3 + step], days[6 + step]]
    trades = pd.read_csv(tmp_path / "trades.csv", parse_dates=["timestamp", "bar_close"])
    assert list(trades["timestamp"]) == expected
    assert list(trades["bar_close"]) == [d + pd.Timedelta(days=1) for d in expected]
    assert trades["timestamp"].dt.day_of_week.max() <= 4  # never a weekend
    equity = pd.read_csv(tmp_path / "equity.csv", parse_dates=["timestamp"])
    assert list(equity["timestamp"]) == list(days)
    fills = [e for e in read_journal(tmp_path / "journal.db") if e["event"] == "Fill"]
    assert [pd.Timestamp(f["ts_price"], tz="UTC") for f in fills] == expected
    report = (tmp_path / "report.html").read_text()
    assert expected[0].strftime("%Y-%m-%d") in report


@pytest.mark.parametrize("fill_at", ["next_open", "close"])
def test_hourly_open_labelled_fills_at_the_open_are_the_label_at_the_close_label_plus_an_hour(
    tmp_path, fill_at
):
    hours = pd.date_range("2024-03-01 00:00", periods=10, freq="h", tz="UTC")
    result = run(bars(hours), tmp_path, fill_at)
    assert list(result.equity["timestamp"]) == list(hours)
    assert list(result.equity["bar_close"]) == list(hours + pd.Timedelta(hours=1))
    if fill_at == "next_open":  # at the open of the bars labelled 04:00 and 07:00
        expected = [hours[4], hours[7]]
    else:  # at the close of the bars labelled 03:00 and 06:00: their ends, 04:00 and 07:00
        expected = [hours[3] + pd.Timedelta(hours=1), hours[6] + pd.Timedelta(hours=1)]
    assert list(result.trades["timestamp"]) == expected
    opens = bars(hours).set_index("timestamp")["open"]
    if fill_at == "next_open":  # the price really is the open of the bar at that label
        np.testing.assert_allclose(
            result.trades["price"], opens[expected].to_numpy() * (1 + np.array([1, -1]) * 1e-4)
        )


def test_close_labelled_data_keeps_its_labels(tmp_path):
    hours = pd.date_range("2024-03-01 01:00", periods=10, freq="h", tz="UTC")  # each bar's end
    result = run(bars(hours), tmp_path, "next_open", timestamps="close")
    assert list(result.equity["timestamp"]) == list(hours) == list(result.equity["bar_close"])
    # the bar labelled 05:00 (its close) opened at 04:00
    assert list(result.trades["timestamp"]) == [hours[3], hours[6]]
    assert list(result.trades["bar_close"]) == [hours[4], hours[7]]


def test_working_orders_and_halts_are_labelled_like_their_bars(tmp_path):
    days = pd.date_range("2024-01-01", periods=8, freq="D", tz="UTC")
    data = bars(days)
    data.loc[5, ["open", "low", "close"]] = [60.0, 59.0, 60.0]  # day 5 gaps down 42%
    cfg = load_config(None, {"risk": {"stop_loss": 0.5, "max_drawdown": 0.1}})
    result = run_backtest(cfg, strategy=Scripted({2: [0.5], 7: [0.2]}), data=data, output=tmp_path)
    # bought at day 3's open; the stop (50% below) is never reached; the drawdown halt on day 5's
    # close flattens at day 6's open; the order decided on the last bar is refused (halted)
    assert list(result.trades["timestamp"]) == [days[3], days[6]]
    assert pd.Timestamp(result.settings["halt"]["time"]) == days[5]
    halts = [e for e in result.risk_events if e["rule"] == "max_drawdown"]
    assert [pd.Timestamp(e["timestamp"]) for e in halts] == [days[5]]
