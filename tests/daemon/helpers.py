"""Shared pieces of the daemon tests: configs pointing at the fake exchange, the server's own bar
series as a backtest input, and readers of a daemon's journal."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pandas as pd

from connectors.bybit.config import BybitConfig
from engine.config import validate
from engine.strategy import Strategy
from quantnet.backtest import BacktestResult, run_backtest
from quantnet.config import AppConfig
from strategies.registry import create
from tests.fake_bybit import FakeBybit

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
STEP_MS = 60_000
MS = 1_000_000
PARAMS = {"fast": 3, "slow": 8}


PRICED_FROM = 1_700_000_040_000
"""The bar whose prices the market starts with (2023-11-14 22:14 UTC), whatever the day."""


def start_market(server: FakeBybit, *, step_ms: int = 15_000, tick: float = 0.005) -> None:
    """Run the fake's market clock from the current bar, ``step_ms`` of market time per ``tick``
    real seconds. The clock is the real one (the daemon judges a bar's lag by it) but the prices
    are those from :data:`PRICED_FROM` on: the path a test trades is the same every day (it was
    the day's own, so a test could pass one day and fail the next)."""
    from tests.fake_bybit.server import real_ms

    now = real_ms()
    start = now - now % STEP_MS
    server.price_shift_ms = PRICED_FROM - PRICED_FROM % STEP_MS - start
    server.start_market(start, step_ms=step_ms, tick=tick)


@contextlib.asynccontextmanager
async def running_fake(**kwargs: Any) -> AsyncIterator[FakeBybit]:
    """The fake exchange with its market clock running (:func:`start_market`): a one-minute bar
    closes every 20 ms (15 s of market time per 5 ms tick)."""
    server = FakeBybit(**kwargs)
    await server.start()
    start_market(server)
    try:
        yield server
    finally:
        await server.stop()


def app_config(**live: Any) -> AppConfig:
    return validate(
        AppConfig,
        {
            "strategy": {"name": "sma_crossover", "params": PARAMS},
            "data": {"calendar": "24/7", "timestamps": "open"},
            "live": {"symbols": list(SYMBOLS), "interval": "1", **live},
        },
        "test",
    )


def bybit_config(fake: FakeBybit) -> BybitConfig:
    return BybitConfig.model_validate(
        {
            "rest_url": fake.rest_url,
            "ws_public_url": fake.ws_public_url,
            "ws_private_url": fake.ws_private_url,
            "request_timeout": 2.0,
            "backoff_initial": 0.01,
            "backoff_max": 0.2,
            "ping_interval": 0.5,
            "connect_timeout": 2.0,
            "requests_per_second": 1000.0,
        }
    )


def rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(path / "journal.db" if path.is_dir() else path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def events(path: Path, kind: str) -> list[dict[str, Any]]:
    return [
        json.loads(r[0]) for r in rows(path, f"SELECT record FROM events WHERE event = '{kind}' ORDER BY id")
    ]


def server_frame(fake: FakeBybit, first_start: int, last_start: int) -> pd.DataFrame:
    """The venue's closed bars as a long OHLCV frame labelled by bar open (what a backtest reads)."""
    out = []
    for symbol in SYMBOLS:
        for start, o, h, lo, c, v in fake.series("linear", symbol, "1", first_start, last_start):
            out.append((pd.Timestamp(start, unit="ms", tz="UTC"), symbol, o, h, lo, c, v))
    frame = pd.DataFrame(out, columns=["timestamp", "symbol", "open", "high", "low", "close", "volume"])
    return frame.sort_values(["timestamp", "symbol"], ignore_index=True)


def reference_backtest(
    fake: FakeBybit, state: Path, out: Path, strategy: Strategy | None = None, **live: Any
) -> BacktestResult:
    """``quantnet backtest``'s run over the bars the daemon processed, warmed up on the bars before
    them, as an uninterrupted session on the same bars would be."""
    closes = [r[0] for r in rows(state, "SELECT ts FROM bars ORDER BY ts")]
    first_open = closes[0] // MS - STEP_MS
    warm = create("sma_crossover", PARAMS).warmup_bars
    data = server_frame(fake, first_open - (warm + 3) * STEP_MS, closes[-1] // MS - STEP_MS)
    cfg = validate(
        AppConfig,
        {
            **app_config().model_dump(),
            "data": {
                "calendar": "24/7",
                "timestamps": "open",
                "start": pd.Timestamp(first_open, unit="ms", tz="UTC").isoformat(),
            },
            "live": app_config(**live).live.model_dump(),
        },
        "test",
    )
    return run_backtest(cfg, strategy=strategy, data=data, journal_path=out / "backtest.db")
