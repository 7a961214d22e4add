"""Helpers shared by commands: error reporting, KEY=VALUE parsing, progress, logging flags."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

T = TypeVar("T")

# options that mean the same in every command that replays a strategy (backtest, check)
StrategyOption = Annotated[
    str | None, typer.Option("--strategy", help="strategy name or path/to/file.py:ClassName")
]
ParamOption = Annotated[
    list[str] | None, typer.Option("--param", help="strategy parameter KEY=VALUE (repeatable)")
]
DataOption = Annotated[str | None, typer.Option("--data", help="OHLCV file or directory")]
StartOption = Annotated[str | None, typer.Option("--start", help="first bar date (ISO 8601)")]
EndOption = Annotated[str | None, typer.Option("--end", help="last bar date, inclusive")]
ConfigOption = Annotated[Path | None, typer.Option("--config", help="config TOML (default ./config.toml)")]
err_console = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Stop with one clear line on stderr (no traceback): for errors the user can fix."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True)
    raise typer.Exit(code)


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values are read as JSON when they parse (10, 0.5, true), else as text."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(f"--param expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def delayed_progress(
    items: Iterable[T], total: int, *, label: str = "replay", after: float = 1.0, every: int = 2048
) -> Iterator[T]:
    """Yield ``items``; show a progress bar only once the loop has run ``after`` seconds, checking
    the time every ``every`` items so the hot loop pays almost nothing."""
    start = time.perf_counter()
    progress: Progress | None = None
    task = None
    try:
        for n, item in enumerate(items):
            if n % every == 0 and n:
                if progress is None and time.perf_counter() - start > after:
                    progress = Progress(
                        TextColumn(label),
                        BarColumn(),
                        MofNCompleteColumn(),
                        TimeRemainingColumn(),
                        console=err_console,
                        transient=True,
                    )
                    progress.start()
                    task = progress.add_task(label, total=total)
                if progress is not None and task is not None:
                    progress.update(task, completed=n)
            yield item
    finally:
        if progress is not None:
            progress.stop()


_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?(Z|[+-]\d{2}:?\d{2})?$")


def iso_time(text: str | None, option: str) -> str | None:
    """An ISO 8601 date or datetime as typed, or a one-line refusal: ``01/02/2005`` is January or
    February depending on who reads it, so only YYYY-MM-DD[THH:MM[:SS]] is accepted."""
    if text is None or text == "":
        return text
    import pandas as pd

    value = text.strip()
    if not _ISO.match(value):
        fail(f"{option} {text!r} is not an ISO 8601 date: write YYYY-MM-DD or YYYY-MM-DDTHH:MM (UTC)")
    try:
        pd.Timestamp(value).as_unit("ns")
    except (ValueError, OverflowError) as exc:
        if isinstance(exc, OverflowError | pd.errors.OutOfBoundsDatetime):
            fail(f"{option} {text!r} is outside the dates the engine handles (1678 to 2261)")
        fail(f"{option} {text!r} is not a valid date")
    return value


def check_range(start: str | None, end: str | None, first: str = "--start", last: str = "--end") -> None:
    """Refuse an empty period before any data is read (the data would say only "no bars")."""
    if not start or not end:
        return
    import pandas as pd

    a, b = pd.Timestamp(start), pd.Timestamp(end)
    a = a.tz_localize("UTC") if a.tzinfo is None else a
    b = b.tz_localize("UTC") if b.tzinfo is None else b
    if a > b:
        fail(f"{first} {start} is after {last} {end}: no bars in between")


def at_least(value: float | None, option: str, minimum: float = 0.0, *, strict: bool = False) -> None:
    """A bound on a number, named by the option the user typed (not by the config key it sets)."""
    if value is None:
        return
    if value != value or (value <= minimum if strict else value < minimum):
        word = "greater than" if strict else "at least"
        fail(f"{option} must be {word} {minimum:g}, got {value:g}")


def check_model_file(model: Path | None) -> None:
    """A checkpoint is a torch zip archive: refuse anything else before data or torch is loaded,
    rather than answer with torch's unpickling paragraph."""
    if model is None:
        return
    import zipfile

    if not model.exists():
        fail(f"--model {model} not found (train one with `quantnet train --out {model}`)")
    if model.is_dir():
        fail(f"--model {model} is a directory; give the checkpoint file written by `quantnet train`")
    if not zipfile.is_zipfile(model):
        fail(f"--model {model} is not a QuantNet checkpoint (not a file written by `quantnet train`)")


def check_strategy_model(strategy: str, model: Path | None) -> None:
    """``--model`` sets a strategy's ``model`` parameter; a strategy without one cannot use it."""
    if model is None:
        return
    from strategies.registry import StrategyError, takes_model

    try:
        ok = takes_model(strategy)
    except StrategyError as exc:
        fail(str(exc))
    if not ok:
        fail(f"--model is a QuantNet checkpoint; --strategy {strategy} takes no model (drop --model)")


def output_dir(output: Path | None, strategy: str, root: Path = Path("out")) -> Path:
    """``--output`` as given, else a new folder per run: ``out/<strategy>-<UTC stamp>``, so no run
    overwrites another. Refuses a file or an unwritable place in one line."""
    import os
    from datetime import UTC, datetime

    if output is None:
        label = re.sub(r"[^A-Za-z0-9_.-]+", "_", strategy.rpartition(":")[2] or strategy)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        output = root / f"{label}-{stamp}"
        n = 2
        while output.exists():
            output = root / f"{label}-{stamp}-{n}"
            n += 1
    if output.exists() and not output.is_dir():
        fail(f"--output {output} is a file; give a directory for the results")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"--output {output}: cannot create the directory ({exc.strerror or exc})")
    if not os.access(output, os.W_OK | os.X_OK):
        fail(f"--output {output}: directory is not writable")
    return output


def config_source(config: Path | None) -> tuple[Path | None, str]:
    """Which config file a command reads, and the summary's line about it: a run from another
    directory silently using defaults gave different numbers than the same run beside config.toml."""
    from quantnet.config import DEFAULT_CONFIG

    if config is not None:
        return config, f"config: {config}"
    if DEFAULT_CONFIG.is_file():
        return DEFAULT_CONFIG, f"config: {DEFAULT_CONFIG.resolve()}"
    return None, (
        f"config: no config.toml in {Path.cwd()}; built-in defaults apply (--config FILE to use one)"
    )


def remove_if_empty(folder: Path | None) -> None:
    """A run that failed before writing anything leaves no empty folder behind."""
    if folder is not None and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
