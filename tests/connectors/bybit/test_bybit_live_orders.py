"""What a multi-day live run meets on the order path, against the fake Bybit: unknown outcomes stay
unknown (and block the symbol) until reconciliation settles them, orderLinkIds per instance,
executions of orders the engine never placed, cancels raced by fills, spot fees without a fee coin,
market-order size limits, finished orders leaving memory, and a cancel that gives up out loud."""

from __future__ import annotations

import re

from structlog.testing import capture_logs

from connectors.bybit.execution import link_id_for
from engine.bus import EventBus
from engine.clock import LiveClock
from engine.events import ForeignExecution, Order, OrderStatus, OrderType, OrderUpdate, Side
from engine.orders import OrderManager, client_order_id
from engine.portfolio import Portfolio
from tests.connectors.bybit.conftest import order, running_venue
from tests.fake_bybit import FakeBybit


async def test_unacknowledged_create_is_unknown_then_proven_absent(fake: FakeBybit) -> None:
    """Four creates refused before acting (10016) and lookups that find nothing: not a rejection
    until a lookup after the last attempt's recv window proves Bybit never took it."""
    fake.faults.rest += [("/v5/order/create", "10016")] * 4
    async with running_venue(fake, private_stream=False, max_attempts=4) as h:
        h.venue.config = h.venue.config.model_copy(update={"recv_window": 100})
        h.venue.submit(order("unk-1"))
        await h.until(lambda: OrderStatus.UNKNOWN in h.statuses("unk-1"))
        assert h.statuses("unk-1") == [OrderStatus.UNKNOWN]
        await h.until(lambda: OrderStatus.REJECTED in h.statuses("unk-1"), timeout=6.0)
        assert h.statuses("unk-1") == [OrderStatus.UNKNOWN, OrderStatus.REJECTED]
        reason = next(u.reason for u in h.updates if u.status is OrderStatus.REJECTED)
        assert "Bybit has no order" in reason and "recv window" in reason
        assert fake.orders == {} and h.fills == []


async def test_duplicate_link_id_means_the_order_exists_and_its_fill_is_kept(fake: FakeBybit) -> None:
    """The create went through but its reply was lost, and Bybit's lookups lag: the resend's
    "duplicate orderLinkId" proves the order exists, so it stays UNKNOWN (never rejected) until a
    lookup shows it filled; the fill is published once and the order manager frees nothing early."""
    bus = EventBus("live")
    portfolio = Portfolio(("BTCUSDT", "ETHUSDT"), 1_000_000.0, bus)
    fake.faults.rest.append(("/v5/order/create", "lost"))
    fake.faults.hide_orders = True
    async with running_venue(fake, bus=bus, private_stream=False) as h:
        manager = OrderManager(bus, LiveClock(), portfolio, h.venue)
        portfolio.last_price[0] = 60_000.0
        assert manager.submit(order("dup-1", qty=0.012))
        await h.until(lambda: OrderStatus.UNKNOWN in h.statuses("dup-1"))
        assert manager.unknown == {"dup-1": 0}
        assert manager.pending[0] == 0.012  # still counted as on its way
        # a further order for the same symbol is held back while the first one's fate is open
        assert not manager.submit(order("dup-2", qty=0.005))
        assert manager.submit(order("eth-1", symbol="ETHUSDT", qty=0.01))  # other symbols trade on
        fake.faults.hide_orders = False
        await h.until(lambda: OrderStatus.FILLED in h.statuses("dup-1"), timeout=5.0)
        await h.settle()
        assert h.statuses("dup-1") == [OrderStatus.UNKNOWN, OrderStatus.FILLED]
        assert [(f.client_id, f.quantity) for f in h.fills if f.symbol == "BTCUSDT"] == [("dup-1", 0.012)]
        assert len([o for o in fake.orders.values() if o.symbol == "BTCUSDT"]) == 1
        assert manager.unknown == {} and manager.pending[0] == 0.0
        assert portfolio.qty[0] == 0.012
        assert manager.submit(order("dup-3", qty=0.005))  # unblocked


def test_link_ids_per_instance() -> None:
    ts = 1_700_000_000_000_000_000
    strat = Order(
        client_order_id("sma_crossover", "BTCUSDT", ts, instance="a1b2c3d4"), ts, 0, "BTCUSDT", Side.BUY, 1.0
    )
    risk = Order(
        client_order_id("risk", "BTCUSDT", ts, "sl1"), ts, 0, "BTCUSDT", Side.SELL, 1.0, OrderType.STOP, 1.0
    )
    for o in (strat, risk):
        mine = link_id_for(o, "a1b2c3d4")
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,36}", mine) and mine.startswith("a1b2c3d4-")
        assert mine == link_id_for(o, "a1b2c3d4")  # the same after a restart of the instance
        assert link_id_for(o, "e5f6a7b8") != mine  # another instance, same strategy and intent
    assert link_id_for(strat, "a1b2c3d4") != link_id_for(risk, "a1b2c3d4")


async def test_orders_carry_the_instance_link_id(fake: FakeBybit) -> None:
    async with running_venue(fake, instance_id="a1b2c3d4") as h:
        o = order("risk-BTCUSDT-1700000000000-flatten1", qty=0.01)
        h.venue.submit(o)
        await h.settle()
        (placed,) = fake.orders.values()
        assert placed.link_id == link_id_for(o, "a1b2c3d4") and len(placed.link_id) == 36
        assert [f.client_id for f in h.fills] == [o.client_id]


async def test_fill_of_an_order_the_engine_never_placed_is_reported_not_booked(fake: FakeBybit) -> None:
    foreign: list[ForeignExecution] = []
    async with running_venue(fake, instance_id="a1b2c3d4") as h:
        h.bus.subscribe(ForeignExecution, foreign.append)
        h.venue.submit(order("mine-1", qty=0.01))
        await h.settle()
        # a manual trade on the same account, with and without an orderLinkId
        fake._place(
            {
                "category": "linear",
                "symbol": "BTCUSDT",
                "side": "Sell",
                "orderType": "Market",
                "qty": "0.003",
                "orderLinkId": "manual-1",
            }
        )
        fake._place(
            {"category": "linear", "symbol": "ETHUSDT", "side": "Buy", "orderType": "Market", "qty": "0.05"}
        )
        await h.until(lambda: len(foreign) == 2)
        await h.settle()
        assert [f.client_id for f in h.fills] == ["mine-1"]
        assert sorted((f.symbol, f.side, f.quantity, f.order_link_id) for f in foreign) == [
            ("BTCUSDT", Side.SELL, 0.003, "manual-1"),
            ("ETHUSDT", Side.BUY, 0.05, ""),
        ]
        assert h.venue.foreign_executions == 2


async def test_cancel_acknowledged_then_filled_ends_filled(fake: FakeBybit) -> None:
    async with running_venue(fake) as h:
        last = fake.last_price("linear", "BTCUSDT")
        h.venue.submit(order("race-1", qty=0.01, type=OrderType.LIMIT, price=last * 0.9))
        await h.settle()
        fake.faults.rest.append(("/v5/order/cancel", "race"))
        h.venue.cancel("race-1")
        await h.settle()
        assert h.statuses("race-1") == [OrderStatus.ACCEPTED, OrderStatus.FILLED]
        assert [(f.client_id, f.quantity) for f in h.fills] == [("race-1", 0.01)]
        # and a cancel that wins is reported from the order stream, once
        h.venue.submit(order("cxl-1", qty=0.01, type=OrderType.LIMIT, price=last * 0.9))
        await h.settle()
        h.venue.cancel("cxl-1")
        await h.settle()
        assert h.statuses("cxl-1") == [OrderStatus.ACCEPTED, OrderStatus.CANCELLED]


async def test_spot_buy_fee_without_fee_currency_is_in_the_base_coin(fake: FakeBybit) -> None:
    fake.faults.no_fee_currency = True
    async with running_venue(fake, category="spot") as h:
        h.venue.submit(order("fee-b", qty=0.01))
        h.venue.submit(order("fee-s", qty=0.01, side=Side.SELL))
        await h.settle()
        by = {f.client_id: f for f in h.fills}
        assert "feeCurrency" not in fake.executions[0]
        # the fake charges 0.055% of the quantity (BTC) on a buy, of the notional (USDT) on a sell
        assert abs(by["fee-b"].fee - 0.01 * 0.00055 * by["fee-b"].price) < 1e-9
        assert abs(by["fee-s"].fee - 0.01 * by["fee-s"].price * 0.00055) < 1e-9
        assert abs(by["fee-b"].quantity - 0.01 * (1 - 0.00055)) < 1e-12  # the BTC that reached the wallet
        assert by["fee-s"].quantity == 0.01


async def test_market_orders_respect_max_market_qty(fake: FakeBybit) -> None:
    fake.instruments[("linear", "BTCUSDT")].max_mkt_qty = 0.05
    async with running_venue(fake) as h:
        assert h.venue.market_limits["BTCUSDT"] == 0.05
        h.venue.submit(order("big-1", qty=0.08))
        await h.settle()
        (placed,) = fake.orders.values()
        assert placed.qty == 0.05 and placed.status == "Filled"
        accepted = next(u for u in h.updates if u.status is OrderStatus.ACCEPTED)
        assert "clipped from 0.080 to Bybit's maximum 0.05" in accepted.reason
        assert h.statuses("big-1")[-1] is OrderStatus.FILLED and h.fills[0].quantity == 0.05


async def test_finished_orders_leave_memory_and_late_repeats_change_nothing(fake: FakeBybit) -> None:
    async with running_venue(fake) as h:
        for k in range(20):
            h.venue.submit(order(f"m-{k}", qty=0.001))
        await h.settle()
        assert len(h.fills) == 20 and h.venue.orders == {} and h.venue._by_link == {}
        fake.replay_executions()
        h.venue.submit(order("m-3", qty=0.001))  # a repeat of a finished decision: not sent again
        await h.settle()
        assert len(h.fills) == 20 and len(fake.orders) == 20 and h.venue.foreign_executions == 0


async def test_cancel_that_gives_up_says_so(fake: FakeBybit) -> None:
    async with running_venue(fake, max_attempts=2) as h:
        last = fake.last_price("linear", "BTCUSDT")
        h.venue.submit(order("gu-1", qty=0.01, type=OrderType.LIMIT, price=last * 0.9))
        await h.settle()
        fake.faults.rest += [("/v5/order/cancel", "10016")] * 2
        with capture_logs() as logs:
            h.venue.cancel("gu-1")
            await h.settle()
        assert h.venue.cancel_give_ups == 1
        assert any(e["event"].startswith("cancel given up") for e in logs)
        assert h.statuses("gu-1") == [OrderStatus.ACCEPTED]
        h.venue.cancel("gu-1")  # a later cancel tries again, and works
        await h.settle()
        assert h.statuses("gu-1") == [OrderStatus.ACCEPTED, OrderStatus.CANCELLED]


def test_unknown_update_blocks_only_its_symbol() -> None:
    bus = EventBus("backtest")
    portfolio = Portfolio(("A", "B"), 1000.0, bus)

    class Venue:
        def __init__(self) -> None:
            self.sent: list[str] = []

        def submit(self, o: Order) -> None:
            self.sent.append(o.client_id)

        def cancel(self, client_id: str) -> None: ...

        def open_orders(self) -> list[Order]:
            return []

    manager = OrderManager(bus, LiveClock(), portfolio, Venue())  # type: ignore[arg-type]
    a1 = Order("a1", 0, 0, "A", Side.BUY, 1.0)
    assert manager.submit(a1)
    manager.on_order_update(OrderUpdate(0, 0, "a1", "A", OrderStatus.UNKNOWN, "lost"))
    assert not manager.submit(Order("a2", 0, 0, "A", Side.BUY, 1.0))
    assert manager.submit(Order("b1", 0, 0, "B", Side.BUY, 1.0))
    manager.on_order_update(OrderUpdate(0, 0, "a1", "A", OrderStatus.REJECTED, "absent"))
    assert manager.pending[0] == 0.0 and manager.submit(Order("a3", 0, 0, "A", Side.BUY, 1.0))
