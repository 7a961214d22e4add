"""Strategies by name, for configuration files and the command line."""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import ValidationError

from engine.strategy import Strategy, StrategyError
from strategies.baselines import BASELINES

STRATEGIES: dict[str, type[Strategy]] = dict(BASELINES)
_LAZY = {"quantnet": ("strategies.quantnet", "QuantNetStrategy")}  # torch loads only when asked for


def names() -> list[str]:
    return sorted({*STRATEGIES, *_LAZY})


def create(name: str, params: dict[str, Any]) -> Strategy:
    cls = STRATEGIES.get(name)
    if cls is None and name in _LAZY:
        module, attr = _LAZY[name]
        cls = STRATEGIES[name] = getattr(importlib.import_module(module), attr)
    if cls is None:
        raise StrategyError(f"unknown strategy {name!r}; available: {', '.join(names())}")
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
