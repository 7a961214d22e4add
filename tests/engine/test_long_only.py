"""Long-only markets (spot): a negative target is held as flat, logged once per symbol, and the
position is sold down to nothing, never below."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from engine import orders as orders_module
from engine.bus import EventBus
from engine.clock import ReplayClock
from engine.events import Fill, Order, Side, Signal
from engine.orders import OrderManager
from engine.portfolio import Portfolio


class Venue:
    name = "stub"

    def __init__(self) -> None:
        self.sent: list[Order] = []

    def submit(self, order: Order) -> None:
        self.sent.append(order)

    def cancel(self, client_id: str) -> None:
        pass

    def amend(self, client_id: str, **_: float) -> None:
        pass

    def open_orders(self) -> list[Order]:
        return []


def book(long_only: bool) -> tuple[OrderManager, Portfolio, Venue]:
    bus = EventBus("backtest")
    pf = Portfolio(("A", "B"), 10_000.0, bus)
    pf.last_price[:] = (100.0, 50.0)
    venue = Venue()
    return OrderManager(bus, ReplayClock(), pf, venue, long_only=long_only), pf, venue


def signal(ts: int, *targets: float) -> Signal:
    return Signal(ts, ts, "s", np.array(targets))


def fill(om: OrderManager, pf: Portfolio, order: Order) -> None:
    ts = order.ts_event
    f = Fill(ts, ts, order.client_id, order.symbol, order.side, order.quantity, 100.0, 0.0)
    pf.on_fill(f)
    om.on_fill(f)


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, dict]]:
    out: list[tuple[str, str, dict]] = []

    class Recorder:
        def __getattr__(self, level: str) -> Callable[..., None]:
            return lambda event, **kw: out.append((level, event, kw))

    monkeypatch.setattr(orders_module, "log", Recorder())
    return out


def test_negative_targets_are_flat_and_logged_once_per_symbol(logged):
    om, pf, venue = book(long_only=True)
    om.on_signal(signal(1_000_000, -0.5, 0.2))  # A short: nothing; B long 0.2 of 10,000 at 50
    assert [(o.symbol, o.side, o.quantity) for o in venue.sent] == [("B", Side.BUY, 40.0)]
    om.on_signal(signal(2_000_000, 0.5, np.nan))  # A long: 50 at 100
    (buy,) = venue.sent[1:]
    assert (buy.symbol, buy.side, buy.quantity) == ("A", Side.BUY, 50.0)
    fill(om, pf, buy)
    om.on_signal(signal(3_000_000, -0.5, np.nan))  # short again: sold to flat, not to -50
    (sell,) = venue.sent[2:]
    assert (sell.symbol, sell.side, sell.quantity) == ("A", Side.SELL, 50.0)
    fill(om, pf, sell)
    assert pf.qty[0] == 0.0
    om.on_signal(signal(4_000_000, -0.7, -0.1))  # still flat A; B's first short: sold to flat
    assert [(o.symbol, o.side, o.quantity) for o in venue.sent[3:]] == [("B", Side.SELL, 40.0)]
    assert om.targets.tolist() == [0.0, 0.0]
    lines = [(kw["symbol"], kw["target"]) for level, event, kw in logged if "long-only" in event]
    assert lines == [("A", -0.5), ("B", -0.1)]  # one line per symbol, not one per signal
    assert all(level == "warning" for level, event, _ in logged if "long-only" in event)


def test_without_long_only_a_negative_target_sells_short(logged):
    om, _, venue = book(long_only=False)
    om.on_signal(signal(1_000_000, -0.5, np.nan))
    assert [(o.symbol, o.side, o.quantity) for o in venue.sent] == [("A", Side.SELL, 50.0)]
    assert logged == []
