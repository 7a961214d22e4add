"""Fixtures for the Bybit connector tests: a fake Bybit on 127.0.0.1 and configs pointing at it,
with short timeouts and heartbeats so that every fault is met within a second."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from connectors.bybit.config import BybitConfig
from connectors.bybit.signing import Credentials
from tests.fake_bybit import FakeBybit

KEY = "test-key-0001"
SECRET = "test-secret-do-not-use"


@pytest.fixture
async def fake() -> AsyncIterator[FakeBybit]:
    server = FakeBybit(keys={KEY: SECRET})
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
