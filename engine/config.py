"""Configuration: frozen pydantic sections that reject unknown keys, and one clear error.

Each layer owns the schema of its own section (the engine here, models and connectors in their
packages); the entry point composes them into the application config. A bad file stops the program
with one message that names the file and the key.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """The configuration cannot be used; the message says where and why."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class DataConfig(Section):
    """Where replay bars come from and how their timestamps are to be read."""

    path: str = Field("", description="file or directory of long-format OHLCV; empty: built-in dataset")
    dataset: str = Field("us_stocks", description="built-in dataset used when path is empty")
    start: str = Field("", description="first bar (ISO date or datetime, UTC); empty: from the start")
    end: str = Field("", description="last bar, inclusive; empty: to the end")
    timestamps: Literal["open", "close"] = Field(
        "open", description="whether file timestamps label the bar's open (as Bybit) or its close"
    )
    timestamp_unit: Literal["", "s", "ms", "us", "ns", "D", "excel"] = Field(
        "",
        description="unit of numeric timestamps: epoch s/ms/us/ns, days since the epoch (D) or Excel "
        "serial days; empty: YYYYMMDD integers and unmistakable epoch magnitudes only",
    )
    timestamp_format: str = Field(
        "",
        description="strptime format of text timestamps (e.g. %d/%m/%Y); empty: ISO 8601, or text "
        "that reads the same day-first and month-first",
    )
    warmup: bool = Field(
        True,
        description="feed the strategy the bars it needs before `start` (no trading) when the data has them",
    )
    calendar: Literal["auto", "exchange", "24/7", "24/6"] = Field(
        "auto",
        description="trading days for annualisation: 252, 365, 365*6/7 (FX Sun..Fri); auto: from the data",
    )
    periods_per_year: float | None = Field(None, gt=0, description="annualisation override")
    delist_after_bars: int = Field(
        5,
        ge=0,
        description="backtests: this many bars after a symbol's data ends, close its position at its last "
        "close and cancel its orders (delisted); 0: never",
    )


class PortfolioConfig(Section):
    cash: float = Field(100_000.0, gt=0)
    max_weight: float = Field(1.0, gt=0, description="cap on |target weight| per asset")
    rebalance: Literal["on_change", "every_bar"] = Field(
        "on_change",
        description="on_change: trade an asset when its target changes (weights drift with prices "
        "in between); every_bar: bring every weight back to its target after each bar (constant weights)",
    )
    rebalance_band: float = Field(
        0.0, ge=0, description="on_change: also trade when a weight drifts this far from its target; 0: off"
    )
    min_trade_notional: float = Field(0.0, ge=0, description="skip rebalancing trades smaller than this")


class CostConfig(Section):
    """Trading costs applied by simulated execution, in basis points of traded notional."""

    taker_fee_bps: float = Field(5.5, ge=0, le=1000)
    maker_fee_bps: float = Field(2.0, ge=-100, le=1000)
    slippage_bps: float = Field(1.0, ge=0, le=1000)
    funding_rate_bps: float = Field(
        0.0, ge=-1000, le=1000, description="perpetual funding per interval, bps of position value; longs pay"
    )
    funding_interval_hours: float = Field(
        8.0, gt=0, le=24 * 7, description="funding every N hours from 00:00 UTC"
    )
    borrow_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="annual interest on negative cash (leverage), e.g. 0.05; accrues per bar, calendar time",
    )


class ExecutionConfig(Section):
    """When simulated market orders fill (backtests; paper trading fills at the next bar's first price)."""

    fill_at: Literal["auto", "next_open", "close"] = Field(
        "auto",
        description="next_open: a decision at bar t's close trades at bar t+1's open; close: at bar t's "
        "close (market-on-close, same slippage and fee); auto: next_open, or close for data without opens",
    )


class EngineConfig(Section):
    journal: bool = Field(True, description="journal every order, fill and position change (journal.db)")


class ReportConfig(Section):
    """What the backtest report compares against and how it smooths."""

    benchmark: str = Field(
        "",
        description="symbol of the data to compare against; empty: equal-weight buy-and-hold of the universe",
    )
    rolling_window: int = Field(
        0, ge=0, description="bars of the rolling Sharpe and volatility; 0: half a year of bars"
    )

    @model_validator(mode="after")
    def _window(self) -> ReportConfig:
        if self.rolling_window == 1:
            raise ValueError("rolling_window must be 0 (half a year) or at least 2 bars")
        return self


class StrategyConfig(Section):
    name: str = "sma_crossover"
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _name_given(self) -> StrategyConfig:
        if not self.name.strip():
            raise ValueError("strategy name is empty")
        return self


class InstrumentRulesConfig(Section):
    """A venue's tick and lot rules for one instrument (zero: no constraint), for backtests; live
    trading takes them from the exchange."""

    tick_size: float = Field(0.0, ge=0, description="prices are multiples of this")
    qty_step: float = Field(0.0, ge=0, description="quantities are multiples of this (lot)")
    min_qty: float = Field(0.0, ge=0, description="smallest order quantity")
    max_qty: float = Field(0.0, ge=0, description="largest order quantity; 0: no limit")
    min_notional: float = Field(0.0, ge=0, description="smallest order value in quote currency")


class RiskConfig(Section):
    """Limits of the risk manager. Exposures and losses are fractions of equity (0.2 = 20%), stop
    distances fractions of the entry price. Every limit is off (None) unless set, so an empty
    section changes nothing."""

    max_order_notional: float | None = Field(
        None, gt=0, le=100, description="largest new-risk order value / equity; larger ones are rejected"
    )
    max_position: float | None = Field(
        None, gt=0, le=100, description="|position value| / equity per asset; orders are cut to fit"
    )
    max_gross_exposure: float | None = Field(
        None, gt=0, le=100, description="sum of |position values| / equity; orders are cut to fit"
    )
    max_net_exposure: float | None = Field(
        None, gt=0, le=100, description="|sum of position values| / equity; orders are cut to fit"
    )
    stop_loss: float | None = Field(None, gt=0, lt=1, description="stop distance from the entry price")
    take_profit: float | None = Field(None, gt=0, le=100, description="take-profit distance from entry")
    trailing_stop: float | None = Field(
        None, gt=0, lt=1, description="stop distance from the best price since entry"
    )
    max_daily_loss: float | None = Field(
        None, gt=0, le=1, description="loss since the day's start / day-start equity; then only reduce"
    )
    max_drawdown: float | None = Field(
        None, gt=0, le=1, description="fall from the equity peak; then flatten and halt until reset"
    )
    day_start_hour: int = Field(0, ge=0, le=23, description="UTC hour at which a trading day starts")
    state_file: str = Field("", description="JSON file that keeps a halt across restarts; empty: none")
    clear_halt: bool = Field(False, description="clear a halt persisted in state_file at start-up")
    instruments: dict[str, InstrumentRulesConfig] = Field(
        default_factory=dict, description='tick/lot rules by symbol; "*" applies to every other symbol'
    )

    @property
    def active(self) -> bool:
        """Whether any rule is configured; without one the engine runs no risk manager at all."""
        limits = (
            self.max_order_notional,
            self.max_position,
            self.max_gross_exposure,
            self.max_net_exposure,
            self.stop_loss,
            self.take_profit,
            self.trailing_stop,
            self.max_daily_loss,
            self.max_drawdown,
        )
        return any(v is not None for v in limits) or bool(self.state_file) or bool(self.instruments)


def read_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``overrides`` into ``base``; a None override leaves the base value."""
    out = dict(base)
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            base_value = out.get(key)
            out[key] = merge(base_value if isinstance(base_value, Mapping) else {}, value)
        else:
            out[key] = value
    return out


def validate(model: type[BaseModel], data: Mapping[str, Any], source: str) -> Any:
    """Build ``model`` from ``data`` or raise ConfigError naming the source and each bad key."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown key '{key}'")
            else:
                got = err.get("input")
                shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
                problems.append(f"'{key}': {err['msg']}{shown}")
        raise ConfigError(f"{source}: " + "; ".join(problems)) from None
