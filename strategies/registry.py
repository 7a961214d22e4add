"""Strategies by name, for configuration files and the command line."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from engine.strategy import Strategy
from strategies.baselines import BASELINES

STRATEGIES: dict[str, type[Strategy]] = dict(BASELINES)


class StrategyError(ValueError):
    """Unknown strategy or bad parameters; the message names them."""


def create(name: str, params: dict[str, Any]) -> Strategy:
    cls = STRATEGIES.get(name)
    if cls is None:
        raise StrategyError(f"unknown strategy {name!r}; available: {', '.join(sorted(STRATEGIES))}")
    try:
        return cls.from_params(params)
    except ValidationError as exc:
        problems = "; ".join(
            f"'{'.'.join(map(str, e['loc'])) or name}': {e['msg']}"
            if e["type"] != "extra_forbidden"
            else f"unknown parameter '{'.'.join(map(str, e['loc']))}'"
            for e in exc.errors()
        )
        raise StrategyError(f"strategy {name}: {problems}") from None
