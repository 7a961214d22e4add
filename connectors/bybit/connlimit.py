"""Bybit's websocket connection-rate limit, kept on the client side.

Bybit allows no more than 500 connections in 5 minutes per IP and websocket domain (public and
private streams of ``stream.bybit.com`` count together). A client past it is cut off, so every
stream of this process asks :func:`limit_for` its domain's :class:`ConnectionLimit` before each
connection attempt: a sliding window of the attempts' times that lets a new one through only while
fewer than 500 fall in the last 300 seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import structlog

log = structlog.get_logger("connectors.bybit.connlimit")

MAX_CONNECTIONS = 500
WINDOW_S = 300.0


class ConnectionLimit:
    """At most ``limit`` attempts in any ``window`` seconds; ``acquire`` waits for a place."""

    def __init__(
        self,
        limit: int = MAX_CONNECTIONS,
        window: float = WINDOW_S,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self.sleep = sleep
        self.attempts: deque[float] = deque()
        self.waits = 0

    def _expire(self, now: float) -> None:
        while self.attempts and self.attempts[0] <= now - self.window:
            self.attempts.popleft()

    async def acquire(self) -> None:
        while True:
            now = self.clock()
            self._expire(now)
            if len(self.attempts) < self.limit:
                self.attempts.append(now)
                return
            wait = self.attempts[0] + self.window - now
            self.waits += 1
            log.warning(
                "websocket connection rate limit reached; waiting",
                limit=self.limit,
                window_s=self.window,
                wait_s=round(wait, 3),
            )
            await self.sleep(max(wait, 0.001))  # never a zero wait that float error could repeat


_LIMITS: dict[str, ConnectionLimit] = {}


def limit_for(url: str) -> ConnectionLimit:
    """The shared limit of the URL's domain (host and port)."""
    parts = urlsplit(url)
    key = f"{parts.hostname}:{parts.port or ''}"
    limit = _LIMITS.get(key)
    if limit is None:
        limit = _LIMITS[key] = ConnectionLimit()
    return limit
