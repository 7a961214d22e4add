"""The application config: every layer's section, composed, loaded from TOML, overridden by flags."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from connectors.bybit.config import BybitConfig
from engine.config import (
    ConfigError,
    CostConfig,
    DataConfig,
    EngineConfig,
    ExecutionConfig,
    PortfolioConfig,
    ReportConfig,
    RiskConfig,
    Section,
    StrategyConfig,
    merge,
    read_toml,
    validate,
)
from models.config import ModelConfig, TrainConfig

DEFAULT_CONFIG = Path("config.toml")


class LiveConfig(Section):
    """The long-running daemon (``quantnet live`` / ``quantnet paper``)."""

    symbols: list[str] = Field(default_factory=list, description="universe; with --model: its assets")
    interval: Literal["1", "3", "5", "15", "30", "60", "120", "240", "360", "720", "D"] = "1"
    category: Literal["linear", "spot"] = "linear"
    enabled: bool = Field(False, description="live mode trades real orders only when this is true")
    environment: Literal["", "testnet", "demo", "mainnet"] = Field(
        "", description="the Bybit environment live mode trades on; must be set for live mode"
    )
    webhook_url: str = Field("", description="POST every signal record here (retried, never blocking)")
    max_trade_lag: float = Field(
        120.0, gt=0, description="s: bars older than this when processed (catch-up) are not traded"
    )
    settle_timeout: float = Field(
        10.0,
        gt=0,
        description="s: live catch-up waits this long for a late bar's orders to end before the next bar",
    )
    snapshot_every: int = Field(100, ge=1, description="bars between snapshots of the model states")
    assemble_wait: float = Field(
        10.0, gt=0, description="s after a close to wait for every symbol's bar before going without"
    )
    state_dir: str = Field("state", description="journal database and lock; --state-dir overrides")
    cash_tolerance: float = Field(
        0.005,
        ge=0,
        lt=1,
        description="live start-up: the fraction of equity (at least 1 USDT) by which Bybit's cash may "
        "differ from the journal's (funding, fee rounding) before trading is refused",
    )

    @field_validator("symbols")
    @classmethod
    def _upper(cls, v: list[str]) -> list[str]:
        return [s.strip().upper() for s in v if s.strip()]


class AppConfig(Section):
    engine: EngineConfig = Field(default_factory=EngineConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    portfolio: PortfolioConfig = Field(default_factory=PortfolioConfig)
    costs: CostConfig = Field(default_factory=CostConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    risk: RiskConfig = Field(default_factory=RiskConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    bybit: BybitConfig = Field(default_factory=BybitConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    live: LiveConfig = Field(default_factory=LiveConfig)


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> AppConfig:
    """Read ``path`` (or ./config.toml when present), apply command-line overrides, validate.

    Raises ConfigError naming the file and key of the first problems found.
    """
    source = "defaults"
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_toml(path)
        source = str(path)
    elif DEFAULT_CONFIG.is_file():
        raw = read_toml(DEFAULT_CONFIG)
        source = str(DEFAULT_CONFIG)
    if overrides:
        raw = merge(raw, overrides)
        source = f"{source} (with command-line overrides)"
    return validate(AppConfig, raw, source)


__all__ = ["AppConfig", "ConfigError", "LiveConfig", "load_config"]
