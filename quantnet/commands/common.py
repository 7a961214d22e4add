"""Helpers shared by commands: error reporting, KEY=VALUE parsing, progress, logging flags."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

T = TypeVar("T")
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
    items: Iterable[T], total: int, *, label: str = "replay", after: float = 2.0, every: int = 2048
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
