"""``quantnet check lookahead``: the project's no-look-ahead test as a user command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from connectors.replay import DataError
from engine.bus import HandlerError
from engine.config import ConfigError
from quantnet.commands.common import (
    ConfigOption,
    DataOption,
    EndOption,
    ParamOption,
    StartOption,
    StrategyOption,
    check_model_file,
    check_range,
    fail,
    iso_time,
    parse_params,
)
from quantnet.config import load_config
from strategies.registry import StrategyError


def _label(t: Any) -> str:
    return str(t.date()) if t == t.normalize() else t.isoformat()


def register(app: typer.Typer) -> None:
    check = typer.Typer(help="Checks of a strategy before it trades.", no_args_is_help=True)

    @check.command("lookahead")
    def lookahead(
        strategy: StrategyOption = None,
        param: ParamOption = None,
        data: DataOption = None,
        start: StartOption = None,
        end: EndOption = None,
        model: Annotated[Path | None, typer.Option("--model", help="QuantNet checkpoint")] = None,
        cuts: Annotated[int, typer.Option("--cuts", help="cut points to scramble after", min=1)] = 5,
        seed: Annotated[int, typer.Option("--seed", help="seed of the scrambling")] = 0,
        config: ConfigOption = None,
    ) -> None:
        """Replay the strategy with the bars after each cut point scrambled and report the first
        decision at or before a cut that changed: look-ahead. Exit status 1 when one did."""
        from quantnet.backtest import load_data
        from quantnet.commands.backtest import with_strategy
        from quantnet.lookahead import check_lookahead
        from strategies.registry import create

        start, end = iso_time(start, "--start"), iso_time(end, "--end")
        check_range(start, end)
        check_model_file(model)
        params: dict[str, Any] = parse_params(param)
        try:
            cfg = load_config(config, {"data": {"path": data, "start": start, "end": end}})
            cfg = with_strategy(cfg, strategy, params, model)
            create(cfg.strategy.name, cfg.strategy.params)  # bad parameters: one line, before the data
            bars = load_data(cfg, history=cfg.data.warmup)
            report = check_lookahead(
                cfg, lambda: create(cfg.strategy.name, cfg.strategy.params), bars, cuts=cuts, seed=seed
            )
        except (ConfigError, DataError, StrategyError, ValueError) as exc:
            fail(str(exc))
        except HandlerError as exc:
            fail(f"replay stopped: {exc.__cause__ or exc}", code=1)
        out = Console(soft_wrap=True, highlight=False)
        when = ", ".join(_label(c) for c in report.cuts)
        out.print(
            f"{report.strategy}: {report.decisions:,} decisions, {len(report.cuts)} cuts ({when})",
            markup=False,
        )
        change = report.change
        if change is None:
            out.print("no look-ahead: every decision up to each cut is unchanged", markup=False)
            return
        out.print(
            f"LOOK-AHEAD: the decision at {_label(change.at)} for {change.symbol} changed from "
            f"{change.before:g} to {change.after:g} when the bars after {_label(change.cut)} were scrambled",
            style="bold red",
            markup=False,
        )
        raise typer.Exit(1)

    app.add_typer(check, name="check")
