"""One vocabulary for a backtest's numbers: the CLI summary, the report and metrics.json.

Labels and formats live here once, so a figure reads the same wherever a user meets it: *fills*
are executions, *round trips* are positions from flat back to flat (``n_trades``), the trading
state is a name (``HALTED``), and fees, funding and borrowing costs sit in the summary beside the
returns they reduce.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["LABELS", "SUMMARY", "format_metric", "state_name", "summary_rows"]

PERCENT = {
    "total_return",
    "annual_return",
    "cagr",
    "annual_volatility",
    "downside_risk",
    "max_drawdown",
    "win_rate",
    "time_in_market",
    "benchmark_return",
    "benchmark_cagr",
    "benchmark_max_drawdown",
    "alpha",
    "tracking_error",
}
COUNTS = {
    "n_trades",
    "n_fills",
    "n_periods",
    "bars",
    "risk_events",
    "risk_orders_rejected",
    "risk_orders_resized",
    "risk_stop_exits",
    "risk_take_profits",
    "risk_daily_loss_breaches",
    "risk_halts",
    "bars_reducing",
    "bars_halted",
}
MONEY = {"final_equity", "fees", "funding", "borrow_cost"}

LABELS = {
    "total_return": "Total return",
    "annual_return": "Annual return",
    "cagr": "CAGR",
    "annual_volatility": "Annual volatility",
    "sharpe": "Sharpe ratio",
    "sortino": "Sortino ratio",
    "calmar": "Calmar ratio",
    "downside_risk": "Downside risk (annual)",
    "max_drawdown": "Max drawdown",
    "skewness": "Skewness",
    "kurtosis": "Excess kurtosis",
    "n_fills": "Fills",
    "n_trades": "Round trips (closed)",
    "win_rate": "Win rate (round trips)",
    "profit_factor": "Profit factor (round trips)",
    "turnover": "Turnover (annual, × equity)",
    "exposure": "Exposure (mean gross / equity)",
    "time_in_market": "Time in market",
    "fees": "Fees paid",
    "funding": "Funding paid",
    "borrow_cost": "Borrowing cost (negative cash)",
    "max_gross_exposure": "Max gross exposure (× equity)",
    "final_equity": "Final equity",
    "benchmark_return": "Benchmark total return",
    "benchmark_cagr": "Benchmark CAGR",
    "benchmark_sharpe": "Benchmark Sharpe ratio",
    "benchmark_max_drawdown": "Benchmark max drawdown",
    "alpha": "Alpha (annual)",
    "beta": "Beta",
    "correlation": "Correlation with benchmark",
    "information_ratio": "Information ratio",
    "tracking_error": "Tracking error (annual)",
    "trading_state": "Trading state (at the end)",
    "years": "Years",
    "n_periods": "Periods",
    "periods_per_year": "Periods per year",
}

# The summary a user sees first, in the CLI and at the top of the report: returns, risk, the
# benchmark, what was traded and what it cost.
SUMMARY = (
    "total_return",
    "annual_return",
    "annual_volatility",
    "sharpe",
    "sortino",
    "calmar",
    "max_drawdown",
    "benchmark_return",
    "alpha",
    "beta",
    "information_ratio",
    "n_fills",
    "n_trades",
    "win_rate",
    "profit_factor",
    "turnover",
    "exposure",
    "max_gross_exposure",
    "fees",
    "funding",
    "borrow_cost",
    "final_equity",
    "trading_state",
)

_STATES = {0: "ACTIVE", 1: "REDUCING", 2: "HALTED"}


def state_name(value: object) -> str:
    """The trading state as a name, from the risk manager's numeric code or its value."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
        return _STATES.get(int(value), str(value))
    return str(value).upper()


def _nan(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_metric(key: str, value: object) -> str:
    """A metric as text: percentages, counts, money with two decimals, ratios with three."""
    if key == "trading_state":
        return state_name(value) if not _nan(value) else "n/a"
    if _nan(value):
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, int | float):
        try:
            value = float(value)  # numpy scalars
        except (TypeError, ValueError):
            return str(value)
    v = float(value)
    if math.isnan(v):
        return "n/a"
    if math.isinf(v):
        return "∞" if v > 0 else "-∞"
    if key in PERCENT:
        return f"{v:.2%}"
    if key in COUNTS:
        return f"{v:,.0f}"
    if key in MONEY:
        return f"{v:,.2f}"
    if key == "periods_per_year":
        return f"{v:,.2f}".rstrip("0").rstrip(".")
    return f"{v:,.3f}" if abs(v) < 1e6 else f"{v:,.0f}"


def summary_rows(metrics: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(key, label, text) of the summary's metrics that the run has."""
    return [(k, LABELS[k], format_metric(k, metrics[k])) for k in SUMMARY if k in metrics]
