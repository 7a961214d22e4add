"""The execution adapter against the fake Bybit: idempotent placement through ambiguous failures,
fills deduplicated by execId, rounding and refusals, amend/cancel, auth and key hygiene."""

from __future__ import annotations

import asyncio

import pytest

from connectors.bybit.errors import AuthError
from connectors.bybit.execution import BybitExecution, format_step, link_id_for, order_link_id
from connectors.bybit.signing import Credentials
from engine.bus import EventBus
from engine.events import Bar, Fill, OrderStatus, OrderType, Side
from engine.ports import ExecutionVenue
from tests.connectors.bybit.conftest import KEY, SECRET, Harness, fast_config, order, running_venue
from tests.fake_bybit import FakeBybit


async def test_adapter_is_an_execution_venue(h: Harness) -> None:
    assert isinstance(h.venue, ExecutionVenue)


@pytest.mark.parametrize("fault", ["slow:1.0", "lost", "10006", "10016", "500"])
async def test_order_through_an_ambiguous_failure_is_reconciled_not_duplicated(
    h: Harness, fault: str
) -> None:
    h.fake.faults.rest.append(("/v5/order/create", fault))
    h.venue.submit(order())
    await h.settle()
    placed = [o for o in h.fake.orders.values() if o.link_id == "sma-BTCUSDT-1700000000000"]
    assert len(placed) == 1 and placed[0].status == "Filled"
    assert placed[0].qty == 0.012  # rounded down to the 0.001 step
    assert h.statuses(order().client_id)[-1] is OrderStatus.FILLED
    assert h.statuses(order().client_id).count(OrderStatus.FILLED) == 1
    assert [f.quantity for f in h.fills] == [0.012]
    assert h.venue.reconciliations >= 1
    if fault in ("10006", "10016", "500"):  # refused before acting: not found, then resent once
        assert h.venue.resends == 1


async def test_repeated_execution_message_gives_one_fill(h: Harness) -> None:
    h.fake.faults.duplicate_executions = True
    h.venue.submit(order(client_id="dup-ETHUSDT-1", symbol="ETHUSDT", qty=0.5, side=Side.SELL))
    await h.settle()
    h.venue.on_private_message({"topic": "execution", "data": list(h.fake.executions)})  # and once more
    await h.settle()
    assert len(h.fills) == 1 and h.venue.duplicate_executions == 2
    fill = h.fills[0]
    assert (fill.client_id, fill.symbol, fill.side, fill.quantity) == (
        "dup-ETHUSDT-1",
        "ETHUSDT",
        Side.SELL,
        0.5,
    )
    assert fill.liquidity == "taker" and fill.fee > 0 and fill.exec_id == h.fake.executions[0]["execId"]


async def test_limit_order_rests_amends_fills_as_maker_and_cancel(h: Harness) -> None:
    last = h.fake.last_price("linear", "BTCUSDT")
    h.venue.submit(order("lim-1", qty=0.01, type=OrderType.LIMIT, price=last * 0.9 + 0.04))
    h.venue.submit(order("lim-2", qty=0.01, type=OrderType.LIMIT, price=last * 0.8))
    await h.settle()
    assert h.statuses("lim-1") == [OrderStatus.ACCEPTED] and h.statuses("lim-2") == [OrderStatus.ACCEPTED]
    assert {o.client_id for o in h.venue.open_orders()} == {"lim-1", "lim-2"}
    resting = next(o for o in h.fake.orders.values() if o.link_id == "lim-1")
    assert round(resting.price / 0.1, 6) == round(resting.price / 0.1)  # on the tick grid
    h.venue.amend("lim-1", quantity=0.02, price=last * 0.95)
    await h.settle()
    assert resting.qty == 0.02 and abs(resting.price - last * 0.95) < 0.1
    h.fake.set_price("linear", "BTCUSDT", last * 0.94)
    h.venue.cancel("lim-2")
    await h.settle()
    assert h.statuses("lim-1")[-1] is OrderStatus.FILLED and h.fills[0].liquidity == "maker"
    assert h.fills[0].quantity == 0.02
    assert h.statuses("lim-2")[-1] is OrderStatus.CANCELLED
    assert list(h.venue.open_orders()) == []


async def test_refusals_carry_clear_reasons(h: Harness) -> None:
    h.bus.post(Bar(0, 0, "SOLUSDT", "1", 15.0, 15.0, 15.0, 15.0, 1.0))  # SOL at 15 (the fake says 150)
    await asyncio.sleep(0.01)
    h.venue.submit(order("u-1", symbol="NOPEUSDT"))
    h.venue.submit(order("m-1", qty=0.0004))  # rounds to 0 at a 0.001 step
    h.venue.submit(order("m-2", symbol="ETHUSDT", qty=0.0012))  # below ETH's 0.01 minimum
    h.venue.submit(order("n-1", symbol="ETHUSDT", qty=0.01, type=OrderType.LIMIT, price=100.0))  # 1 USDT
    h.venue.submit(order("m-3", symbol="ETHUSDT", qty=0.01))  # 30 USDT > 5: fine
    h.venue.submit(order("n-2", symbol="SOLUSDT", qty=0.1))  # market: 15 USDT at the last bar's close
    h.venue.submit(order("s-1", type=OrderType.STOP))  # no trigger price
    h.fake.balance = 100.0
    h.venue.submit(order("b-1", qty=1.0))  # 60k USDT of BTC on a 100 USDT account
    h.venue.submit(order("m-3", symbol="ETHUSDT", qty=0.01))  # same client id again
    await h.settle()
    reasons = {u.client_id: u.reason for u in h.updates if u.status is OrderStatus.REJECTED}
    assert "unknown linear symbol 'NOPEUSDT'" in reasons["u-1"]
    assert "quantity 0.0004 is below the minimum 0.001 (rounds down to 0" in reasons["m-1"]
    assert "quantity 0.0012 is below the minimum 0.01" in reasons["m-2"]
    assert "notional 1 below minimum 5" in reasons["n-1"]
    assert "SOLUSDT: notional 1.5 below minimum 5" in reasons["n-2"]
    assert "stop order without a valid trigger price (nan)" in reasons["s-1"]
    assert "110007" in reasons["b-1"] and "ab not enough" in reasons["b-1"]
    assert h.statuses("m-3") == [OrderStatus.ACCEPTED, OrderStatus.FILLED]  # the resubmit is a no-op
    assert h.venue.ignored_duplicates == 1
    assert len(h.fake.orders) == 1


async def test_clock_skew_and_private_stream_reconnect(fake: FakeBybit) -> None:
    fake.skew_ms = 5_000  # venue 5 s ahead: requests and ws auth expiry must use its clock
    bus = EventBus("live")
    fills: list[Fill] = []
    bus.subscribe(Fill, fills.append)
    stop = asyncio.Event()
    dispatcher = asyncio.ensure_future(bus.run(None, stop))
    venue = BybitExecution(
        bus, config=fast_config(fake, recv_window=1000), credentials=Credentials(KEY, SECRET)
    )
    await venue.start()
    try:
        await fake.drop_private()
        await asyncio.sleep(0.1)
        venue.submit(order("skew-1"))
        await venue.drain()
        await asyncio.sleep(0.15)
        assert venue.stream is not None and venue.stream.connections >= 2
        assert len(fills) == 1
    finally:
        await venue.stop()
        stop.set()
        await dispatcher


async def test_bad_credentials_fail_at_start_without_leaking(
    fake: FakeBybit, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus = EventBus("live")
    monkeypatch.setenv("QN_BYBIT_KEY", KEY)
    monkeypatch.setenv("QN_BYBIT_SECRET", "wrong-secret-123")
    cfg = fast_config(fake, api_key_env="QN_BYBIT_KEY", api_secret_env="QN_BYBIT_SECRET")
    venue = BybitExecution(bus, config=cfg)
    with pytest.raises(AuthError) as err:
        await venue.start()
    await venue.stop()
    assert "wrong-secret-123" not in str(err.value) and KEY not in str(err.value)
    monkeypatch.delenv("QN_BYBIT_SECRET")
    with pytest.raises(AuthError, match="QN_BYBIT_SECRET"):
        await BybitExecution(bus, config=cfg).start()


def test_order_link_ids_are_deterministic_and_valid() -> None:
    a = order_link_id("sma", "BTCUSDT", 1_700_000_000_000_000_000)
    assert a == order_link_id("sma", "BTCUSDT", 1_700_000_000_000_000_000) == "sma-BTCUSDT-1700000000000"
    long = order_link_id("a-very-long-strategy-name", "1000PEPEUSDT", 1_700_000_000_000_000_000, "rebalance")
    assert long.startswith("qn-") and len(long) <= 36
    assert long == order_link_id(
        "a-very-long-strategy-name", "1000PEPEUSDT", 1_700_000_000_000_000_000, "rebalance"
    )
    assert link_id_for(order("has space/slash")) == link_id_for(order("has space/slash"))
    assert link_id_for(order("has space/slash")).startswith("qn-")
    assert format_step(0.012, 0.001) == "0.012" and format_step(61407.8, 0.1) == "61407.8"
    assert format_step(3.0, 1.0) == "3"


async def test_a_malformed_execution_does_not_cost_the_good_ones(h: Harness) -> None:
    """A garbled item is skipped and counted, not marked seen, and the items after it in the same
    message still become fills."""
    h.venue.submit(order(client_id="mix-ETHUSDT-1", symbol="ETHUSDT", qty=0.5, side=Side.SELL))
    await h.settle()
    (good,) = h.fake.executions
    fills_before = len(h.fills)
    garbled = {**good, "execId": "bad-1", "execQty": "not-a-number"}
    second = {**good, "execId": "extra-2", "execQty": "0.1"}
    h.venue.on_private_message({"topic": "execution", "data": [garbled, second]})
    await h.settle()
    assert [f.exec_id for f in h.fills[fills_before:]] == ["extra-2"]
    assert h.venue.malformed_executions == 1
    h.venue.on_private_message({"topic": "execution", "data": [{**garbled, "execQty": "0.2"}]})
    await h.settle()
    assert h.fills[-1].exec_id == "bad-1" and h.fills[-1].quantity == 0.2  # delivered whole later


@pytest.mark.parametrize("stream", [False, True])
async def test_spot_order_filled_while_its_reply_was_lost_is_found_in_history(
    fake: FakeBybit, stream: bool
) -> None:
    """Spot's /v5/order/realtime shows active orders only: a market order that filled before its
    lost reply could be reconciled must be looked up in the order history, not sent again."""
    async with running_venue(fake, category="spot", private_stream=stream) as h:
        fake.faults.rest.append(("/v5/order/create", "lost"))
        h.venue.submit(order("spot-lost-1", qty=0.01, symbol="ETHUSDT"))
        await h.settle()
        await h.until(lambda: bool(h.fills))
        placed = [o for o in fake.orders.values() if o.link_id == "spot-lost-1"]
        assert len(placed) == 1 and placed[0].status == "Filled"
        assert h.venue.resends == 0
        assert ("GET", "/v5/order/history") in fake.requests
        assert h.statuses("spot-lost-1")[-1] is OrderStatus.FILLED
        assert [f.quantity for f in h.fills] == [pytest.approx(0.01 - 0.01 * 0.00055)]  # net of the ETH fee


async def test_spot_fees_are_booked_in_the_quote_coin(fake: FakeBybit) -> None:
    """A spot buy pays its fee in the base coin (``feeCurrency``): the fill's quantity is what
    reached the wallet and its fee that coin's value in the quote coin, as for a sell; a fee in a
    third coin is booked as reported and counted."""
    async with running_venue(fake, category="spot") as h:
        last = fake.last_price("spot", "ETHUSDT")
        h.venue.submit(order("spot-buy-1", qty=0.5, symbol="ETHUSDT"))
        h.venue.submit(order("spot-sell-1", qty=0.5, symbol="ETHUSDT", side=Side.SELL))
        await h.settle()
        await h.until(lambda: len(h.fills) == 2)
        buy, sell = sorted(h.fills, key=lambda f: f.side is Side.SELL)
        assert [e["feeCurrency"] for e in fake.executions] == ["ETH", "USDT"]
        assert buy.fee == pytest.approx(0.5 * last * 0.00055) and sell.fee == pytest.approx(buy.fee)
        assert buy.quantity == pytest.approx(0.5 - 0.5 * 0.00055, abs=1e-12) and sell.quantity == 0.5
        # the book's coins and cash move exactly as the wallet's: 10 ETH at the start
        held = 10.0 + buy.quantity - sell.quantity
        assert fake.coin_balance("ETH") == pytest.approx(held, abs=1e-12)
        paid = buy.quantity * buy.price + buy.fee - (sell.quantity * sell.price - sell.fee)
        assert fake.wallet_cash() == pytest.approx(fake.balance - paid, abs=1e-6)
        item = {**fake.executions[0], "execId": "mnt-fee-1", "feeCurrency": "MNT", "execFee": "0.3"}
        h.venue.on_private_message({"topic": "execution", "data": [item]})
        await h.settle()
        assert h.fills[-1].fee == 0.3 and h.venue.foreign_fees == 1


async def test_cancel_of_an_order_whose_create_is_in_flight_is_not_lost(h: Harness) -> None:
    """A cancel that would reach Bybit before the create finds nothing to cancel; it is held until
    the create's outcome is known, so the order ends cancelled instead of left working."""
    last = h.fake.last_price("linear", "BTCUSDT")
    h.fake.faults.rest.append(("/v5/order/create", "late:0.3"))
    h.venue.submit(order("fly-1", qty=0.01, type=OrderType.LIMIT, price=last * 0.8))
    await asyncio.sleep(0.1)  # the create has left and not arrived
    h.venue.cancel("fly-1")
    await h.settle(0.3)
    placed = [o for o in h.fake.orders.values() if o.link_id == "fly-1"]
    assert [o.status for o in placed] == ["Cancelled"]
    assert h.statuses("fly-1")[-1] is OrderStatus.CANCELLED
    assert list(h.venue.open_orders()) == []


async def test_cancel_before_the_create_leaves_sends_nothing(h: Harness) -> None:
    h.venue.submit(order("fly-2", qty=0.01))
    h.venue.cancel("fly-2")
    await h.settle()
    assert not [o for o in h.fake.orders.values() if o.link_id == "fly-2"]
    assert h.statuses("fly-2") == [OrderStatus.CANCELLED] and not h.fills


async def test_cancel_of_a_market_order_in_flight_that_fills_first_ends_filled(h: Harness) -> None:
    h.fake.faults.rest.append(("/v5/order/create", "late:0.3"))
    h.venue.submit(order("fly-3", qty=0.01))
    await asyncio.sleep(0.1)
    h.venue.cancel("fly-3")
    await h.settle(0.3)
    assert h.statuses("fly-3")[-1] is OrderStatus.FILLED and [f.quantity for f in h.fills] == [0.01]
    assert list(h.venue.open_orders()) == []


async def test_funding_executions_become_funding_events_once(h: Harness) -> None:
    """Bybit settles perpetual funding as executions of type Funding (side: the position's; fee:
    paid, negative when received): cash the portfolio must book."""
    from engine.events import Funding

    paid: list[Funding] = []
    h.bus.subscribe(Funding, paid.append)
    item = {
        "category": "linear",
        "symbol": "BTCUSDT",
        "execId": "fund-1",
        "execType": "Funding",
        "execQty": "0.5",
        "execPrice": "60000",
        "execFee": "3.0",
        "feeRate": "0.0001",
        "side": "Buy",
        "execTime": "1700000000000",
        "orderId": "",
        "orderLinkId": "",
    }
    short = {**item, "execId": "fund-2", "side": "Sell", "execFee": "-1.5", "execQty": "0.25"}
    h.venue.on_private_message({"topic": "execution", "data": [item, short, item]})
    await h.settle()
    assert [(f.symbol, f.quantity, f.price, f.rate, f.amount) for f in paid] == [
        ("BTCUSDT", 0.5, 60000.0, 0.0001, 3.0),
        ("BTCUSDT", -0.25, 60000.0, 0.0001, -1.5),
    ]
    assert h.fills == [] and h.venue.funding_payments == 2
