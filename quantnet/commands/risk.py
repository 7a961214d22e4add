"""``quantnet risk``: inspect and reset the risk manager's persisted halt.

A drawdown halt survives restarts on purpose: only an operator may resume trading, after looking at
what happened. ``reset`` is that decision, recorded in the state file (who, when, which halt).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from engine.risk import clear_halt, read_state
from quantnet.commands.common import fail

_STATE = typer.Option("--state", help="the risk state file ([risk] state_file in the config)")


def register(app: typer.Typer) -> None:
    risk = typer.Typer(
        help="Inspect or reset the risk manager's persisted trading halt.", no_args_is_help=True
    )

    @risk.command("status")
    def status(state: Annotated[Path, _STATE]) -> None:
        """Show whether the state file holds a halt, and why."""
        data = _read(state)
        if data.get("halted"):
            Console().print(
                f"HALTED since {data.get('time', '?')}: {data.get('reason', 'no reason recorded')}",
                highlight=False,
            )
        else:
            Console().print(
                "not halted" if data else f"not halted (no state file at {state})", highlight=False
            )

    @risk.command("reset")
    def reset(
        state: Annotated[Path | None, _STATE] = None,
        state_dir: Annotated[
            Path | None, typer.Option("--state-dir", help="a daemon's state directory (journaled reset)")
        ] = None,
        by: Annotated[str, typer.Option("--by", help="who resets, for the audit trail")] = "operator",
    ) -> None:
        """Clear a persisted halt so the next start trades again (the drawdown is then measured from
        the equity at that start)."""
        if state_dir is not None:
            _reset_daemon(state_dir, by)
            return
        if state is None:
            fail("give --state FILE or --state-dir DIR")
        _read(state)
        cleared = clear_halt(state, by=by)
        if cleared is None:
            Console().print(f"{state}: not halted; nothing to reset", highlight=False)
            return
        Console().print(
            f"{state}: halt of {cleared.get('time', '?')} cleared ({cleared.get('reason', '')})",
            highlight=False,
        )

    app.add_typer(risk, name="risk")


def _reset_daemon(state_dir: Path, by: str) -> None:
    """Journal the operator's decision; the daemon lifts the halt when it next starts."""
    import time

    from engine.events import RiskEvent, TradingState
    from engine.journal import JOURNAL_FILE, Journal, JournalError, open_readonly

    try:
        open_readonly(state_dir).close()
    except JournalError as exc:
        fail(str(exc))
    journal = Journal(state_dir / JOURNAL_FILE, synchronous="FULL", per_bar=True)
    try:
        now = time.time_ns()
        journal.journal_event(
            RiskEvent(now, now, "halt_reset_request", f"halt reset by {by}", state=TradingState.HALTED)
        )
        journal.set_meta({"halt_reset_request": by})
    finally:
        journal.close()
    Console().print(
        f"{state_dir}: halt reset by {by} journaled; the daemon resumes trading at its next start",
        highlight=False,
    )


def _read(path: Path) -> dict[str, Any]:
    try:
        return read_state(path)
    except (OSError, ValueError) as exc:
        fail(str(exc))
