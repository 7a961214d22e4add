"""The ``quantnet`` command: one typer app; each command lives in ``quantnet.commands``."""

from __future__ import annotations

from typing import Annotated

import typer

from engine.logs import configure_logging
from quantnet.commands import backtest
from quantnet.commands import config as config_command
from quantnet.commands import data as data_command
from quantnet.commands import journal as journal_command
from quantnet.commands import live as live_command
from quantnet.commands import risk as risk_command
from quantnet.commands import stream as stream_command
from quantnet.commands import train as train_command

app = typer.Typer(
    name="quantnet",
    help="Event-driven backtesting and live trading with the QuantNet transfer-learning strategy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    log_json: Annotated[
        bool, typer.Option("--log-json", help="log JSON lines instead of console text")
    ] = False,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error")] = "info",
) -> None:
    configure_logging(json=log_json, level=log_level)


for module in (
    backtest,
    data_command,
    stream_command,
    risk_command,
    train_command,
    config_command,
    journal_command,
    live_command,
):
    module.register(app)
