"""Live mode against the fake exchange: orders placed, filled and reconciled with Bybit; a restart
with orders in flight (sent, filled at the venue, fills never journaled) books the missing fills;
an account that moved while the daemon was down is refused with what differs, and ``--adopt``
takes Bybit's state (journaled)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from connectors.bybit.execution import link_id_for
from engine.config import RiskConfig
from engine.events import BarSet, Order, OrderType, Side
from quantnet.daemon import Daemon, DaemonError, DaemonOptions
from strategies.registry import create
from tests.daemon.helpers import (
    PARAMS,
    SYMBOLS,
    app_config,
    bybit_config,
    events,
    rows,
    running_fake,
)
from tests.fake_bybit import FakeBybit

KEY, SECRET = "live-key", "live-secret"
CASH = 100_000.0  # the book's [portfolio] cash: the account holds exactly that


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeBybit]:
    monkeypatch.setenv("BYBIT_API_KEY", KEY)
    monkeypatch.setenv("BYBIT_API_SECRET", SECRET)
    async with running_fake(keys={KEY: SECRET}, balance=CASH) as server:
        yield server


def live_daemon(
    fake: FakeBybit, state: Path, risk: RiskConfig | None = None, category: str = "linear", **opts: object
) -> Daemon:
    options = DaemonOptions(
        mode="live", symbols=SYMBOLS, interval="1", category=category, state_dir=state, stdout=False, **opts
    )  # type: ignore[arg-type]
    cfg = app_config(enabled=True, environment="testnet", max_trade_lag=1e9, category=category)
    if risk is not None:
        cfg = cfg.model_copy(update={"risk": risk})
    return Daemon(cfg, create("sma_crossover", PARAMS), options, bybit=bybit_config(fake))


def book(state: Path) -> tuple[dict[str, float], float]:
    """Positions and cash from the journal's last book snapshot."""
    import pickle

    blob = rows(state, "SELECT blob FROM snapshots WHERE kind = 'book'")[0][0]
    pf = pickle.loads(blob)["portfolio"]
    return {s: float(pf["qty"][i]) for i, s in enumerate(SYMBOLS)}, float(pf["cash"])


def venue_positions(fake: FakeBybit) -> dict[str, float]:
    return {s: round(fake.position("linear", s)[0], 9) for s in SYMBOLS}


def journal_orders(state: Path) -> list[Order]:
    return [
        Order(
            o["client_id"],
            o["ts_event"],
            o["ts_init"],
            o["symbol"],
            Side(o["side"]),
            o["quantity"],
            OrderType(o["type"]),
        )
        for o in events(state, "Order")
    ]


async def test_live_places_fills_reconciles_restarts_in_flight_refuses_and_adopts(fake, tmp_path):
    state = tmp_path / "state"
    # 1. first start: the flat book and the account agree; orders are placed and filled at Bybit
    d = live_daemon(fake, state, max_bars=25)
    assert await asyncio.wait_for(d.run(), 60) == 0
    instance = rows(state, "SELECT value FROM meta WHERE key = 'instance_id'")[0][0]
    sent = journal_orders(state)
    assert sent, "the strategy traded"
    at_venue = {o.link_id: o for o in fake.orders.values()}
    assert {link_id_for(o, instance) for o in sent} == set(at_venue)  # each once, by its instance id
    assert all(o.status == "Filled" for o in at_venue.values())
    # the last bar's orders fill after the stop: the journal holds them as on their way
    journaled = {f["exec_id"] for f in events(state, "Fill")}
    assert journaled and journaled <= {e["execId"] for e in fake.executions}
    late = {e["orderLinkId"] for e in fake.executions if e["execId"] not in journaled}
    working = __import__("pickle").loads(rows(state, "SELECT blob FROM snapshots WHERE kind = 'book'")[0][0])
    assert late <= {link_id_for(o, instance) for o in sent if o.client_id in working["orders"]["_open"]}

    # 2. stopped right after sending orders: they fill at Bybit, their fills never reach the journal
    fake.faults.rest.append(("/v5/order/create", "slow:1.0"))  # one reply still on its way
    d = live_daemon(fake, state, max_bars=40)

    drops: list[asyncio.Future[None]] = []

    def cut(order: Order) -> None:
        if not fake.private_down:  # the account stream goes down, the daemon stops soon after
            fake.private_down = True
            drops.append(asyncio.ensure_future(fake.drop_private()))
            drops.append(asyncio.ensure_future(stop_once_sent()))

    async def stop_once_sent() -> None:
        placed = len(fake.orders)
        for _ in range(300):  # a create has reached Bybit (on a loaded machine this takes a while)
            if len(fake.orders) > placed:
                break
            await asyncio.sleep(0.01)
        d.stop()

    d.bus.subscribe(Order, cut)
    assert await asyncio.wait_for(d.run(), 60) == 0
    fake.private_down = False
    in_flight = [o for o in journal_orders(state) if o.client_id not in {s.client_id for s in sent}]
    # at least one reached Bybit; any not sent yet is settled at the restart too (absent: resent)
    assert in_flight and any(
        link_id_for(o, instance) in {x.link_id for x in fake.orders.values()} for o in in_flight
    )
    await asyncio.sleep(0.3)  # the venue fills them meanwhile
    journaled = {f["exec_id"] for f in events(state, "Fill")}
    missing = [e for e in fake.executions if e["execId"] not in journaled]
    assert missing, "some fills happened after the stop"
    assert book(state)[0] != pytest.approx(venue_positions(fake), abs=1e-9)

    # 3. restart: the orders in flight are found filled, their fills booked once, then it trades on
    d = live_daemon(fake, state, max_bars=3)
    assert await asyncio.wait_for(d.run(), 60) == 0
    assert d.reconciliation == []
    fills = events(state, "Fill")
    assert sorted(f["exec_id"] for f in fills) == sorted(e["execId"] for e in fake.executions)
    assert len({f["exec_id"] for f in fills}) == len(fills)
    links = {link_id_for(o, instance) for o in journal_orders(state)}
    assert {o.link_id for o in fake.orders.values()} <= links  # every order at Bybit is journaled
    # (orders of its last bar are on their way at the stop: the next start settles them, below)

    # 4. a manual trade while the daemon is down: refused, saying what differs
    fake._place(
        {"category": "linear", "symbol": "ETHUSDT", "side": "Buy", "orderType": "Market", "qty": "0.5"}
    )
    with pytest.raises(DaemonError) as refused:
        await asyncio.wait_for(live_daemon(fake, state, max_bars=2).run(), 60)
    text = str(refused.value)
    found = re.search(r"ETHUSDT position: Bybit (\S+), journal (\S+?);", text)
    assert found and float(found[1]) - float(found[2]) == pytest.approx(0.5), text  # the manual 0.5 ETH
    assert "cash: Bybit" in text and "--adopt" in text
    assert "BTCUSDT position" not in text and "SOLUSDT position" not in text  # all else reconciled
    n_orders = len(fake.orders)

    # 5. --adopt takes Bybit's state, journaled, and trading goes on from it
    d = live_daemon(fake, state, max_bars=2, adopt=True)
    assert await asyncio.wait_for(d.run(), 60) == 0
    adoption = [e for e in events(state, "RiskEvent") if e["rule"] == "adoption"]
    assert len(adoption) == 1 and "ETHUSDT position" in adoption[0]["message"]
    assert len(fake.orders) >= n_orders
    assert live_daemon(fake, state, max_bars=1).opts.adopt is False
    d = live_daemon(fake, state, max_bars=1)
    assert await asyncio.wait_for(d.run(), 60) == 0 and d.reconciliation == []


async def test_first_start_on_an_account_unlike_the_book_is_refused(fake, tmp_path):
    fake.balance = 250_000.0
    with pytest.raises(DaemonError, match=r"cash: Bybit 250,000.00 USDT .* journal 100,000.00"):
        await asyncio.wait_for(live_daemon(fake, tmp_path / "s").run(), 60)
    assert fake.orders == {}
    d = live_daemon(fake, tmp_path / "s", max_bars=3, adopt=True)
    assert await asyncio.wait_for(d.run(), 60) == 0
    equity = rows(tmp_path / "s", "SELECT equity FROM equity ORDER BY ts DESC LIMIT 1")[0][0]
    assert equity == pytest.approx(250_000.0, rel=0.01)
    assert rows(tmp_path / "s", "SELECT value FROM meta WHERE key = 'adopted'")  # journaled


async def test_cash_tolerance_is_the_configured_share_of_equity(fake, tmp_path):
    fake.balance = CASH + 400.0  # 0.4% more than the book
    tight = app_config(enabled=True, environment="testnet", max_trade_lag=1e9, cash_tolerance=0.001)
    options = DaemonOptions(
        mode="live", symbols=SYMBOLS, interval="1", category="linear", state_dir=tmp_path / "b", stdout=False
    )
    d = Daemon(tight, create("sma_crossover", PARAMS), options, bybit=bybit_config(fake))
    with pytest.raises(DaemonError) as refused:
        await asyncio.wait_for(d.run(), 60)
    text = str(refused.value)
    assert "cash: Bybit 100,400.00 USDT" in text and "journal 100,000.00" in text, text
    assert "400.00 apart, more than the 100.00 allowed" in text, text  # 0.1% of 100,000
    assert "[live] cash_tolerance 0.001 of equity 100,000.00" in text, text
    assert fake.orders == {}
    d = live_daemon(fake, tmp_path / "a", max_bars=1)  # the default 0.5% takes it
    assert await asyncio.wait_for(d.run(), 60) == 0 and d.reconciliation == []


async def test_an_adoption_is_journaled_before_the_first_bar(fake, tmp_path, monkeypatch):
    fake.balance = 250_000.0
    d = live_daemon(fake, tmp_path / "s", adopt=True)

    async def crash() -> None:  # the process dies right after adopting, before any bar
        raise RuntimeError("crashed after the adoption")

    monkeypatch.setattr(d, "_catch_up", crash)
    with pytest.raises(RuntimeError, match="crashed after the adoption"):
        await asyncio.wait_for(d.run(), 60)
    adoption = [e for e in events(tmp_path / "s", "RiskEvent") if e["rule"] == "adoption"]
    assert len(adoption) == 1 and "cash: Bybit 250,000.00" in adoption[0]["message"]
    # the restart, without --adopt, resumes the adopted book: nothing differs any more
    d = live_daemon(fake, tmp_path / "s", max_bars=2)
    assert await asyncio.wait_for(d.run(), 60) == 0 and d.reconciliation == []
    equity = rows(tmp_path / "s", "SELECT equity FROM equity ORDER BY ts DESC LIMIT 1")[0][0]
    assert equity == pytest.approx(250_000.0, rel=0.01)


async def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("category", ["linear", "spot"])
async def test_a_stop_loss_working_at_bybit_is_resumed_at_a_restart_not_resent_or_lost(
    fake, tmp_path, category
):
    """The risk manager's stop rests at Bybit between bars: a restart settles it like the order
    manager's orders (before: it was not passed to the resume, so the restart refused to trade,
    taking it for an order missing from the journal). On spot the position is the coin balance,
    net of the buys' fees: the stop sells it rounded down to the coin's step."""
    state = tmp_path / "state"
    risk = RiskConfig(stop_loss=0.03)

    def held(symbol: str) -> float:
        if category == "spot":
            return fake.coin_balance(symbol.removesuffix("USDT"))
        return fake.position("linear", symbol)[0]

    def step(symbol: str) -> float:
        return fake.instruments[(category, symbol)].step

    d = live_daemon(fake, state, risk, category)
    caught: list[int] = []

    def after_commit(bars: BarSet) -> None:
        """Right after a bar is journaled with stops working and no order on its way: the market
        stops there, so the restart finds the account as that bar's book left it."""
        if not caught and d.node.risk.working_exits() and not d.node.orders.working():
            caught.append(bars.ts_event)
            fake.stop_market()
            d.stop()

    build = d._build

    def build_then_watch() -> None:
        build()
        d.bus.subscribe(BarSet, after_commit)  # after the daemon's own commit handler

    d._build = build_then_watch  # type: ignore[method-assign]
    assert await asyncio.wait_for(d.run(), 60) == 0
    assert caught
    await asyncio.sleep(0.3)  # stops still on their way land at the venue

    def resting() -> list[Any]:
        return [o for o in fake.orders.values() if o.status == "Untriggered"]

    before = {o.link_id: (o.order_id, o.symbol, o.qty, o.trigger_price) for o in resting()}
    assert before, "a stop-loss rests at Bybit"
    assert all(0 <= abs(held(v[1])) - v[2] < step(v[1]) for v in before.values())
    n_orders = len(fake.orders)

    d = live_daemon(fake, state, risk, category)
    task = asyncio.ensure_future(d.run())
    await until(lambda: d.ws_state == "connected" or task.done())
    assert not task.done() and d.reconciliation == []
    assert len(fake.orders) == n_orders  # nothing sent again
    assert all(d.exchange.tracks(link) for link in before)  # each followed again
    assert {o.link_id for o in resting()} == set(before)
    assert {link_id_for(o, d.instance_id) for o in d.node.risk.working_exits()} == set(before)
    # the stop triggers: its fill is booked as the stop-loss exit, the book follows the account
    link, (order_id, symbol, qty, trigger) = next(iter(before.items()))
    i = SYMBOLS.index(symbol)
    sell = fake.orders[order_id].side == "Sell"  # a long's stop sells below, a short's buys above
    fake.set_price(category, symbol, round(trigger * (0.99 if sell else 1.01), 2))
    await until(lambda: fake.orders[order_id].status == "Filled")
    await until(lambda: d.node.portfolio.qty[i] == pytest.approx(held(symbol), abs=1e-12))
    assert abs(held(symbol)) < step(symbol)  # closed (spot: what is left is below the coin's step)
    fake.start_market(fake.now_ms(), step_ms=1_000)
    await until(lambda: d.stats.bars >= 1)  # the fill is journaled with the next bar
    d.stop()
    assert await asyncio.wait_for(task, 60) == 0
    exec_ids = [e["execId"] for e in fake.executions if e["orderLinkId"] == link]
    journaled = [f["exec_id"] for f in events(state, "Fill")]
    assert len(exec_ids) == 1 and journaled.count(exec_ids[0]) == 1
    exits = [e for e in events(state, "RiskEvent") if e["rule"] == "stop_loss" and e["symbol"] == symbol]
    assert len(exits) == 1 and f"{'sell' if sell else 'buy'} {qty:.8g}" in exits[0]["message"]
