"""The paper broker honours reduce-only as Bybit does: never increases or flips a position."""

from __future__ import annotations

import numpy as np

from connectors.paper import PaperBroker
from engine.bus import EventBus
from engine.clock import ReplayClock
from engine.config import CostConfig
from engine.events import BarSet, Fill, Order, OrderStatus, OrderUpdate, Side


def setup() -> tuple[EventBus, PaperBroker, list[Fill], list[OrderUpdate]]:
    bus = EventBus()
    broker = PaperBroker(bus, ReplayClock(0), ("A",), CostConfig())
    fills: list[Fill] = []
    updates: list[OrderUpdate] = []
    bus.subscribe(Fill, fills.append)
    bus.subscribe(OrderUpdate, updates.append)
    return bus, broker, fills, updates


def bar(bus: EventBus, ts: int, price: float = 100.0) -> None:
    px = np.array([price])
    bus.publish(BarSet(ts, ts, ("A",), px, px, px, px, np.array([1.0])))


def order(cid: str, side: Side, qty: float, ts: int, reduce_only: bool = True) -> Order:
    return Order(cid, ts, ts, "A", side, qty, reduce_only=reduce_only)


def test_reduce_only_is_capped_at_the_position_and_refused_when_flat() -> None:
    bus, broker, fills, updates = setup()
    broker.submit(order("open", Side.BUY, 10.0, 0, reduce_only=False))
    bar(bus, 1)
    broker.submit(order("too-big", Side.SELL, 15.0, 1))
    broker.submit(order("then-flat", Side.SELL, 5.0, 1))
    bar(bus, 2)
    assert [(f.client_id, f.quantity) for f in fills] == [("open", 10.0), ("too-big", 10.0)]
    last = {u.client_id: u for u in updates}
    assert last["too-big"].status is OrderStatus.CANCELLED and "reduce-only" in last["too-big"].reason
    assert last["then-flat"].status is OrderStatus.CANCELLED
    assert last["then-flat"].reason == "reduce-only: no position to reduce"
    assert broker.position[0] == 0.0


def test_reduce_only_never_adds_to_a_position() -> None:
    bus, broker, fills, updates = setup()
    broker.submit(order("short", Side.SELL, 4.0, 0, reduce_only=False))
    bar(bus, 1)
    broker.submit(order("adds", Side.SELL, 1.0, 1))
    broker.submit(order("covers", Side.BUY, 4.0, 1))
    bar(bus, 2)
    assert [(f.client_id, f.quantity) for f in fills] == [("short", 4.0), ("covers", 4.0)]
    assert [u.status for u in updates if u.client_id == "adds"][-1] is OrderStatus.CANCELLED
    assert [u.status for u in updates if u.client_id == "covers"][-1] is OrderStatus.FILLED
