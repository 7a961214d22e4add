"""The QuantNet strategy on the bus: its positions are the model's full-sequence signals, sized as
documented, one bar later in time; bad model/data pairings are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from connectors.replay import BarMatrix
from engine.bus import EventBus, replay
from engine.clock import ReplayClock
from engine.events import BarSet, Signal
from engine.strategy import StrategyError, StrategyHost
from models.checkpoint import save_checkpoint
from models.config import ModelConfig
from models.data import returns_from_closes
from models.network import QuantNet
from quantnet.cli import app
from strategies.quantnet import QuantNetParams
from strategies.registry import create
from tests.conftest import make_bars

MARKETS = {"m1": ("A", "B"), "m2": ("C", "D", "E")}


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    model = QuantNet(ModelConfig(variant="lstm-linear", transfer_dim=4, decoder_dim=4), MARKETS, seed=3)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, periods_per_year=252.0)
    return path


def held_weights(params: dict, data: pd.DataFrame) -> tuple[BarMatrix, pd.DataFrame]:
    """Standing target weights after each bar (re-targeted every bar unless min_change is given)."""
    matrix = BarMatrix.from_frame(data, timestamps="close")
    bus, clock = EventBus(), ReplayClock()
    strategy = create("quantnet", {"min_change": 0.0, **params})
    StrategyHost(strategy, bus, clock, matrix.symbols, max_weight=10.0)
    held = np.zeros(len(matrix.symbols))
    rows: list[np.ndarray] = []

    def on_signal(sig: Signal) -> None:
        np.copyto(held, sig.targets, where=~np.isnan(sig.targets))

    bus.subscribe(Signal, on_signal)
    bus.subscribe(BarSet, lambda _: rows.append(held.copy()))
    replay(bus, matrix.bar_sets(), clock)
    return matrix, pd.DataFrame(rows, columns=list(matrix.symbols))


def model_signals(path: Path, matrix: BarMatrix) -> dict[str, np.ndarray]:
    """Full-sequence forward pass per market; row t+1 is the position decided at bar t."""
    from models.checkpoint import load_checkpoint

    model = load_checkpoint(path).model
    cols = {s: j for j, s in enumerate(matrix.symbols)}
    return {
        m: model.signals(m, returns_from_closes(matrix.close[:, [cols[a] for a in assets]]))
        for m, assets in MARKETS.items()
    }


def test_positions_are_the_models_signals_one_bar_on(model_path):
    data = make_bars(tuple("ABCDE"), 80, seed=1)
    warmup = 10
    matrix, held = held_weights(
        {"model": str(model_path), "vol_target": None, "warmup": warmup, "max_gross": 10.0}, data
    )
    full = model_signals(model_path, matrix)
    for m, assets in MARKETS.items():
        expected = full[m][1:] / 5  # decided at bar t = signal row t + 1, weight = s / N_assets
        got = held[list(assets)].to_numpy()
        np.testing.assert_allclose(got[warmup:-1], expected[warmup:], atol=1e-6)
        assert np.all(got[:warmup] == 0)
    assert held.abs().to_numpy()[warmup:].min() > 0


def test_volatility_targeting_and_caps(model_path):
    data = make_bars(tuple("ABCDE"), 60, seed=2)
    params = {"model": str(model_path), "vol_target": 0.1, "vol_span": 9, "warmup": 5, "max_position": 0.15}
    matrix, held = held_weights(params, data)
    full = model_signals(model_path, matrix)
    closes = pd.DataFrame(matrix.close, columns=list(matrix.symbols))
    r2 = closes.pct_change() ** 2
    var = r2.ewm(alpha=2 / 10, adjust=False).mean()  # seeded with the first squared return
    t = 40
    s = np.r_[full["m1"][t + 1], full["m2"][t + 1]]
    raw = s * 0.1 / np.sqrt(var.iloc[t].to_numpy() * 252) / 5
    capped = np.clip(raw, -0.15, 0.15)
    if np.abs(capped).sum() > 1.0:
        capped = capped / np.abs(capped).sum()
    np.testing.assert_allclose(held.iloc[t].to_numpy(), capped, atol=1e-6)


def test_positions_without_a_bar_count_against_the_gross_cap(model_path):
    """m1's exchange is shut for a day: its standing positions use up part of max_gross, and only
    m2's assets are scaled into what remains."""
    data = make_bars(tuple("ABCDE"), 40, seed=4)
    shut = pd.Timestamp("2020-01-21", tz="UTC")
    data = data.drop(data[data["symbol"].isin(["A", "B"]) & (data["timestamp"] == shut)].index)
    cap = 0.05
    params = {"model": str(model_path), "vol_target": None, "warmup": 3, "max_gross": cap}
    matrix, held = held_weights(params, data)
    t = int(np.flatnonzero(np.isnan(matrix.close[:, 0]))[0])
    full = model_signals(model_path, matrix)
    raw = full["m2"][t + 1] / 5
    assert np.abs(raw).sum() > cap  # the cap binds
    standing = held[["A", "B"]].iloc[t - 1].to_numpy()
    assert np.array_equal(held[["A", "B"]].iloc[t].to_numpy(), standing)
    room = cap - np.abs(standing).sum()
    np.testing.assert_allclose(held[["C", "D", "E"]].iloc[t], raw * room / np.abs(raw).sum(), atol=1e-7)
    assert held.abs().sum(axis=1).max() <= cap + 1e-9


def test_market_risk_budget_gives_each_market_the_same_share(model_path):
    data = make_bars(tuple("ABCDE"), 50, seed=5)
    params = {"model": str(model_path), "vol_target": None, "budget": "market", "warmup": 4, "max_gross": 10}
    matrix, held = held_weights(params, data)
    full = model_signals(model_path, matrix)
    # two markets: each gets 1/2, shared by its 2 (m1) or 3 (m2) assets
    np.testing.assert_allclose(held[["A", "B"]].to_numpy()[4:-1], full["m1"][5:] / 4, atol=1e-6)
    np.testing.assert_allclose(held[["C", "D", "E"]].to_numpy()[4:-1], full["m2"][5:] / 6, atol=1e-6)


def test_portfolio_volatility_target_from_past_returns_only(model_path):
    data = make_bars(tuple("ABCDE"), 70, seed=9)
    params = {
        "model": str(model_path),
        "vol_target": 0.1,
        "portfolio_vol": 0.05,
        "vol_span": 9,
        "warmup": 5,
        "max_gross": 100,
    }
    matrix, held = held_weights(params, data)
    full = model_signals(model_path, matrix)
    for t in (30, 55):
        # the estimate at bar t from the closes up to t, nothing later
        r = pd.DataFrame(matrix.close[: t + 1], columns=list(matrix.symbols)).pct_change()
        cov = np.array([[(r[a] * r[b]).ewm(alpha=0.2, adjust=False).mean().iloc[-1] for b in r] for a in r])
        s = np.r_[full["m1"][t + 1], full["m2"][t + 1]]
        w = s * 0.1 / np.sqrt(np.diag(cov) * 252) / 5
        w *= 0.05 / np.sqrt(252 * w @ cov @ w)
        assert np.abs(w).max() < 1 and np.abs(w).sum() < 100  # no cap binds
        got = held.iloc[t].to_numpy()
        np.testing.assert_allclose(got, w, rtol=1e-6)
        assert np.sqrt(252 * got @ cov @ got) == pytest.approx(0.05)


def test_min_change_keeps_a_weight_until_it_moves_that_much(model_path):
    assert QuantNetParams(model="m.pt").min_change == 0.01  # the measured default (README)
    data = make_bars(tuple("ABCDE"), 80, seed=3)
    params = {"model": str(model_path), "warmup": 5}
    _, every = held_weights(params, data)
    _, held = held_weights({**params, "min_change": 0.01}, data)
    expected = every.to_numpy().copy()
    for t in range(1, len(expected)):
        keep = np.abs(expected[t] - expected[t - 1]) <= 0.01
        expected[t][keep] = expected[t - 1][keep]
    np.testing.assert_allclose(held.to_numpy(), expected, atol=1e-12)
    changes = (np.diff(held.to_numpy(), axis=0) != 0).sum()
    assert 0 < changes < (np.diff(every.to_numpy(), axis=0) != 0).sum() / 2


def test_missing_asset_is_not_traded(model_path):
    data = make_bars(tuple("ABCDE"), 40, seed=4)
    gap = pd.Timestamp("2020-01-21", tz="UTC")
    data = data.drop(data[(data["symbol"] == "C") & (data["timestamp"] == gap)].index)
    matrix, held = held_weights({"model": str(model_path), "vol_target": None, "warmup": 3}, data)
    t = int(np.flatnonzero(np.isnan(matrix.close[:, 2]))[0])
    assert held["C"].iloc[t] == held["C"].iloc[t - 1]  # no bar: no new target for C
    assert held["D"].iloc[t] != held["D"].iloc[t - 1]  # the rest of its market still trades


def test_data_without_the_models_assets_is_refused(model_path):
    data = make_bars(("A", "B", "C", "D"), 20)
    with pytest.raises(
        StrategyError, match=r"model.pt: the data has no bars for the model's assets \(m2: E\)"
    ):
        held_weights({"model": str(model_path)}, data)


def test_backtest_command_runs_quantnet(model_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    csv = tmp_path / "p.csv"
    make_bars(tuple("ABCDE"), 120, seed=6).to_csv(csv, index=False)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["backtest", "--model", str(model_path), "--data", str(csv), "--output", str(out), "--fee-bps", "2"],
    )
    assert result.exit_code == 0, result.output
    trades = pd.read_csv(out / "trades.csv")
    assert set(trades["symbol"]) == set("ABCDE")
    missing = CliRunner().invoke(app, ["backtest", "--model", str(tmp_path / "nope.pt"), "--data", str(csv)])
    assert missing.exit_code == 2 and "nope.pt not found" in missing.output


def test_a_closed_market_keeps_its_state(model_path):
    """m1's exchange is shut for a day while m2 trades: m1's signals follow its own calendar."""
    data = make_bars(tuple("ABCDE"), 50, seed=8)
    holiday = pd.Timestamp("2020-01-25", tz="UTC")
    data = data.drop(data[data["symbol"].isin(["A", "B"]) & (data["timestamp"] == holiday)].index)
    matrix, held = held_weights({"model": str(model_path), "vol_target": None, "warmup": 0}, data)
    from models.checkpoint import load_checkpoint

    own = data[data["symbol"].isin(["A", "B"])].pivot(index="timestamp", columns="symbol", values="close")
    expected = load_checkpoint(model_path).model.signals("m1", returns_from_closes(own.to_numpy()))[1:] / 5
    open_days = np.isin(matrix.ts_event, own.index.as_unit("ns").asi8)
    got = held[["A", "B"]].to_numpy()[open_days][:-1]
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("sizing", [{}, {"budget": "market", "portfolio_vol": 0.08}])
def test_warm_up_from_history_equals_stepping_through_it(model_path, sizing):
    """A live start warms up on REST history in one pass; it must leave the same state as
    having traded through those bars one at a time."""
    data = make_bars(tuple("ABCDE"), 70, seed=12)
    matrix = BarMatrix.from_frame(data, timestamps="close")
    params = {"model": str(model_path), "vol_target": 0.1, "warmup": 0, "min_change": 0.0, **sizing}
    stepped = create("quantnet", params)
    warmed = create("quantnet", params)
    ctx_symbols = matrix.symbols
    stepped.on_start(ctx_symbols)
    warmed.on_start(ctx_symbols)
    split = 50
    for bars in list(matrix.bar_sets())[:split]:
        stepped.on_bars(bars, None)  # type: ignore[arg-type]
    warmed.warm_up(matrix.close[:split])
    for bars in list(matrix.bar_sets())[split:]:
        a = stepped.on_bars(bars, None)  # type: ignore[arg-type]
        b = warmed.on_bars(bars, None)  # type: ignore[arg-type]
        np.testing.assert_allclose(a, b, atol=1e-6)
