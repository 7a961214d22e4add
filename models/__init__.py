"""QuantNet (Koshiyama et al. 2022): transfer learning across markets' trading strategies.

Plain PyTorch; nothing here imports the engine, connectors or strategies. Typical use::

    markets = markets_from_frame(df)                     # long-format OHLCV with a market column
    model = QuantNet(ModelConfig(), {m.name: m.assets for m in markets}, seed=0)
    result = train(model, markets, TrainConfig(steps=2000))
    save_checkpoint("model.pt", model, train_config=cfg, data=markets)

    stepper = SignalStepper.from_checkpoint("model.pt")  # live: one call per bar
    stepper.warm_up({"us": last_year_returns})
    signals = stepper.step({"us": newest_returns})       # {"us": array of next positions}
"""

import importlib
from typing import Any

# Loaded on first use: `import models.config` (the CLI's config schema) must not pay for torch.
_EXPORTS = {
    "Checkpoint": "models.checkpoint",
    "CheckpointMismatch": "models.checkpoint",
    "check_assets": "models.checkpoint",
    "load_checkpoint": "models.checkpoint",
    "save_checkpoint": "models.checkpoint",
    "BASELINE_VARIANTS": "models.config",
    "TRANSFER_VARIANTS": "models.config",
    "ModelConfig": "models.config",
    "TrainConfig": "models.config",
    "FEATURES": "models.data",
    "Market": "models.data",
    "Splits": "models.data",
    "dated_splits": "models.data",
    "infer_periods_per_year": "models.data",
    "markets_from_frame": "models.data",
    "returns_from_closes": "models.data",
    "market_sharpe": "models.loss",
    "quantnet_loss": "models.loss",
    "sharpe_ratios": "models.loss",
    "QuantNet": "models.network",
    "SignalStepper": "models.stepper",
    "TrainResult": "models.training",
    "evaluate": "models.training",
    "train": "models.training",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "BASELINE_VARIANTS",
    "FEATURES",
    "TRANSFER_VARIANTS",
    "Checkpoint",
    "CheckpointMismatch",
    "Market",
    "ModelConfig",
    "QuantNet",
    "SignalStepper",
    "Splits",
    "TrainConfig",
    "TrainResult",
    "check_assets",
    "dated_splits",
    "evaluate",
    "infer_periods_per_year",
    "load_checkpoint",
    "market_sharpe",
    "markets_from_frame",
    "quantnet_loss",
    "returns_from_closes",
    "save_checkpoint",
    "sharpe_ratios",
    "train",
]
