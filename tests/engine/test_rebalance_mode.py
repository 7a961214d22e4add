"""Which setting gives drifting and which gives constant weights, on a path where every bar opens at
the previous close (so a rebalance at the next open trades at the decision price)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantnet.backtest import run_backtest
from quantnet.config import load_config
from tests.conftest import Scripted

CLOSES = np.array([100.0, 104.0, 98.0, 103.0, 110.0, 107.0, 115.0, 112.0])


def data() -> pd.DataFrame:
    days = pd.date_range("2024-01-01", periods=len(CLOSES), freq="D", tz="UTC")
    opens = np.r_[CLOSES[0], CLOSES[:-1]]
    return pd.DataFrame(
        {
            "timestamp": days,
            "symbol": "A",
            "open": opens,
            "high": np.maximum(opens, CLOSES),
            "low": np.minimum(opens, CLOSES),
            "close": CLOSES,
            "volume": 1.0,
        }
    )


def equity(rebalance: str, **portfolio: float) -> tuple[np.ndarray, int]:
    cfg = load_config(
        None,
        {
            "portfolio": {"cash": 10_000, "rebalance": rebalance, **portfolio},
            "costs": {"taker_fee_bps": 0, "maker_fee_bps": 0, "slippage_bps": 0},
            "data": {"timestamps": "close"},
        },
    )
    result = run_backtest(cfg, strategy=Scripted({0: [0.5]}), data=data())  # one decision, then None
    return result.equity["equity"].to_numpy(), len(result.trades)


def test_on_change_holds_a_quantity_whose_weight_drifts():
    got, fills = equity("on_change")
    expected = 10_000 * (0.5 + 0.5 * CLOSES / CLOSES[0])  # bought at 100, never traded again
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert fills == 1


def test_every_bar_keeps_the_weight_constant():
    got, fills = equity("every_bar")
    r = CLOSES[1:] / CLOSES[:-1] - 1.0
    expected = 10_000 * np.r_[1.0, np.cumprod(1.0 + 0.5 * r)]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert fills == len(CLOSES) - 1  # the entry, then one rebalance per later bar but the last's


def test_every_bar_skips_trades_below_the_minimum_notional():
    _, fills = equity("every_bar", min_trade_notional=1e9)
    assert fills == 0


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match=r"portfolio\.rebalance"):
        load_config(None, {"portfolio": {"rebalance": "daily"}})


@pytest.mark.parametrize("rebalance", ["every_bar", "on_change"])
def test_orders_sized_all_at_once_equal_one_at_a_time(rebalance, monkeypatch):
    """Six assets, one listing late (its target waits for its first price): sizing every asset's
    order in one vector pass gives exactly the orders, fills and equity of sizing them in turn."""
    from engine.orders import OrderManager
    from tests.conftest import make_bars

    frame = make_bars(("A", "B", "C", "D", "E", "F"), 60, seed=12)
    frame = frame[~((frame["symbol"] == "F") & (frame["timestamp"] < "2020-01-20"))]
    rng = np.random.default_rng(3)
    plan = {k: list(rng.uniform(-0.15, 0.15, 6)) for k in range(0, 60, 3)}
    cfg = load_config(None, {"portfolio": {"rebalance": rebalance}, "costs": {"taker_fee_bps": 4}})

    def run():
        return run_backtest(cfg, strategy=Scripted(plan), data=frame.reset_index(drop=True))

    batched = run()
    monkeypatch.setattr(OrderManager, "vector_from", 10**9)
    single = run()
    assert len(batched.trades) > 60
    assert "F" in set(batched.trades["symbol"])
    pd.testing.assert_frame_equal(batched.trades, single.trades, check_exact=True)
    pd.testing.assert_frame_equal(batched.equity, single.equity, check_exact=True)
