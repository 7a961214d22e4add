"""``quantnet live``, ``quantnet paper`` and ``quantnet status``: the long-running daemon.

Option names are a contract (scripts outside the repository call them); see the README for what
each mode does, what the state directory holds and how to watch and stop the daemon.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from connectors.bybit.errors import BybitError
from engine.config import ConfigError
from engine.journal import JournalError, open_readonly
from engine.logs import configure_logging
from engine.strategy import StrategyError
from quantnet.commands.backtest import with_strategy
from quantnet.commands.common import fail, parse_params
from quantnet.config import AppConfig, load_config
from strategies.registry import create

INTERVALS = ("1", "3", "5", "15", "30", "60", "120", "240", "360", "720", "D")
DEMO_REST = "https://api-demo.bybit.com"
DEMO_PRIVATE_WS = "wss://stream-demo.bybit.com/v5/private"


def checkpoint_assets(path: Path) -> list[str]:
    from models.checkpoint import load_checkpoint

    try:
        ckpt = load_checkpoint(path, map_location="cpu")
    except (ValueError, RuntimeError, OSError) as exc:
        fail(f"{path}: cannot load the QuantNet checkpoint: {exc}")
    return [a for assets in ckpt.markets.values() for a in assets]


def live_refusal(cfg: AppConfig, env: dict[str, str]) -> str:
    """Why live mode may not start (empty: it may)."""
    live = cfg.live
    if not live.enabled:
        return "live mode needs [live] enabled = true in the config"
    if live.environment not in ("testnet", "demo", "mainnet"):
        return 'live mode needs [live] environment = "testnet", "demo" or "mainnet" in the config'
    missing = [name for name in (cfg.bybit.api_key_env, cfg.bybit.api_secret_env) if not env.get(name)]
    if missing:
        return f"live mode needs the API key in the environment: {', '.join(missing)} not set"
    return ""


def run_daemon(
    mode: str,
    *,
    strategy: str | None,
    param: list[str] | None,
    model: Path | None,
    symbols: str | None,
    category: str | None,
    interval: str | None,
    ws_url: str | None,
    rest_url: str | None,
    state_dir: Path | None,
    signals: Path | None,
    http_port: int,
    max_bars: int,
    config: Path | None,
    log_json: bool,
    adopt: bool = False,
) -> None:
    from quantnet.daemon import Daemon, DaemonError, DaemonOptions, install_signal_handlers

    if log_json:
        configure_logging(json=True)
    params = parse_params(param)
    if model is not None:
        params["model"] = str(model)
        strategy = strategy or "quantnet"
    overrides: dict[str, Any] = {"live": {"category": category, "interval": interval}}
    try:
        cfg = with_strategy(load_config(config, overrides), strategy, params)
    except ConfigError as exc:
        fail(str(exc))
    live = cfg.live
    if mode == "live":
        why = live_refusal(cfg, dict(os.environ))
        if why:
            fail(why)
    names = [s.strip().upper() for s in symbols.split(",") if s.strip()] if symbols else list(live.symbols)
    model_path = cfg.strategy.params.get("model") if cfg.strategy.name == "quantnet" else None
    if not names and model_path:
        names = checkpoint_assets(Path(model_path))
    if not names:
        fail("no symbols: give --symbols, set [live] symbols, or pass a QuantNet --model")
    bybit: dict[str, Any] = {"category": live.category}
    if mode == "live" and live.environment == "testnet":
        bybit["testnet"] = True
    if mode == "live" and live.environment == "demo":
        bybit.update(rest_url=DEMO_REST, ws_private_url=DEMO_PRIVATE_WS)
    if rest_url:
        bybit["rest_url"] = rest_url
    if ws_url:
        bybit["ws_public_url"] = ws_url
    try:
        bybit_cfg = cfg.bybit.model_validate({**cfg.bybit.model_dump(), **bybit})
        strat = create(cfg.strategy.name, cfg.strategy.params)
    except (ValueError, StrategyError) as exc:
        fail(str(exc))
    opts = DaemonOptions(
        mode=mode,
        symbols=tuple(dict.fromkeys(names)),
        interval=live.interval,
        category=live.category,
        state_dir=state_dir or Path(live.state_dir),
        signals_path=signals,
        http_port=http_port,
        max_bars=max_bars,
        adopt=adopt,
        model=model_path,
    )

    async def main() -> int:
        daemon = Daemon(cfg, strat, opts, bybit=bybit_cfg)
        install_signal_handlers(daemon)
        return await daemon.run()

    try:
        code = asyncio.run(main())
    except (DaemonError, JournalError, StrategyError, ValueError) as exc:
        fail(str(exc))
    except BybitError as exc:
        fail(f"Bybit: {exc}")
    except (OSError, TimeoutError) as exc:
        fail(f"cannot reach Bybit: {exc}")
    raise typer.Exit(code)


_STRATEGY = typer.Option("--strategy", help="strategy name")
_PARAM = typer.Option("--param", help="strategy parameter KEY=VALUE (repeatable)")
_MODEL = typer.Option("--model", help="QuantNet checkpoint; symbols default to its assets")
_SYMBOLS = typer.Option("--symbols", help="comma-separated, e.g. BTCUSDT,ETHUSDT (default: [live])")
_CATEGORY = typer.Option("--category", help="linear or spot (default: [live])")
_INTERVAL = typer.Option("--interval", help="1|3|5|15|30|60|120|240|360|720|D (default: [live])")
_WS = typer.Option("--ws-url", help="public websocket URL; may contain {category}")
_REST = typer.Option("--rest-url", help="REST base URL (history, gaps, orders)")
_STATE = typer.Option("--state-dir", help="journal database and lock (default: [live] state_dir)")
_SIGNALS = typer.Option("--signals", help="append signal records (JSON lines) to this file")
_PORT = typer.Option(
    "--http-port", min=0, max=65535, help="/healthz, /metrics, /signals on 127.0.0.1; 0: off"
)
_MAX = typer.Option("--max-bars", min=0, help="exit 0 after N processed cross-sections; 0: run on")
_CONFIG = typer.Option("--config", help="config TOML (default ./config.toml)")
_LOG = typer.Option("--log-json", help="log JSON lines")


def register(app: typer.Typer) -> None:
    @app.command("live")
    def live_command(
        mode: Annotated[str, typer.Option("--mode", help="signal, paper or live")] = "signal",
        strategy: Annotated[str | None, _STRATEGY] = None,
        param: Annotated[list[str] | None, _PARAM] = None,
        model: Annotated[Path | None, _MODEL] = None,
        symbols: Annotated[str | None, _SYMBOLS] = None,
        category: Annotated[str | None, _CATEGORY] = None,
        interval: Annotated[str | None, _INTERVAL] = None,
        ws_url: Annotated[str | None, _WS] = None,
        rest_url: Annotated[str | None, _REST] = None,
        state_dir: Annotated[Path | None, _STATE] = None,
        signals: Annotated[Path | None, _SIGNALS] = None,
        http_port: Annotated[int, _PORT] = 0,
        max_bars: Annotated[int, _MAX] = 0,
        config: Annotated[Path | None, _CONFIG] = None,
        log_json: Annotated[bool, _LOG] = False,
        adopt: Annotated[
            bool, typer.Option("--adopt", help="live: take the exchange's orders and positions (journaled)")
        ] = False,
    ) -> None:
        """Run the daemon on live Bybit klines: signals only, paper fills, or live orders."""
        if mode not in ("signal", "paper", "live"):
            fail(f"--mode must be signal, paper or live, got {mode!r}")
        if interval is not None and interval not in INTERVALS:
            fail(f"--interval must be one of {', '.join(INTERVALS)}, got {interval!r}")
        if category is not None and category not in ("linear", "spot"):
            fail(f"--category must be linear or spot, got {category!r}")
        if adopt and mode != "live":
            fail("--adopt is for --mode live")
        run_daemon(
            mode,
            strategy=strategy,
            param=param,
            model=model,
            symbols=symbols,
            category=category,
            interval=interval,
            ws_url=ws_url,
            rest_url=rest_url,
            state_dir=state_dir,
            signals=signals,
            http_port=http_port,
            max_bars=max_bars,
            config=config,
            log_json=log_json,
            adopt=adopt,
        )

    @app.command("paper")
    def paper_command(
        strategy: Annotated[str | None, _STRATEGY] = None,
        param: Annotated[list[str] | None, _PARAM] = None,
        model: Annotated[Path | None, _MODEL] = None,
        symbols: Annotated[str | None, _SYMBOLS] = None,
        category: Annotated[str | None, _CATEGORY] = None,
        interval: Annotated[str | None, _INTERVAL] = None,
        ws_url: Annotated[str | None, _WS] = None,
        rest_url: Annotated[str | None, _REST] = None,
        state_dir: Annotated[Path | None, _STATE] = None,
        signals: Annotated[Path | None, _SIGNALS] = None,
        http_port: Annotated[int, _PORT] = 0,
        max_bars: Annotated[int, _MAX] = 0,
        config: Annotated[Path | None, _CONFIG] = None,
        log_json: Annotated[bool, _LOG] = False,
    ) -> None:
        """Paper trading: ``quantnet live --mode paper``."""
        live_command(
            mode="paper",
            strategy=strategy,
            param=param,
            model=model,
            symbols=symbols,
            category=category,
            interval=interval,
            ws_url=ws_url,
            rest_url=rest_url,
            state_dir=state_dir,
            signals=signals,
            http_port=http_port,
            max_bars=max_bars,
            config=config,
            log_json=log_json,
            adopt=False,
        )

    @app.command("status")
    def status_command(
        state_dir: Annotated[Path, typer.Option("--state-dir", help="the daemon's state directory")],
        as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    ) -> None:
        """Positions, equity, risk state, working orders, last signals and last bar per symbol."""
        try:
            report = daemon_status(state_dir)
        except JournalError as exc:
            fail(str(exc))
        if as_json:
            typer.echo(json.dumps(report, indent=2))
            return
        show_status(report)


def daemon_status(state_dir: Path) -> dict[str, Any]:
    """Read from the journal only (the daemon may be running): never changes state."""
    from quantnet.daemon import in_use, iso

    db = open_readonly(state_dir)
    try:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        symbols = meta.get("symbols", "").split(",") if meta.get("symbols") else []
        row = db.execute(
            "SELECT ts, equity, cash, gross_exposure, drawdown, state FROM equity ORDER BY ts DESC LIMIT 1"
        ).fetchone()
        book = db.execute("SELECT ts, blob FROM snapshots WHERE kind = 'book'").fetchone()
        signals = [
            json.loads(r[0])
            for r in db.execute(
                "SELECT record FROM signals WHERE seq IN "
                "(SELECT MAX(seq) FROM signals GROUP BY symbol) ORDER BY seq"
            )
        ]
        bars = db.execute("SELECT COUNT(*), SUM(late) FROM bars").fetchone()
    finally:
        db.close()
    positions: dict[str, Any] = {}
    working: list[dict[str, Any]] = []
    last_bar: dict[str, str] = {}
    if book is not None:
        state = pickle.loads(book[1])
        pf = state["portfolio"]
        for i, s in enumerate(symbols):
            positions[s] = {
                "quantity": float(pf["qty"][i]),
                "avg_price": float(pf["avg_price"][i]),
                "last_price": float(pf["last_price"][i]),
                "value": float(pf["qty"][i] * pf["last_price"][i]),
            }
        venue = state.get("venue") or {}
        for order in (venue.get("_working") or {}).values():
            working.append(
                {
                    "client_id": order.client_id,
                    "symbol": order.symbol,
                    "side": order.side.name.lower(),
                    "quantity": order.quantity,
                    "type": order.type.value,
                }
            )
        if not working:
            for cid, (i, left) in state["orders"]["_open"].items():
                working.append({"client_id": cid, "symbol": symbols[i], "quantity": float(left)})
        last_bar = {s: iso(ts) for s, ts in state.get("last_bar", {}).items()}
    return {
        "state_dir": str(state_dir),
        "running": in_use(state_dir),
        "mode": meta.get("mode"),
        "strategy": meta.get("strategy"),
        "model": meta.get("model") or None,
        "instance_id": meta.get("instance_id"),
        "interval": meta.get("interval"),
        "category": meta.get("category"),
        "bars_processed": int(bars[0] or 0),
        "bars_late": int(bars[1] or 0),
        "last_bar": iso(row[0]) if row else None,
        "equity": row[1] if row else None,
        "cash": row[2] if row else None,
        "gross_exposure": row[3] if row else None,
        "drawdown": row[4] if row else None,
        "trading_state": row[5] if row else None,
        "halt_reset_pending": bool(meta.get("halt_reset_request")),
        "positions": positions,
        "working_orders": working,
        "last_signals": signals,
        "last_bar_by_symbol": last_bar,
    }


def show_status(report: dict[str, Any]) -> None:
    console = Console()
    running = "running" if report["running"] else "not running"
    console.print(
        f"{report['state_dir']}: {report['mode']} {report['strategy']} ({running}), "
        f"{report['bars_processed']:,} bars ({report['bars_late']:,} late), last {report['last_bar']}",
        highlight=False,
    )
    if report["equity"] is not None:
        console.print(
            f"equity {report['equity']:,.2f}  cash {report['cash']:,.2f}  drawdown "
            f"{report['drawdown']:.2%}  trading {report['trading_state']}",
            highlight=False,
        )
    table = Table("symbol", "position", "avg price", "last price", "target", "last bar")
    targets = {s["symbol"]: s["target"] for s in report["last_signals"]}
    for symbol, p in report["positions"].items():
        table.add_row(
            symbol,
            f"{p['quantity']:.6g}",
            f"{p['avg_price']:.6g}",
            f"{p['last_price']:.6g}",
            f"{targets.get(symbol, float('nan')):.4f}",
            report["last_bar_by_symbol"].get(symbol, "-"),
        )
    console.print(table)
    if report["working_orders"]:
        console.print(f"working orders: {len(report['working_orders'])}", highlight=False)
        for order in report["working_orders"]:
            console.print(f"  {order}", highlight=False)
