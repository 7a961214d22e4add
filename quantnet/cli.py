"""The ``quantnet`` command: one typer app whose commands live in ``quantnet.commands`` and are
imported only when run (or asked for ``--help``), so that ``quantnet --help`` does not pay for
pandas, torch and aiohttp.

Adding a command is one line in :data:`COMMANDS`: the module's ``register(app)`` adds it.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any

import typer
from typer import _click
from typer.core import TyperGroup

# name -> (module whose register(app) defines it, one-line help shown by ``quantnet --help``)
COMMANDS: dict[str, tuple[str, str]] = {
    "backtest": ("quantnet.commands.backtest", "Replay historical bars through a strategy."),
    "strategies": ("quantnet.commands.strategies", "List strategies with their parameters and defaults."),
    "check": ("quantnet.commands.check", "Check a strategy for look-ahead before it trades."),
    "data": ("quantnet.commands.data", "Historical market data: fetch Bybit klines to files."),
    "stream": ("quantnet.commands.stream", "Print live closed Bybit klines as JSON lines."),
    "train": ("quantnet.commands.train", "Train a QuantNet model and write a checkpoint."),
    "experiment": (
        "quantnet.commands.experiment",
        "QuantNet against No-Transfer and the classical baselines on a held-out window.",
    ),
    "live": ("quantnet.commands.live", "Run the daemon on live klines: signals, paper or live orders."),
    "paper": ("quantnet.commands.live", "Paper trading on live klines (live --mode paper)."),
    "status": ("quantnet.commands.live", "A daemon's positions, equity, risk state and orders."),
    "risk": ("quantnet.commands.risk", "Inspect or reset the persisted trading halt."),
    "config": ("quantnet.commands.config", "Show the effective configuration."),
    "journal": ("quantnet.commands.journal", "Export the SQLite journal of a run or a daemon."),
}

HELP_OPTIONS = ["-h", "--help"]


def _metavar(param: Any) -> str:
    """A placeholder that reads as a value (``PATH``, ``N``), not as a Python type (``<str>``)."""
    desc = param.type_descriptor
    if desc.is_choice and desc.choices:
        return "|".join(str(getattr(c, "value", c)) for c in desc.choices)
    if desc.is_path:
        return "PATH"
    inner = desc.annotation
    args = getattr(inner, "__args__", None)
    if desc.is_list and args:
        inner = args[0]
    if inner is int:
        return "N"
    if inner is float:
        return "NUMBER"
    return "TEXT"


def _plain(command: _click.Command) -> _click.Command:
    """Plain click help everywhere (no boxes that break lines in narrow terminals or in pipes),
    value-like metavars, no metavar on flags."""
    command.rich_markup_mode = None  # type: ignore[attr-defined]
    for param in command.params:
        if getattr(param, "param_type_name", "") == "argument":
            name = param.metavar or (param.name or "value").upper()
            param.metavar = name
            param.display_type_rich = lambda ctx: None  # type: ignore[method-assign]
            param._usage_display_name = lambda n=name: n  # type: ignore[attr-defined]
        if getattr(param, "param_type_name", "") != "option":
            continue
        if getattr(param, "is_flag", False) or getattr(param, "count", False):
            param.metavar = None
            continue
        if param.metavar is None:
            param.metavar = _metavar(param)
    for sub in getattr(command, "commands", {}).values():
        _plain(sub)
    return command


class LazyGroup(TyperGroup):
    """Commands from :data:`COMMANDS`, imported on first use; help lists them from the table."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        _plain(self)

    def list_commands(self, ctx: _click.Context) -> list[str]:
        return [*COMMANDS, *(n for n in self.commands if n not in COMMANDS)]

    def get_command(self, ctx: _click.Context, cmd_name: str) -> _click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        if cmd_name not in COMMANDS:
            return None
        return load_command(cmd_name)

    def format_commands(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        rows = [(name, help_) for name, (_, help_) in COMMANDS.items()]
        rows += [(n, c.get_short_help_str()) for n, c in self.commands.items() if n not in COMMANDS]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def resolve_command(self, ctx: _click.Context, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except _click.exceptions.UsageError as exc:
            if args and "Did you mean" not in exc.message:
                from difflib import get_close_matches

                close = get_close_matches(args[0], list(COMMANDS))
                if close:
                    exc.message = exc.message.rstrip(".") + f". Did you mean {close[0]!r}?"
            raise


_cache: dict[str, _click.Command] = {}


def load_command(name: str) -> _click.Command:
    """Import the command's module and build its click command (plain help, value metavars)."""
    if name not in _cache:
        import importlib

        module = importlib.import_module(COMMANDS[name][0])
        holder = typer.Typer(rich_markup_mode=None, add_completion=False, pretty_exceptions_enable=False)

        @holder.callback()
        def _holder() -> None:  # a callback makes typer build a group even for one command
            pass

        module.register(holder)
        group = typer.main.get_command(holder)
        for sub_name, sub in group.commands.items():  # type: ignore[attr-defined]
            _cache[sub_name] = _plain(sub)
    return _cache[name]


class LogLevel(enum.StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"quantnet {version('quantnet-engine')}")
        except PackageNotFoundError:
            typer.echo("quantnet (not installed as a package)")
        raise typer.Exit()


app = typer.Typer(
    name="quantnet",
    cls=LazyGroup,
    help="Event-driven backtesting and live trading with the QuantNet transfer-learning strategy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": HELP_OPTIONS},
)


@app.callback()
def main(
    log_json: Annotated[
        bool, typer.Option("--log-json", help="log JSON lines instead of console text")
    ] = False,
    log_level: Annotated[LogLevel, typer.Option("--log-level", help="how much to log")] = LogLevel.info,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit"),
    ] = False,
) -> None:
    from engine.logs import configure_logging

    configure_logging(json=log_json, level=log_level.value)


if __name__ == "__main__":
    app(prog_name="quantnet")
