"""Live mode on spot against the fake exchange's per-coin unified wallet: the base coin balance of
each symbol is its position and USDT its cash. The strategy goes short on a crossover down; spot
holds that as flat (one log line per symbol), so it buys and sells its coins and never sells what
it does not hold. Buy fees are taken in the coin bought: the book holds exactly the wallet's coins
and cash, a restart finds them again and trades on, and a wallet moved while it was down is
refused with what differs (``--adopt`` takes it)."""

from __future__ import annotations

import asyncio
import json
import pickle
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from connectors.bybit.execution import link_id_for
from engine import orders as orders_module
from engine.config import RiskConfig
from engine.events import BarSet, Order, Side, Signal
from engine.strategy import Strategy, StrategyContext
from quantnet.daemon import Daemon, DaemonError, DaemonOptions
from strategies.registry import create
from tests.daemon.helpers import STEP_MS, SYMBOLS, app_config, bybit_config, events, rows, running_fake
from tests.fake_bybit import FakeBybit

KEY, SECRET = "spot-key", "spot-secret"
CASH = 100_000.0
PARAMS = {"fast": 3, "slow": 8, "target": 0.1, "short": True}  # -0.1 below the crossover


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeBybit]:
    monkeypatch.setenv("BYBIT_API_KEY", KEY)
    monkeypatch.setenv("BYBIT_API_SECRET", SECRET)
    async with running_fake(keys={KEY: SECRET}, balance=CASH) as server:  # USDT only: no coin held
        yield server


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, dict[str, Any]]]:
    out: list[tuple[str, str, dict[str, Any]]] = []

    class Recorder:
        def __getattr__(self, level: str) -> Callable[..., None]:
            return lambda event, **kw: out.append((level, event, kw))

    monkeypatch.setattr(orders_module, "log", Recorder())
    return out


def spot_daemon(fake: FakeBybit, state: Path, **opts: Any) -> Daemon:
    options = DaemonOptions(
        mode="live", symbols=SYMBOLS, interval="1", category="spot", state_dir=state, stdout=False, **opts
    )
    cfg = app_config(enabled=True, environment="testnet", max_trade_lag=1e9, category="spot")
    return Daemon(cfg, create("sma_crossover", PARAMS), options, bybit=bybit_config(fake))


async def run_until(d: Daemon, done: Callable[[], bool], *, quiet: bool = True) -> None:
    """Run until ``done`` holds right after a bar's commit; ``quiet``: with no order on its way,
    so that the journal's book is everything the account did."""
    met: list[bool] = []

    def watch(bars: BarSet) -> None:
        if not met and (not quiet or not d.node.orders.working()) and done():
            met.append(True)
            d.stop()

    build = d._build

    def build_then_watch() -> None:
        build()
        d.bus.subscribe(BarSet, watch)  # after the daemon's own commit

    d._build = build_then_watch  # type: ignore[method-assign]
    assert await asyncio.wait_for(d.run(), 90) == 0
    assert met, "the condition was not met within max_bars"


def order_from(record: dict[str, Any]) -> Order:
    r = record
    return Order(r["client_id"], r["ts_event"], r["ts_init"], r["symbol"], Side(r["side"]), r["quantity"])


def book(state: Path) -> tuple[dict[str, float], float]:
    pf = pickle.loads(rows(state, "SELECT blob FROM snapshots WHERE kind = 'book'")[0][0])["portfolio"]
    return {s: float(pf["qty"][i]) for i, s in enumerate(SYMBOLS)}, float(pf["cash"])


def wallet_from_executions(fake: FakeBybit) -> tuple[dict[str, float], float]:
    """Coins and USDT from the executions' own strings: a buy brings execQty less its fee (in the
    coin), a sell takes execQty and pays its fee in USDT."""
    coins = dict.fromkeys(SYMBOLS, 0.0)
    cash = CASH
    for e in fake.executions:
        qty, price, fee = float(e["execQty"]), float(e["execPrice"]), float(e["execFee"])
        if e["side"] == "Buy":
            coins[e["symbol"]] += qty - fee
            cash -= qty * price
        else:
            coins[e["symbol"]] -= qty
            cash += qty * price - fee
    return coins, cash


def assert_book_is_the_wallet(fake: FakeBybit, state: Path) -> None:
    held, cash = book(state)
    coins, usdt = wallet_from_executions(fake)
    for symbol in SYMBOLS:
        wallet = fake.coin_balance(symbol.removesuffix("USDT"))
        assert wallet == pytest.approx(coins[symbol], abs=1e-10)
        assert held[symbol] == pytest.approx(wallet, abs=1e-10), symbol  # the fee string's precision
        assert held[symbol] >= 0.0
    assert cash == pytest.approx(usdt, abs=1e-6) and fake.wallet_cash() == pytest.approx(usdt, abs=1e-6)


async def test_spot_live_trades_long_only_its_book_is_the_wallet_and_a_restart_trades_on(
    fake, tmp_path, logged
):
    state = tmp_path / "state"
    # 1. buys and sells until both happened, the account then as the journal has it
    d = spot_daemon(fake, state, max_bars=600)
    raw = np.zeros(len(SYMBOLS))  # the strategy's own targets, before spot holds them flat
    short_bars = np.zeros(len(SYMBOLS), dtype=int)
    ever_short: set[str] = set()

    def wanted(s: Signal) -> None:
        np.copyto(raw, s.targets, where=s.targets == s.targets)
        ever_short.update(SYMBOLS[i] for i in np.flatnonzero(raw < 0))

    d.bus.subscribe(Signal, wanted)
    d.bus.subscribe(BarSet, lambda b: np.add(short_bars, raw < 0, out=short_bars))
    sides = lambda: {e["side"] for e in fake.executions}  # noqa: E731
    await run_until(d, lambda: sides() == {"Buy", "Sell"} and short_bars.max() >= 3)
    assert all(e["category"] == "spot" for e in fake.executions)
    assert {o.status for o in fake.orders.values()} == {"Filled"}
    updates = events(state, "OrderUpdate")
    assert not [u for u in updates if u["status"] == "rejected"]  # never a sell of coins not held
    assert_book_is_the_wallet(fake, state)
    # each buy booked net of its fee: what reached the wallet
    by_exec = {e["execId"]: e for e in fake.executions}
    for f in events(state, "Fill"):
        e = by_exec[f["exec_id"]]
        fee = float(e["execFee"]) if e["side"] == "Buy" else 0.0
        assert f["quantity"] == pytest.approx(float(e["execQty"]) - fee, abs=1e-12)
        if e["side"] == "Buy":
            assert f["fee"] == pytest.approx(fee * float(e["execPrice"]), rel=1e-12) and fee > 0
    # the strategy wanted shorts for many bars; each symbol's was logged once
    clipped = [kw["symbol"] for _, event, kw in logged if "long-only" in event]
    assert short_bars.max() >= 3 and len(clipped) > 0
    assert sorted(clipped) == sorted(set(clipped)) == sorted(ever_short)
    assert all(p["quantity"] >= 0 for p in events(state, "PositionUpdate"))

    # 2. stopped right after a bar that sent orders: they fill at Bybit after the stop (or, cut
    # off by it, never left), and the journal has them on their way
    d = spot_daemon(fake, state, max_bars=600)
    await run_until(d, lambda: bool(d.node.orders.working()), quiet=False)
    instance = rows(state, "SELECT value FROM meta WHERE key = 'instance_id'")[0][0]
    on_their_way = pickle.loads(rows(state, "SELECT blob FROM snapshots WHERE kind = 'book'")[0][0])
    in_flight = set(on_their_way["orders"]["_open"])
    assert in_flight
    await asyncio.sleep(0.3)

    # 3. the restart settles them (fills booked net of their fees, or sent again), finds the same
    # balances as the book and trades on from them
    n_exec = len(fake.executions)
    d = spot_daemon(fake, state, max_bars=600)
    await run_until(d, lambda: len(fake.executions) >= n_exec + 2)
    assert d.reconciliation == []
    links = {o.link_id for o in fake.orders.values()}
    sent = [o for o in events(state, "Order") if o["client_id"] in in_flight]
    assert sent and all(link_id_for(order_from(o), instance) in links for o in sent)
    assert_book_is_the_wallet(fake, state)

    # 4. coins bought by hand while it is down: refused, saying what differs
    fake._place({"category": "spot", "symbol": "ETHUSDT", "side": "Buy", "orderType": "Market", "qty": "0.5"})
    with pytest.raises(DaemonError) as refused:
        await asyncio.wait_for(spot_daemon(fake, state, max_bars=1).run(), 60)
    text = str(refused.value)
    found = re.search(r"ETHUSDT position \(ETH balance\): Bybit (\S+), journal (\S+?);", text)
    assert found, text
    assert float(found[1]) - float(found[2]) == pytest.approx(0.5 * (1 - 0.00055), abs=1e-8)  # less its fee
    assert "(the USDT balance)" in text and "--adopt" in text
    assert "BTCUSDT position" not in text and "SOLUSDT position" not in text

    # 5. --adopt takes the wallet, journaled; the next start finds nothing different
    d = spot_daemon(fake, state, max_bars=1, adopt=True)
    assert await asyncio.wait_for(d.run(), 60) == 0
    adoption = [e for e in events(state, "RiskEvent") if e["rule"] == "adoption"]
    assert len(adoption) == 1 and "ETHUSDT position (ETH balance)" in adoption[0]["message"]
    d = spot_daemon(fake, state, max_bars=1)
    assert await asyncio.wait_for(d.run(), 60) == 0 and d.reconciliation == []


@pytest.mark.parametrize("mode", ["signal", "paper"])
async def test_spot_signals_keep_the_strategys_shorts_and_paper_trading_holds_them_flat(fake, tmp_path, mode):
    state = tmp_path / mode
    options = DaemonOptions(
        mode=mode, symbols=SYMBOLS, interval="1", category="spot", state_dir=state, stdout=False, max_bars=600
    )
    d = Daemon(
        app_config(category="spot"), create("sma_crossover", PARAMS), options, bybit=bybit_config(fake)
    )
    wanted: list[float] = []
    d.bus.subscribe(Signal, lambda s: wanted.extend(s.targets[s.targets == s.targets].tolist()))
    # the strategy has asked for a long and a short (on some price paths the short comes first)
    await run_until(d, lambda: min(wanted, default=0.0) < 0 < max(wanted, default=0.0))
    targets = [json.loads(r[0])["target"] for r in rows(state, "SELECT record FROM signals")]
    if mode == "signal":
        assert min(targets) == -0.1  # as the strategy said
    else:
        assert min(targets) == 0.0 and max(targets) == 0.1  # held flat instead
        assert all(p["quantity"] >= 0 for p in events(state, "PositionUpdate"))


class Alternating(Strategy):
    """0.1 of each coin on even minutes, flat on odd ones: every bar buys or sells every coin."""

    name = "alternating"

    def on_bars(self, bars: BarSet, ctx: StrategyContext) -> np.ndarray:
        even = (bars.ts_event // (STEP_MS * 1_000_000)) % 2 == 0
        return np.full(len(bars.symbols), 0.1 if even else 0.0)


async def test_a_catch_up_sells_what_the_buy_before_it_delivered(fake, tmp_path, logged):
    """Bars closed while down are traded back to back: each bar waits for the orders of the one
    before it, so a sell is sized from the coins the buy delivered (less its fee). Without the
    wait no sell went out in the catch-up at all: each odd bar still found the buy on its way."""
    state = tmp_path / "state"

    def start(max_bars: int) -> Daemon:
        options = DaemonOptions(
            mode="live", symbols=SYMBOLS, interval="1", category="spot", state_dir=state, stdout=False,
            max_bars=max_bars,
        )  # fmt: skip
        cfg = app_config(enabled=True, environment="testnet", max_trade_lag=1e9, category="spot")
        return Daemon(cfg, Alternating(), options, bybit=bybit_config(fake))

    assert await asyncio.wait_for(start(1).run(), 60) == 0
    closed = rows(state, "SELECT max(ts) FROM bars")[0][0]
    while fake.market_now_ms < closed // 1_000_000 + 6 * STEP_MS:
        await asyncio.sleep(0.01)  # six bars close while it is down
    d = start(6)
    assert await asyncio.wait_for(d.run(), 60) == 0
    late = [r[0] for r in rows(state, "SELECT late FROM bars ORDER BY ts")]
    assert sum(late) >= 5
    updates = events(state, "OrderUpdate")
    assert not [u for u in updates if u["status"] == "rejected"], [
        u for u in updates if u["status"] == "rejected"
    ]
    sells = [e for e in fake.executions if e["side"] == "Sell"]
    assert len(sells) >= 2 * len(SYMBOLS)  # a sell on every odd late bar, none refused
    assert_book_is_the_wallet(fake, state)


class RoundTrips(Strategy):
    """Three round trips (0.1 of each coin on the even bars, flat on the odd ones), then flat."""

    name = "round_trips"

    def __init__(self) -> None:
        super().__init__()
        self.bars = 0

    def on_bars(self, bars: BarSet, ctx: StrategyContext) -> np.ndarray:
        self.bars += 1
        held = self.bars <= 6 and self.bars % 2 == 1
        return np.full(len(bars.symbols), 0.1 if held else 0.0)


async def test_the_dust_a_sell_leaves_gets_no_stop_loss_and_one_event_not_a_rejection_per_bar(fake, tmp_path):
    """A sell of the whole coin balance (net of the buy's fee) is rounded down to the coin's step
    at Bybit, so every round trip leaves dust that no order can sell. The risk manager knows
    Bybit's lot from the exchange: it places no stop for it and says so once. Before, it had no
    venue rules in live mode, sent the stop, and Bybit's refusal was an error every bar."""
    state = tmp_path / "state"
    options = DaemonOptions(
        mode="live", symbols=SYMBOLS, interval="1", category="spot", state_dir=state, stdout=False,
        max_bars=40,
    )  # fmt: skip
    cfg = app_config(enabled=True, environment="testnet", max_trade_lag=1e9, category="spot")
    cfg = cfg.model_copy(update={"risk": RiskConfig(stop_loss=0.03)})
    d = Daemon(cfg, RoundTrips(), options, bybit=bybit_config(fake))
    step = np.array([fake.instruments[("spot", s)].step for s in SYMBOLS])
    sells = lambda: {e["orderLinkId"] for e in fake.executions if e["side"] == "Sell"}  # noqa: E731
    dust = lambda: bool(np.all((d.node.portfolio.qty > 0) & (d.node.portfolio.qty < step)))  # noqa: E731
    since: list[int] = []  # bars since the last round trip's sell left its dust

    def count(_: BarSet) -> None:
        if len(sells()) >= 3 * len(SYMBOLS) and dust():
            since.append(1)

    d.bus.subscribe(BarSet, count)
    await run_until(d, lambda: len(since) >= 5)

    held, _ = book(state)
    assert all(0 < held[s] < step[i] for i, s in enumerate(SYMBOLS)), held  # flat but for the dust
    assert not d.node.risk.working_exits()
    assert not [o for o in fake.orders.values() if o.status == "Untriggered"]
    updates = events(state, "OrderUpdate")
    assert not [u for u in updates if u["status"] == "rejected"]
    risk = events(state, "RiskEvent")
    assert not [e for e in risk if e["rule"] == "exit_rejected"]
    placed = {o["client_id"] for o in events(state, "Order") if o["strategy"] == "risk"}
    assert len(placed) >= len(sells())  # each buy's coins were protected by a stop
    skipped = [e for e in risk if e["rule"] == "exit_skipped"]
    for symbol in SYMBOLS:  # once per round trip's dust, not once per bar
        mine = [e for e in skipped if e["symbol"] == symbol]
        sold = {e["orderLinkId"] for e in fake.executions if e["side"] == "Sell" and e["symbol"] == symbol}
        assert 1 <= len(mine) <= len(sold)
        assert all("rounds down to 0 at the lot" in e["message"] for e in mine)
    assert_book_is_the_wallet(fake, state)
