"""Bybit v5 REST: one aiohttp transport (signing, throttling, retries) and the market-data calls.

Reads are retried on timeouts, 5xx, rate limits and clock errors. Writes are retried only when
Bybit certainly refused them before acting (a stale timestamp): after a timeout, a 5xx or a rate
limit the order may exist, so the error goes back to the caller, which reconciles through
``/v5/order/realtime`` before sending anything again.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, NamedTuple

import aiohttp
import structlog
from yarl import URL

from connectors.bybit.config import BybitConfig
from connectors.bybit.errors import (
    AuthError,
    BybitError,
    InvalidRequest,
    IpBanned,
    RateLimited,
    ServerError,
    TimestampError,
    error_for,
)
from connectors.bybit.intervals import ceil_start, check_interval, interval_ms, next_start
from connectors.bybit.signing import Credentials, auth_headers, query_string
from engine.instruments import InstrumentRules

log = structlog.get_logger("connectors.bybit.rest")

KLINE_PAGE = 1000


class Kline(NamedTuple):
    """One closed candle as REST returns it, numbers parsed; ``start`` is the open time in ms."""

    start: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    turnover: float


class Throttle:
    """Token bucket shared by every request of a client, plus a venue-imposed pause."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = max(rate, 1.0)
        self.capacity = max(rate, 1.0)
        self.updated = time.monotonic()
        self.paused_until = 0.0

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)

    async def acquire(self) -> None:
        while True:
            now = time.monotonic()
            if now < self.paused_until:
                await asyncio.sleep(self.paused_until - now)
                continue
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return
            await asyncio.sleep((1.0 - self.tokens) / self.rate)


class BybitRest:
    """Async client for Bybit v5 REST. Use as ``async with BybitRest(config) as rest: ...``.

    ``offset_ms`` (venue clock minus local clock) is refreshed by :meth:`sync_time` and used for
    signing timestamps and for deciding which candle is still open.
    """

    def __init__(
        self,
        config: BybitConfig | None = None,
        *,
        credentials: Credentials | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.config = config or BybitConfig()
        self.base = self.config.rest_base()
        self.credentials = credentials
        self.offset_ms = 0
        self.throttle = Throttle(self.config.requests_per_second)
        self.skipped = 0
        self.retries = 0
        self._session = session
        self._own_session = session is None

    async def __aenter__(self) -> BybitRest:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.request_timeout)
            )
            self._own_session = True
        return self._session

    async def close(self) -> None:
        if self._own_session and self._session is not None and not self._session.closed:
            await self._session.close()

    def now_ms(self) -> int:
        """Venue time estimate: local clock corrected by the last measured offset."""
        return time.time_ns() // 1_000_000 + self.offset_ms

    # transport -------------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        signed: bool = False,
        idempotent: bool = True,
    ) -> dict[str, Any]:
        """Send one request and return its ``result`` (with ``time`` added when the envelope
        has it); raise a typed :class:`BybitError` once retries are spent or not allowed."""
        attempt = 0
        synced = False
        while True:
            await self.throttle.acquire()
            began = time.monotonic()
            try:
                return await self._once(method, path, params or {}, signed)
            except TimestampError:
                if synced:
                    raise
                synced = True
                await self.sync_time()
                continue
            except (TimeoutError, aiohttp.ClientError) as exc:
                # the time it really took: a refused connection fails at once, not after the timeout
                took = time.monotonic() - began
                error: BybitError = ServerError(
                    f"{type(exc).__name__} after {took:.1f}s: {exc}".rstrip(": "), path=path
                )
            except (RateLimited, IpBanned, ServerError) as exc:
                error = exc
            if not idempotent or attempt >= self.config.max_retries:
                raise error
            attempt += 1
            self.retries += 1
            delay = self._retry_delay(error, attempt)
            log.warning(
                "bybit request retried", path=path, attempt=attempt, delay=round(delay, 3), error=str(error)
            )
            await asyncio.sleep(delay)

    def _retry_delay(self, error: BybitError, attempt: int) -> float:
        cfg = self.config
        if isinstance(error, IpBanned):
            self.throttle.pause(cfg.ban_backoff)
            return cfg.ban_backoff
        if isinstance(error, RateLimited) and error.reset_ms:
            wait = min(max(error.reset_ms - self.now_ms(), 0) / 1000.0, cfg.backoff_max)
            self.throttle.pause(wait)
            return wait
        base = min(cfg.backoff_initial * 2 ** (attempt - 1), cfg.backoff_max)
        return base * (0.5 + random.random() / 2)

    async def _once(self, method: str, path: str, params: Mapping[str, Any], signed: bool) -> dict[str, Any]:
        headers: dict[str, str] = {}
        url = self.base + path
        data: bytes | None = None
        if method == "GET":
            payload = query_string(dict(params))
            if payload:
                url = f"{url}?{payload}"
        else:
            payload = json.dumps(dict(params), separators=(",", ":"))
            data = payload.encode()
            headers["Content-Type"] = "application/json"
        if signed:
            if self.credentials is None:
                raise AuthError("signed request without API credentials", path=path)
            headers.update(auth_headers(self.credentials, self.now_ms(), self.config.recv_window, payload))
        # encoded=True: send the query exactly as signed, with no re-quoting on the way out
        async with self.session.request(method, URL(url, encoded=True), data=data, headers=headers) as resp:
            text = await resp.text()
            return self._parse(resp.status, resp.headers, text, path)

    def _parse(self, status: int, headers: Mapping[str, str], text: str, path: str) -> dict[str, Any]:
        self._observe_limits(headers)
        if status == 403:
            raise IpBanned("HTTP 403: IP rate limit breached or region blocked", ret_code=403, path=path)
        if status == 429:
            raise RateLimited(
                "HTTP 429: system protection",
                ret_code=429,
                path=path,
                reset_ms=as_int(headers.get("X-Bapi-Limit-Reset-Timestamp")),
            )
        if status >= 500:
            raise ServerError(f"HTTP {status}", ret_code=status, path=path)
        if status == 401:
            raise AuthError("HTTP 401: missing or invalid authentication headers", ret_code=401, path=path)
        if status == 404:
            raise InvalidRequest("HTTP 404: no such endpoint", ret_code=404, path=path)
        try:
            body = json.loads(text)
            code = int(body["retCode"])
        except (ValueError, KeyError, TypeError):
            raise ServerError(
                f"HTTP {status}: response is not a Bybit envelope: {text[:200]!r}", path=path
            ) from None
        if code != 0:
            reset = as_int(headers.get("X-Bapi-Limit-Reset-Timestamp"))
            raise error_for(code, self._scrub(str(body.get("retMsg", ""))), path, reset)
        result = body.get("result") or {}
        if isinstance(result, dict) and "time" in body:
            result = {**result, "time": body["time"]}
        return result

    def _scrub(self, text: str) -> str:
        """Bybit echoes the signed string (which holds the API key) in 10004 replies: mask it
        before the text can reach an exception, a log line or a report."""
        if self.credentials is not None:
            for value in (self.credentials.api_key, self.credentials.api_secret):
                if value:
                    text = text.replace(value, "<redacted>")
        return text

    def _observe_limits(self, headers: Mapping[str, str]) -> None:
        """When Bybit says the quota is spent, hold every request until its reset time."""
        remaining = headers.get("X-Bapi-Limit-Status")
        if remaining is not None and remaining.strip() == "0":
            reset = as_int(headers.get("X-Bapi-Limit-Reset-Timestamp"))
            if reset:
                wait = min(max(reset - self.now_ms(), 0) / 1000.0, self.config.backoff_max)
                self.throttle.pause(wait)

    # market data -----------------------------------------------------------------------------

    async def server_time_ms(self) -> int:
        result = await self.request("GET", "/v5/market/time")
        nano = result.get("timeNano")
        if nano:
            return int(nano) // 1_000_000
        return int(result.get("timeSecond", 0)) * 1000 or int(result.get("time", 0))

    async def sync_time(self) -> int:
        """Measure venue minus local clock (midpoint of the round trip); returns the offset."""
        before = time.time_ns() // 1_000_000
        server = await self.server_time_ms()
        after = time.time_ns() // 1_000_000
        self.offset_ms = server - (before + after) // 2
        log.debug("bybit clock offset", offset_ms=self.offset_ms, rtt_ms=after - before)
        return self.offset_ms

    async def instruments(self, category: str, symbol: str | None = None) -> dict[str, dict[str, Any]]:
        """Raw instrument entries by symbol, following ``nextPageCursor``."""
        out: dict[str, dict[str, Any]] = {}
        cursor = ""
        for _ in range(100):
            params: dict[str, Any] = {"category": category, "limit": 1000}
            if symbol:
                params["symbol"] = symbol
            if cursor:
                params["cursor"] = cursor
            result = await self.request("GET", "/v5/market/instruments-info", params)
            for item in result.get("list") or []:
                out[str(item.get("symbol"))] = item
            cursor = str(result.get("nextPageCursor") or "")
            if not cursor or symbol:
                break
        return out

    async def instrument_rules(self, category: str, symbol: str | None = None) -> dict[str, InstrumentRules]:
        return {
            s: rules_from_info(item, category)
            for s, item in (await self.instruments(category, symbol)).items()
        }

    async def klines_page(
        self, category: str, symbol: str, interval: str, start_ms: int, end_ms: int
    ) -> tuple[list[Kline], int]:
        """Closed candles with start in [start_ms, end_ms] (at most 1000), oldest first, and the
        venue time of the response. The still-open candle is dropped."""
        result = await self.request(
            "GET",
            "/v5/market/kline",
            {
                "category": category,
                "symbol": symbol,
                "interval": interval,
                "start": start_ms,
                "end": end_ms,
                "limit": KLINE_PAGE,
            },
        )
        now = int(result.get("time") or self.now_ms())
        rows = result.get("list") or []
        bars: list[Kline] = []
        for row in reversed(rows):
            try:
                k = Kline(
                    int(row[0]),
                    float(row[1]),
                    float(row[2]),
                    float(row[3]),
                    float(row[4]),
                    float(row[5]),
                    float(row[6]) if len(row) > 6 else 0.0,
                )
            except (ValueError, TypeError, IndexError):
                self.skipped += 1
                log.warning("malformed kline row skipped", symbol=symbol, row=repr(row)[:120])
                continue
            if next_start(k.start, interval) > now:
                continue
            if start_ms <= k.start <= end_ms and (not bars or k.start > bars[-1].start):
                bars.append(k)
        return bars, now

    async def iter_klines(
        self, category: str, symbol: str, interval: str, start_ms: int, end_ms: int
    ) -> AsyncIterator[list[Kline]]:
        """Closed candles starting in [start_ms, end_ms], page by page, oldest first.

        Windows span at most 1000 bars, so the answer never depends on which end Bybit keeps
        when more bars match than the limit.
        """
        interval = check_interval(interval)
        step = interval_ms(interval)
        s = ceil_start(start_ms, interval)
        while s <= end_ms:
            e = min(s + (KLINE_PAGE - 1) * step, end_ms)
            bars, now = await self.klines_page(category, symbol, interval, s, e)
            yield bars
            if e >= now:
                break
            s = ceil_start(e + 1, interval)

    async def klines(
        self, category: str, symbol: str, interval: str, start_ms: int, end_ms: int
    ) -> list[Kline]:
        out: list[Kline] = []
        async for page in self.iter_klines(category, symbol, interval, start_ms, end_ms):
            out.extend(page)
        return out


def rules_from_info(item: Mapping[str, Any], category: str) -> InstrumentRules:
    """Instrument entry → InstrumentRules. Spot's qty step is ``basePrecision`` and its minimum
    notional ``minOrderAmt``; derivatives have ``qtyStep`` and ``minNotionalValue``."""
    price = item.get("priceFilter") or {}
    lot = item.get("lotSizeFilter") or {}
    min_qty = as_float(lot.get("minOrderQty"))
    if category == "spot":
        min_qty = 0.0  # deprecated on spot, "no longer checked"; minOrderAmt is what counts
        step = as_float(lot.get("basePrecision"))
        min_notional = as_float(lot.get("minOrderAmt"))
        max_qty = as_float(lot.get("maxLimitOrderQty") or lot.get("maxOrderQty"))
    else:
        step = as_float(lot.get("qtyStep"))
        min_notional = as_float(lot.get("minNotionalValue"))
        max_qty = as_float(lot.get("maxOrderQty"))
    return InstrumentRules(
        symbol=str(item.get("symbol")),
        tick_size=as_float(price.get("tickSize")),
        qty_step=step,
        min_qty=min_qty,
        max_qty=max_qty,
        min_notional=min_notional,
    )


def as_float(value: object) -> float:
    """Bybit sends numbers as strings and empty strings for none: read both as 0."""
    try:
        return float(value) if value not in (None, "") else 0.0  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


def as_int(value: object) -> int:
    try:
        return int(value) if value not in (None, "") else 0  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0
