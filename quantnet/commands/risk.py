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
        state: Annotated[Path, _STATE],
        by: Annotated[str, typer.Option("--by", help="who resets, for the audit trail")] = "operator",
    ) -> None:
        """Clear a persisted halt so the next start trades again (the drawdown is then measured from
        the equity at that start)."""
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


def _read(path: Path) -> dict[str, Any]:
    try:
        return read_state(path)
    except (OSError, ValueError) as exc:
        fail(str(exc))
