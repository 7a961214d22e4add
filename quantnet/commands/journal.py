"""``quantnet journal export``: the journal database as files, for those who want them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from engine.journal import JournalError, export_journal
from quantnet.commands.common import err_console, fail


def register(app: typer.Typer) -> None:
    journal = typer.Typer(help="Read the SQLite journal of a backtest or a daemon.", no_args_is_help=True)

    @journal.command("export")
    def export(
        path: Annotated[
            Path, typer.Argument(help="journal.db, or a directory holding one (backtest output, state dir)")
        ],
        fmt: Annotated[str, typer.Option("--format", help="csv or jsonl")] = "jsonl",
        output: Annotated[
            Path | None, typer.Option("--output", help="file to write (default: stdout)")
        ] = None,
    ) -> None:
        """Write every journaled event (orders, updates, fills, funding, positions, risk) in order."""
        if fmt not in ("csv", "jsonl"):
            fail(f"--format must be csv or jsonl, got {fmt!r}")
        try:
            if output is None:
                n = export_journal(path, fmt, sys.stdout)
            else:
                with output.open("w", newline="", encoding="utf-8") as fh:
                    n = export_journal(path, fmt, fh)
        except JournalError as exc:
            fail(str(exc))
        err_console.print(f"{n:,} events exported", highlight=False)

    app.add_typer(journal, name="journal")
