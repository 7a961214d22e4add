"""Strategies by name, for configuration files and the command line.

A name is one of the built-in strategies, a name that an installed package registers in the
``quantnet.strategies`` entry-point group, or a user's own class given as ``path/to/file.py:Class``
(or ``package.module:Class``), so that a strategy need not live inside this project.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from engine.strategy import Strategy, StrategyError
from strategies.baselines import BASELINES

ENTRY_POINT_GROUP = "quantnet.strategies"
STRATEGIES: dict[str, type[Strategy]] = dict(BASELINES)
_LAZY = {"quantnet": ("strategies.quantnet", "QuantNetStrategy")}  # torch loads only when asked for


def _entry_points() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def names() -> list[str]:
    """Built-in and installed strategy names (a file's class is named by its path, not listed)."""
    return sorted({*STRATEGIES, *_LAZY, *_entry_points()})


def is_reference(name: str) -> bool:
    """``file.py:Class`` or ``module:Class``: a class outside the registry."""
    return ":" in name


def resolve(name: str) -> type[Strategy]:
    """The strategy class a name stands for (imports it when needed)."""
    cls = STRATEGIES.get(name)
    if cls is not None:
        return cls
    if name in _LAZY:
        module, attr = _LAZY[name]
        cls = STRATEGIES[name] = getattr(importlib.import_module(module), attr)
        return cls
    if is_reference(name):
        return _check_class(_from_reference(name), name)
    installed = _entry_points()
    if name in installed:
        try:
            loaded = installed[name].load()
        except Exception as exc:
            raise StrategyError(
                f"strategy {name!r} (entry point {installed[name].value}) cannot be imported: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        cls = STRATEGIES[name] = _check_class(loaded, name)
        return cls
    raise StrategyError(
        f"unknown strategy {name!r}; available: {', '.join(names())}, or path/to/file.py:ClassName"
    )


def _from_reference(ref: str) -> Any:
    where, _, attr = ref.rpartition(":")
    if not where or not attr:
        raise StrategyError(f"strategy {ref!r}: expected path/to/file.py:ClassName or module:ClassName")
    if where.endswith(".py") or "/" in where or "\\" in where:
        module = _import_file(Path(where), ref)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise StrategyError(f"strategy {ref!r}: cannot import module {where!r}: {exc}") from None
    if not hasattr(module, attr):
        found = [n for n, v in vars(module).items() if _is_strategy(v) and v.__module__ == module.__name__]
        hint = f"; strategies in it: {', '.join(found)}" if found else "; it defines no Strategy subclass"
        raise StrategyError(f"strategy {ref!r}: {where} has no {attr!r}{hint}")
    return getattr(module, attr)


def _import_file(path: Path, ref: str) -> Any:
    path = path.expanduser()
    if not path.is_file():
        raise StrategyError(f"strategy {ref!r}: file {path} not found")
    resolved = path.resolve()
    key = f"quantnet_user_strategy_{abs(hash(str(resolved))):x}_{resolved.stem}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, resolved)
    if spec is None or spec.loader is None:
        raise StrategyError(f"strategy {ref!r}: {path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module  # before exec: dataclasses and pickle look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[key]
        line = ""
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == str(resolved):
                line = f" (line {tb.tb_lineno})"
            tb = tb.tb_next
        raise StrategyError(f"strategy {ref!r}: {path}{line} raised {type(exc).__name__}: {exc}") from None
    return module


def _is_strategy(value: Any) -> bool:
    return inspect.isclass(value) and issubclass(value, Strategy) and not inspect.isabstract(value)


def _check_class(value: Any, ref: str) -> type[Strategy]:
    if not _is_strategy(value):
        what = type(value).__name__ if not inspect.isclass(value) else value.__name__
        raise StrategyError(
            f"strategy {ref!r}: {what} is not a Strategy subclass with on_bars "
            "(subclass engine.strategy.Strategy and implement on_bars)"
        )
    if not isinstance(getattr(value, "name", None), str):
        value.name = value.__name__
    return value


def create(name: str, params: dict[str, Any]) -> Strategy:
    cls = resolve(name)
    try:
        return cls.from_params(params)
    except ValidationError as exc:
        problems = "; ".join(_problem(e) for e in exc.errors())
        if any(e["type"] == "extra_forbidden" for e in exc.errors()):
            valid = ", ".join(cls.Params.model_fields) or "none"
            problems += f" (valid parameters: {valid})"
        raise StrategyError(f"strategy {name}: {problems}") from None


def takes_model(name: str) -> bool:
    """Whether the strategy has a ``model`` parameter (what ``--model`` sets)."""
    return "model" in resolve(name).Params.model_fields


def _problem(error: Any) -> str:
    key = ".".join(map(str, error["loc"]))
    if error["type"] == "extra_forbidden":
        return f"unknown parameter '{key}'"
    message = error["msg"].removeprefix("Value error, ")
    return f"'{key}': {message}" if key else message


def describe(cls: type[Strategy]) -> dict[str, Any]:
    """Name, one line of description and the parameters (type, default, description) of a strategy,
    read from the pydantic model that validates them."""
    doc = inspect.cleandoc(cls.__dict__.get("__doc__") or sys.modules[cls.__module__].__doc__ or "")
    params = []
    for key, field in cls.Params.model_fields.items():
        params.append(
            {
                "name": key,
                "type": _type_name(field.annotation),
                "required": field.is_required(),
                "default": None if field.is_required() else field.get_default(call_default_factory=True),
                "description": field.description or "",
                "constraints": [c for m in field.metadata for c in _limits(m)],
            }
        )
    return {"name": cls.name, "summary": doc.split("\n\n")[0].replace("\n", " "), "parameters": params}


_OPS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _limits(meta: Any) -> list[str]:
    out = [f"{op}{getattr(meta, key)}" for key, op in _OPS.items() if getattr(meta, key, None) is not None]
    return out or ([] if meta is None else [str(meta)])


def _type_name(annotation: Any) -> str:
    if inspect.isclass(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "")
