"""The replay loader: exact errors for bad data, warnings for close-only files, time ordering."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import structlog

from connectors.replay import BarMatrix, DataError, load_ohlcv
from tests.conftest import make_bars


def write(tmp_path, df: pd.DataFrame, name: str = "bad.csv"):
    path = tmp_path / name
    if name.endswith(".parquet"):
        df.to_parquet(path)
    else:
        df.to_csv(path, index=False)
    return path


@pytest.fixture
def clean() -> pd.DataFrame:
    return make_bars(("AAA", "BBB"), 10).sort_values(["symbol", "timestamp"]).reset_index(drop=True)


def test_unsorted_timestamps(tmp_path, clean):
    df = clean.copy()
    df.loc[[3, 4]] = df.loc[[4, 3]].to_numpy()
    path = write(tmp_path, df)
    with pytest.raises(DataError) as err:
        load_ohlcv(path)
    assert str(err.value) == (
        f"{path}: symbol AAA: row 5 (2020-01-04 00:00:00+00:00): "
        "timestamps not sorted (earlier than the previous row of this symbol)"
    )


def test_duplicate_timestamp(tmp_path, clean):
    df = pd.concat([clean.iloc[:13], clean.iloc[12:13], clean.iloc[13:]], ignore_index=True)
    path = write(tmp_path, df, "dup.parquet")
    with pytest.raises(DataError) as err:
        load_ohlcv(path)
    assert str(err.value) == f"{path}: symbol BBB: row 14 (2020-01-03 00:00:00+00:00): duplicate timestamp"


def test_nan_price(tmp_path, clean):
    df = clean.copy()
    df.loc[6, "close"] = np.nan
    path = write(tmp_path, df)
    with pytest.raises(DataError) as err:
        load_ohlcv(path)
    assert str(err.value) == f"{path}: symbol AAA: row 7 (2020-01-07 00:00:00+00:00): NaN price in close"


def test_non_positive_price(tmp_path, clean):
    df = clean.copy()
    df.loc[15, "low"] = -1.0
    path = write(tmp_path, df)
    with pytest.raises(DataError) as err:
        load_ohlcv(path)
    assert (
        str(err.value) == f"{path}: symbol BBB: row 16 (2020-01-06 00:00:00+00:00): non-positive price -1.0"
    )


def test_high_below_low(tmp_path, clean):
    df = clean.copy()
    df.loc[2, "high"] = 1.0
    df.loc[2, "low"] = 2.0
    path = write(tmp_path, df)
    with pytest.raises(DataError) as err:
        load_ohlcv(path)
    assert str(err.value) == f"{path}: symbol AAA: row 3 (2020-01-03 00:00:00+00:00): high 1.0 < low 2.0"


def test_missing_columns(tmp_path, clean):
    path = write(tmp_path, clean.drop(columns=["symbol", "close"]))
    with pytest.raises(DataError) as err:
        load_ohlcv(path)
    assert str(err.value) == (
        f"{path}: missing column(s) symbol, close; found timestamp, open, high, low, volume"
    )


def test_unparseable_timestamp(tmp_path, clean):
    df = clean.astype({"timestamp": str})
    df.loc[4, "timestamp"] = "yesterday-ish"
    path = write(tmp_path, df)
    with pytest.raises(DataError, match=r"row 5: timestamp 'yesterday-ish' cannot be parsed"):
        load_ohlcv(path)


def test_close_only_file_is_accepted_with_warning(tmp_path, clean):
    df = clean.copy()
    df[["open", "high", "low", "volume"]] = np.nan
    path = write(tmp_path, df, "close_only.parquet")
    with structlog.testing.capture_logs() as logs:
        data = load_ohlcv(path)
    assert any(e["event"].startswith("close-only data") and e["log_level"] == "warning" for e in logs)
    assert (data["open"] == data["close"]).all() and (data["high"] == data["close"]).all()
    assert (data["volume"] == 0).all()

    no_columns = write(tmp_path, clean[["timestamp", "symbol", "close"]], "close_column_only.csv")
    assert load_ohlcv(no_columns)["low"].tolist() == load_ohlcv(no_columns)["close"].tolist()


def test_directory_merges_symbols_in_time_order(tmp_path):
    a = make_bars(("AAA",), 5, seed=1)
    b = make_bars(("BBB",), 5, seed=2, start="2020-01-03")
    write(tmp_path, a, "a.csv")
    write(tmp_path, b, "b.parquet")
    data = load_ohlcv(tmp_path, start="2020-01-02", end="2020-01-04")
    assert data["timestamp"].is_monotonic_increasing
    assert data[["timestamp", "symbol"]].astype(str).values.tolist() == [
        ["2020-01-02 00:00:00+00:00", "AAA"],
        ["2020-01-03 00:00:00+00:00", "AAA"],
        ["2020-01-03 00:00:00+00:00", "BBB"],
        ["2020-01-04 00:00:00+00:00", "AAA"],
        ["2020-01-04 00:00:00+00:00", "BBB"],
    ]
    matrix = BarMatrix.from_frame(data)
    assert matrix.symbols == ("AAA", "BBB")
    assert np.isnan(matrix.close[0, 1]) and not np.isnan(matrix.close[1, 1])
    day = 86_400 * 10**9
    assert matrix.ts_event[0] == pd.Timestamp("2020-01-02", tz="UTC").value + day  # stamped at the close


def test_same_bar_in_two_files_is_refused(tmp_path):
    a = make_bars(("AAA",), 5, seed=1)
    write(tmp_path, a, "a.csv")
    write(tmp_path, a.iloc[2:3], "b.csv")
    with pytest.raises(DataError, match=r"b.csv: symbol AAA: 2020-01-03 .* also appears in another file"):
        load_ohlcv(tmp_path)


def test_epoch_millisecond_timestamps(tmp_path, clean):
    df = clean.copy()
    df["timestamp"] = df["timestamp"].astype("int64") // 1_000_000
    data = load_ohlcv(write(tmp_path, df))
    assert data["timestamp"].iloc[0] == pd.Timestamp("2020-01-01", tz="UTC")
