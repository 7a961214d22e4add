"""``[execution] fill_at``: market orders fill at the next bar's open or at the decision bar's close
(market-on-close). Data without opens trades at the close by default: its "next open" is the next
close, one bar later than the strategy meant."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import structlog
from typer.testing import CliRunner

from quantnet.backtest import run_backtest
from quantnet.cli import app
from quantnet.config import load_config
from tests.conftest import Scripted

N, SYMBOLS = 60, ("A", "B", "C")
FEE, SLIP = 7e-4, 3e-4


def closes(seed: int = 11) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 100.0 * np.exp(np.cumsum(rng.normal(0, 0.02, (N, len(SYMBOLS))), axis=0))


def frame(close: np.ndarray, opn: np.ndarray, high: np.ndarray, low: np.ndarray) -> pd.DataFrame:
    days = pd.date_range("2021-01-04", periods=N, freq="D", tz="UTC")
    return pd.DataFrame(
        {
            "timestamp": np.repeat(days, len(SYMBOLS)),
            "symbol": np.tile(SYMBOLS, N),
            "open": opn.ravel(),
            "high": high.ravel(),
            "low": low.ravel(),
            "close": close.ravel(),
            "volume": 1.0,
        }
    )


def targets(seed: int = 5) -> np.ndarray:
    """A new weight for every asset on every bar but the last (long and short, gross <= 1)."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-0.33, 0.33, (N - 1, len(SYMBOLS)))


def run(bars: pd.DataFrame | None, fill_at: str | None, **extra: object):
    over = {
        "costs": {"taker_fee_bps": FEE * 1e4, "slippage_bps": SLIP * 1e4},
        "portfolio": {"cash": 50_000},
        "execution": {"fill_at": fill_at},
        **extra,
    }
    plan = {t: list(w) for t, w in enumerate(targets())}
    return run_backtest(load_config(None, over), strategy=Scripted(plan), data=bars)


def test_both_settings_agree_when_every_bar_opens_at_the_previous_close():
    c = closes()
    rng = np.random.default_rng(3)
    opn = np.vstack([c[:1], c[:-1]])
    high = np.maximum(opn, c) * (1 + rng.uniform(0, 0.01, c.shape))
    low = np.minimum(opn, c) * (1 - rng.uniform(0, 0.01, c.shape))
    data = frame(c, opn, high, low)
    at_open, at_close = run(data, "next_open"), run(data, "close")
    cols = ["symbol", "side", "quantity", "price", "fee"]
    assert len(at_open.trades) == len(at_close.trades) == (N - 1) * len(SYMBOLS)
    pd.testing.assert_frame_equal(at_open.trades[cols], at_close.trades[cols], check_exact=False, rtol=1e-12)
    for col in ("equity", "cash", "gross_exposure"):
        np.testing.assert_allclose(at_open.equity[col], at_close.equity[col], rtol=1e-12)
    np.testing.assert_allclose(at_open.positions.to_numpy(), at_close.positions.to_numpy(), rtol=1e-12)
    assert at_open.metrics["final_equity"] == pytest.approx(at_close.metrics["final_equity"], rel=1e-12)


def test_close_on_close_only_data_earns_the_weights_times_the_next_return_minus_costs():
    c = closes()
    w = targets()
    result = run(frame(c, c, c, c), "close")
    # independently: trade to w(t) at close t (slippage and fee on the traded notional), hold to t+1
    equity, cash, held = [50_000.0], 50_000.0, np.zeros(len(SYMBOLS))
    expected_returns = []
    for t in range(N - 1):
        e_t = cash + held @ c[t]
        want = w[t] * e_t / c[t]
        delta = want - held
        price = c[t] * (1 + SLIP * np.sign(delta))
        cost = np.abs(delta) @ (c[t] * SLIP) + FEE * np.abs(delta) @ price
        cash -= delta @ price + FEE * np.abs(delta) @ price
        held = want
        equity.append(cash + held @ c[t + 1])
        expected_returns.append(w[t] @ (c[t + 1] / c[t] - 1) - cost / e_t)
    got = result.equity["equity"].to_numpy()
    np.testing.assert_allclose(got, equity, rtol=1e-12)
    np.testing.assert_allclose(got[1:] / got[:-1] - 1, expected_returns, atol=1e-9, rtol=0)
    # the old timing (next open = next close) earns w(t) r(t+2): measurably different
    late = run(frame(c, c, c, c), "next_open")
    assert abs(late.metrics["final_equity"] - got[-1]) > 100


def test_close_only_files_trade_at_the_close_by_default_with_one_warning(tmp_path):
    c = closes()
    path = tmp_path / "closes.csv"
    frame(c, c, c, c)[["timestamp", "symbol", "close"]].to_csv(path, index=False)
    with structlog.testing.capture_logs() as logs:
        auto = run(None, None, data={"path": str(path)})
    warnings = [e["event"] for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1 and "close-only data" in warnings[0] and 'fill_at = "close"' in warnings[0]
    explicit = run(None, "close", data={"path": str(path)})
    np.testing.assert_array_equal(auto.equity["equity"], explicit.equity["equity"])
    with structlog.testing.capture_logs() as logs:
        run(None, "next_open", data={"path": str(path)})
    warnings = [e["event"] for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1 and "one bar late" in warnings[0]


def test_data_with_opens_keeps_the_next_open_by_default():
    c = closes()
    opn = c * 1.001
    data = frame(c, opn, np.maximum(opn, c), np.minimum(opn, c))
    result = run(data, None)
    first = result.trades.iloc[0]
    assert first["price"] == pytest.approx(opn[1][SYMBOLS.index(first["symbol"])] * (1 + SLIP))


def test_the_command_takes_fill_at_and_the_daemon_refuses_close(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = closes()
    opn = c * 1.001
    path = tmp_path / "bars.csv"
    frame(c, opn, np.maximum(opn, c), np.minimum(opn, c)).to_csv(path, index=False)
    runner = CliRunner()
    args = ["backtest", "--strategy", "buy_and_hold", "--data", str(path), "--slippage-bps", "0"]
    for fill_at, row in (("close", 0), ("next_open", 1)):
        out = tmp_path / fill_at
        done = runner.invoke(app, [*args, "--fill-at", fill_at, "--output", str(out)])
        assert done.exit_code == 0, done.output
        trades = pd.read_csv(out / "trades.csv")
        prices = (opn if fill_at == "next_open" else c)[row]
        np.testing.assert_allclose(trades["price"], prices)
    bad = runner.invoke(app, [*args, "--fill-at", "at_noon"])
    assert bad.exit_code == 2 and "at_noon" in bad.output

    (tmp_path / "c.toml").write_text('[execution]\nfill_at = "close"\n')
    paper = ["paper", "--symbols", "BTCUSDT", "--config", str(tmp_path / "c.toml")]
    paper += ["--state-dir", str(tmp_path / "state"), "--rest-url", "http://127.0.0.1:9"]
    refused = runner.invoke(app, paper)
    text = " ".join(refused.output.split())
    assert refused.exit_code == 2 and 'fill_at = "close" is for backtests' in text, text
