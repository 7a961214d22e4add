"""Historical replay: long-format OHLCV files in, time-ordered bar cross-sections out.

Files hold columns timestamp, symbol, open, high, low, close, volume (parquet or CSV; a directory
is read whole). Bad data stops the run with the file, symbol and row named; files with close
prices only are accepted with a warning, the close standing in for open, high and low.
Replay pivots the data once into time × symbol matrices and publishes row views of them, so the
per-bar cost does not depend on the number of rows behind it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import structlog

from engine.events import BarSet

log = structlog.get_logger("connectors.replay")

PRICE_COLUMNS = ("open", "high", "low", "close")
COLUMNS = ("timestamp", "symbol", *PRICE_COLUMNS, "volume")
_SUFFIXES = (".parquet", ".pq", ".csv", ".csv.gz")
_DAY_NS = 86_400_000_000_000


class DataError(ValueError):
    """The data cannot be replayed; the message names the file, symbol and row."""


def _files_below(path: Path) -> list[Path]:
    """A directory of data sets, as ``quantnet data fetch --out DIR`` leaves it
    (``DIR/bybit_linear_60/BTCUSDT.parquet``): one data set below is the data; several must be
    chosen, since one replay takes one bar length."""
    sets = {
        sub: n
        for sub in sorted(p for p in path.iterdir() if p.is_dir())
        if (n := sum(1 for p in sub.iterdir() if p.name.endswith(_SUFFIXES)))
    }
    if len(sets) == 1:
        (sub,) = sets
        return sorted(p for p in sub.iterdir() if p.name.endswith(_SUFFIXES))
    if not sets:
        raise DataError(f"{path}: directory holds no .parquet or .csv files")
    listed = ", ".join(f"{sub} ({n} files)" for sub, n in sets.items())
    raise DataError(f"{path} holds no data files itself, but {listed} do: give one of them as the data path")


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.name.endswith(_SUFFIXES))
        if not found:
            return _files_below(path)
        return found
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if not path.name.endswith(_SUFFIXES):
        raise DataError(f"{path}: unsupported file type (expected .parquet, .pq, .csv or .csv.gz)")
    return [path]


def _shown(value: object) -> str:
    """A cell as a user wrote it: text quoted, numbers plain."""
    return repr(value) if isinstance(value, str) else str(value)


_NUMERIC_UNITS = ("s", "ms", "us", "ns", "D", "excel")
# Epoch magnitudes that can only be one unit for dates from 1973 to 2286; anything else is ambiguous.
_EPOCH_BANDS = (("s", 1e8, 1e10), ("ms", 1e11, 1e13), ("us", 1e14, 1e16), ("ns", 1e17, 1e19))


def _numeric_timestamps(raw: pd.Series, at: Callable[[int], str], unit: str) -> pd.Series:
    """Integer ``YYYYMMDD`` dates, or epoch numbers whose magnitude leaves one unit possible.

    Other numbers (Excel serial days, seconds before 1973, a mix of units) could be several
    things, so they need ``[data] timestamp_unit``; guessing turned 2021 into 1970 before.
    """
    if unit == "excel":
        return pd.to_datetime(raw, unit="D", origin="1899-12-30", utc=True, errors="coerce")
    if unit:
        return pd.to_datetime(raw, unit=unit, utc=True, errors="coerce")
    values = raw.to_numpy(dtype="float64")
    finite = values[np.isfinite(values)]
    if len(finite) and (finite == np.floor(finite)).all() and finite.min() >= 1e7 and finite.max() < 1e8:
        text = pd.Series(values, index=raw.index).astype("Int64").astype("str")
        return pd.to_datetime(text, format="%Y%m%d", utc=True, errors="coerce")
    typical = float(np.median(finite)) if len(finite) else 0.0
    for name, low, high in _EPOCH_BANDS:
        if low <= abs(typical) < high:
            outside = np.isfinite(values) & ~((low <= np.abs(values)) & (np.abs(values) < high))
            if not outside.any():
                return pd.to_datetime(raw, unit=name, utc=True, errors="coerce")
            row = int(np.flatnonzero(outside)[0])
            break
    else:
        row = int(np.flatnonzero(np.isfinite(values))[0]) if len(finite) else 0
    raise DataError(
        f"{at(row)}: timestamp {_shown(raw.iloc[row])} is a number of unknown unit; set [data] "
        f"timestamp_unit ({', '.join(_NUMERIC_UNITS)}) or write dates as YYYYMMDD or ISO 8601"
    )


def _text_timestamps(raw: pd.Series, at: Callable[[int], str], fmt: str) -> pd.Series:
    """ISO 8601, or other text whose reading does not depend on day-first or month-first order."""
    if fmt:
        return pd.to_datetime(raw, format=fmt, utc=True, errors="coerce")
    ts = pd.to_datetime(raw, format="ISO8601", utc=True, errors="coerce")
    other = (ts.isna() & raw.notna()).to_numpy()
    if other.any():
        rest = raw[other]
        month_first = pd.to_datetime(rest, format="mixed", utc=True, errors="coerce")
        day_first = pd.to_datetime(rest, format="mixed", dayfirst=True, utc=True, errors="coerce")
        differ = (month_first.notna() | day_first.notna()) & (month_first != day_first)
        if differ.any():
            row = int(np.flatnonzero(other)[np.flatnonzero(differ.to_numpy())[0]])
            raise DataError(
                f"{at(row)}: timestamp {raw.iloc[row]!r} reads differently day-first and month-first; "
                "set [data] timestamp_format (e.g. '%d/%m/%Y') or write ISO 8601 (2023-02-01)"
            )
        ts = ts.copy()
        ts[other] = month_first
    return ts


def _parse_timestamps(raw: pd.Series, at: Callable[[int], str], unit: str = "", fmt: str = "") -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(raw):
        ts = raw
    elif pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
        ts = _numeric_timestamps(raw, at, unit)
    else:
        ts = _text_timestamps(raw, at, fmt)
    if ts.dt.tz is None:
        ts = ts.dt.tz_localize("UTC")
    ts = ts.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")
    bad = ts.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{at(row)}: timestamp {_shown(raw.iloc[row])} cannot be parsed")
    return ts


def _read_table(file: Path) -> pd.DataFrame:
    """The file as a frame, its symbol column as text exactly as written (``0700``, ``NA``)."""
    if file.name.endswith((".parquet", ".pq")):
        return pd.read_parquet(file)
    header = pd.read_csv(file, nrows=0).columns
    symbol = [c for c in header if str(c).strip().lower() == "symbol"]
    df = pd.read_csv(file, dtype=dict.fromkeys(symbol, str))
    if symbol and df[symbol[0]].isna().any():  # NA-like tickers: read that column again, verbatim
        df[symbol[0]] = pd.read_csv(file, usecols=symbol, dtype=str, keep_default_na=False)[symbol[0]]
    return df


def _symbols(raw: pd.Series, file: Path) -> pd.Series:
    text = raw.astype("str")
    empty = (raw.isna() | (text.str.strip() == "")).to_numpy()
    if empty.any():
        row = int(np.flatnonzero(empty)[0])
        raise DataError(f"{file}: row {row + 1}: empty symbol")
    return text


def _read_one(file: Path, timestamp_unit: str = "", timestamp_format: str = "") -> pd.DataFrame:
    try:
        df = _read_table(file)
    except Exception as exc:
        raise DataError(f"{file}: cannot be read: {exc}") from None
    df.columns = [str(c).strip().lower() for c in df.columns]
    missing = [c for c in ("timestamp", "symbol", "close") if c not in df.columns]
    if missing:
        raise DataError(f"{file}: missing column(s) {', '.join(missing)}; found {', '.join(df.columns)}")
    df = df.reset_index(drop=True)
    df["symbol"] = symbols = _symbols(df["symbol"], file)

    def at(row: int) -> str:
        return f"{file}: symbol {symbols.iloc[row]}: row {row + 1}"

    df["timestamp"] = stamps = _parse_timestamps(df["timestamp"], at, timestamp_unit, timestamp_format)
    for col in (*PRICE_COLUMNS, "volume"):
        if col in df.columns:
            raw = df[col]
            df[col] = number = pd.to_numeric(raw, errors="coerce").astype("float64")
            if pd.api.types.is_numeric_dtype(raw):
                continue
            text = (number.isna() & raw.notna() & (raw.astype("str").str.strip() != "")).to_numpy()
            if text.any():
                row = int(np.flatnonzero(text)[0])
                raise DataError(f"{at(row)} ({stamps.iloc[row]}): {col} {raw.iloc[row]!r} is not a number")
    return df


def _absent(df: pd.DataFrame) -> list[str]:
    return [c for c in ("open", "high", "low") if c not in df.columns or df[c].isna().all()]


def _fill_close_only(df: pd.DataFrame, file: Path, warn: bool = True) -> pd.DataFrame:
    absent = _absent(df)
    for col in ("open", "high", "low"):
        if col not in df.columns:
            df[col] = np.nan
    partial = df[["open", "high", "low"]].isna().any(axis=1) & df["close"].notna()
    if absent:
        if warn:
            log.warning("close-only data: open/high/low taken from close", file=str(file), fields=absent)
    elif partial.any():
        log.warning("rows without open/high/low: taken from close", file=str(file), rows=int(partial.sum()))
    for col in ("open", "high", "low"):
        df[col] = df[col].fillna(df["close"])
    if "volume" not in df.columns:
        df["volume"] = np.nan
    df["volume"] = df["volume"].fillna(0.0)
    return df


def _validate(df: pd.DataFrame, file: Path) -> None:
    """Raise on the first bad row of each kind, naming file, symbol and row (1-based data row)."""
    rows = df.index.to_numpy()

    def fail(mask: np.ndarray, what: str) -> None:
        k = int(np.flatnonzero(mask)[0])
        r = df.iloc[k]
        raise DataError(f"{file}: symbol {r['symbol']}: row {rows[k] + 1} ({r['timestamp']}): {what}")

    prices = df[list(PRICE_COLUMNS)].to_numpy()
    nan = np.isnan(prices).any(axis=1)
    if nan.any():
        k = int(np.flatnonzero(nan)[0])
        cols = [c for c, v in zip(PRICE_COLUMNS, prices[k], strict=True) if np.isnan(v)]
        fail(nan, f"NaN price in {', '.join(cols)}")
    infinite = np.isinf(prices).any(axis=1)
    if infinite.any():
        k = int(np.flatnonzero(infinite)[0])
        cols = [c for c, v in zip(PRICE_COLUMNS, prices[k], strict=True) if np.isinf(v)]
        fail(infinite, f"infinite price in {', '.join(cols)}")
    nonpos = (prices <= 0).any(axis=1)
    if nonpos.any():
        fail(nonpos, f"non-positive price {prices[int(np.flatnonzero(nonpos)[0])].min()}")
    high, low = df["high"].to_numpy(), df["low"].to_numpy()
    hl = high < low
    if hl.any():
        k = int(np.flatnonzero(hl)[0])
        fail(hl, f"high {high[k]} < low {low[k]}")
    for col in ("open", "close"):
        price = df[col].to_numpy()
        outside = (price < low) | (price > high)
        if outside.any():
            k = int(np.flatnonzero(outside)[0])
            fail(outside, f"{col} {price[k]} outside [low {low[k]}, high {high[k]}]")
    volume = df["volume"].to_numpy()
    bad_volume = ~np.isfinite(volume)
    if bad_volume.any():
        fail(bad_volume, f"volume {volume[int(np.flatnonzero(bad_volume)[0])]} is not finite")
    ts = _ns(df["timestamp"])
    sym = df["symbol"].to_numpy()
    order = np.lexsort((np.arange(len(df)), sym))
    same = sym[order][1:] == sym[order][:-1]
    step = np.diff(ts[order])
    dup = same & (step == 0)
    back = same & (step < 0)
    flag = np.zeros(len(df), dtype=bool)
    if dup.any():
        flag[order[1:][dup][0]] = True
        fail(flag, "duplicate timestamp")
    if back.any():
        flag[order[1:][back][0]] = True
        fail(flag, "timestamps not sorted (earlier than the previous row of this symbol)")


def load_ohlcv(
    path: str | Path | Sequence[str | Path],
    *,
    start: str | pd.Timestamp | None = None,
    end: str | pd.Timestamp | None = None,
    symbols: Sequence[str] | None = None,
    timestamp_unit: str = "",
    timestamp_format: str = "",
    close_only_warning: bool = True,
) -> pd.DataFrame:
    """Read and validate long-format OHLCV from files or directories, sorted by (timestamp, symbol).

    ``start``/``end`` are inclusive and filter on the file's timestamps. ``timestamp_unit`` and
    ``timestamp_format`` say how to read numbers and text that could mean more than one time.
    ``close_only_warning=False``: the caller says what close-only files mean for it (a backtest).
    ``attrs["close_only"]`` of the result says whether every file lacked opens.
    """
    paths = [path] if isinstance(path, str | Path) else list(path)
    frames = []
    close_only: list[Path] = []
    for p in paths:
        for file in _files(Path(p)):
            df = _read_one(file, timestamp_unit, timestamp_format)
            if _absent(df):
                close_only.append(file)
            df = _fill_close_only(df, file, close_only_warning)
            if symbols is not None:
                df = df[df["symbol"].isin(symbols)]
            _validate(df, file)
            df["_file"] = str(file)
            df["_row"] = df.index + 1
            frames.append(df)
    data = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if not close_only_warning and 0 < len(close_only) < len(frames):  # the caller hears of all-or-none
        for file in close_only:
            log.warning("close-only data: open/high/low taken from close", file=str(file))
    bar_interval_ns(data)
    if len(frames) > 1:
        dup = data.duplicated(["symbol", "timestamp"], keep="first")
        if dup.any():
            r = data[dup].iloc[0]
            raise DataError(
                f"{r['_file']}: symbol {r['symbol']}: {r['timestamp']} also appears in another file"
            )
    if start:
        data = data[data["timestamp"] >= parse_time(start)]
    if end:
        data = data[data["timestamp"] <= parse_time(end, end_of_day=True)]
    if symbols is not None:
        unknown = sorted(set(symbols) - set(data["symbol"]))
        if unknown:
            raise DataError(f"no data for symbol(s) {', '.join(unknown)} in {', '.join(map(str, paths))}")
    if data.empty:
        raise DataError(f"no bars in {', '.join(map(str, paths))} between {start or '-'} and {end or '-'}")
    keep = [c for c in data.columns if c not in ("_file", "_row")]
    data = data[keep].sort_values(["timestamp", "symbol"], kind="stable").reset_index(drop=True)
    data.attrs["close_only"] = len(close_only) == len(frames)
    return data


def parse_time(value: str | pd.Timestamp, *, end_of_day: bool = False) -> pd.Timestamp:
    """A UTC timestamp from ISO 8601; ``end_of_day`` makes a bare date inclusive of that day."""
    try:
        ts = pd.Timestamp(value)
    except ValueError:
        raise DataError(f"cannot parse date {value!r} (use ISO 8601, e.g. 2012-01-31)") from None
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    if end_of_day and isinstance(value, str) and len(value.strip()) <= 10:
        ts = ts + pd.Timedelta(days=1) - pd.Timedelta(1, "ns")
    return ts


def _ns(ts: pd.Series) -> np.ndarray:
    return ts.dt.as_unit("ns").astype("int64").to_numpy()


def _span(ns: int) -> str:
    return str(pd.Timedelta(ns)).replace("0 days ", "").replace(" 00:00:00", "")


def _intervals(ts: np.ndarray, codes: np.ndarray) -> tuple[int, np.ndarray]:
    """The most common spacing between a symbol's consecutive bars, over all symbols and for
    each symbol on its own (0 for a symbol with one bar; ties go to the shorter spacing)."""
    n_symbols = int(codes.max()) + 1 if len(codes) else 0
    order = np.lexsort((ts, codes))
    c = codes[order]
    same = c[1:] == c[:-1]
    steps = np.diff(ts[order])[same]
    owner = c[1:][same]
    del order, c, same
    own = np.zeros(n_symbols, dtype=np.int64)
    if not len(steps):
        return _DAY_NS, own
    values, counts = np.unique(steps, return_counts=True)
    by = np.lexsort((steps, owner))
    steps, owner = steps[by], owner[by]
    starts = np.flatnonzero(np.r_[True, (owner[1:] != owner[:-1]) | (steps[1:] != steps[:-1])])
    runs = np.diff(np.r_[starts, len(steps)])
    run_owner, run_step = owner[starts], steps[starts]
    best = np.lexsort((run_step, -runs, run_owner))
    first = best[np.r_[True, run_owner[best][1:] != run_owner[best][:-1]]]
    own[run_owner[first]] = run_step[first]
    return int(values[np.argmax(counts)]), own


def bar_interval_ns(data: pd.DataFrame) -> int:
    """The bar length: the most common spacing between a symbol's consecutive bars.

    A symbol whose bars are spaced otherwise (weekly among daily) is refused: one bar length stamps
    every close, and a weekly bar stamped one day after its open would be read six days early.
    """
    codes, names = pd.factorize(data["symbol"], sort=True)
    return _one_interval(_ns(data["timestamp"]), codes, names, data)


def _one_interval(ts: np.ndarray, codes: np.ndarray, names: Sequence[object], data: pd.DataFrame) -> int:
    interval, own = _intervals(ts, codes)
    mixed = np.flatnonzero((own != 0) & (own != interval))
    if len(mixed):
        j = int(mixed[0])
        k = int(np.flatnonzero(codes == j)[0])
        r = data.iloc[k]
        where = f"symbol {names[j]}"
        if "_file" in data:
            where = f"{r['_file']}: {where}: row {r['_row']}"
        raise DataError(
            f"{where} ({r['timestamp']}): bars every {_span(int(own[j]))}, but most symbols' every "
            f"{_span(interval)}; mixed bar frequencies cannot share one close stamp (replay them separately)"
        )
    return interval


_FIELDS = ("open", "high", "low", "close", "volume")


@dataclass(frozen=True, slots=True)
class BarMatrix:
    """Bars by close time, ready to publish as cross-sections aligned to the universe.

    The bars are held as long columns in (time, symbol) order, ``offsets[i]:offsets[i + 1]`` being
    time ``i``'s slice, so memory follows the number of bars: a universe of staggered listings is
    mostly cells without a bar. When bars fill at least half the time × symbol grid, ``grid`` also
    lays them out as matrices (NaN where a symbol has no bar; views of the columns when every cell
    is filled) and each BarSet is a row view of them, free per bar. Otherwise each BarSet is built
    from its slice when it is published.
    """

    symbols: tuple[str, ...]
    ts_event: np.ndarray
    offsets: np.ndarray
    codes: np.ndarray
    columns: tuple[np.ndarray, ...]
    grid: tuple[np.ndarray, ...] | None
    interval_ns: int

    @classmethod
    def from_frame(cls, data: pd.DataFrame, *, timestamps: str = "open") -> BarMatrix:
        """``timestamps="open"``: file times label the bar's open, so bars close one interval later."""
        codes, names = pd.factorize(data["symbol"], sort=True)
        codes = codes.astype(np.int32 if len(names) < 2**31 else np.int64)
        symbols = tuple(str(s) for s in names)
        ts = _ns(data["timestamp"])
        interval = _one_interval(ts, codes, names, data)
        columns = tuple(data[name].to_numpy(dtype="float64") for name in _FIELDS)
        if len(ts) > 1 and (ts[1:] < ts[:-1]).any():
            order = np.argsort(ts, kind="stable")
            ts, codes = ts[order], codes[order]
            columns = tuple(col[order] for col in columns)
        new = np.flatnonzero(np.r_[True, ts[1:] != ts[:-1]]) if len(ts) else np.zeros(0, np.int64)
        label = ts[new]
        offsets = np.r_[new, len(ts)].astype(np.int64)
        del ts
        within = np.ones(len(codes), dtype=bool)  # each slice's symbols must rise strictly
        within[offsets[1:-1]] = False
        within[0] = False
        step = np.diff(codes, prepend=codes[:1])
        if (within & (step <= 0)).any():
            order = np.lexsort((codes, np.repeat(np.arange(len(label)), np.diff(offsets))))
            codes = codes[order]
            columns = tuple(col[order] for col in columns)
            step = np.diff(codes, prepend=codes[:1])
            dup = within & (step == 0)
            if dup.any():
                k = int(np.flatnonzero(dup)[0])
                slot = int(np.searchsorted(offsets, k, side="right")) - 1
                when = pd.Timestamp(int(label[slot]), tz="UTC")
                raise DataError(f"symbol {symbols[codes[k]]}: {when} appears twice")
        del within, step
        n_times, n_symbols = len(label), len(symbols)
        grid = None
        if len(codes) == n_times * n_symbols:
            grid = tuple(col.reshape(n_times, n_symbols) for col in columns)
        elif n_times * n_symbols <= 2 * len(codes):
            cell = np.repeat(np.arange(n_times, dtype=np.int64) * n_symbols, np.diff(offsets)) + codes
            grid = tuple(np.full((n_times, n_symbols), np.nan) for _ in _FIELDS)
            for mat, col in zip(grid, columns, strict=True):
                mat.ravel()[cell] = col
        ts_event = label + interval if timestamps == "open" else label
        return cls(symbols, ts_event, offsets, codes, columns, grid, interval)

    def __len__(self) -> int:
        return len(self.ts_event)

    def bars(self, first: int = 0) -> int:
        """Bars (not empty cells) in the time slices from ``first`` on."""
        return int(self.offsets[-1] - self.offsets[min(first, len(self))])

    def _matrix(self, field: int) -> np.ndarray:
        if self.grid is not None:
            return self.grid[field]
        out = np.full((len(self), len(self.symbols)), np.nan)
        cell = np.repeat(np.arange(len(self)) * len(self.symbols), np.diff(self.offsets)) + self.codes
        out.ravel()[cell] = self.columns[field]
        return out

    @property
    def open(self) -> np.ndarray:
        """Time × symbol matrix (built on each call when the bars are held sparse)."""
        return self._matrix(0)

    @property
    def high(self) -> np.ndarray:
        return self._matrix(1)

    @property
    def low(self) -> np.ndarray:
        return self._matrix(2)

    @property
    def close(self) -> np.ndarray:
        return self._matrix(3)

    @property
    def volume(self) -> np.ndarray:
        return self._matrix(4)

    def bar_sets(self) -> Iterator[BarSet]:
        symbols = self.symbols
        if self.grid is not None:
            o, h, low, c, v = self.grid
            for i, ts in enumerate(self.ts_event.tolist()):
                yield BarSet(ts, ts, symbols, o[i], h[i], low[i], c[i], v[i], i)
            return
        width = len(symbols)
        codes, columns, bounds = self.codes, self.columns, self.offsets.tolist()
        for i, ts in enumerate(self.ts_event.tolist()):
            lo, hi = bounds[i], bounds[i + 1]
            where = codes[lo:hi]
            block = np.full((len(_FIELDS), width), np.nan)
            for row, col in zip(block, columns, strict=True):
                row[where] = col[lo:hi]
            yield BarSet(ts, ts, symbols, block[0], block[1], block[2], block[3], block[4], i)
