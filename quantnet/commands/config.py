"""``quantnet config show``: the effective configuration, after defaults, file and environment.

What the engine will actually run with is what users need to see when a setting surprises them;
secrets are shown only as set or missing, never as values.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from engine.config import ConfigError
from quantnet.commands.common import fail
from quantnet.config import load_config


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
    app.add_typer(group, name="config")

    @group.command("show")
    def show(
        config: Annotated[
            Path | None, typer.Option("--config", help="config TOML (default ./config.toml)")
        ] = None,
    ) -> None:
        """Print the effective configuration as JSON (validated; secrets masked)."""
        try:
            cfg = load_config(config)
        except ConfigError as exc:
            fail(str(exc))
        effective = cfg.model_dump(mode="json")
        effective["secrets"] = {
            name: "set (hidden)" if os.environ.get(name) else "missing"
            for name in (cfg.bybit.api_key_env, cfg.bybit.api_secret_env)
        }
        typer.echo(json.dumps(effective, indent=2, sort_keys=True))
