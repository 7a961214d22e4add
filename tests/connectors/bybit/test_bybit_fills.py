"""No fill is lost or doubled: executions missed while the private stream is down come back from
the trade history (``/v5/execution/list``) once each and in execution order, orders filled in
several executions give one Fill each, and a status never runs ahead of the fills it reports."""

from __future__ import annotations

import asyncio

import pytest

from engine.bus import EventBus
from engine.clock import LiveClock
from engine.events import Fill, OrderStatus, OrderType, Side
from engine.orders import OrderManager
from engine.portfolio import Portfolio
from tests.connectors.bybit.conftest import Harness, order, running_venue
from tests.fake_bybit import FakeBybit


async def outage(h: Harness) -> None:
    """Drop the private stream and keep it down until ``fake.private_down`` is cleared."""
    h.fake.private_down = True
    await h.fake.drop_private()
    assert h.venue.stream is not None
    await h.until(lambda: not h.venue.stream.connected)  # type: ignore[union-attr]


def fills_before_status(h: Harness, client_id: str, status: OrderStatus) -> int:
    """How many fills of ``client_id`` the bus had dispatched when ``status`` came."""
    count = 0
    for event in h.events:
        if event.client_id != client_id:
            continue
        if isinstance(event, Fill):
            count += 1
        elif event.status is status:
            return count
    raise AssertionError(f"{client_id} never reached {status}")


async def test_fills_missed_during_an_outage_are_caught_up_once_in_order(fake: FakeBybit) -> None:
    fake.faults.fill_parts = 3
    fake.execution_page_cap = 2  # seven executions: four pages
    async with running_venue(fake, outage_poll=60.0) as h:
        btc, eth = fake.last_price("linear", "BTCUSDT"), fake.last_price("linear", "ETHUSDT")
        h.venue.submit(order("rest-1", qty=0.03, type=OrderType.LIMIT, price=btc * 0.99))
        h.venue.submit(
            order("rest-2", symbol="ETHUSDT", qty=0.3, side=Side.SELL, type=OrderType.LIMIT, price=eth * 1.01)
        )
        fake.faults.fill_parts = 1
        h.venue.submit(order("mkt-1", qty=0.01))  # a live fill: where the catch-up starts from
        await h.settle()
        assert [f.client_id for f in h.fills] == ["mkt-1"]
        seen_ms = int(fake.executions[0]["execTime"])

        await outage(h)
        fake.faults.fill_parts = 3
        fake.set_price("linear", "BTCUSDT", round(btc * 0.98, 1))  # rest-1: three executions, unseen
        fake.set_price("linear", "ETHUSDT", round(eth * 1.02, 2))  # rest-2 likewise
        await asyncio.sleep(0.1)
        assert len(h.fills) == 1 and len(fake.executions) == 7
        # the first read fails past the client's retries: the catch-up keeps its start and retries
        fake.faults.rest += [("/v5/execution/list", "500")] * (h.venue.config.max_retries + 1)
        fake.private_down = False
        await h.until(lambda: len(h.fills) == 7)
        await h.settle()

        assert [f.exec_id for f in h.fills] == [e["execId"] for e in fake.executions]
        assert [f.quantity for f in h.fills if f.client_id == "rest-1"] == [0.01, 0.01, 0.01]
        assert [f.quantity for f in h.fills if f.client_id == "rest-2"] == [0.1, 0.1, 0.1]
        assert all(f.liquidity == "maker" and f.side is Side.SELL for f in h.fills if f.client_id == "rest-2")
        for cid in ("rest-1", "rest-2"):
            assert h.statuses(cid) == [OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED, OrderStatus.FILLED]
            assert fills_before_status(h, cid, OrderStatus.FILLED) == 3
        assert h.venue.caught_up == 6 and h.venue.catchup_failures == 1
        queries = [q for q in fake.execution_queries if q.get("symbol") == "BTCUSDT"]
        assert all(int(q["startTime"]) <= seen_ms - h.venue.catchup_margin_ms for q in queries)
        assert any("cursor" in q for q in fake.execution_queries)  # paged with the cursor

        fake.replay_executions()  # the stream delivers all of them again, late: nothing doubles
        await h.settle()
        assert len(h.fills) == 7 and h.venue.duplicate_executions >= 7


async def test_live_fills_during_a_catch_up_are_merged_in_execution_order(fake: FakeBybit) -> None:
    async with running_venue(fake, outage_poll=60.0, fill_grace=60.0) as h:
        btc, eth = fake.last_price("linear", "BTCUSDT"), fake.last_price("linear", "ETHUSDT")
        h.venue.submit(order("old-1", qty=0.01, type=OrderType.LIMIT, price=btc * 0.99))
        h.venue.submit(order("new-1", symbol="ETHUSDT", qty=0.1, type=OrderType.LIMIT, price=eth * 0.99))
        await h.settle()
        await outage(h)
        fake.set_price("linear", "BTCUSDT", round(btc * 0.98, 1))  # missed by the stream
        fake.faults.rest.append(("/v5/execution/list", "slow:0.3"))
        fake.private_down = False
        await h.until(lambda: len(fake.execution_queries) >= 1)  # the catch-up waits for its reply
        fake.set_price("linear", "ETHUSDT", round(eth * 0.98, 2))  # later, and pushed live
        await h.until(lambda: len(h.fills) == 2)
        await h.settle()
        assert [f.client_id for f in h.fills] == ["old-1", "new-1"]
        assert [f.exec_id for f in h.fills] == [e["execId"] for e in fake.executions]


async def test_executions_are_polled_while_the_stream_stays_down(fake: FakeBybit) -> None:
    async with running_venue(fake, outage_poll=0.1, fill_grace=60.0) as h:
        await outage(h)
        h.venue.submit(order("blind-1", qty=0.02))
        await h.until(lambda: h.statuses("blind-1")[-1:] == [OrderStatus.FILLED])
        assert h.venue.stream is not None and not h.venue.stream.connected
        assert [(f.client_id, f.quantity) for f in h.fills] == [("blind-1", 0.02)]
        assert fills_before_status(h, "blind-1", OrderStatus.FILLED) == 1
        fake.private_down = False
        await h.until(lambda: h.venue.stream.connected)  # type: ignore[union-attr]
        fake.replay_executions()
        await h.settle()
        assert len(h.fills) == 1


async def test_reconciled_order_brings_its_missed_fill_before_its_status(fake: FakeBybit) -> None:
    """Placed through a lost reply while the stream is down: reconciliation finds it filled, and
    the catch-up it starts publishes the fill (fill first, then FILLED)."""
    async with running_venue(fake, outage_poll=60.0, fill_grace=60.0) as h:
        await outage(h)
        fake.faults.rest.append(("/v5/order/create", "lost"))
        h.venue.submit(order("amb-1", qty=0.015))
        await h.until(lambda: OrderStatus.FILLED in h.statuses("amb-1"))
        assert [(f.client_id, f.quantity) for f in h.fills] == [("amb-1", 0.015)]
        assert fills_before_status(h, "amb-1", OrderStatus.FILLED) == 1
        assert h.venue.reconciliations >= 1 and h.venue.resends == 0
        fake.private_down = False
        await h.until(lambda: h.venue.stream.connected)  # type: ignore[union-attr]
        fake.replay_executions()
        await h.settle()
        assert len(h.fills) == 1 and len(fake.orders) == 1


@pytest.mark.parametrize("order_first", [False, True], ids=["execution-first", "order-update-first"])
async def test_partial_fills_give_one_fill_each_and_pending_ends_at_zero(
    fake: FakeBybit, order_first: bool
) -> None:
    fake.faults.fill_parts = 4
    fake.faults.order_before_execution = order_first
    bus = EventBus("live")
    symbols = ("BTCUSDT", "ETHUSDT")
    portfolio = Portfolio(symbols, 1_000_000.0, bus)
    async with running_venue(fake, bus=bus, fill_grace=60.0) as h:
        manager = OrderManager(bus, LiveClock(), portfolio, h.venue)
        manager.submit(order("part-1", qty=0.0123))  # 0.012 after rounding: 0.003 four times
        manager.submit(order("part-2", symbol="ETHUSDT", qty=0.5, side=Side.SELL))  # 0.13, 0.13, 0.12, 0.12
        await h.until(lambda: len(h.statuses("part-1")) == 3 and len(h.statuses("part-2")) == 3)
        await h.settle()
        assert [f.quantity for f in h.fills if f.client_id == "part-1"] == [0.003] * 4
        assert [f.quantity for f in h.fills if f.client_id == "part-2"] == [0.13, 0.13, 0.12, 0.12]
        for cid in ("part-1", "part-2"):
            assert h.statuses(cid) == [OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED, OrderStatus.FILLED]
            assert fills_before_status(h, cid, OrderStatus.PARTIALLY_FILLED) >= 1
            assert fills_before_status(h, cid, OrderStatus.FILLED) == 4
        assert manager.pending.tolist() == [0.0, 0.0]
        assert portfolio.qty.tolist() == pytest.approx([0.012, -0.5])
        assert len({f.exec_id for f in h.fills}) == 8 == len(h.fills)


async def test_status_waits_for_fills_the_stream_never_sends(fake: FakeBybit) -> None:
    """An order update reports an execution whose message was lost: after ``fill_grace`` the
    adapter reads that order's executions and publishes the fill, then the status."""
    async with running_venue(fake, fill_grace=0.1) as h:
        h.venue.submit(order("lost-exec", qty=0.01))
        await h.settle()
        assert len(h.fills) == 1
        # the same shape again for a second order, but the execution message is swallowed
        original = fake._push

        def drop_executions(topic: str, data: list, repeat: int = 1) -> None:  # type: ignore[type-arg]
            if topic != "execution":
                original(topic, data, repeat)

        fake._push = drop_executions  # type: ignore[method-assign]
        h.venue.submit(order("lost-exec-2", qty=0.02))
        await h.until(lambda: OrderStatus.FILLED in h.statuses("lost-exec-2"))
        fake._push = original  # type: ignore[method-assign]
        assert [f.quantity for f in h.fills if f.client_id == "lost-exec-2"] == [0.02]
        assert fills_before_status(h, "lost-exec-2", OrderStatus.FILLED) == 1
