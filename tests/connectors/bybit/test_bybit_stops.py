"""STOP orders on Bybit: the risk manager's resting reduce-only stops become conditional market
orders that trigger once, fill once and can have their trigger amended (trailing stops); a stop
already past its trigger goes out as a market order, as the paper broker fills it at once."""

from __future__ import annotations

import math

import pytest

from engine.events import Order, OrderStatus, OrderType, Side
from engine.orders import client_order_id
from tests.connectors.bybit.conftest import Harness, running_venue
from tests.fake_bybit import FakeBybit
from tests.fake_bybit.server import FakeOrder

TS = 1_700_000_000_000_000_000


def risk_stop(symbol: str, side: Side, qty: float, level: float, seq: int = 1) -> Order:
    """A stop exactly as ``engine.risk.RiskManager`` places one."""
    return Order(
        client_order_id("risk", symbol, TS, f"sl{seq}"),
        TS,
        TS,
        symbol,
        side,
        qty,
        OrderType.STOP,
        level,
        reduce_only=True,
        strategy="risk",
        tag="stop_loss",
    )


def at_venue(h: Harness, client_id: str) -> FakeOrder:
    (found,) = [o for o in h.fake.orders.values() if o.link_id == client_id]
    return found


def on_tick(price: float, tick: float, *, up: bool) -> float:
    ticks = round(price / tick, 9)  # 60010.2 / 0.1 is 600101.99999...: already on the tick
    return round((math.ceil(ticks) if up else math.floor(ticks)) * tick, 6)


@pytest.mark.parametrize("side", [Side.SELL, Side.BUY])
async def test_stop_rests_then_triggers_once_and_fills_once(h: Harness, side: Side) -> None:
    last = h.fake.last_price("linear", "BTCUSDT")
    sell = side is Side.SELL
    away = -1 if sell else 1  # a sell stop sits below the market, a buy stop above
    stop = risk_stop("BTCUSDT", side, 0.01, last * (1 + away * 0.02) + 0.03)
    h.venue.submit(stop)
    await h.settle()
    placed = at_venue(h, stop.client_id)
    assert placed.status == "Untriggered" and placed.order_type == "Market" and placed.reduce_only
    assert placed.trigger_direction == (2 if sell else 1)
    assert placed.trigger_price == on_tick(stop.price, 0.1, up=sell)  # a protective stop rounds inwards
    assert h.statuses(stop.client_id) == [OrderStatus.ACCEPTED] and h.fills == []

    h.fake.set_price("linear", "BTCUSDT", round(last * (1 + away * 0.01), 1))  # not there yet
    await h.settle()
    assert placed.status == "Untriggered" and h.fills == []
    through = round(last * (1 + away * 0.03), 1)
    h.fake.set_price("linear", "BTCUSDT", through)
    await h.settle()
    for price in (last * (1 + away * 0.04), last, last * (1 + away * 0.05)):  # later moves: nothing
        h.fake.set_price("linear", "BTCUSDT", round(price, 1))
    await h.settle()
    assert [(f.client_id, f.side, f.quantity, f.price, f.liquidity, f.tag) for f in h.fills] == [
        (stop.client_id, side, 0.01, through, "taker", "stop_loss")
    ]
    assert h.statuses(stop.client_id) == [OrderStatus.ACCEPTED, OrderStatus.FILLED]
    assert list(h.venue.open_orders()) == []


async def test_trailing_stop_amends_its_trigger(h: Harness) -> None:
    last = h.fake.last_price("linear", "BTCUSDT")
    stop = risk_stop("BTCUSDT", Side.SELL, 0.02, last * 0.90)
    h.venue.submit(stop)
    await h.settle()
    placed = at_venue(h, stop.client_id)
    h.venue.amend(stop.client_id, price=last * 0.95 + 0.03)
    await h.settle()
    moved = on_tick(last * 0.95 + 0.03, 0.1, up=True)
    assert placed.trigger_price == moved and placed.status == "Untriggered"
    assert [o.price for o in h.venue.open_orders()] == [moved]
    h.venue.amend(stop.client_id, price=last * 1.01)  # above the market: Bybit refuses (110093)
    await h.settle()
    amended = [u for u in h.updates if u.client_id == stop.client_id and u.reason == "amended"]
    assert len(amended) == 1 and amended[0].status is OrderStatus.ACCEPTED  # the successful move
    refused = [u for u in h.updates if u.client_id == stop.client_id and u.reason.startswith("amend refused")]
    assert len(refused) == 1 and "110093" in refused[0].reason and "amend refused" in refused[0].reason
    assert refused[0].status is OrderStatus.ACCEPTED and placed.trigger_price == moved  # still protecting
    h.fake.set_price("linear", "BTCUSDT", round(last * 0.96, 1))
    await h.settle()
    assert h.fills == []
    h.fake.set_price("linear", "BTCUSDT", round(last * 0.945, 1))  # below the amended trigger only
    await h.settle()
    assert [(f.quantity, f.price) for f in h.fills] == [(0.02, round(last * 0.945, 1))]
    assert h.statuses(stop.client_id)[-1] is OrderStatus.FILLED


async def test_cancelled_stop_never_triggers(h: Harness) -> None:
    last = h.fake.last_price("linear", "BTCUSDT")
    stop = risk_stop("BTCUSDT", Side.SELL, 0.01, last * 0.97)
    h.venue.submit(stop)
    await h.settle()
    h.venue.cancel(stop.client_id)
    await h.settle()
    assert at_venue(h, stop.client_id).status == "Deactivated"
    assert h.statuses(stop.client_id) == [OrderStatus.ACCEPTED, OrderStatus.CANCELLED]
    h.fake.set_price("linear", "BTCUSDT", round(last * 0.9, 1))
    await h.settle()
    assert h.fills == []


async def test_stop_already_past_its_trigger_goes_out_as_a_market_order(h: Harness) -> None:
    last = h.fake.last_price("linear", "BTCUSDT")
    stop = risk_stop("BTCUSDT", Side.SELL, 0.01, last * 1.01)  # the price fell through it already
    h.venue.submit(stop)
    await h.settle()
    placed = at_venue(h, stop.client_id)
    assert placed.order_type == "Market" and placed.trigger_price == 0.0 and placed.reduce_only
    assert [(f.client_id, f.quantity) for f in h.fills] == [(stop.client_id, 0.01)]
    assert h.statuses(stop.client_id) == [OrderStatus.ACCEPTED, OrderStatus.FILLED]
    accepted = next(u for u in h.updates if u.client_id == stop.client_id)
    assert "already passed" in accepted.reason and h.venue.stops_passed == 1


async def test_spot_stop_is_a_stop_order_filter_order(fake: FakeBybit) -> None:
    async with running_venue(fake, category="spot") as h:
        last = fake.last_price("spot", "ETHUSDT")
        keep = risk_stop("ETHUSDT", Side.SELL, 0.5, last * 0.97, seq=1)
        drop = risk_stop("ETHUSDT", Side.SELL, 0.5, last * 0.98, seq=2)
        late = risk_stop("ETHUSDT", Side.SELL, 0.5, last * 1.02, seq=3)  # already passed
        for stop in (keep, drop, late):
            h.venue.submit(stop)
        await h.settle()
        for stop in (keep, drop):
            placed = at_venue(h, stop.client_id)
            assert placed.order_filter == "StopOrder" and placed.trigger_direction == 2
            assert not placed.reduce_only  # spot has no reduce-only
        assert at_venue(h, late.client_id).trigger_price == 0.0
        h.venue.cancel(drop.client_id)  # spot finds a stop order only with orderFilter=StopOrder
        await h.settle()
        assert h.statuses(drop.client_id) == [OrderStatus.ACCEPTED, OrderStatus.CANCELLED]
        fake.set_price("spot", "ETHUSDT", round(last * 0.96, 2))
        await h.settle()
        assert sorted((f.client_id, f.quantity) for f in h.fills) == [
            (keep.client_id, 0.5),
            (late.client_id, 0.5),
        ]
        assert h.statuses(keep.client_id) == [OrderStatus.ACCEPTED, OrderStatus.FILLED]
        assert h.venue.stops_passed == 1
