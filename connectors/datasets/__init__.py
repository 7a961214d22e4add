"""Built-in daily price datasets, shipped as package data so a fresh install can backtest offline.

Each dataset is one long-format parquet file next to this module, in the replay connector's
schema (timestamp, symbol, open, high, low, close, volume; see ``README.md`` here for sources,
licences and transformations). ``scripts/build_datasets.py`` rebuilds them.

- ``us_stocks``: AAPL, GOOG, IBM, MSFT daily OHLCV, 2000-03-01..2013-03-01, split and dividend
  adjusted (the default backtest's data).
- ``us_sectors``: 20 US stocks, adjusted close only, 1990-01-02..2022-12-28, with a ``market``
  column grouping them into six sector markets (the QuantNet multi-market default).
"""

from __future__ import annotations

from pathlib import Path

from connectors.replay import DataError

__all__ = ["UnknownDatasetError", "names", "path"]

_DIR = Path(__file__).resolve().parent


class UnknownDatasetError(DataError):
    """No built-in dataset of that name. A :class:`DataError`, so the CLI reports it like bad data."""


def names() -> list[str]:
    """The built-in datasets, sorted: the parquet files present in the package."""
    return sorted(p.stem for p in _DIR.glob("*.parquet"))


def path(name: str) -> Path:
    """The parquet file of built-in dataset ``name``."""
    available = names()
    if name not in available:
        listed = ", ".join(available) or "none (package data missing: reinstall quantnet-engine)"
        raise UnknownDatasetError(f"unknown built-in dataset {name!r}; available: {listed}")
    return _DIR / f"{name}.parquet"
