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
from connectors.bybit.errors import BybitError, InvalidRequest
from connectors.bybit.intervals import check_interval, floor_start, next_start, prev_start
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
    ) -> None:
        if bus is None and on_bar is None:
            raise ValueError("KlineStream needs a bus or an on_bar callback")
        self.config = config or BybitConfig()
        self.category = category or self.config.category
        self.url = ws_url or self.config.public_ws(self.category)
        self._emit: Callable[[Bar], None] = on_bar if on_bar is not None else bus.post  # type: ignore[union-attr]
        self._on_open = on_open
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
            if self.validate_symbols:
                await self._validate()
            for s in self.series.values():
                if s.last is not None:  # start_ms given: fetch history before the live bars
                    self._want_fill(s, floor_start(self.rest.now_ms(), s.interval) - 1)
            while not stop.is_set():
                delivered = await self._connection()
                if stop.is_set():
                    break
                failures = 0 if delivered else failures + 1
                delay = min(cfg.backoff_initial * 2 ** min(failures, 30), cfg.backoff_max)
                delay *= 0.5 + random.random() / 2
                self.stats.reconnects += 1
                log.warning("kline stream reconnecting", url=self.url, delay=round(delay, 3))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        finally:
            for s in self.series.values():
                if s.filler is not None:
                    s.filler.cancel()
            if self._own_rest and self._rest is not None:
                await self._rest.close()

    def stop(self) -> None:
        self._stop.set()
        if self._ws is not None:
            self._abort(self._ws)

    async def _validate(self) -> None:
        """Refuse unknown symbols before subscribing: Bybit would ack them with an error, and
        one failed topic has been reported to silence the others on its connection."""
        known = await self.rest.instruments(self.category)
        unknown = sorted({s.symbol for s in self.series.values() if s.symbol not in known})
        if unknown:
            raise InvalidRequest(f"unknown {self.category} symbol(s): {', '.join(unknown)}")

    async def _connection(self) -> bool:
        """One connection's life; True if it delivered market data (resets the backoff)."""
        cfg = self.config
        frames_before = self.stats.frames
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
                self.last_rx = time.monotonic()
                heart = asyncio.ensure_future(self._heartbeat(ws))
                try:
                    for request in self._subscribe_requests():
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
        return self.stats.frames - frames_before > len(self.series)

    def _subscribe_requests(self) -> Iterable[str]:
        topics = list(self.series)
        per = SPOT_ARGS_PER_REQUEST if self.category == "spot" else 500
        batch: list[str] = []
        size = 0
        for topic in topics:
            if batch and (len(batch) >= per or size + len(topic) > MAX_ARGS_CHARS):
                yield self._sub(batch)
                batch, size = [], 0
            batch.append(topic)
            size += len(topic) + 3
        if batch:
            yield self._sub(batch)

    def _sub(self, topics: list[str]) -> str:
        return json.dumps({"req_id": f"sub-{next(self._req)}", "op": "subscribe", "args": topics})

    async def _heartbeat(self, ws: ClientConnection) -> None:
        """JSON ping every ``ping_interval``; two intervals of silence mean a dead connection."""
        period = self.config.ping_interval
        ping = json.dumps({"req_id": "ping", "op": "ping"})
        while True:
            await asyncio.sleep(period)
            silent = time.monotonic() - self.last_rx
            if silent > 2 * period:
                log.warning("kline stream silent, dropping connection", silent_s=round(silent, 3))
                self._abort(ws)
                return
            with contextlib.suppress(Exception):
                await ws.send(ping)

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
        if msg.get("op") == "subscribe" or "success" in msg:
            if msg.get("success") is False:
                reason = str(msg.get("ret_msg", ""))
                if "already subscribed" in reason:
                    return
                raise SubscriptionError(f"Bybit refused the subscription: {reason}", path=self.url)
            return
        if "topic" in msg:
            log.debug("frame for an unknown topic ignored", topic=msg.get("topic"))
            return
        self._malformed(raw, "unrecognised message")

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
            log.error("gap could not be filled through REST; skipping it", topic=s.topic, missing_to=first)
            self.stats.venue_holes += 1
            s.last = prev_start(first, s.interval)
            self._drain(s)
            progressed = True
        return progressed
