"""``quantnet strategies``: every strategy a name can select, with its parameters, read from the
pydantic models that validate ``--param`` (so the list cannot drift from what is accepted)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from quantnet.commands.common import fail


def _default(value: Any) -> str:
    if value is None:
        return "none"
    return json.dumps(value) if isinstance(value, str | bool) else str(value)


def register(app: typer.Typer) -> None:
    @app.command("strategies")
    def strategies_command(
        as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of text")] = False,
    ) -> None:
        """List every strategy (built-in and installed) with its parameters, types and defaults.
        A class of your own runs as --strategy path/to/file.py:ClassName."""
        from engine.strategy import StrategyError
        from strategies.registry import describe, names, resolve

        rows = []
        for name in names():
            try:
                rows.append(describe(resolve(name)) | {"name": name})
            except StrategyError as exc:
                if as_json:
                    rows.append({"name": name, "error": str(exc)})
                else:
                    typer.echo(f"{name}: cannot be loaded: {exc}", err=True)
        if as_json:
            typer.echo(json.dumps(rows, indent=2, default=str))
            return
        if not rows:
            fail("no strategy could be loaded")
        for row in rows:
            if "error" in row:
                continue
            typer.echo(f"{row['name']}: {row['summary']}")
            width = max((len(p["name"]) for p in row["parameters"]), default=0)
            kind = max((len(p["type"]) for p in row["parameters"]), default=0)
            for p in row["parameters"]:
                default = "required" if p["required"] else f"default {_default(p['default'])}"
                limits = f" [{', '.join(p['constraints'])}]" if p["constraints"] else ""
                text = f" {p['description']}" if p["description"] else ""
                typer.echo(f"  {p['name']:<{width}}  {p['type']:<{kind}}  {default}{limits}{text}")
            if not row["parameters"]:
                typer.echo("  (no parameters)")
