"""REST market data against the fake Bybit: pagination, open candle, rate limits, retries, errors."""

from __future__ import annotations

import time

import pytest

from connectors.bybit.config import BybitConfig
from connectors.bybit.errors import InvalidRequest, IpBanned, ServerError
from connectors.bybit.intervals import ceil_start, check_interval, floor_start, next_start, prev_start
from connectors.bybit.rest import BybitRest, rules_from_info
from tests.connectors.bybit.conftest import fast_config
from tests.fake_bybit import FakeBybit
from tests.fake_bybit.server import sample

T0 = 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000  # an hour boundary


def kline_requests(fake: FakeBybit) -> int:
    return sum(1 for _, path in fake.requests if path == "/v5/market/kline")


async def test_fetch_across_pages_equals_the_server_series(fake: FakeBybit) -> None:
    fake.fixed_now_ms = T0 + 2_600 * 60_000 + 30_000  # mid-bar: that bar is still open
    async with BybitRest(fast_config(fake)) as rest:
        bars = await rest.klines("linear", "BTCUSDT", "1", T0, T0 + 10_000 * 60_000)
    expected = fake.series("linear", "BTCUSDT", "1", T0, T0 + 2_599 * 60_000)
    assert [(k.start, k.open, k.high, k.low, k.close, k.volume) for k in bars] == expected
    assert len(bars) == 2_600  # the open candle at T0 + 2600 min is not there
    assert kline_requests(fake) == 3  # 1000 + 1000 + 600, and no request past "now"


async def test_mid_bar_start_rounds_up_and_listing_clips(fake: FakeBybit) -> None:
    fake.fixed_now_ms = T0 + 10 * 3_600_000
    async with BybitRest(fast_config(fake)) as rest:
        bars = await rest.klines("linear", "ETHUSDT", "60", T0 + 1, T0 + 5 * 3_600_000)
        assert [k.start for k in bars] == [T0 + h * 3_600_000 for h in range(1, 6)]
        sol_launch = 1_635_724_800_000
        early = await rest.klines(
            "linear", "SOLUSDT", "D", sol_launch - 5 * 86_400_000, sol_launch + 86_400_000
        )
        assert [k.start for k in early] == [sol_launch, sol_launch + 86_400_000]


async def test_rate_limit_403_5xx_and_timeouts_are_retried(fake: FakeBybit) -> None:
    fake.fixed_now_ms = T0 + 100 * 60_000
    fake.faults.rest += [
        ("/v5/market/kline", "10006"),
        ("/v5/market/kline", "500"),
        ("/v5/market/kline", "403"),
        ("/v5/market/kline", "slow:0.5"),
        ("/v5/market/kline", "drop"),
    ]
    async with BybitRest(fast_config(fake, request_timeout=0.2)) as rest:
        began = time.monotonic()
        bars = await rest.klines("linear", "BTCUSDT", "1", T0, T0 + 50 * 60_000)
        assert rest.retries >= 4  # aiohttp itself may retry the dropped keep-alive connection
    assert len(bars) == 51
    assert time.monotonic() - began >= 0.05 + 0.05  # waited for the 10006 reset and the 403 ban
    assert kline_requests(fake) == 6


async def test_retries_are_bounded_and_errors_are_typed(fake: FakeBybit) -> None:
    fake.faults.rest += [("/v5/market/kline", "500")] * 3
    async with BybitRest(fast_config(fake, max_retries=2)) as rest:
        with pytest.raises(ServerError, match="HTTP 502"):
            await rest.klines("linear", "BTCUSDT", "1", T0, T0 + 60_000)
        with pytest.raises(InvalidRequest, match="Not supported symbols"):
            await rest.klines("linear", "NOPEUSDT", "1", T0, T0 + 60_000)
        with pytest.raises(ValueError, match="bad interval '7'"):
            await rest.klines("linear", "BTCUSDT", "7", T0, T0 + 60_000)
        with pytest.raises(InvalidRequest, match="Invalid period"):
            await rest.request("GET", "/v5/market/kline", {"symbol": "BTCUSDT", "interval": "2"})
        with pytest.raises(InvalidRequest, match="404"):
            await rest.request("GET", "/v5/market/nothing")
    fake.faults.rest += [("/v5/market/time", "403")] * 2
    async with BybitRest(fast_config(fake, max_retries=1)) as rest:
        with pytest.raises(IpBanned):
            await rest.server_time_ms()


async def test_instrument_rules_and_server_time(fake: FakeBybit) -> None:
    fake.skew_ms = -2_500
    async with BybitRest(fast_config(fake)) as rest:
        linear = await rest.instrument_rules("linear")
        spot = await rest.instrument_rules("spot", "BTCUSDT")
        offset = await rest.sync_time()
    btc = linear["BTCUSDT"]
    assert (btc.tick_size, btc.qty_step, btc.min_qty, btc.min_notional) == (0.1, 0.001, 0.001, 5.0)
    assert set(spot) == {"BTCUSDT"}
    assert spot["BTCUSDT"].qty_step == 0.000001 and spot["BTCUSDT"].min_notional == 5.0
    assert -3_000 < offset < -2_000


def test_rules_from_the_official_samples() -> None:
    linear = rules_from_info(sample("rest_instruments_info_linear.json")["result"]["list"][0], "linear")
    assert (linear.tick_size, linear.qty_step, linear.min_qty, linear.max_qty, linear.min_notional) == (
        0.1,
        0.001,
        0.001,
        1190.0,
        5.0,
    )
    spot = rules_from_info(sample("rest_instruments_info_spot.json")["result"]["list"][0], "spot")
    assert (spot.tick_size, spot.qty_step, spot.min_qty, spot.min_notional) == (0.1, 0.000001, 0.0, 5.0)


def test_config_urls() -> None:
    assert BybitConfig().rest_base() == "https://api.bybit.com"
    assert BybitConfig(testnet=True).public_ws("spot") == "wss://stream-testnet.bybit.com/v5/public/spot"
    assert BybitConfig(testnet=True).private_ws() == "wss://stream-testnet.bybit.com/v5/private"
    custom = BybitConfig(rest_url="http://127.0.0.1:9/", ws_public_url="ws://h/{category}")
    assert custom.rest_base() == "http://127.0.0.1:9" and custom.public_ws("inverse") == "ws://h/inverse"
    with pytest.raises(ValueError, match="not a URL"):
        BybitConfig(rest_url="api.bybit.com")
    with pytest.raises(ValueError):
        BybitConfig(api_secret="x")  # type: ignore[call-arg]  # secrets are not config keys


def test_interval_arithmetic() -> None:
    assert check_interval("d") == "D"
    day = 86_400_000
    monday = 1_704_067_200_000  # 2024-01-01, a Monday
    assert floor_start(monday + 3 * day + 5, "W") == monday
    assert next_start(monday, "M") == monday + 31 * day
    assert prev_start(monday, "M") == monday - 31 * day
    assert ceil_start(monday + 1, "60") == monday + 3_600_000
    assert ceil_start(monday, "D") == monday
