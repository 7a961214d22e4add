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


def daily(symbol: str = "AAA", n: int = 5, start: str = "2021-01-04", step: str = "D") -> pd.DataFrame:
    """Flat, consistent bars: open 100, high 102, low 98, close 101."""
    times = pd.date_range(start, periods=n, freq=step, tz="UTC")
    return pd.DataFrame(
        {"timestamp": times, "symbol": symbol, "open": 100.0, "high": 102.0, "low": 98.0, "close": 101.0}
        | {"volume": 10.0}
    )


def test_yyyymmdd_integer_dates_are_dates(tmp_path):
    df = daily()
    df["timestamp"] = df["timestamp"].dt.strftime("%Y%m%d").astype(int)  # 20210104, ...
    data = load_ohlcv(write(tmp_path, df))
    assert data["timestamp"].tolist() == list(pd.date_range("2021-01-04", periods=5, freq="D", tz="UTC"))
    assert BarMatrix.from_frame(data).interval_ns == 86_400 * 10**9


def test_excel_serial_dates_need_a_unit(tmp_path):
    df = daily()
    df["timestamp"] = np.arange(44200, 44205)  # Excel's day numbers for 2021-01-04 .. 2021-01-08
    path = write(tmp_path, df)
    with pytest.raises(DataError) as err:
        load_ohlcv(path)
    assert str(err.value) == (
        f"{path}: symbol AAA: row 1: timestamp 44200 is a number of unknown unit; "
        "set [data] timestamp_unit (s, ms, us, ns, D, excel) or write dates as YYYYMMDD or ISO 8601"
    )
    excel = load_ohlcv(path, timestamp_unit="excel")
    assert excel["timestamp"].iloc[0] == pd.Timestamp("2021-01-04", tz="UTC")
    days = load_ohlcv(path, timestamp_unit="D")  # read as days since 1970-01-01, because told so
    assert days["timestamp"].iloc[0] == pd.Timestamp("1970-01-01", tz="UTC") + pd.Timedelta(days=44200)


def test_epoch_numbers_in_two_units_are_refused(tmp_path):
    df = daily()
    df["timestamp"] = df["timestamp"].astype("int64") // 10**6  # milliseconds ...
    df.loc[3, "timestamp"] //= 1000  # ... and one row in seconds
    path = write(tmp_path, df)
    with pytest.raises(DataError, match=rf"^{path}: symbol AAA: row 4: timestamp .* unknown unit"):
        load_ohlcv(path)


def test_infinite_price_is_refused(tmp_path, clean):
    df = clean.copy()
    df.loc[12, "high"] = np.inf
    path = write(tmp_path, df)
    with pytest.raises(DataError) as err:
        load_ohlcv(path)
    assert str(err.value) == f"{path}: symbol BBB: row 13 (2020-01-03 00:00:00+00:00): infinite price in high"


@pytest.mark.parametrize(("col", "value"), [("open", 103.0), ("close", 97.5)])
def test_open_or_close_outside_the_bar_range_is_refused(tmp_path, col, value):
    df = daily()
    df.loc[2, col] = value
    path = write(tmp_path, df)
    with pytest.raises(DataError) as err:
        load_ohlcv(path)
    assert str(err.value) == (
        f"{path}: symbol AAA: row 3 (2021-01-06 00:00:00+00:00): {col} {value} outside [low 98.0, high 102.0]"
    )


@pytest.mark.parametrize("col", ["open", "high", "low", "close", "volume"])
def test_text_in_a_number_column_is_refused(tmp_path, col):
    df = pd.concat([daily("AAA"), daily("BBB")], ignore_index=True).astype({col: object})
    df.loc[7, col] = "abc"
    path = write(tmp_path, df)
    with pytest.raises(DataError) as err:
        load_ohlcv(path)
    where = f"{path}: symbol BBB: row 8 (2021-01-06 00:00:00+00:00)"
    assert str(err.value) == f"{where}: {col} 'abc' is not a number"


def test_symbols_are_text_as_written(tmp_path):
    df = pd.concat([daily("NA"), daily("0700"), daily("NULL")], ignore_index=True)
    data = load_ohlcv(write(tmp_path, df))
    assert sorted(set(data["symbol"])) == ["0700", "NA", "NULL"]
    assert BarMatrix.from_frame(data).symbols == ("0700", "NA", "NULL")


def test_empty_symbol_is_refused(tmp_path):
    df = pd.concat([daily("AAA"), daily("BBB")], ignore_index=True)
    df.loc[6, "symbol"] = ""
    path = write(tmp_path, df)
    with pytest.raises(DataError) as err:
        load_ohlcv(path)
    assert str(err.value) == f"{path}: row 7: empty symbol"


def test_mixed_bar_frequencies_are_refused(tmp_path):
    write(tmp_path, daily("DAY", 30), "day.csv")
    weekly = write(tmp_path, daily("WEEK", 4, step="7D"), "week.csv")
    with pytest.raises(DataError) as err:
        load_ohlcv(tmp_path)
    assert str(err.value) == (
        f"{weekly}: symbol WEEK: row 1 (2021-01-04 00:00:00+00:00): bars every 7 days, but most symbols' "
        "every 1 days; mixed bar frequencies cannot share one close stamp (replay them separately)"
    )
    frame = pd.concat([daily("DAY", 30), daily("WEEK", 4, step="7D")], ignore_index=True)
    with pytest.raises(DataError, match=r"^symbol WEEK \(2021-01-04 00:00:00\+00:00\): bars every 7 days"):
        BarMatrix.from_frame(frame)


def test_day_first_or_month_first_dates_need_a_format(tmp_path):
    df = daily()
    df["timestamp"] = df["timestamp"].dt.strftime("%d/%m/%Y")  # 04/01/2021 = 4 January
    path = write(tmp_path, df)
    with pytest.raises(DataError) as err:
        load_ohlcv(path)
    assert str(err.value) == (
        f"{path}: symbol AAA: row 1: timestamp '04/01/2021' reads differently day-first and month-first; "
        "set [data] timestamp_format (e.g. '%d/%m/%Y') or write ISO 8601 (2023-02-01)"
    )
    data = load_ohlcv(path, timestamp_format="%d/%m/%Y")
    assert data["timestamp"].iloc[0] == pd.Timestamp("2021-01-04", tz="UTC")


def test_iso_and_unambiguous_text_dates_need_no_format(tmp_path):
    df = daily(n=3)
    df["timestamp"] = ["2021-01-04", "2021-01-05T00:00:00Z", "Jan 6, 2021"]
    data = load_ohlcv(write(tmp_path, df))
    assert data["timestamp"].tolist() == list(pd.date_range("2021-01-04", periods=3, freq="D", tz="UTC"))


def test_timestamp_settings_come_from_the_data_section(tmp_path):
    from quantnet.backtest import load_data
    from quantnet.config import load_config

    df = daily()
    df["timestamp"] = df["timestamp"].dt.strftime("%d/%m/%Y")
    path = write(tmp_path, df)
    cfg = load_config(None, {"data": {"path": str(path), "timestamp_format": "%d/%m/%Y"}})
    assert load_data(cfg)["timestamp"].iloc[1] == pd.Timestamp("2021-01-05", tz="UTC")


def staggered(n_symbols: int = 6, n_bars: int = 4) -> pd.DataFrame:
    """Each symbol lists for ``n_bars`` days, one day after the previous one: mostly empty cells."""
    frames = [
        daily(f"S{k}", n_bars, start=str(pd.Timestamp("2021-01-04") + pd.Timedelta(days=k)))
        for k in range(n_symbols)
    ]
    data = pd.concat(frames, ignore_index=True)
    data["close"] = 98.0 + np.arange(len(data)) % 4  # distinct closes, inside [low, high]
    return data.sort_values(["timestamp", "symbol"], ignore_index=True)


def test_sparse_bars_publish_the_same_cross_sections():
    data = staggered()
    matrix = BarMatrix.from_frame(data)
    assert matrix.grid is None  # 24 bars in 9 x 6 cells: held sparse
    assert len(matrix) == 9 and matrix.bars() == 24 and matrix.bars(3) == 24 - (1 + 2 + 3)
    expected = data.pivot(index="timestamp", columns="symbol", values="close")
    got = np.array([bars.close for bars in matrix.bar_sets()])
    np.testing.assert_array_equal(got, expected.to_numpy())
    np.testing.assert_array_equal(matrix.close, expected.to_numpy())
    shuffled = BarMatrix.from_frame(data.sample(frac=1.0, random_state=3))
    np.testing.assert_array_equal(np.array([b.close for b in shuffled.bar_sets()]), expected.to_numpy())


def test_backtest_counts_real_bars_not_empty_cells():
    from quantnet.backtest import run_backtest
    from quantnet.config import load_config
    from strategies.registry import create

    result = run_backtest(load_config(None, {}), strategy=create("noop", {}), data=staggered())
    assert result.bars == result.settings["bars"] == 24  # not 9 times x 6 symbols = 54
    assert result.settings["timestamps"] == len(result.equity) == 9
    assert result.positions.shape == (9, 0)  # nothing was ever held


def test_positions_are_recorded_for_held_symbols_only():
    from engine.events import BarSet, Fill, Side
    from engine.portfolio import Portfolio

    def run(fills: dict[int, list[tuple[str, Side, float, float]]]) -> tuple[np.ndarray, tuple[str, ...]]:
        pf = Portfolio(("A", "B", "C"), 1_000.0)
        nan = np.full(3, np.nan)
        for t in range(3):
            for sym, side, qty, price in fills.get(t, []):
                pf.on_fill(Fill(t, t, f"{sym}{t}", sym, side, qty, price, 0.0))
            close = np.array([10.0, 20.0, 30.0]) + t
            pf.on_bars(BarSet(t, t, pf.symbols, nan, nan, nan, close, nan, t))
        return pf.positions()

    values, held = run({1: [("C", Side.BUY, 2.0, 31.0), ("A", Side.SELL, 1.0, 11.0)]})
    assert held == ("A", "C")  # B was never held: no column
    np.testing.assert_array_equal(values, [[0.0, 0.0], [-11.0, 62.0], [-12.0, 64.0]])
    values, held = run(
        {1: [("C", Side.BUY, 2.0, 31.0), ("A", Side.SELL, 1.0, 11.0)], 2: [("B", Side.BUY, 1.0, 22.0)]}
    )
    assert held == ("A", "B", "C")  # all held: back in universe order
    np.testing.assert_array_equal(values, [[0.0, 0.0, 0.0], [-11.0, 0.0, 62.0], [-12.0, 22.0, 64.0]])
