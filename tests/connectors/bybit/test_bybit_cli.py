"""``quantnet data fetch`` and ``quantnet stream`` end to end against a fake Bybit running in a
background thread (the commands run their own event loop)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from engine.logs import configure_logging
from quantnet.commands import data, stream
from tests.fake_bybit import FakeBybit

HOUR = 3_600_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR


class ThreadedFake:
    """A FakeBybit on its own loop in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = FakeBybit()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self.server.start())

    def call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def close(self) -> None:
        self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def threaded() -> Iterator[ThreadedFake]:
    fake = ThreadedFake()
    try:
        yield fake
    finally:
        fake.close()


def app() -> typer.Typer:
    cli = typer.Typer()

    @cli.callback()
    def main() -> None:
        configure_logging(level="warning")

    data.register(cli)
    stream.register(cli)
    return cli


def iso(ms: int) -> str:
    return pd.Timestamp(ms, unit="ms", tz="UTC").isoformat()


def test_data_fetch_writes_replay_parquet_and_resumes(threaded: ThreadedFake, tmp_path: Path) -> None:
    fake = threaded.server
    fake.fixed_now_ms = T0 + 5_000 * HOUR
    args = [
        "data",
        "fetch",
        "--symbols",
        "BTCUSDT,ETHUSDT",
        "--interval",
        "60",
        "--start",
        iso(T0),
        "--end",
        iso(T0 + 2_500 * HOUR),
        "--out",
        str(tmp_path),
        "--rest-url",
        fake.rest_url,
    ]
    result = CliRunner().invoke(app(), args)
    assert result.exit_code == 0, result.output
    kline_calls = sum(p == "/v5/market/kline" for _, p in fake.requests)
    assert kline_calls == 6  # 3 pages of at most 1000 bars per symbol
    for symbol in ("BTCUSDT", "ETHUSDT"):
        frame = pd.read_parquet(tmp_path / "bybit_linear_60" / f"{symbol}.parquet")
        assert list(frame.columns) == ["timestamp", "symbol", "open", "high", "low", "close", "volume"]
        assert str(frame["timestamp"].dtype) == "datetime64[ns, UTC]"
        expected = fake.series("linear", symbol, "60", T0, T0 + 2_499 * HOUR)
        starts = (frame["timestamp"].astype("int64") // 1_000_000).tolist()
        rows = list(
            zip(starts, *(frame[c].tolist() for c in ("open", "high", "low", "close", "volume")), strict=True)
        )
        assert rows == expected
    # an interrupted download: the last 700 bars of one file are gone; only they are fetched
    path = tmp_path / "bybit_linear_60" / "ETHUSDT.parquet"
    pd.read_parquet(path).iloc[:1_800].to_parquet(path, index=False)
    result = CliRunner().invoke(app(), args)
    assert result.exit_code == 0, result.output
    assert sum(p == "/v5/market/kline" for _, p in fake.requests) == kline_calls + 1
    assert len(pd.read_parquet(path)) == 2_500
    result = CliRunner().invoke(app(), args)  # complete: nothing to fetch
    assert sum(p == "/v5/market/kline" for _, p in fake.requests) == kline_calls + 1


def test_data_fetch_bad_input_is_a_clear_error(threaded: ThreadedFake, tmp_path: Path) -> None:
    base = [
        "data",
        "fetch",
        "--start",
        "2024-01-01",
        "--end",
        "2024-01-02",
        "--out",
        str(tmp_path),
        "--rest-url",
        threaded.server.rest_url,
    ]
    cases = [
        (["--symbols", "NOPEUSDT"], "unknown linear symbol(s) on Bybit: NOPEUSDT"),
        (["--symbols", "BTCUSDT", "--interval", "7"], "bad interval '7'"),
        (["--symbols", "BTCUSDT", "--category", "option"], "category"),
    ]
    for extra, message in cases:
        result = CliRunner().invoke(app(), base + extra)
        assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    result = CliRunner().invoke(app(), ["data", "fetch", "--symbols", "BTCUSDT", "--start", "soon"])
    assert result.exit_code == 2 and "not an ISO 8601" in result.output


def test_stream_prints_confirmed_bars_as_json_lines(threaded: ThreadedFake) -> None:
    fake = threaded.server
    start = T0 + 1_000
    threaded.loop.call_soon_threadsafe(lambda: fake.start_market(start, step_ms=20_000, tick=0.002))
    result = CliRunner().invoke(
        app(),
        [
            "stream",
            "--symbols",
            "BTCUSDT,ETHUSDT",
            "--interval",
            "1",
            "--max-bars",
            "6",
            "--rest-url",
            fake.rest_url,
            "--ws-url",
            fake.ws_public_url,
        ],
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 6
    assert set(lines[0]) == {"symbol", "interval", "start", "open", "high", "low", "close", "volume"}
    for symbol in ("BTCUSDT", "ETHUSDT"):
        mine = [
            (d["start"], d["open"], d["high"], d["low"], d["close"], d["volume"])
            for d in lines
            if d["symbol"] == symbol
        ]
        assert mine == fake.series("linear", symbol, "1", mine[0][0], mine[-1][0])


def test_resume_of_monthly_bars_starts_at_the_next_calendar_month() -> None:
    """February is 29 days long in 2024: a resume after it must ask for March 1st, not for the
    start of February plus a fixed 31 days (which would skip March)."""
    feb, mar, jun = (pd.Timestamp(d, tz="UTC") for d in ("2024-02-01", "2024-03-01", "2024-06-01"))
    stored = pd.DataFrame({"timestamp": [pd.Timestamp("2024-01-01", tz="UTC"), feb]})
    end = jun.value // 1_000_000
    assert data.missing_ranges(stored, feb.value // 1_000_000, end, "M") == [(mar.value // 1_000_000, end)]
