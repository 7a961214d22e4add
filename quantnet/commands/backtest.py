"""``quantnet backtest``: replay historical bars through a strategy and write the results."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from connectors.replay import DataError
from engine.bus import HandlerError
from engine.config import ConfigError, validate
from engine.logs import configure_logging
from engine.summary import summary_rows
from quantnet.backtest import BacktestResult, run_backtest
from quantnet.commands.common import (
    ConfigOption,
    DataOption,
    EndOption,
    ParamOption,
    StartOption,
    StrategyOption,
    at_least,
    check_model_file,
    check_range,
    check_strategy_model,
    config_source,
    delayed_progress,
    fail,
    iso_time,
    output_dir,
    parse_params,
    remove_if_empty,
)
from quantnet.config import AppConfig, load_config
from strategies.registry import StrategyError, takes_model


def summary_table(result: BacktestResult) -> Table:
    first, last = result.settings["first_bar"][:10], result.settings["last_bar"][:10]
    table = Table(title=f"{result.settings['strategy']}\n{first} .. {last}", show_header=False, min_width=36)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, label, text in summary_rows(result.metrics):
        table.add_row(label, "[bold red]HALTED[/]" if key == "trading_state" and text == "HALTED" else text)
    if result.settings.get("halt") and "trading_state" not in result.metrics:
        table.add_row("Trading state", "[bold red]HALTED[/]")
    return table


def halt_line(result: BacktestResult) -> str | None:
    """Why and when a run ended halted: a halt trades nothing more, so a user must see it."""
    halt = result.settings.get("halt")
    if not halt:
        return None
    return f"Ended HALTED by {halt['rule']} at {halt['time']}: {halt['reason']}"


class FillAt(StrEnum):
    auto = "auto"
    next_open = "next_open"
    close = "close"


def end_lines(result: BacktestResult, shown: int = 10) -> list[str]:
    """What the run did or left unusually: positions force-closed when their symbol's data ended,
    orders still working at the end (they never filled)."""
    lines = []
    closed = result.settings.get("force_closed") or []
    if closed:
        lines.append(
            f"{len(closed)} symbol(s) delisted (data ended), positions force-closed at the last close:"
        )
        for c in closed[:shown]:
            lines.append(
                f"  {c['symbol']}: {c['quantity']:.8g} at {c['price']:.8g} on {c['closed_on']} "
                f"(last bar {c['last_bar']}; {c['orders_cancelled']} order(s) cancelled)"
            )
        if len(closed) > shown:
            lines.append(f"  ... and {len(closed) - shown} more (metrics.json: force_closed)")
    working = result.settings.get("open_orders") or []
    if not working:
        return lines
    lines.append(f"{len(working)} order(s) still working at the end (not filled, not in the results):")
    for o in working[:shown]:
        at = "" if o["price"] is None else f" at {o['price']:.8g}"
        what = f"{o['tag']} " if o["tag"] else ""
        lines.append(
            f"  {o['symbol']} {o['side']} {o['quantity']:.8g} {what}{o['type']}{at}, decided {o['decided']}"
        )
    if len(working) > shown:
        lines.append(f"  ... and {len(working) - shown} more (metrics.json: open_orders)")
    return lines


def with_strategy(
    cfg: AppConfig, name: str | None, params: dict[str, Any], model: Path | None = None
) -> AppConfig:
    """Command-line strategy choice: a different strategy drops the file's parameters (they belong
    to the other strategy); the same one keeps them, overridden key by key. ``--model`` alone
    picks QuantNet when the configured strategy takes no model."""
    if model is not None:
        name = name or ("quantnet" if not takes_model(cfg.strategy.name) else None)
        check_strategy_model(name or cfg.strategy.name, model)
        params = {**params, "model": str(model)}
    base = cfg.strategy.params if name in (None, cfg.strategy.name) else {}
    chosen = {"name": name or cfg.strategy.name, "params": {**base, **params}}
    return validate(AppConfig, {**cfg.model_dump(), "strategy": chosen}, "command line")


def register(app: typer.Typer) -> None:
    @app.command("backtest")
    def backtest(
        strategy: StrategyOption = None,
        param: ParamOption = None,
        data: DataOption = None,
        start: StartOption = None,
        end: EndOption = None,
        cash: Annotated[float | None, typer.Option("--cash", help="initial cash")] = None,
        fee_bps: Annotated[
            float | None, typer.Option("--fee-bps", help="fee in bps of notional (maker and taker)")
        ] = None,
        slippage_bps: Annotated[float | None, typer.Option("--slippage-bps", help="slippage in bps")] = None,
        fill_at: Annotated[
            FillAt | None,
            typer.Option(
                "--fill-at",
                help="market orders fill at the next bar's open or at the decision bar's close "
                "(config execution.fill_at; auto: close for data without opens)",
            ),
        ] = None,
        model: Annotated[
            Path | None, typer.Option("--model", help="QuantNet checkpoint (sets the strategy's model)")
        ] = None,
        config: ConfigOption = None,
        benchmark: Annotated[
            str | None,
            typer.Option(
                "--benchmark", help="symbol of the data the report compares against (default: equal weight)"
            ),
        ] = None,
        output: Annotated[
            Path | None,
            typer.Option("--output", help="results directory (default: a new out/STRATEGY-UTCSTAMP)"),
        ] = None,
        log_json: Annotated[bool, typer.Option("--log-json", help="log JSON lines")] = False,
    ) -> None:
        """Run a historical replay backtest. With no options: the configured default strategy on the
        built-in dataset. --strategy also takes your own class: path/to/file.py:ClassName."""
        if log_json:
            configure_logging(json=True)
        start, end = iso_time(start, "--start"), iso_time(end, "--end")
        check_range(start, end)
        at_least(cash, "--cash", strict=True)
        at_least(fee_bps, "--fee-bps")
        at_least(slippage_bps, "--slippage-bps")
        check_model_file(model)
        overrides: dict[str, Any] = {
            "data": {"path": data, "start": start, "end": end},
            "portfolio": {"cash": cash},
            "costs": {"taker_fee_bps": fee_bps, "maker_fee_bps": fee_bps, "slippage_bps": slippage_bps},
            "execution": {"fill_at": fill_at.value if fill_at is not None else None},
            "report": {"benchmark": benchmark},
        }
        params = parse_params(param)
        config, config_line = config_source(config)
        made: Path | None = None
        try:
            cfg = load_config(config, overrides)
            check_range(cfg.data.start, cfg.data.end, "[data] start", "[data] end")
            cfg = with_strategy(cfg, strategy, params, model)
            existed = output is not None and output.exists()
            output = output_dir(output, cfg.strategy.name)
            made = None if existed else output
            result = run_backtest(cfg, output=output, progress=delayed_progress)
        except (ConfigError, DataError, StrategyError) as exc:
            remove_if_empty(made)
            fail(str(exc))
        except HandlerError as exc:
            remove_if_empty(made)
            cause = exc.__cause__
            if isinstance(cause, StrategyError):
                fail(f"backtest stopped: {cause}", code=1)
            fail(f"backtest stopped: {exc}", code=1)
        Console().print(summary_table(result))
        halted = halt_line(result)
        if halted:
            Console().print(halted, style="bold red", highlight=False)
        gross = result.settings.get("max_gross_target", 0.0)
        if gross > 1.0 + 1e-9:
            borrow = result.settings.get("borrow_rate", 0.0)
            charged = f"charged [costs] borrow_rate {borrow:.2%} a year"
            if not borrow:
                charged = "free: [costs] borrow_rate is 0"
            Console(soft_wrap=True).print(
                f"Leverage: the strategy's targets summed to {gross:.2f}x equity; negative cash is {charged}",
                style="yellow",
                highlight=False,
                markup=False,
            )
        for line in end_lines(result):
            Console().print(line, highlight=False, markup=False)
        rate = result.bars / result.seconds if result.seconds > 0 else float("inf")
        files = "metrics.json, equity.csv, trades.csv, round_trips.csv, report.html" + (
            ", journal.db" if cfg.engine.journal else ""
        )
        out = Console(soft_wrap=True)
        out.print(config_line, highlight=False, markup=False)
        out.print(
            f"{result.bars:,} bars in {result.seconds:.2f} s ({rate:,.0f} bars/s); "
            f"results in {output}/ ({files})",
            highlight=False,
            markup=False,
        )
