"""Stream health on a multi-day run, against the fake Bybit: a silent topic while pongs arrive, a
venue that drops every connection, the connection-rate limit, an auth refusal after a clock step,
stall detection within two ping periods, a failed subscribe ack, an unfillable gap, and REST down
at start."""

from __future__ import annotations

import asyncio
import time

import pytest
from structlog.testing import capture_logs

from connectors.bybit.connlimit import MAX_CONNECTIONS, WINDOW_S, ConnectionLimit
from connectors.bybit.kline_stream import KlineStream
from connectors.bybit.rest import BybitRest
from engine.events import Bar
from tests.connectors.bybit.conftest import fast_config, order, running_venue
from tests.connectors.bybit.test_bybit_kline_stream import MIN, T0, check_exact
from tests.fake_bybit import FakeBybit


async def run_while(stream: KlineStream, cond, timeout: float = 10.0) -> None:
    stop = asyncio.Event()
    task = asyncio.ensure_future(stream.run(stop))
    try:
        async with asyncio.timeout(timeout):
            while cond():
                if task.done():
                    task.result()
                await asyncio.sleep(0.005)
    finally:
        stop.set()
        stream.stop()
        await task


@pytest.mark.parametrize("heal", ["subscribe", "connect", "never"])
async def test_silent_topic_is_resubscribed_then_reconnected_then_degraded(
    fake: FakeBybit, heal: str
) -> None:
    fake.start_market(T0 + 1_000, step_ms=2_000, tick=0.01)  # a bar every 0.3 s
    seen: list[Bar] = []
    cfg = fast_config(fake, ping_interval=0.05, topic_timeout=0.4)
    stream = KlineStream(["BTCUSDT", "ETHUSDT"], "1", on_bar=seen.append, config=cfg)

    def eth() -> int:
        return sum(b.symbol == "ETHUSDT" for b in seen)

    async def scenario() -> None:
        while eth() < 2:
            await asyncio.sleep(0.01)
        fake.mute_topic("kline.1.ETHUSDT", heal)  # pongs and BTC keep flowing
        muted_at = eth()
        while stream.stats.resubscribes < 1:
            await asyncio.sleep(0.01)
        if heal == "subscribe":
            while eth() < muted_at + 2:
                await asyncio.sleep(0.01)
            return
        while stream.stats.silent_reconnects < 1:
            await asyncio.sleep(0.01)
        if heal == "connect":
            while eth() < muted_at + 2:
                await asyncio.sleep(0.01)
            return
        while not stream.stats.silent_topics:
            await asyncio.sleep(0.01)

    job = asyncio.ensure_future(scenario())
    await run_while(stream, lambda: not job.done(), timeout=15.0)
    job.result()
    st = stream.stats
    assert st.resubscribes >= 1
    if heal == "subscribe":
        assert st.silent_reconnects == 0 and not st.degraded
        check_exact(fake, "linear", seen, ["BTCUSDT", "ETHUSDT"])  # the bars missed meanwhile: backfilled
    elif heal == "connect":
        assert st.silent_reconnects == 1 and not st.degraded
        check_exact(fake, "linear", seen, ["BTCUSDT", "ETHUSDT"])
    else:
        assert st.silent_topics == {"kline.1.ETHUSDT"} and st.degraded


async def test_a_venue_that_drops_every_connection_meets_a_growing_backoff(fake: FakeBybit) -> None:
    fake.faults.drop_after_subscribe = True
    cfg = fast_config(fake, backoff_initial=0.02, backoff_max=5.0, healthy_after=1.0)
    stream = KlineStream(["BTCUSDT"], "1", on_bar=lambda b: None, config=cfg)
    began = time.monotonic()
    await run_while(stream, lambda: time.monotonic() - began < 1.5, timeout=5.0)
    gaps = [b - a for a, b in zip(fake.connect_times, fake.connect_times[1:], strict=False)]
    # 0.02 * 2^k, jittered to [0.5, 1]x: 1.5 s hold about 6 connections, not hundreds
    assert 3 <= fake.connections <= 8, fake.connections
    assert all(gaps[k + 2] > gaps[k] for k in range(len(gaps) - 2)), gaps


async def test_connection_limit_is_500_in_any_5_minutes() -> None:
    assert (MAX_CONNECTIONS, WINDOW_S) == (500, 300.0)
    now = [1024.0]  # binary fractions: the arithmetic below is exact
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    limit = ConnectionLimit(clock=lambda: now[0], sleep=sleep)
    for k in range(500):
        now[0] = 1024.0 + k * 0.125  # 500 connections in 62.4 s: all let through at once
        await limit.acquire()
    assert slept == []
    await limit.acquire()  # the 501st waits until the first is 300 s old
    assert slept == [300.0 - 62.375] and now[0] == 1324.0
    assert len(limit.attempts) == 500 and limit.attempts[0] == 1024.125
    now[0] = 1324.0625  # the second one is still inside the window: wait again
    await limit.acquire()
    assert slept[-1] == 0.0625 and now[0] == 1324.125


async def test_auth_refused_after_a_clock_step_resyncs_and_comes_back(fake: FakeBybit) -> None:
    async with running_venue(fake) as h:
        stream = h.venue.stream
        assert stream is not None
        fake.skew_ms += 15_000  # the venue's clock steps 15 s ahead: expires is in its past
        await fake.drop_private()
        await h.until(lambda: stream.auth_failures >= 1, timeout=5.0)
        await h.until(lambda: stream.connected, timeout=5.0)
        assert abs(h.venue.rest.offset_ms - 15_000) < 1_000
        h.venue.submit(order("after-step", qty=0.01))
        await h.settle()
        assert [f.client_id for f in h.fills] == ["after-step"]


async def test_a_stalled_connection_is_dropped_within_two_ping_periods(fake: FakeBybit) -> None:
    period = 0.2
    fake.start_market(T0 + 1_000, step_ms=10_000, tick=0.02)
    fake.faults.stall_before_confirm |= {T0 + 3 * MIN}
    stream = KlineStream(
        ["BTCUSDT"], "1", on_bar=lambda b: None, config=fast_config(fake, ping_interval=period)
    )
    with capture_logs() as logs:
        await run_while(stream, lambda: stream.stats.stalls < 1, timeout=10.0)
    silent = [e["silent_s"] for e in logs if e["event"] == "kline stream silent, dropping connection"]
    assert silent and 2 * period <= silent[0] < 2 * period + 0.08, silent


async def test_failed_subscribe_ack_is_retried_and_the_stream_goes_on(fake: FakeBybit) -> None:
    fake.faults.fail_subscribe = 2
    fake.start_market(T0 + 1_000, step_ms=15_000, tick=0.005)
    seen: list[Bar] = []
    stream = KlineStream(["BTCUSDT"], "1", on_bar=seen.append, config=fast_config(fake))
    await run_while(stream, lambda: len(seen) < 5)
    assert stream.stats.subscribe_failures == 2 and stream.stats.connections == 1
    check_exact(fake, "linear", seen, ["BTCUSDT"])


async def test_unfillable_gap_is_reported_retried_and_resolved(fake: FakeBybit) -> None:
    fake.start_market(T0 + 1_000, step_ms=15_000, tick=0.01)
    fake.faults.skip_confirm |= {T0 + 3 * MIN}
    fake.faults.rest += [("/v5/market/kline", "500")] * 30  # REST down for the gap's retries
    gaps: list[dict] = []
    seen: list[Bar] = []
    cfg = fast_config(fake, max_retries=0, backoff_max=0.05)
    stream = KlineStream(
        ["BTCUSDT"], "1", on_bar=seen.append, config=cfg, on_gap=gaps.append, max_backfill_attempts=3
    )
    state: dict[str, bool] = {}

    def not_yet() -> bool:
        if stream.stats.open_gaps:
            state["was_open"] = True  # degraded while the gap is open
        return len(gaps) < 2

    await run_while(stream, not_yet, timeout=10.0)
    assert state.get("was_open")
    assert [g["state"] for g in gaps] == ["open", "filled late"]
    assert gaps[0]["first_missing_ms"] == T0 + 3 * MIN and gaps[1]["bars"] == 1
    assert not stream.stats.degraded
    starts = [b.ts_open // 1_000_000 for b in seen]
    assert T0 + 3 * MIN not in starts and starts == sorted(set(starts))


async def test_rest_down_at_start_is_waited_for_and_said_truthfully(fake: FakeBybit) -> None:
    rest = BybitRest(fast_config(fake, rest_url="http://127.0.0.1:9", max_retries=0))
    began = time.monotonic()
    with pytest.raises(Exception, match=r"after 0\.\d+s") as info:
        await rest.instruments("linear")
    await rest.close()
    assert time.monotonic() - began < 1.0 and "ClientConnectorError" in str(info.value)
    fake.start_market(T0 + 1_000, step_ms=15_000, tick=0.005)
    fake.faults.rest += [("/v5/market/instruments-info", "500")] * 3
    seen: list[Bar] = []
    stream = KlineStream(["BTCUSDT"], "1", on_bar=seen.append, config=fast_config(fake, max_retries=0))
    await run_while(stream, lambda: len(seen) < 2)
    assert stream.stats.rest_retries == 3
