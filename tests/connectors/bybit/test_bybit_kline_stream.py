"""The live kline stream against the fake Bybit with every fault, plus frame-level bad input."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest

from connectors.bybit.errors import InvalidRequest
from connectors.bybit.kline_stream import KlineStream, SubscriptionError
from engine.bus import EventBus
from engine.events import Bar
from tests.connectors.bybit.conftest import fast_config
from tests.fake_bybit import FakeBybit, Instrument
from tests.fake_bybit.server import sample

MIN = 60_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % MIN


def as_rows(bars: list[Bar]) -> list[tuple]:
    return [(b.ts_open // 1_000_000, b.open, b.high, b.low, b.close, b.volume) for b in bars]


async def run_until(stream: KlineStream, done: Callable[[], bool], timeout: float = 20.0) -> None:
    stop = asyncio.Event()
    task = asyncio.ensure_future(stream.run(stop))
    try:
        async with asyncio.timeout(timeout):
            while not done():
                if task.done():
                    task.result()
                await asyncio.sleep(0.005)
    finally:
        stop.set()
        stream.stop()
        await task


def check_exact(
    fake: FakeBybit, category: str, bars: list[Bar], symbols: list[str], interval: str = "1"
) -> None:
    """Per symbol: the server's confirmed bars, contiguous, in order, each once, with the right
    event stamps (close time) and interval code."""
    for symbol in symbols:
        mine = [b for b in bars if b.symbol == symbol]
        starts = [b.ts_open // 1_000_000 for b in mine]
        assert starts, symbol
        assert as_rows(mine) == fake.series(category, symbol, interval, starts[0], starts[-1]), symbol
        assert all(b.ts_event == b.ts_open + MIN * 1_000_000 and b.interval == interval for b in mine)


async def test_linear_stream_with_every_fault_yields_exactly_the_confirmed_bars(fake: FakeBybit) -> None:
    bar = [T0 + k * MIN for k in range(200)]
    f = fake.faults
    f.drop_before_confirm |= {bar[4]}
    f.stall_before_confirm |= {bar[16]}
    f.skip_confirm |= {bar[32], bar[33]}
    f.duplicate_confirm |= {bar[40]}
    f.malformed_before_confirm |= {bar[46]}
    f.rest += [("/v5/market/kline", "10006"), ("/v5/market/kline", "500")]
    fake.start_market(T0 + 1_000, step_ms=15_000, tick=0.005)
    bus = EventBus("live")
    seen: list[Bar] = []
    bus.subscribe(Bar, seen.append)
    stop_bus = asyncio.Event()
    dispatcher = asyncio.ensure_future(bus.run(None, stop_bus))
    symbols = ["BTCUSDT", "ETHUSDT"]
    stream = KlineStream(symbols, "1", bus=bus, config=fast_config(fake))
    await run_until(stream, lambda: sum(b.symbol == "BTCUSDT" for b in seen) >= 56)
    await asyncio.sleep(0.01)
    stop_bus.set()
    await dispatcher
    check_exact(fake, "linear", seen, symbols)
    st = stream.stats
    assert st.reconnects >= 2 and st.connections >= 3  # the drop and the stall
    assert st.backfilled >= 4 and st.gaps >= 3
    assert st.malformed >= 4  # four bad frames per topic were sent at bar 46
    assert fake.faults.drop_before_confirm == set() and fake.faults.stall_before_confirm == set()


async def test_spot_stream_batches_subscriptions_and_survives_faults() -> None:
    names = [f"C{k:02d}USDT" for k in range(12)]
    instruments = [Instrument(n, "spot", 10.0 + k, 0.001, 0.01, 0.0, 5.0) for k, n in enumerate(names)]
    async with FakeBybit(instruments=instruments) as fake:
        bar = [T0 + k * MIN for k in range(100)]
        fake.faults.duplicate_confirm |= {bar[3], bar[4]}
        fake.faults.skip_confirm |= {bar[6]}
        fake.faults.drop_before_confirm |= {bar[9]}
        fake.start_market(T0 + 1_000, step_ms=15_000, tick=0.005)
        seen: list[Bar] = []
        stream = KlineStream(names, "1", on_bar=seen.append, category="spot", config=fast_config(fake))
        await run_until(stream, lambda: min(sum(b.symbol == n for b in seen) for n in names) >= 14)
        sizes = [len(args) for cat, args in fake.subscriptions if cat == "spot"]
    assert max(sizes) <= 10 and sum(sizes) % 12 == 0
    check_exact(fake, "spot", seen, names)
    assert stream.stats.duplicates >= 12


async def test_history_from_start_ms_then_live(fake: FakeBybit) -> None:
    now = T0 + 30 * MIN + 1_000
    fake.start_market(now, step_ms=15_000, tick=0.005)
    seen: list[Bar] = []
    stream = KlineStream(["ETHUSDT"], "1", on_bar=seen.append, config=fast_config(fake), start_ms=T0)
    stream.rest.offset_ms = now - stream.rest.now_ms()  # the fake's market clock is virtual
    await run_until(stream, lambda: len(seen) >= 36)
    assert seen[0].ts_open == T0 * 1_000_000
    check_exact(fake, "linear", seen, ["ETHUSDT"])


async def test_unknown_symbol_is_a_clear_error(fake: FakeBybit) -> None:
    stream = KlineStream(["BTCUSDT", "NOPEUSDT"], "1", on_bar=lambda b: None, config=fast_config(fake))
    with pytest.raises(InvalidRequest, match=r"unknown linear symbol.*NOPEUSDT"):
        await stream.run()
    refused = KlineStream(
        ["NOPEUSDT"], "1", on_bar=lambda b: None, config=fast_config(fake), validate_symbols=False
    )
    with pytest.raises(SubscriptionError, match=r"handler not found,topic:kline\.1\.NOPEUSDT"):
        await asyncio.wait_for(refused.run(), 5)
    with pytest.raises(ValueError, match="bad interval"):
        KlineStream(["BTCUSDT"], "2", on_bar=lambda b: None)


def test_frames_of_every_shape_are_handled_without_raising() -> None:
    seen: list[Bar] = []
    stream = KlineStream(["BTCUSDT"], "5", on_bar=seen.append, validate_symbols=False)
    push = sample("ws_kline_push_linear_5m.json")  # the official example: a bar in progress
    stream.handle_frame(json.dumps(push), 1)
    assert seen == [] and stream.stats.malformed == 0
    start = push["data"][0]["start"]
    closed = {**push["data"][0], "confirm": True}
    new = {**push["data"][0], "start": start + 300_000, "end": start + 599_999, "volume": "0"}
    boundary = json.dumps({"topic": "kline.5.BTCUSDT", "data": [closed, new], "ts": 1, "type": "snapshot"})
    stream.handle_frame(boundary, 2)
    stream.handle_frame(boundary, 3)  # a repeated confirm is published once
    assert [(b.ts_open, b.close, b.ts_init) for b in seen] == [(start * 1_000_000, 16677.0, 2)]
    assert stream.stats.duplicates == 1
    for name in (
        "ws_pong_public_spot.json",
        "ws_pong_public_linear_inverse.json",
        "ws_pong_private.json",
        "ws_subscribe_ack_public_spot.json",
        "ws_subscribe_ack_public_linear_inverse.json",
    ):
        stream.handle_frame(json.dumps(sample(name)), 4)
    assert stream.stats.control == 5 and stream.stats.malformed == 0
    bad = [
        "{",
        "[]",
        "null",
        '"x"',
        json.dumps({"topic": "kline.5.BTCUSDT", "data": [{"confirm": True}]}),
        json.dumps(
            {"topic": "kline.5.BTCUSDT", "data": [{"start": start + 300_000, "confirm": True, "open": "x"}]}
        ),
        json.dumps({"topic": "kline.5.BTCUSDT", "data": {"start": 1}}),
        json.dumps({"hello": 1}),
    ]
    for frame in bad:
        stream.handle_frame(frame, 5)
    assert stream.stats.malformed == len(bad) and len(seen) == 1
    # a refusal that names no topic of this stream is retried, not fatal; the last topic refused is
    refusal = {"success": False, "op": "subscribe", "conn_id": "c"}
    stream.handle_frame(json.dumps({**refusal, "ret_msg": "error:handler not found,topic:x"}), 6)
    assert stream.stats.subscribe_failures == 1 and stream._resub == ["kline.5.BTCUSDT"]
    with pytest.raises(SubscriptionError):
        stream.handle_frame(
            json.dumps({**refusal, "ret_msg": "error:handler not found,topic:kline.5.BTCUSDT"}), 6
        )
    stream.handle_frame(
        json.dumps({"success": False, "ret_msg": "error:already subscribed,topic:x", "op": "subscribe"}), 7
    )


async def test_quiet_connection_kept_alive_by_json_pongs(fake: FakeBybit) -> None:
    """No market data at all, only pongs: the connection must not be declared dead."""
    stream = KlineStream(["BTCUSDT"], "1", on_bar=lambda b: None, config=fast_config(fake))
    stop = asyncio.Event()
    task = asyncio.ensure_future(stream.run(stop))
    await asyncio.sleep(0.6)  # twelve ping periods
    stop.set()
    stream.stop()
    await task
    assert stream.stats.connections == 1 and stream.stats.reconnects == 0
    assert stream.stats.control >= 8  # the subscribe ack and the pongs


async def test_a_quiet_market_says_it_is_waiting_once(
    fake: FakeBybit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Subscribed with no bar yet: one info line says so, so a quiet market does not look like a hang."""
    from connectors.bybit import kline_stream

    logged: list[tuple[str, str, dict]] = []

    class Recorder:
        def __getattr__(self, level: str) -> Callable[..., None]:
            return lambda event, **kw: logged.append((level, event, kw))

    monkeypatch.setattr(kline_stream, "log", Recorder())
    stream = KlineStream(["BTCUSDT", "ETHUSDT"], "1", on_bar=lambda b: None, config=fast_config(fake))
    stop = asyncio.Event()
    task = asyncio.ensure_future(stream.run(stop))
    await asyncio.sleep(0.6)
    stop.set()
    stream.stop()
    await task
    waiting = [e for e in logged if e[1] == "connected, waiting for the first closed bar"]
    assert waiting == [("info", "connected, waiting for the first closed bar", {"topics": 2})]
