"""``quantnet data fetch``: download Bybit klines into the long-format parquet that replay reads.

Layout: ``OUT/bybit_{category}_{interval}/{SYMBOL}.parquet``, one file per symbol with columns
timestamp (UTC, the bar's open time, as in ../shared/data), symbol, open, high, low, close,
volume; point ``quantnet backtest --data`` at the directory. Only closed bars opening in
[start, end) are written. A second run reads what is there and fetches only what is missing
before the first or after the last stored bar; progress is flushed to disk every few pages, so
an interrupted download resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from connectors.bybit.config import BybitConfig
from connectors.bybit.errors import BybitError
from connectors.bybit.intervals import ceil_start, check_interval, interval_ms, next_start
from connectors.bybit.rest import BybitRest, Kline
from engine.config import ConfigError
from quantnet.commands.common import err_console, fail, iso_time
from quantnet.config import load_config

FLUSH_EVERY_PAGES = 20
COLUMNS = ["timestamp", "symbol", "open", "high", "low", "close", "volume"]


def symbols_and_interval(symbols: str, interval: str) -> tuple[list[str], str]:
    """``--symbols A,B`` and ``--interval`` as the Bybit commands take them, or a clean exit."""
    try:
        code = check_interval(interval)
    except ValueError as exc:
        fail(str(exc))
    names = [s.strip().upper() for s in symbols.split(",") if s.strip()]
    if not names:
        fail("--symbols is empty")
    return names, code


def bybit_config(path: Path | None, **overrides: Any) -> BybitConfig:
    """The ``[bybit]`` section of the validated app config (``path`` or ./config.toml), with the
    command-line overrides; a bad file ends the command with one clear message."""
    try:
        return load_config(path, {"bybit": overrides}).bybit
    except ConfigError as exc:
        fail(str(exc))


def parse_utc(text: str, option: str) -> int:
    """ISO 8601 date or datetime, UTC unless it says otherwise, to epoch ms."""
    try:
        ts = pd.Timestamp(text)
    except (ValueError, TypeError):
        fail(f"{option} {text!r} is not an ISO 8601 date or datetime (e.g. 2024-01-31 or 2024-01-31T12:00Z)")
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return int(ts.value // 1_000_000)


def symbol_file(out: Path, category: str, interval: str, symbol: str) -> Path:
    return out / f"bybit_{category}_{interval}" / f"{symbol}.parquet"


def read_existing(path: Path) -> pd.DataFrame:
    if not path.exists():
        return pd.DataFrame(columns=COLUMNS)
    return pd.read_parquet(path)


def to_frame(symbol: str, bars: list[Kline]) -> pd.DataFrame:
    frame = pd.DataFrame(bars, columns=["start", "open", "high", "low", "close", "volume", "turnover"])
    frame.insert(0, "timestamp", pd.to_datetime(frame.pop("start"), unit="ms", utc=True))
    frame.insert(1, "symbol", symbol)
    return frame[COLUMNS]


def write_merged(path: Path, existing: pd.DataFrame, new: list[pd.DataFrame]) -> pd.DataFrame:
    """Merge, dedupe by timestamp, sort and replace the file atomically."""
    parts = [f for f in (existing, *new) if len(f)]
    if not parts:
        return existing
    merged = pd.concat(parts, ignore_index=True)
    merged["timestamp"] = pd.to_datetime(merged["timestamp"], utc=True).astype("datetime64[ns, UTC]")
    for col in ("open", "high", "low", "close", "volume"):
        merged[col] = merged[col].astype("float64")
    merged["symbol"] = merged["symbol"].astype(str)
    merged = merged.drop_duplicates("timestamp", keep="last").sort_values("timestamp", ignore_index=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    merged.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return merged


def missing_ranges(
    existing: pd.DataFrame, start_ms: int, end_ms: int, interval: str
) -> list[tuple[int, int]]:
    """[first, last] start ranges (inclusive) not yet covered: before the first stored bar and
    after the last one. Holes inside stored data are the venue's and are not refetched. The bar
    after the last one is found by calendar (months differ in length), not by a fixed step."""
    if existing.empty:
        return [(start_ms, end_ms)]
    stamps = pd.to_datetime(existing["timestamp"], utc=True)
    first = int(stamps.min().value // 1_000_000)
    last = int(stamps.max().value // 1_000_000)
    ranges = []
    if start_ms < first:
        ranges.append((start_ms, first - 1))
    after = next_start(last, interval)
    if after <= end_ms:
        ranges.append((after, end_ms))
    return ranges


async def fetch(
    config: BybitConfig,
    symbols: list[str],
    interval: str,
    start_ms: int,
    end_ms: int,
    out: Path,
    progress: Progress | None = None,
) -> dict[str, int]:
    """Fetch every symbol; returns the number of new bars written per symbol."""
    category = config.category
    step = interval_ms(interval)
    written: dict[str, int] = {}
    async with BybitRest(config) as rest:
        infos = await rest.instruments(category)
        unknown = [s for s in symbols if s not in infos]
        if unknown:
            raise BybitError(f"unknown {category} symbol(s) on Bybit: {', '.join(unknown)}")
        for symbol in symbols:
            launch = int(infos[symbol].get("launchTime") or 0)
            first = ceil_start(max(start_ms, launch), interval)
            path = symbol_file(out, category, interval, symbol)
            existing = read_existing(path)
            ranges = missing_ranges(existing, first, end_ms, interval)
            total = sum(max(0, (b - a) // step + 1) for a, b in ranges)
            task = progress.add_task(symbol, total=max(total, 1)) if progress else None
            count = 0
            for a, b in ranges:
                buffer: list[pd.DataFrame] = []
                pages = 0
                async for page in rest.iter_klines(category, symbol, interval, a, b):
                    pages += 1
                    if page:
                        buffer.append(to_frame(symbol, page))
                        count += len(page)
                    if progress is not None and task is not None:
                        done = (page[-1].start - a) // step + 1 if page else 0
                        progress.update(task, advance=len(page), description=f"{symbol} {_day(page, done)}")
                    if pages % FLUSH_EVERY_PAGES == 0 and buffer:
                        existing = write_merged(path, existing, buffer)
                        buffer = []
                existing = write_merged(path, existing, buffer)
            if progress is not None and task is not None:
                progress.update(task, completed=max(total, 1), description=symbol)
            written[symbol] = count
    return written


def _day(page: list[Kline], _done: int) -> str:
    if not page:
        return ""
    return datetime.fromtimestamp(page[-1].start / 1000, UTC).strftime("%Y-%m-%d")


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(name="data", help="Historical market data.", no_args_is_help=True)
    app.add_typer(data_app, name="data")

    @data_app.command("fetch")
    def fetch_command(
        symbols: Annotated[str, typer.Option("--symbols", help="comma-separated, e.g. BTCUSDT,ETHUSDT")],
        start: Annotated[str, typer.Option("--start", help="first bar open time, ISO 8601 (UTC)")],
        end: Annotated[
            str | None, typer.Option("--end", help="end (exclusive), ISO 8601 (UTC); default: now")
        ] = None,
        category: Annotated[
            str | None, typer.Option("--category", help="spot, linear or inverse (default: config)")
        ] = None,
        interval: Annotated[
            str, typer.Option("--interval", help="1 3 5 15 30 60 120 240 360 720 (minutes), D, W or M")
        ] = "60",
        out: Annotated[Path, typer.Option("--out", help="output directory")] = Path("data/bybit"),
        rest_url: Annotated[
            str | None, typer.Option("--rest-url", help="REST base URL (overrides the config)")
        ] = None,
        config: Annotated[
            Path | None,
            typer.Option("--config", help="config TOML whose bybit section to use (default: ./config.toml)"),
        ] = None,
    ) -> None:
        """Download closed Bybit klines to parquet (resumable)."""
        names, code = symbols_and_interval(symbols, interval)
        start_ms = parse_utc(iso_time(start, "--start") or start, "--start")
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
        end_ms = parse_utc(iso_time(end, "--end") or end, "--end") if end else now_ms
        if not end and start_ms >= now_ms:
            now = datetime.fromtimestamp(now_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%MZ")
            fail(f"--start {start} is in the future (now is {now}): no closed bars to fetch")
        if end_ms <= start_ms:
            fail(f"--end {end} is not after --start {start}")
        cfg = bybit_config(config, category=category, rest_url=rest_url)
        progress = Progress(
            TextColumn("{task.description:<22}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err_console,
            transient=False,
        )
        try:
            with progress:
                written = asyncio.run(fetch(cfg, names, code, start_ms, end_ms - 1, out, progress))
        except BybitError as exc:
            fail(str(exc))
        except (OSError, TimeoutError) as exc:
            fail(f"cannot reach {cfg.rest_base()}: {exc}")
        for name in names:
            path = symbol_file(out, cfg.category, code, name)
            err_console.print(f"{name}: {written.get(name, 0)} new bars -> {path}", highlight=False)
