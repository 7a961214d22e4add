"""The drawdown flatten against a venue that answers later (as Bybit does): orders being cancelled
must not shrink the flatten, and what fills before a cancel resolves is flattened too."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from engine.bus import EventBus
from engine.clock import ReplayClock
from engine.config import RiskConfig
from engine.events import BarSet, Fill, Order, OrderStatus, OrderUpdate, Side, TradingState
from engine.orders import OrderManager
from engine.portfolio import Portfolio
from engine.risk import RiskManager


class SlowVenue:
    """Accepts everything and decides nothing: the test plays the venue's answers."""

    name = "slow"

    def __init__(self) -> None:
        self.submitted: list[Order] = []
        self.cancels: list[str] = []
        self.working: dict[str, Order] = {}

    def submit(self, order: Order) -> None:
        self.submitted.append(order)
        self.working[order.client_id] = order

    def cancel(self, client_id: str) -> None:
        self.cancels.append(client_id)

    def amend(self, client_id: str, *, quantity: float | None = None, price: float | None = None) -> None:
        pass

    def open_orders(self) -> Iterable[Order]:
        return list(self.working.values())


class World:
    def __init__(self) -> None:
        self.bus = EventBus()
        self.clock = ReplayClock(0)
        self.pf = Portfolio(("A",), 10_000.0, self.bus)
        self.venue = SlowVenue()
        self.orders = OrderManager(self.bus, self.clock, self.pf, self.venue)
        self.risk = RiskManager(self.orders, RiskConfig(max_drawdown=0.1))
        self.ts = 0

    def bar(self, close: float) -> None:
        self.ts += 60_000_000_000
        px = np.array([close])
        self.bus.publish(BarSet(self.ts, self.ts, ("A",), px, px, px, px, np.array([1.0])))

    def fill(self, client_id: str, side: Side, qty: float, price: float) -> None:
        self.bus.publish(Fill(self.ts, self.ts, client_id, "A", side, qty, price, 0.0, exec_id=f"x{self.ts}"))

    def done(self, client_id: str, status: OrderStatus) -> None:
        self.venue.working.pop(client_id, None)
        self.bus.publish(OrderUpdate(self.ts, self.ts, client_id, "A", status))

    def order(self, client_id: str, side: Side, qty: float) -> None:
        assert self.orders.submit(Order(client_id, self.ts, self.ts, "A", side, qty, strategy="s"))

    def flattens(self) -> list[Order]:
        return [o for o in self.venue.submitted if o.tag == "flatten"]


def long_then_halt(pending: Side, qty: float) -> World:
    w = World()
    w.bar(100.0)
    w.order("s-buy", Side.BUY, 50.0)
    w.fill("s-buy", Side.BUY, 50.0, 100.0)
    w.done("s-buy", OrderStatus.FILLED)
    w.order("s-more", pending, qty)  # in flight when the drawdown strikes
    w.bar(70.0)
    assert w.risk.state is TradingState.HALTED and w.venue.cancels == ["s-more"]
    return w


def test_flatten_is_not_cut_by_an_order_being_cancelled() -> None:
    w = long_then_halt(Side.SELL, 30.0)
    (flatten,) = w.flattens()
    assert flatten.side is Side.SELL and flatten.quantity == 50.0 and flatten.reduce_only
    w.done("s-more", OrderStatus.CANCELLED)
    assert len(w.flattens()) == 1  # nothing left over to top up
    w.fill(flatten.client_id, Side.SELL, 50.0, 70.0)
    w.done(flatten.client_id, OrderStatus.FILLED)
    assert w.pf.qty[0] == 0.0


def test_what_fills_before_its_cancel_resolves_is_flattened_too() -> None:
    w = long_then_halt(Side.BUY, 20.0)
    w.fill("s-more", Side.BUY, 20.0, 70.0)  # the cancel came too late
    w.done("s-more", OrderStatus.FILLED)
    first, top_up = w.flattens()
    assert first.quantity == 50.0 and top_up.quantity == 20.0 and top_up.side is Side.SELL
    for o in (first, top_up):
        w.fill(o.client_id, Side.SELL, o.quantity, 70.0)
        w.done(o.client_id, OrderStatus.FILLED)
    assert w.pf.qty[0] == 0.0 and len(w.flattens()) == 2


def test_a_partly_filled_sell_before_its_cancel_does_not_grow_the_flatten() -> None:
    w = long_then_halt(Side.SELL, 30.0)
    w.fill("s-more", Side.SELL, 10.0, 70.0)
    w.done("s-more", OrderStatus.CANCELLED)
    assert len(w.flattens()) == 1  # 40 left, 50 on its way: reduce-only caps it at the venue


def test_a_flatten_refused_for_exceeding_the_position_is_resent_at_its_size() -> None:
    """Spot has no reduce-only: a sell beyond the balance is refused, not capped."""
    w = long_then_halt(Side.SELL, 30.0)
    w.fill("s-more", Side.SELL, 10.0, 70.0)
    w.done("s-more", OrderStatus.CANCELLED)
    (first,) = w.flattens()
    w.done(first.client_id, OrderStatus.REJECTED)
    second = w.flattens()[-1]
    assert second is not first and second.quantity == 40.0
    w.done(second.client_id, OrderStatus.REJECTED)  # refused at the right size: not again
    assert len(w.flattens()) == 2 and w.risk.counts["flatten_rejected"] == 2
