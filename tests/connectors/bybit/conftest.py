"""Fixtures for the Bybit connector tests: a fake Bybit on 127.0.0.1, configs pointing at it with
short timeouts and heartbeats so that every fault is met within a second, and a running execution
adapter wired to a live bus (:class:`Harness`)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from connectors.bybit.config import BybitConfig
from connectors.bybit.execution import BybitExecution
from connectors.bybit.signing import Credentials
from engine.bus import EventBus
from engine.events import Fill, Order, OrderStatus, OrderUpdate, Side
from tests.fake_bybit import FakeBybit

KEY = "test-key-0001"
SECRET = "test-secret-do-not-use"
COINS = {"BTC": 1.0, "ETH": 10.0, "SOL": 100.0}
"""Spot coins the account holds at the start: the adapter tests sell spot without buying first."""


@pytest.fixture
async def fake() -> AsyncIterator[FakeBybit]:
    server = FakeBybit(keys={KEY: SECRET}, coins=COINS)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def fast_config(server: FakeBybit, **overrides: object) -> BybitConfig:
    values: dict[str, object] = {
        "rest_url": server.rest_url,
        "ws_public_url": server.ws_public_url,
        "ws_private_url": server.ws_private_url,
        "request_timeout": 1.0,
        "backoff_initial": 0.01,
        "backoff_max": 0.2,
        "ban_backoff": 0.05,
        "ping_interval": 0.05,
        "connect_timeout": 2.0,
        "requests_per_second": 1000.0,
    }
    values.update(overrides)
    return BybitConfig.model_validate(values)


@pytest.fixture
def creds() -> Credentials:
    return Credentials(KEY, SECRET)


@dataclass
class Harness:
    """A started adapter on a live bus, with every Fill and OrderUpdate recorded in bus order."""

    fake: FakeBybit
    bus: EventBus
    venue: BybitExecution
    fills: list[Fill] = field(default_factory=list)
    updates: list[OrderUpdate] = field(default_factory=list)
    events: list[Fill | OrderUpdate] = field(default_factory=list)

    def record(self, event: Fill | OrderUpdate) -> None:
        self.events.append(event)
        (self.fills if isinstance(event, Fill) else self.updates).append(event)  # type: ignore[arg-type]

    async def settle(self, pause: float = 0.15, timeout: float = 5.0) -> None:
        """Wait until requests are done and no event has arrived for ``pause`` seconds: a quiet
        period rather than a fixed sleep, so a loaded machine's late pushes are still waited for."""
        deadline = time.monotonic() + timeout
        seen = -1
        while time.monotonic() < deadline:
            await self.venue.drain()
            if len(self.events) == seen:
                return
            seen = len(self.events)
            await asyncio.sleep(pause)

    async def until(self, condition: Callable[[], bool], timeout: float = 3.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError("condition not met in time")
            await asyncio.sleep(0.01)

    def statuses(self, client_id: str) -> list[OrderStatus]:
        return [u.status for u in self.updates if u.client_id == client_id]


@contextlib.asynccontextmanager
async def running_venue(
    fake: FakeBybit, *, bus: EventBus | None = None, category: str = "linear", **venue: object
) -> AsyncIterator[Harness]:
    bus = bus or EventBus("live")
    options: dict[str, object] = {"reconcile_delay": 0.05, **venue}
    adapter = BybitExecution(
        bus,
        config=fast_config(fake, request_timeout=0.3, category=category),
        credentials=Credentials(KEY, SECRET),
        **options,  # type: ignore[arg-type]
    )
    harness = Harness(fake, bus, adapter)
    bus.subscribe(Fill, harness.record)
    bus.subscribe(OrderUpdate, harness.record)
    stop = asyncio.Event()
    dispatcher = asyncio.ensure_future(bus.run(None, stop))
    await adapter.start()
    try:
        yield harness
    finally:
        await adapter.stop()
        stop.set()
        await dispatcher


@pytest.fixture
async def h(fake: FakeBybit) -> AsyncIterator[Harness]:
    async with running_venue(fake) as harness:
        yield harness


def order(
    client_id: str = "sma-BTCUSDT-1700000000000",
    qty: float = 0.0123,
    side: Side = Side.BUY,
    symbol: str = "BTCUSDT",
    **kw: object,
) -> Order:
    return Order(client_id, 1_700_000_000_000_000_000, 1, symbol, side, qty, strategy="sma", **kw)  # type: ignore[arg-type]
