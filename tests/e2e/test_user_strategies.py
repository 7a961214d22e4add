"""A user's own strategy, outside the project: a file's class or an installed entry point, listed by
``quantnet strategies``, guarded by the host (loud in backtests, contained in live mode)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from engine.bus import EventBus
from engine.clock import ReplayClock
from engine.events import BarSet
from engine.strategy import Strategy, StrategyHost
from quantnet.cli import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()

USER_STRATEGY = '''
import numpy as np
from pydantic import Field

from engine.strategy import Params, Strategy


class HoldFirstParams(Params):
    weight: float = Field(0.5, gt=0, le=1, description="weight of the first asset")
    after: int = Field(3, ge=0, description="bars to wait")


class HoldFirst(Strategy):
    """Holds the first asset at a fixed weight from bar `after` on."""

    name = "hold_first"
    Params = HoldFirstParams

    def on_start(self, symbols):
        self.n = 0

    def on_bars(self, bars, ctx):
        self.n += 1
        if self.n != self.params.after + 1:
            return None
        out = np.full(len(ctx.symbols), np.nan)
        out[0] = self.params.weight
        return out


class Broken(Strategy):
    name = "broken"

    def on_bars(self, bars, ctx):
        if bars.index == 5:
            raise ZeroDivisionError("user bug")
        return None


class Levered(Strategy):
    name = "levered"

    def on_bars(self, bars, ctx):
        return np.full(len(ctx.symbols), 0.9)


class Wild(Strategy):
    name = "wild"

    def on_bars(self, bars, ctx):
        return np.full(len(ctx.symbols), np.inf) if bars.index == 4 else None
'''


@pytest.fixture(autouse=True)
def _elsewhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def user_file(tmp_path) -> Path:
    path = tmp_path / "mine" / "my_strategy.py"
    path.parent.mkdir()
    path.write_text(USER_STRATEGY)
    return path


def test_a_file_strategy_runs_in_a_backtest_with_its_params(tmp_path, user_file, prices_csv, bars):
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "backtest",
            "--strategy",
            f"{user_file}:HoldFirst",
            "--param",
            "weight=0.25",
            "--param",
            "after=2",
            "--data",
            str(prices_csv),
            "--fee-bps",
            "0",
            "--slippage-bps",
            "0",
            "--output",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    trades = pd.read_csv(out / "trades.csv")
    first = sorted(bars["symbol"].unique())[0]
    assert list(trades["symbol"]) == [first]  # one buy of the first asset, nothing else
    times = sorted(bars["timestamp"].unique())
    bought_at = bars[(bars["symbol"] == first) & (bars["timestamp"] == times[3])]["open"].iloc[0]
    assert trades["price"].iloc[0] == pytest.approx(bought_at)  # decided on bar 3, filled at bar 4's open
    assert trades["quantity"].iloc[0] * bought_at == pytest.approx(0.25 * 100_000, rel=0.02)


def test_file_strategy_errors_name_the_problem(tmp_path, user_file, prices_csv):
    cases = {
        f"{user_file}:Nope": "has no 'Nope'; strategies in it: HoldFirst, Broken, Levered, Wild",
        f"{tmp_path}/missing.py:X": "missing.py not found",
        f"{user_file}:HoldFirstParams": "HoldFirstParams is not a Strategy subclass",
    }
    for ref, expected in cases.items():
        result = runner.invoke(app, ["backtest", "--strategy", ref, "--data", str(prices_csv)])
        assert result.exit_code == 2, result.output
        assert expected in " ".join(result.output.split())
    bad = runner.invoke(
        app,
        [
            "backtest",
            "--strategy",
            f"{user_file}:HoldFirst",
            "--param",
            "wieght=1",
            "--data",
            str(prices_csv),
        ],
    )
    assert "unknown parameter 'wieght' (valid parameters: weight, after)" in bad.output
    broken = tmp_path / "broken.py"
    broken.write_text("import numpy\n\nx = 1 / 0\n")
    result = runner.invoke(app, ["backtest", "--strategy", f"{broken}:X", "--data", str(prices_csv)])
    assert "broken.py (line 3) raised ZeroDivisionError" in " ".join(result.output.split())


def test_paper_and_live_take_the_same_reference(tmp_path, user_file):
    """The daemon builds its strategy through the same registry: a bad reference is refused before
    anything connects."""
    for command in (["paper"], ["live", "--mode", "signal"]):
        result = runner.invoke(
            app,
            [
                *command,
                "--strategy",
                f"{user_file}:Nope",
                "--symbols",
                "BTCUSDT",
                "--rest-url",
                "http://127.0.0.1:9",
            ],
        )
        assert result.exit_code == 2, result.output
        assert "has no 'Nope'" in result.output


def test_a_strategy_that_raises_stops_the_backtest_naming_the_bar(user_file, prices_csv):
    result = runner.invoke(app, ["backtest", "--strategy", f"{user_file}:Broken", "--data", str(prices_csv)])
    assert result.exit_code == 1
    assert "backtest stopped" in result.output and "ZeroDivisionError: user bug" in result.output


def test_out_of_range_targets_fail_a_backtest(user_file, prices_csv):
    result = runner.invoke(app, ["backtest", "--strategy", f"{user_file}:Wild", "--data", str(prices_csv)])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "strategy wild returned invalid targets at 20" in text and "=inf" in text


class _Raises(Strategy):
    name = "raises"

    def on_bars(self, bars, ctx):
        if bars.index == 1:
            raise RuntimeError("boom")
        return np.array([np.inf if bars.index == 2 else 0.5])


def test_live_mode_contains_a_raising_or_wild_strategy():
    """Live: the failure is logged and counted, the bar publishes nothing, later bars still trade;
    an infinite target is dropped, never sent."""
    bus = EventBus("live")
    signals = []
    from engine.events import Signal

    bus.subscribe(Signal, signals.append)
    host = StrategyHost(_Raises(), bus, ReplayClock(), ("X",))
    for i in range(4):
        bar = BarSet(i + 1, i, ("X",), *(np.array([1.0]) for _ in range(5)), index=i)
        bus.publish(bar)
    assert sum(bus.errors.values()) == 1
    assert host.invalid_targets == 1
    assert [s.ts_event for s in signals] == [1, 4]


def test_leverage_is_warned_about_once(user_file, prices_csv, capsys):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "quantnet.cli",
            "backtest",
            "--strategy",
            f"{user_file}:Levered",
            "--data",
            str(prices_csv),
            "--output",
            str(user_file.parent / "out"),
        ],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "COLUMNS": "200"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("targets sum above 1") == 1
    assert "gross_target=1.8" in result.stderr


def test_entry_point_strategies_are_found_and_listed(tmp_path, user_file):
    site = tmp_path / "site"
    dist = site / "mystrats-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mystrats\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[quantnet.strategies]\nhold_first = my_strategy:HoldFirst\n")
    (site / "my_strategy.py").write_text(USER_STRATEGY)
    env = {"PYTHONPATH": f"{ROOT}:{site}"}
    listing = subprocess.run(
        [sys.executable, "-m", "quantnet.cli", "strategies", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert listing.returncode == 0, listing.stderr
    rows = {r["name"]: r for r in json.loads(listing.stdout)}
    assert rows["hold_first"]["summary"].startswith("Holds the first asset")
    params = {p["name"]: p for p in rows["hold_first"]["parameters"]}
    assert params["weight"] == {
        "name": "weight",
        "type": "float",
        "required": False,
        "default": 0.5,
        "description": "weight of the first asset",
        "constraints": [">0", "<=1"],
    }
    text = subprocess.run(
        [sys.executable, "-m", "quantnet.cli", "strategies"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    ).stdout
    line = next(x for x in text.splitlines() if x.strip().startswith("after"))
    assert line.split()[:4] == ["after", "int", "default", "3"]
    assert {"sma_crossover", "quantnet", "buy_and_hold", "hold_first"} <= set(rows)
    fast = {p["name"]: p for p in rows["sma_crossover"]["parameters"]}["fast"]
    assert fast["default"] == 10 and fast["type"] == "int"


def test_negative_cash_pays_borrow_rate_per_bar_on_calendar_time(tmp_path, user_file, prices_csv):
    """[costs] borrow_rate: each bar, negative cash pays rate × days/365.25 of itself. Recomputed
    from equity.csv's cash column (recorded after the charge: pre = post / (1 + r·dt)); with
    targets that never change the run trades once, so the two runs' equity differs by exactly
    the interest paid."""
    runs = {}
    for rate in (0.0, 0.1):
        cfg = tmp_path / f"c{rate}.toml"
        cfg.write_text(f"[costs]\nborrow_rate = {rate}\ntaker_fee_bps = 0\nslippage_bps = 0\n")
        out = tmp_path / f"o{rate}"
        args = ["backtest", "--strategy", f"{user_file}:Levered", "--data", str(prices_csv)]
        result = runner.invoke(app, [*args, "--config", str(cfg), "--output", str(out)], terminal_width=200)
        assert result.exit_code == 0, result.output
        runs[rate] = (result.output, json.loads((out / "metrics.json").read_text()), out)
    text, metrics, out = runs[0.1]
    equity = pd.read_csv(out / "equity.csv", parse_dates=["timestamp"])
    dt = equity["timestamp"].diff().dt.total_seconds().to_numpy() / (365.25 * 86400)
    cash = equity["cash"].to_numpy()
    rd = 0.1 * dt[1:]
    expected = float(np.sum(np.where(cash[1:] < 0, -cash[1:] * rd / (1 + rd), 0.0)))
    assert expected > 1000
    assert metrics["borrow_cost"] == pytest.approx(expected, rel=1e-9)
    assert runs[0.0][1]["borrow_cost"] == 0
    assert runs[0.0][1]["final_equity"] - metrics["final_equity"] == pytest.approx(expected, rel=1e-9)
    gross = (equity["gross_exposure"] / equity["equity"]).max()
    assert metrics["max_gross_exposure"] == pytest.approx(gross, rel=1e-12)
    assert gross > 1.7
    assert "Borrowing cost (negative cash)" in text and "Max gross exposure" in text
    assert "targets summed to 1.80x equity; negative cash is charged [costs] borrow_rate 10.00%" in text
    assert "negative cash is free: [costs] borrow_rate is 0" in runs[0.0][0]


def test_borrow_cost_on_the_quiet_bar_path_matches_bar_by_bar(tmp_path, prices_csv):
    """sma_crossover precomputes its decisions, so replay books the bars between decisions at once
    (Portfolio.mark_span); the interest there is what each bar would have charged."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("[costs]\nborrow_rate = 0.2\n")
    out = tmp_path / "o"
    args = ["backtest", "--strategy", "sma_crossover", "--param", "target=0.9", "--param", "fast=3"]
    args += ["--param", "slow=8", "--data", str(prices_csv), "--config", str(cfg), "--output", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    equity = pd.read_csv(out / "equity.csv", parse_dates=["timestamp"])
    dt = equity["timestamp"].diff().dt.total_seconds().to_numpy()[1:] / (365.25 * 86400)
    cash = equity["cash"].to_numpy()[1:]
    expected = float(np.sum(np.where(cash < 0, -cash * 0.2 * dt / (1 + 0.2 * dt), 0.0)))
    assert expected > 100
    assert metrics["borrow_cost"] == pytest.approx(expected, rel=1e-9)
