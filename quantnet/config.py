"""The application config: every layer's section, composed, loaded from TOML, overridden by flags."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field

from connectors.bybit.config import BybitConfig
from engine.config import (
    ConfigError,
    CostConfig,
    DataConfig,
    EngineConfig,
    PortfolioConfig,
    RiskConfig,
    Section,
    StrategyConfig,
    merge,
    read_toml,
    validate,
)
from models.config import ModelConfig, TrainConfig

DEFAULT_CONFIG = Path("config.toml")


class AppConfig(Section):
    engine: EngineConfig = Field(default_factory=EngineConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    portfolio: PortfolioConfig = Field(default_factory=PortfolioConfig)
    costs: CostConfig = Field(default_factory=CostConfig)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    risk: RiskConfig = Field(default_factory=RiskConfig)
    bybit: BybitConfig = Field(default_factory=BybitConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)


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


__all__ = ["AppConfig", "ConfigError", "load_config"]
