"""Live klines from Bybit's public websocket, published as closed :class:`~engine.events.Bar` events.

Guarantee: for each (symbol, interval) the sink sees every closed bar exactly once, in start
order, without holes. The websocket alone cannot promise that (connections drop, confirmed bars
are sometimes repeated or never sent), so the stream keeps, per topic, the start of the last bar it
published. A confirmed bar right after it is published at once; an older one is a duplicate and is
dropped; a later one (or any update of a later bar) means bars were missed: they are fetched through
REST, and later confirmed bars wait until the gap is filled.

The hot path is a ``json.loads`` (orjson when installed) and a few dict lookups per frame; a
:class:`Bar` is built only for confirmed elements.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from connectors.bybit.config import BybitConfig
from connectors.bybit.connlimit import limit_for
from connectors.bybit.errors import BybitError, InvalidRequest
from connectors.bybit.intervals import check_interval, floor_start, interval_ms, next_start, prev_start
from connectors.bybit.rest import BybitRest, Kline
from engine.bus import EventBus
from engine.events import Bar

try:  # optional: about three times faster than json on kline frames
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - exercised only where orjson is absent
    _loads = json.loads

log = structlog.get_logger("connectors.bybit.kline_stream")

_MS = 1_000_000
SPOT_ARGS_PER_REQUEST = 10
MAX_ARGS_CHARS = 20_000


class SubscriptionError(BybitError):
    """Bybit refused a topic (unknown symbol or interval): retrying cannot help."""


@dataclass
class StreamStats:
    """Counters a daemon can export; every skipped frame or element is counted somewhere."""

    frames: int = 0
    bars: int = 0
    backfilled: int = 0
    duplicates: int = 0
    malformed: int = 0
    control: int = 0
    connections: int = 0
    reconnects: int = 0
    gaps: int = 0
    venue_holes: int = 0
    backfill_errors: int = 0
    subscribe_failures: int = 0
    resubscribes: int = 0
    silent_reconnects: int = 0
    stalls: int = 0
    rest_retries: int = 0
    silent_topics: set[str] = field(default_factory=set)
    """Topics still silent after a resubscription and a reconnect: the stream is degraded."""
    refused_topics: set[str] = field(default_factory=set)
    open_gaps: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Gaps REST could not fill, by topic: (first missing start, first bar after it), ms."""

    @property
    def degraded(self) -> bool:
        return bool(self.silent_topics or self.refused_topics or self.open_gaps)


@dataclass(slots=True, eq=False)
class _Series:
    """Per-topic state: the last published bar start and the confirmed bars waiting on a gap."""

    topic: str
    symbol: str
    interval: str
    last: int | None = None
    pending: dict[int, Bar] = field(default_factory=dict)
    fill_to: int = -1
    filler: asyncio.Task[None] | None = None
    opened: int = -1
    rx_ns: int = 0
    """Local time of the topic's last message (its silence is measured from here)."""
    stage: int = 0
    """Silence handling so far: 0 none, 1 resubscribed, 2 reconnected, 3 degraded."""
    stage_ns: int = 0
    refill: asyncio.Task[None] | None = None


class KlineStream:
    """Subscribe to ``kline.{interval}.{symbol}`` for every symbol × interval and publish closed
    bars to ``bus`` (``bus.post``) or to ``on_bar``.

    ``start_ms``: also publish the closed bars from this time on (fetched through REST) before the
    live ones; by default publishing starts with the bar in progress at subscription.
    ``on_open(symbol, start_ms, open, ts_init)`` hears the first update of each new bar (paper
    trading fills market orders at that price).
    Run with ``await stream.run(stop_event)``; it reconnects until ``stop_event`` is set and raises
    only for errors that retrying cannot fix (a topic Bybit refuses).
    """

    def __init__(
        self,
        symbols: Sequence[str],
        intervals: str | Sequence[str],
        *,
        bus: EventBus | None = None,
        on_bar: Callable[[Bar], None] | None = None,
        config: BybitConfig | None = None,
        category: str | None = None,
        ws_url: str | None = None,
        rest: BybitRest | None = None,
        start_ms: int | None = None,
        validate_symbols: bool = True,
        max_backfill_attempts: int = 8,
        on_open: Callable[[str, int, float, int], None] | None = None,
        on_gap: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if bus is None and on_bar is None:
            raise ValueError("KlineStream needs a bus or an on_bar callback")
        self.config = config or BybitConfig()
        self.category = category or self.config.category
        self.url = ws_url or self.config.public_ws(self.category)
        self._emit: Callable[[Bar], None] = on_bar if on_bar is not None else bus.post  # type: ignore[union-attr]
        self._on_open = on_open
        self._on_gap = on_gap
        self._rest = rest
        self._own_rest = rest is None
        self.validate_symbols = validate_symbols
        self.max_backfill_attempts = max_backfill_attempts
        ivs = [intervals] if isinstance(intervals, str) else list(intervals)
        syms = [s.strip().upper() for s in symbols if s.strip()]
        if not syms:
            raise ValueError("no symbols to stream")
        self.series: dict[str, _Series] = {}
        for interval, symbol in itertools.product((check_interval(i) for i in ivs), syms):
            topic = f"kline.{interval}.{symbol}"
            s = _Series(topic, symbol, interval)
            if start_ms is not None:
                s.last = prev_start(floor_start(start_ms, interval), interval)
            self.series[topic] = s
        self.stats = StreamStats()
        self.last_rx = 0.0
        self._ws: ClientConnection | None = None
        self._stop = asyncio.Event()
        self._req = itertools.count(1)
        self._req_topics: dict[str, list[str]] = {}
        self._resub: list[str] = []
        self._announced = False
        self._limit = limit_for(self.url)

    @property
    def topics(self) -> list[str]:
        return list(self.series)

    @property
    def rest(self) -> BybitRest:
        if self._rest is None:
            self._rest = BybitRest(self.config)
        return self._rest

    # running -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Stream until ``stop`` is set. Reconnects with exponential backoff and jitter."""
        self._stop = stop = stop or asyncio.Event()
        cfg = self.config
        failures = 0
        try:
            await self._prepare()
            while not stop.is_set():
                await self._limit.acquire()
                healthy = await self._connection()
                if stop.is_set():
                    break
                failures = 0 if healthy else failures + 1
                delay = min(cfg.backoff_initial * 2 ** min(failures, 30), cfg.backoff_max)
                delay *= 0.5 + random.random() / 2
                self.stats.reconnects += 1
                log.warning("kline stream reconnecting", url=self.url, delay=round(delay, 3))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        finally:
            for s in self.series.values():
                for task in (s.filler, s.refill):
                    if task is not None:
                        task.cancel()
            if self._own_rest and self._rest is not None:
                await self._rest.close()

    def stop(self) -> None:
        self._stop.set()
        if self._ws is not None:
            self._abort(self._ws)

    async def _prepare(self) -> None:
        """Symbol check and history through REST before the first connection. REST that does
        not answer (down, unreachable) is waited for, with backoff: a refusal of the symbols is
        final, an outage is not."""
        cfg = self.config
        delay = cfg.backoff_initial
        while not self._stop.is_set():
            try:
                if self.validate_symbols:
                    await self._validate()
                for s in self.series.values():
                    if s.last is not None:  # start_ms given: fetch history before the live bars
                        self._want_fill(s, floor_start(self.rest.now_ms(), s.interval) - 1)
                return
            except InvalidRequest:
                raise
            except (BybitError, OSError, TimeoutError) as exc:
                if isinstance(exc, BybitError) and not exc.retryable:
                    raise
                self.stats.rest_retries += 1
                log.warning("Bybit REST not answering; retrying", error=str(exc), retry_in_s=round(delay, 3))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                delay = min(delay * 2, cfg.backoff_max)

    async def _validate(self) -> None:
        """Refuse unknown symbols before subscribing: Bybit would ack them with an error, and
        one failed topic has been reported to silence the others on its connection."""
        known = await self.rest.instruments(self.category)
        unknown = sorted({s.symbol for s in self.series.values() if s.symbol not in known})
        if unknown:
            raise InvalidRequest(f"unknown {self.category} symbol(s): {', '.join(unknown)}")

    async def _connection(self) -> bool:
        """One connection's life; True if it stayed up ``healthy_after`` seconds (only then does
        the reconnect backoff start again from its first step: a venue that accepts and drops
        every connection meets a growing delay)."""
        cfg = self.config
        opened = time.monotonic()
        try:
            async with connect(
                self.url,
                ping_interval=None,  # Bybit wants JSON pings; protocol pings alone get dropped
                close_timeout=min(cfg.ping_interval, 2.0),
                open_timeout=cfg.connect_timeout,
                compression=None,
                max_queue=256,
            ) as ws:
                self._ws = ws
                self.stats.connections += 1
                self.last_rx = opened = time.monotonic()
                now_ns = time.time_ns()
                for s in self.series.values():
                    s.rx_ns = now_ns  # each topic's silence counts from its subscription
                self._resub.clear()
                heart = asyncio.ensure_future(self._heartbeat(ws))
                try:
                    for request in self._subscribe_requests(
                        [t for t in self.series if t not in self.stats.refused_topics]
                    ):
                        await ws.send(request)
                    await self._read(ws)
                finally:
                    heart.cancel()
                    self._ws = None
        except SubscriptionError:
            raise
        except (OSError, TimeoutError, WebSocketException) as exc:
            if not self._stop.is_set():
                log.warning(
                    "kline stream connection lost", url=self.url, error=f"{type(exc).__name__}: {exc}"
                )
        return time.monotonic() - opened >= cfg.healthy_after

    def _subscribe_requests(self, topics: list[str], op: str = "subscribe") -> Iterable[str]:
        per = SPOT_ARGS_PER_REQUEST if self.category == "spot" else 500
        batch: list[str] = []
        size = 0
        for topic in topics:
            if batch and (len(batch) >= per or size + len(topic) > MAX_ARGS_CHARS):
                yield self._sub(batch, op)
                batch, size = [], 0
            batch.append(topic)
            size += len(topic) + 3
        if batch:
            yield self._sub(batch, op)

    def _sub(self, topics: list[str], op: str = "subscribe") -> str:
        req_id = f"{op[:5]}-{next(self._req)}"
        if op == "subscribe":
            self._req_topics[req_id] = topics
            if len(self._req_topics) > 10_000:
                self._req_topics.pop(next(iter(self._req_topics)))
        return json.dumps({"req_id": req_id, "op": op, "args": topics})

    def topic_timeout(self, s: _Series) -> float:
        """Seconds a topic may stay silent: its interval (Bybit confirms every bar, so a live
        topic speaks at least that often) plus a margin, unless configured."""
        return self.config.topic_timeout or interval_ms(s.interval) / 1000.0 + 30.0

    async def _heartbeat(self, ws: ClientConnection) -> None:
        """JSON ping every ``ping_interval``; a connection silent for two ping periods is dead
        (woken at that deadline, not at the next ping, so detection never takes longer). Each
        ping period it also watches every topic's silence and sends resubscriptions due."""
        period = self.config.ping_interval
        ping = json.dumps({"req_id": "ping", "op": "ping"})
        next_ping = time.monotonic() + period
        while True:
            now = time.monotonic()
            await asyncio.sleep(max(min(next_ping, self.last_rx + 2 * period) - now, 0.0))
            now = time.monotonic()
            silent = now - self.last_rx
            if silent >= 2 * period:
                self.stats.stalls += 1
                log.warning("kline stream silent, dropping connection", silent_s=round(silent, 3))
                self._abort(ws)
                return
            if now < next_ping:
                continue
            next_ping = now + period
            with contextlib.suppress(Exception):
                await ws.send(ping)
                if self._resub:
                    topics, self._resub = self._resub, []
                    for request in self._subscribe_requests(topics):
                        await ws.send(request)
            if self._watch_topics(ws):
                return

    def _watch_topics(self, ws: ClientConnection) -> bool:
        """A topic silent past its timeout while the connection lives (pongs arrive): first
        resubscribe it, then reconnect, then mark the stream degraded (and keep resubscribing).
        True when the connection is being dropped."""
        now = time.time_ns()
        for s in self.series.values():
            if s.topic in self.stats.refused_topics:
                continue
            limit = self.topic_timeout(s) * 1e9
            since = max(s.rx_ns, s.stage_ns)
            if now - since < limit:
                continue
            silent_s = round((now - s.rx_ns) / 1e9, 3)
            s.stage_ns = now
            if s.stage == 0 or s.stage >= 3:
                s.stage = max(s.stage, 1)
                self.stats.resubscribes += 1
                log.warning("kline topic silent; resubscribing", topic=s.topic, silent_s=silent_s)
                self._resub_now(ws, s.topic)
            elif s.stage == 1:
                s.stage = 2
                self.stats.silent_reconnects += 1
                log.warning("kline topic still silent; reconnecting", topic=s.topic, silent_s=silent_s)
                self._abort(ws)
                return True
            else:
                s.stage = 3
                self.stats.silent_topics.add(s.topic)
                log.error("kline topic silent after a reconnect; degraded", topic=s.topic, silent_s=silent_s)
        return False

    def _resub_now(self, ws: ClientConnection, topic: str) -> None:
        async def send() -> None:
            with contextlib.suppress(Exception):
                await ws.send(self._sub([topic], "unsubscribe"))
                await ws.send(self._sub([topic]))

        task = asyncio.ensure_future(send())
        task.add_done_callback(lambda t: None)

    @staticmethod
    def _abort(ws: ClientConnection) -> None:
        transport = getattr(ws, "transport", None)
        if transport is not None:
            transport.abort()

    async def _read(self, ws: ClientConnection) -> None:
        stop = self._stop
        handle = self.handle_frame
        monotonic = time.monotonic
        now_ns = time.time_ns
        async for raw in ws:
            self.last_rx = monotonic()
            handle(raw, now_ns())
            if stop.is_set():
                return

    # frames --------------------------------------------------------------------------------

    def handle_frame(self, raw: str | bytes, ts_init: int) -> None:
        """Parse one frame and act on every element of its ``data``; never raises for bad
        input (it is logged and counted), only :class:`SubscriptionError` for refused topics."""
        stats = self.stats
        stats.frames += 1
        try:
            msg = _loads(raw)
            topic = msg.get("topic")
        except (ValueError, AttributeError):
            self._malformed(raw, "not a JSON object")
            return
        series = self.series.get(topic) if topic is not None else None
        if series is None:
            self._control(msg, raw)
            return
        data = msg.get("data")
        if not isinstance(data, list):
            self._malformed(raw, "data is not a list")
            return
        series.rx_ns = ts_init
        if series.stage:
            self._spoke(series)
        for k in data:
            try:
                start = k["start"]
                if start.__class__ is not int:
                    raise TypeError("start is not an integer")
                if k["confirm"] is True:
                    self._confirmed(series, k, start, ts_init)
                else:
                    self._progress(series, start)
                    if self._on_open is not None and start > series.opened:
                        series.opened = start
                        self._on_open(series.symbol, start, float(k["open"]), ts_init)
            except (KeyError, TypeError, ValueError) as exc:
                self._malformed(raw, f"bad kline element: {type(exc).__name__}: {exc}")

    def _spoke(self, s: _Series) -> None:
        if s.stage >= 2:
            log.info("kline topic speaks again", topic=s.topic)
        s.stage = 0
        s.stage_ns = 0
        self.stats.silent_topics.discard(s.topic)

    def _malformed(self, raw: str | bytes, why: str) -> None:
        self.stats.malformed += 1
        log.warning("malformed frame skipped", reason=why, frame=str(raw)[:160], count=self.stats.malformed)

    def _control(self, msg: Any, raw: str | bytes) -> None:
        if not isinstance(msg, dict):
            self._malformed(raw, "not a JSON object")
            return
        self.stats.control += 1
        if msg.get("ret_msg") == "pong" or msg.get("op") in ("pong", "ping"):
            return
        if msg.get("op") in ("subscribe", "unsubscribe") or "success" in msg:
            if msg.get("success") is False and msg.get("op") != "unsubscribe":
                self._refused(msg)
            elif msg.get("op") == "subscribe" and not self.stats.bars and not self._announced:
                self._announced = True  # a quiet market is not a hang: say what we wait for
                log.info("connected, waiting for the first closed bar", topics=len(self.series))
            return
        if "topic" in msg:
            log.debug("frame for an unknown topic ignored", topic=msg.get("topic"))
            return
        self._malformed(raw, "unrecognised message")

    def _refused(self, msg: dict[str, Any]) -> None:
        """A failed subscribe ack. A topic Bybit does not know ("handler not found") is dropped
        (the stream is degraded; with no topic left it ends); any other refusal is retried at the
        next ping, so one bad answer does not end the stream."""
        reason = str(msg.get("ret_msg", ""))
        if "already subscribed" in reason:
            return
        self.stats.subscribe_failures += 1
        topics = self._req_topics.get(str(msg.get("req_id") or ""), [])
        named = reason.rpartition("topic:")[2].strip() if "topic:" in reason else ""
        if "handler not found" in reason and named in self.series:
            self.stats.refused_topics.add(named)
            log.error("Bybit refused a topic; streaming the others", topic=named, reason=reason)
            retry = [t for t in topics if t != named]
            if len(self.stats.refused_topics) == len(self.series):
                raise SubscriptionError(f"Bybit refused the subscription: {reason}", path=self.url)
        else:
            retry = topics or [t for t in self.series if t not in self.stats.refused_topics]
            log.warning("subscription refused; retrying", reason=reason, topics=len(retry))
        self._resub.extend(t for t in retry if t not in self._resub)

    def _progress(self, s: _Series, start: int) -> None:
        """An update of the bar in progress. Bars before it have closed: any not yet published
        were missed (their confirm never came, or came while disconnected)."""
        last = s.last
        if last is None:
            s.last = prev_start(start, s.interval)
            return
        if start > last and next_start(last, s.interval) < start:
            self._want_fill(s, prev_start(start, s.interval))

    def _confirmed(self, s: _Series, k: dict[str, Any], start: int, ts_init: int) -> None:
        last = s.last
        if last is not None and start <= last:
            self.stats.duplicates += 1
            return
        bar = Bar(
            next_start(start, s.interval) * _MS,
            ts_init,
            s.symbol,
            s.interval,
            float(k["open"]),
            float(k["high"]),
            float(k["low"]),
            float(k["close"]),
            float(k["volume"]),
            start * _MS,
        )
        if last is None or next_start(last, s.interval) == start:
            self._publish(s, bar, start)
        else:
            s.pending[start] = bar
            self._want_fill(s, prev_start(start, s.interval))

    def _publish(self, s: _Series, bar: Bar, start: int) -> None:
        self._emit(bar)
        self.stats.bars += 1
        s.last = start
        if s.pending:
            self._drain(s)

    def _drain(self, s: _Series) -> None:
        while s.pending and s.last is not None:
            nxt = next_start(s.last, s.interval)
            bar = s.pending.pop(nxt, None)
            if bar is None:
                for old in [t for t in s.pending if t <= s.last]:
                    del s.pending[old]
                    self.stats.duplicates += 1
                return
            self._emit(bar)
            self.stats.bars += 1
            s.last = nxt

    # gap filling ---------------------------------------------------------------------------

    def _want_fill(self, s: _Series, upto: int) -> None:
        """Make sure bars up to ``upto`` (a start, inclusive) are being fetched through REST."""
        if upto > s.fill_to:
            s.fill_to = upto
        if s.filler is None or s.filler.done():
            self.stats.gaps += 1
            s.filler = asyncio.ensure_future(self._fill(s))

    async def _fill(self, s: _Series) -> None:
        attempts = 0
        cfg = self.config
        while s.last is not None and next_start(s.last, s.interval) <= s.fill_to and not self._stop.is_set():
            first = next_start(s.last, s.interval)
            upto = s.fill_to
            try:
                klines = await self.rest.klines(self.category, s.symbol, s.interval, first, upto)
            except BybitError as exc:
                klines = []
                self.stats.backfill_errors += 1
                log.warning("kline backfill failed", topic=s.topic, error=str(exc))
            progressed = self._apply_backfill(s, klines, attempts + 1 >= self.max_backfill_attempts)
            if progressed:
                attempts = 0
                continue
            attempts += 1
            delay = min(cfg.backoff_initial * 2 ** min(attempts, 30), cfg.backoff_max)
            await asyncio.sleep(delay * (0.5 + random.random() / 2))

    def _apply_backfill(self, s: _Series, klines: list[Kline], give_up: bool) -> bool:
        """Publish fetched bars that continue the series. A fetched bar beyond the next expected
        one means the venue has none in between (a maintenance hole): say so and go on.
        With ``give_up``, a gap REST still cannot fill is skipped so later bars are not held
        forever."""
        progressed = False
        ts_init = time.time_ns()
        for k in klines:
            assert s.last is not None
            expected = next_start(s.last, s.interval)
            if k.start < expected:
                continue
            if k.start > expected:
                self.stats.venue_holes += 1
                log.warning(
                    "venue has no bars in range", topic=s.topic, first_missing=expected, next_bar=k.start
                )
            bar = Bar(
                next_start(k.start, s.interval) * _MS,
                ts_init,
                s.symbol,
                s.interval,
                k.open,
                k.high,
                k.low,
                k.close,
                k.volume,
                k.start * _MS,
            )
            self.stats.backfilled += 1
            self._publish(s, bar, k.start)
            progressed = True
        if not progressed and give_up and s.pending:
            first = min(s.pending)
            assert s.last is not None
            missing = next_start(s.last, s.interval)
            log.error(
                "gap could not be filled through REST; going on without it, retrying in the background",
                topic=s.topic,
                first_missing=missing,
                next_bar=first,
            )
            self.stats.venue_holes += 1
            self.stats.open_gaps[s.topic] = (missing, first)
            self._gap(s, missing, first, "open")
            if s.refill is None or s.refill.done():
                s.refill = asyncio.ensure_future(self._refill(s, missing, first))
            s.last = prev_start(first, s.interval)
            self._drain(s)
            progressed = True
        return progressed

    def _gap(self, s: _Series, missing: int, resumed: int, state: str, bars: int = 0) -> None:
        if self._on_gap is not None:
            self._on_gap(
                {
                    "topic": s.topic,
                    "symbol": s.symbol,
                    "first_missing_ms": missing,
                    "resumed_ms": resumed,
                    "state": state,
                    "bars": bars,
                }
            )

    async def _refill(self, s: _Series, missing: int, resumed: int) -> None:
        """Keep asking REST for a skipped gap until it answers: with the bars (served late: the
        stream has gone past them, so they are reported, not published) or with none (a hole at
        the venue). Either way the gap is closed and the stream no longer degraded."""
        delay = self.config.backoff_max
        while not self._stop.is_set():
            await asyncio.sleep(delay)
            try:
                klines = await self.rest.klines(
                    self.category, s.symbol, s.interval, missing, prev_start(resumed, s.interval)
                )
            except BybitError as exc:
                log.warning("background gap refill failed; retrying", topic=s.topic, error=str(exc))
                continue
            state = "filled late" if klines else "venue hole"
            log.warning("gap resolved", topic=s.topic, state=state, bars=len(klines))
            self.stats.open_gaps.pop(s.topic, None)
            self._gap(s, missing, resumed, state, len(klines))
            return
