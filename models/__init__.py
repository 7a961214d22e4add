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

from models.checkpoint import Checkpoint, CheckpointMismatch, check_assets, load_checkpoint, save_checkpoint
from models.config import BASELINE_VARIANTS, TRANSFER_VARIANTS, ModelConfig, TrainConfig
from models.data import FEATURES, Market, infer_periods_per_year, markets_from_frame, returns_from_closes
from models.loss import market_sharpe, quantnet_loss, sharpe_ratios
from models.network import QuantNet
from models.stepper import SignalStepper
from models.training import TrainResult, evaluate, train

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
    "TrainConfig",
    "TrainResult",
    "check_assets",
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
