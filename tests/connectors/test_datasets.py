"""The built-in datasets load, satisfy the replay schema's invariants and replay cleanly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from connectors import datasets
from connectors.replay import DataError, load_ohlcv

COLUMNS = ["timestamp", "symbol", "open", "high", "low", "close", "volume"]


@pytest.fixture(scope="module", params=["us_stocks", "us_sectors"])
def frame(request: pytest.FixtureRequest) -> pd.DataFrame:
    return pd.read_parquet(datasets.path(request.param))


def test_names_and_paths() -> None:
    assert datasets.names() == ["us_sectors", "us_stocks"]
    total = 0
    for name in datasets.names():
        p = datasets.path(name)
        assert p.is_file() and p.suffix == ".parquet"
        total += p.stat().st_size
    assert total < 3 * 1024 * 1024


def test_unknown_name_is_a_clear_data_error() -> None:
    with pytest.raises(datasets.UnknownDatasetError, match=r"'nope'.*us_sectors, us_stocks"):
        datasets.path("nope")
    assert issubclass(datasets.UnknownDatasetError, DataError)


def test_schema_and_invariants(frame: pd.DataFrame) -> None:
    assert list(frame.columns[:7]) == COLUMNS
    assert str(frame["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert pd.api.types.is_string_dtype(frame["symbol"])
    for col in COLUMNS[2:]:
        assert frame[col].dtype == np.float64, col
    ts = frame["timestamp"]
    assert (ts == ts.dt.normalize()).all()  # the trading date at 00:00 UTC
    assert (ts.dt.day_of_week < 5).all()
    assert ts.is_monotonic_increasing
    assert not frame.duplicated(["symbol", "timestamp"]).any()
    assert frame["close"].notna().all()
    prices = frame[["open", "high", "low", "close"]]
    assert not (prices <= 0).any().any()
    assert not (frame["high"] < frame["low"]).any()
    assert not (frame[["open", "close"]].max(axis=1) > frame["high"]).any()
    assert not (frame[["open", "close"]].min(axis=1) < frame["low"]).any()


def test_us_stocks_content() -> None:
    df = pd.read_parquet(datasets.path("us_stocks"))
    assert sorted(df["symbol"].unique()) == ["AAPL", "GOOG", "IBM", "MSFT"]
    assert df[["open", "high", "low", "close", "volume"]].notna().all().all()
    assert df["timestamp"].max() == pd.Timestamp("2013-03-01", tz="UTC")
    counts = df.groupby("symbol").size()
    assert counts["AAPL"] == counts["IBM"] == counts["MSFT"] == 3270 and counts["GOOG"] == 2148
    aapl = df[df["symbol"] == "AAPL"].set_index("timestamp")["close"]
    # Adjusted: AAPL's 2:1 split of 2000-06-21 leaves no jump, and the 2014 7:1 split is applied.
    before, after = (aapl.loc[pd.Timestamp(d, tz="UTC")] for d in ("2000-06-20", "2000-06-21"))
    assert abs(np.log(after / before)) < 0.25  # unadjusted: log(0.5 · 1.09) = -0.6
    assert aapl.max() < 100


def test_us_sectors_markets() -> None:
    df = pd.read_parquet(datasets.path("us_sectors"))
    assert df[["open", "high", "low", "volume"]].isna().all().all()
    assert df["symbol"].nunique() == 20 and len(df) == 20 * df["timestamp"].nunique()
    per_symbol = df.groupby("symbol")["market"].nunique()
    assert (per_symbol == 1).all()
    markets = df.groupby("market")["symbol"].unique()
    assert 4 <= len(markets) <= 6
    assert all(2 <= len(members) <= 6 for members in markets)
    assert set(markets["tech"]) == {"AAPL", "AMD", "MSFT"}
    assert df["timestamp"].min() == pd.Timestamp("1990-01-02", tz="UTC")


@pytest.mark.parametrize("name", ["us_stocks", "us_sectors"])
def test_replay_connector_reads_them(name: str) -> None:
    data = load_ohlcv(datasets.path(name), start="2010-01-01", end="2010-12-31")
    assert data["timestamp"].dt.year.eq(2010).all()
    assert data[["open", "high", "low", "close"]].notna().all().all()
