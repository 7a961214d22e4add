"""``quantnet stream``: print live closed Bybit klines as JSON lines (connectivity check, feeds).

Each line: ``{"symbol", "interval", "start" (ms), "open", "high", "low", "close", "volume"}``, in
order and once per bar, gaps after reconnects filled through REST. Logs go to stderr, so stdout
stays machine-readable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from connectors.bybit.config import BybitConfig
from connectors.bybit.errors import BybitError
from connectors.bybit.kline_stream import KlineStream
from engine.events import Bar
from quantnet.commands.common import fail
from quantnet.commands.data import bybit_config, symbols_and_interval


def bar_line(bar: Bar) -> str:
    return json.dumps(
        {
            "symbol": bar.symbol,
            "interval": bar.interval,
            "start": bar.ts_open // 1_000_000,
            "open": bar.open,
            "high": bar.high,
            "low": bar.low,
            "close": bar.close,
            "volume": bar.volume,
        }
    )


async def stream_bars(
    config: BybitConfig, symbols: list[str], interval: str, max_bars: int, write: Callable[[str], None]
) -> int:
    """Stream until ``max_bars`` bars were written (0: forever); returns how many were."""
    stop = asyncio.Event()
    printed = 0

    def show(bar: Bar) -> None:
        nonlocal printed
        if stop.is_set():
            return
        write(bar_line(bar))
        printed += 1
        if max_bars and printed >= max_bars:
            stream.stop()

    stream = KlineStream(symbols, interval, on_bar=show, config=config)
    await stream.run(stop)
    return printed


def _print_line(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    @app.command("stream")
    def stream_command(
        symbols: Annotated[str, typer.Option("--symbols", help="comma-separated, e.g. BTCUSDT,ETHUSDT")],
        category: Annotated[
            str | None, typer.Option("--category", help="spot, linear or inverse (default: config)")
        ] = None,
        interval: Annotated[
            str, typer.Option("--interval", help="Bybit interval code: 1 ... 720, D, W, M")
        ] = "1",
        ws_url: Annotated[
            str | None, typer.Option("--ws-url", help="public websocket URL; may contain {category}")
        ] = None,
        rest_url: Annotated[
            str | None, typer.Option("--rest-url", help="REST base URL used to fill gaps")
        ] = None,
        max_bars: Annotated[int, typer.Option("--max-bars", min=0, help="stop after N bars; 0: run on")] = 0,
        config: Annotated[
            Path | None,
            typer.Option("--config", help="config TOML whose bybit section to use (default: ./config.toml)"),
        ] = None,
    ) -> None:
        """Stream closed klines from Bybit as JSON lines until stopped or --max-bars."""
        names, code = symbols_and_interval(symbols, interval)
        cfg = bybit_config(config, category=category, rest_url=rest_url, ws_public_url=ws_url)
        try:
            asyncio.run(stream_bars(cfg, names, code, max_bars, _print_line))
        except KeyboardInterrupt:
            pass
        except BybitError as exc:
            fail(str(exc))
        except (OSError, TimeoutError) as exc:
            fail(f"cannot reach Bybit: {exc}")
        with contextlib.suppress(Exception):
            sys.stdout.flush()
