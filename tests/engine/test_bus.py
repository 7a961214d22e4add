"""The bus: failure policy per mode, dispatch order, deterministic merging, live draining."""

from __future__ import annotations

import asyncio

import pytest
import structlog

from engine.bus import EventBus, HandlerError, merge_by_time, replay
from engine.clock import ReplayClock
from engine.events import Heartbeat


def boom(event: Heartbeat) -> None:
    raise RuntimeError("broken handler")


def test_backtest_mode_fails_loudly():
    bus = EventBus("backtest")
    seen: list[Heartbeat] = []
    bus.subscribe(Heartbeat, boom)
    bus.subscribe(Heartbeat, seen.append)
    with pytest.raises(HandlerError, match=r"handler boom failed on Heartbeat at ts_event=5: RuntimeError"):
        bus.publish(Heartbeat(5, 5, "x"))
    assert seen == []


def test_live_mode_logs_counts_and_continues():
    bus = EventBus("live")
    seen: list[Heartbeat] = []
    bus.subscribe(Heartbeat, boom)
    bus.subscribe(Heartbeat, seen.append)
    with structlog.testing.capture_logs() as logs:
        bus.publish(Heartbeat(1, 1, "x"))
        bus.publish(Heartbeat(2, 2, "x"))
    assert [e.ts_event for e in seen] == [1, 2]
    assert bus.errors["boom"] == 2
    assert [e["failures"] for e in logs if e["event"] == "handler failed"] == [1, 2]


def test_nested_publish_is_depth_first():
    bus = EventBus()
    order: list[str] = []

    class Ping:
        ts_event = 0

    def first(_: Heartbeat) -> None:
        order.append("first")
        bus.publish(Ping())

    bus.subscribe(Heartbeat, first)
    bus.subscribe(Ping, lambda _: order.append("nested"))
    bus.subscribe(Heartbeat, lambda _: order.append("second"))
    bus.publish(Heartbeat(0, 0, "x"))
    assert order == ["first", "nested", "second"]


def test_merge_by_time_breaks_ties_by_source_then_position():
    a = [Heartbeat(1, 0, "a1"), Heartbeat(3, 0, "a3"), Heartbeat(3, 0, "a3b")]
    b = [Heartbeat(1, 0, "b1"), Heartbeat(2, 0, "b2"), Heartbeat(3, 0, "b3")]
    merged = [e.source for e in merge_by_time(a, b)]
    assert merged == ["a1", "b1", "b2", "a3", "a3b", "b3"]
    clock = ReplayClock()
    bus = EventBus()
    times: list[int] = []
    bus.subscribe(Heartbeat, lambda e: times.append(clock.now_ns()))
    assert replay(bus, merge_by_time(a, b), clock) == 6
    assert times == [1, 1, 2, 3, 3, 3]


async def test_live_run_drains_posted_events_in_order():
    bus = EventBus("live")
    got: list[int] = []
    stop = asyncio.Event()

    def on(e: Heartbeat) -> None:
        got.append(e.ts_event)
        if len(got) == 3:
            stop.set()

    bus.subscribe(Heartbeat, on)
    runner = asyncio.create_task(bus.run(stop=stop))
    for t in (1, 2, 3):
        bus.post(Heartbeat(t, t, "ws"))
        await asyncio.sleep(0)
    await asyncio.wait_for(runner, 1)
    assert got == [1, 2, 3]


def test_log_masks_secret_fields_but_not_signals(capsys):
    from engine.logs import configure_logging

    configure_logging(json=True)
    try:
        structlog.get_logger("t").info("x", api_key="AKIA-123", sign="abc", signal=0.5, signals=[1])
    finally:
        configure_logging()
    line = capsys.readouterr().err
    assert "AKIA-123" not in line and '"sign": "***"' in line
    assert '"signal": 0.5' in line and '"signals": [1]' in line
