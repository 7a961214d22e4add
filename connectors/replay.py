"""Historical replay: long-format OHLCV files in, time-ordered bar cross-sections out.

Files hold columns timestamp, symbol, open, high, low, close, volume (parquet or CSV; a directory
is read whole). Bad data stops the run with the file, symbol and row named; files with close
prices only are accepted with a warning, the close standing in for open, high and low.
Replay pivots the data once into time × symbol matrices and publishes row views of them, so the
per-bar cost does not depend on the number of rows behind it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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


class DataError(ValueError):
    """The data cannot be replayed; the message names the file, symbol and row."""


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.name.endswith(_SUFFIXES))
        if not found:
            raise DataError(f"{path}: directory holds no .parquet or .csv files")
        return found
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if not path.name.endswith(_SUFFIXES):
        raise DataError(f"{path}: unsupported file type (expected .parquet, .pq, .csv or .csv.gz)")
    return [path]


def _parse_timestamps(raw: pd.Series, file: Path) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(raw):
        ts = raw
    elif pd.api.types.is_numeric_dtype(raw):
        values = raw.to_numpy(dtype="float64")
        top = np.nanmax(np.abs(values)) if len(values) else 0
        unit = "s" if top < 1e11 else "ms" if top < 1e14 else "us" if top < 1e17 else "ns"
        ts = pd.to_datetime(raw, unit=unit, utc=True, errors="coerce")
    else:
        ts = pd.to_datetime(raw, utc=True, errors="coerce", format="mixed")
    if ts.dt.tz is None:
        ts = ts.dt.tz_localize("UTC")
    ts = ts.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")
    bad = ts.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{file}: row {row + 1}: timestamp {raw.iloc[row]!r} cannot be parsed")
    return ts


def _read_one(file: Path) -> pd.DataFrame:
    try:
        df = pd.read_parquet(file) if file.name.endswith((".parquet", ".pq")) else pd.read_csv(file)
    except Exception as exc:
        raise DataError(f"{file}: cannot be read: {exc}") from None
    df.columns = [str(c).strip().lower() for c in df.columns]
    missing = [c for c in ("timestamp", "symbol", "close") if c not in df.columns]
    if missing:
        raise DataError(f"{file}: missing column(s) {', '.join(missing)}; found {', '.join(df.columns)}")
    df = df.reset_index(drop=True)
    df["timestamp"] = _parse_timestamps(df["timestamp"], file)
    df["symbol"] = df["symbol"].astype(str)
    for col in (*PRICE_COLUMNS, "volume"):
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    return df


def _fill_close_only(df: pd.DataFrame, file: Path) -> pd.DataFrame:
    absent = [c for c in ("open", "high", "low") if c not in df.columns or df[c].isna().all()]
    for col in ("open", "high", "low"):
        if col not in df.columns:
            df[col] = np.nan
    partial = df[["open", "high", "low"]].isna().any(axis=1) & df["close"].notna()
    if absent:
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
    nonpos = (prices <= 0).any(axis=1)
    if nonpos.any():
        fail(nonpos, f"non-positive price {prices[int(np.flatnonzero(nonpos)[0])].min()}")
    hl = df["high"].to_numpy() < df["low"].to_numpy()
    if hl.any():
        k = int(np.flatnonzero(hl)[0])
        fail(hl, f"high {df['high'].iloc[k]} < low {df['low'].iloc[k]}")
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
) -> pd.DataFrame:
    """Read and validate long-format OHLCV from files or directories, sorted by (timestamp, symbol).

    ``start``/``end`` are inclusive and filter on the file's timestamps.
    """
    paths = [path] if isinstance(path, str | Path) else list(path)
    frames = []
    for p in paths:
        for file in _files(Path(p)):
            df = _fill_close_only(_read_one(file), file)
            if symbols is not None:
                df = df[df["symbol"].isin(symbols)]
            _validate(df, file)
            df["_file"] = str(file)
            frames.append(df)
    data = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
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
    keep = [c for c in data.columns if c != "_file"]
    return data[keep].sort_values(["timestamp", "symbol"], kind="stable").reset_index(drop=True)


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


def bar_interval_ns(data: pd.DataFrame) -> int:
    """The bar length: the most common spacing between a symbol's consecutive bars."""
    ts = _ns(data["timestamp"])
    sym = data["symbol"].to_numpy()
    order = np.lexsort((ts, sym))
    same = sym[order][1:] == sym[order][:-1]
    steps = np.diff(ts[order])[same]
    if len(steps) == 0:
        return 86_400_000_000_000
    values, counts = np.unique(steps, return_counts=True)
    return int(values[np.argmax(counts)])


@dataclass(frozen=True, slots=True)
class BarMatrix:
    """Bars as aligned time × symbol matrices (NaN where a symbol has no bar)."""

    symbols: tuple[str, ...]
    ts_event: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    interval_ns: int

    @classmethod
    def from_frame(cls, data: pd.DataFrame, *, timestamps: str = "open") -> BarMatrix:
        """``timestamps="open"``: file times label the bar's open, so bars close one interval later."""
        interval = bar_interval_ns(data)
        wide = data.pivot(
            index="timestamp", columns="symbol", values=["open", "high", "low", "close", "volume"]
        )
        symbols = tuple(str(s) for s in wide["close"].columns)
        label = pd.DatetimeIndex(wide.index).as_unit("ns").asi8
        ts_event = label + interval if timestamps == "open" else label

        def mat(name: str) -> np.ndarray:
            return np.ascontiguousarray(wide[name].to_numpy(dtype="float64"))

        return cls(
            symbols, ts_event, mat("open"), mat("high"), mat("low"), mat("close"), mat("volume"), interval
        )

    def __len__(self) -> int:
        return len(self.ts_event)

    def bar_sets(self) -> Iterator[BarSet]:
        symbols = self.symbols
        o, h, low, c, v = self.open, self.high, self.low, self.close, self.volume
        for i, ts in enumerate(self.ts_event.tolist()):
            yield BarSet(ts, ts, symbols, o[i], h[i], low[i], c[i], v[i], i)
