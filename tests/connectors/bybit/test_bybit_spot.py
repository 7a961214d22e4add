"""Spot against the fake Bybit's per-coin unified wallet: an order the wallet cannot pay for is
rejected (170131) saying what it needed, and the account is the wallet's coins: each pair's base
coin balance its position, USDT its cash."""

from __future__ import annotations

import pytest

from engine.events import Bar, OrderStatus, Side
from tests.connectors.bybit.conftest import order, running_venue
from tests.fake_bybit import FakeBybit


async def test_a_spot_order_beyond_the_wallet_is_rejected_with_what_it_needed(fake: FakeBybit) -> None:
    fake.balance, fake.coins = 1_000.0, {"ETH": 0.2}
    async with running_venue(fake, category="spot") as h:
        last = fake.last_price("spot", "BTCUSDT")
        h.bus.post(Bar(0, 0, "BTCUSDT", "1", last, last, last, last, 1.0))
        h.venue.submit(order("buy-big", qty=0.05))  # ~3,000 USDT of BTC with 1,000 USDT
        h.venue.submit(order("sell-big", qty=0.5, symbol="ETHUSDT", side=Side.SELL))  # holds 0.2
        h.venue.submit(order("sell-ok", qty=0.1, symbol="ETHUSDT", side=Side.SELL))
        await h.settle()
        reasons = {u.client_id: u.reason for u in h.updates if u.status is OrderStatus.REJECTED}
        assert set(reasons) == {"buy-big", "sell-big"}
        buy = reasons["buy-big"]
        assert "insufficient balance: a spot buy of 0.050000 BTCUSDT needs about 0.050000 x" in buy
        assert f"= {0.05 * last:,.2f} USDT, more than the unified wallet holds" in buy
        assert "a spot sell of 0.50000 ETHUSDT needs 0.50000 ETH" in reasons["sell-big"]
        assert all("170131" in r and "Insufficient balance" in r for r in reasons.values())
        assert h.statuses("sell-ok") == [OrderStatus.ACCEPTED, OrderStatus.FILLED]
        assert [o.link_id for o in fake.orders.values()] == ["sell-ok"]  # nothing else reached the book
        assert fake.coin_balance("ETH") == pytest.approx(0.1, abs=1e-12)


async def test_the_spot_account_is_the_wallets_coins(fake: FakeBybit) -> None:
    fake.balance, fake.coins = 5_000.0, {"BTC": 0.25, "DOGE": 40.0}  # no DOGEUSDT pair here
    fake.set_price("spot", "BTCUSDT", 61_234.5)
    fake.set_price("spot", "ETHUSDT", 3_012.34)
    async with running_venue(fake, category="spot") as h:
        h.venue.submit(order("eth-buy", qty=0.4, symbol="ETHUSDT"))
        await h.settle()
        (fill,) = h.fills
        account = await h.venue.account()
    btc, eth = 61_234.5, 3_012.34
    got = 0.4 - 0.4 * 0.00055  # the buy's fee is taken in ETH
    assert fill.quantity == pytest.approx(got, abs=1e-12)
    assert account["positions"] == {
        "BTCUSDT": (0.25, btc, btc),
        "ETHUSDT": (pytest.approx(got, abs=1e-10), eth, eth),
    }
    assert fill.price == eth
    cash = 5_000.0 - 0.4 * eth
    assert account["cash"] == pytest.approx(cash, abs=1e-6)
    assert account["equity"] == pytest.approx(cash + 0.25 * btc + got * eth, abs=1e-6)


async def test_an_order_resent_after_a_restart_is_rounded_down_like_a_first_submit(fake: FakeBybit) -> None:
    """The journal holds the order as decided (0.1234567 ETH, off the 0.00001 step). Resent
    unrounded, its decimal string rounded half up: a spot sell of more coin than the wallet held,
    refused 170131 (found by the spot restart test)."""
    fake.coins = {"ETH": 0.1234567}  # what a buy net of its fee left: more decimals than the step
    async with running_venue(fake, category="spot") as h:
        h.venue.config = h.venue.config.model_copy(update={"recv_window": 100})
        sell = order("resent-1", qty=0.1234567, symbol="ETHUSDT", side=Side.SELL)
        await h.venue.resume([sell], resend=lambda o: True)  # never reached Bybit before the restart
        await h.settle()
        assert h.statuses("resent-1") == [OrderStatus.ACCEPTED, OrderStatus.FILLED]
        (placed,) = fake.orders.values()
        assert placed.qty == 0.12345  # down to the step, as submit() rounds
        assert fake.coin_balance("ETH") == pytest.approx(0.0000067, abs=1e-12)
