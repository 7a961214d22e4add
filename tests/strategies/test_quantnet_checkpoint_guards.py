"""A QuantNet checkpoint knows its bar length and its train/validation/test blocks: a backtest on
bars of another length is refused, one that trades inside the training or validation block is
warned about."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import structlog
from typer.testing import CliRunner

from connectors.replay import BarMatrix
from engine.bus import EventBus
from engine.clock import ReplayClock
from engine.strategy import StrategyError, StrategyHost
from models import ModelConfig, QuantNet, TrainConfig, markets_from_frame, save_checkpoint, train
from quantnet.cli import app
from strategies.registry import create
from tests.conftest import make_bars

MARKET = {"A": "m1", "B": "m1", "C": "m2", "D": "m2", "E": "m2"}


@pytest.fixture(scope="module")
def daily_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """Trained on 200 daily bars: training to bar 99, validation bars 100..139, test 140..199."""
    data = make_bars(tuple(MARKET), 200, seed=3)
    markets = markets_from_frame(data.assign(market=data["symbol"].map(MARKET)))
    cfg = TrainConfig(steps=2, batch_markets=2, seq_len=10, eval_every=2, test_bars=60, val_bars=40)
    small = ModelConfig(
        variant="lstm-linear", transfer_dim=2, decoder_dim=2, encoder_layers=1, decoder_layers=1
    )
    model = QuantNet(small, {m.name: m.assets for m in markets}, seed=0)
    result = train(model, markets, cfg)
    path = tmp_path_factory.mktemp("model") / "daily.pt"
    save_checkpoint(path, model, train_config=cfg, data=markets, splits=result.splits)
    return path, data


def _run(path: Path, data: pd.DataFrame) -> list[dict]:
    matrix = BarMatrix.from_frame(data, timestamps="close")
    bus = EventBus()
    with structlog.testing.capture_logs() as logs:
        host = StrategyHost(
            create("quantnet", {"model": str(path), "warmup": 5}), bus, ReplayClock(), matrix.symbols
        )
        for bars in matrix.bar_sets():
            host.on_bars(bars)
    return [e for e in logs if "in-sample" in e["event"]]


def test_trading_inside_training_or_validation_rows_is_warned(daily_model):
    path, data = daily_model
    days = pd.DatetimeIndex(sorted(data["timestamp"].unique()))
    # first traded bar = the 6th bar of the run (warmup 5)
    (warn,) = _run(path, data[data["timestamp"] >= days[50]])
    assert f"trades from {days[55].date()}" in warn["event"]
    assert f"training rows ({days[1].date()} .. {days[99].date()})" in warn["event"]
    assert f"validation rows ({days[100].date()} .. {days[139].date()})" in warn["event"]
    assert f"test block starts {days[140].date()}" in warn["event"]
    (val_only,) = _run(path, data[data["timestamp"] >= days[120]])
    assert "training rows" not in val_only["event"] and "validation rows" in val_only["event"]
    assert _run(path, data[data["timestamp"] >= days[135]]) == []  # first trade at bar 140


def test_bars_of_another_length_are_refused(daily_model, tmp_path):
    path, _ = daily_model
    hourly = make_bars(tuple(MARKET), 40, seed=4, freq="h")
    with pytest.raises(StrategyError, match="trained on 1-day bars, this data has 1-hour bars"):
        _run(path, hourly)
    csv = tmp_path / "hourly.csv"
    hourly.to_csv(csv, index=False)
    res = CliRunner().invoke(
        app, ["backtest", "--model", str(path), "--data", str(csv), "--output", str(tmp_path)]
    )
    assert res.exit_code != 0 and "trained on 1-day bars, this data has 1-hour bars" in res.output
    daily = make_bars(tuple(MARKET), 40, seed=4, start="2021-01-01")  # later days, same length: runs
    assert _run(path, daily) == []
