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
        raise StrategyError(f"strategy {name}: " + "; ".join(_problem(e) for e in exc.errors())) from None


def _problem(error: Any) -> str:
    key = ".".join(map(str, error["loc"]))
    if error["type"] == "extra_forbidden":
        return f"unknown parameter '{key}'"
    message = error["msg"].removeprefix("Value error, ")
    return f"'{key}': {message}" if key else message
