"""Bybit's private websocket: authenticate, subscribe to account topics, hand every data message
to a callback, and come back after any disconnect (re-authenticating and resubscribing).

An authentication refusal is not fatal by itself: the usual cause on a long run is the clock (a
step of a few seconds makes ``expires`` fall in the server's past), so the stream resyncs the
clock (``resync``) and retries with backoff. Only when the very first connection's auth is refused
again after a resync (a wrong key, most likely) is it raised from :meth:`PrivateStream.wait_ready`.
Messages are parsed with
``json.loads``; the private stream carries a few messages per order, not thousands per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from connectors.bybit.config import BybitConfig
from connectors.bybit.connlimit import limit_for
from connectors.bybit.errors import AuthError
from connectors.bybit.signing import Credentials, ws_auth_args

log = structlog.get_logger("connectors.bybit.private_ws")

AUTH_EXPIRY_MS = 10_000


class PrivateStream:
    """``on_message(msg)`` gets each data message (dict with ``topic`` and ``data``);
    ``on_connected()`` runs after every successful (re)subscription, for reconciliation, and
    ``on_disconnected()`` when a subscribed connection is lost, so that the gap can be marked."""

    def __init__(
        self,
        config: BybitConfig,
        credentials: Credentials,
        *,
        on_message: Callable[[dict[str, Any]], None],
        on_connected: Callable[[], Awaitable[None]] | None = None,
        on_disconnected: Callable[[], None] | None = None,
        topics: Sequence[str] = ("order", "execution"),
        now_ms: Callable[[], int] | None = None,
        url: str | None = None,
        resync: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.config = config
        self.credentials = credentials
        self.url = url or config.private_ws()
        self.topics = list(topics)
        self.on_message = on_message
        self.on_connected = on_connected
        self.on_disconnected = on_disconnected
        self.now_ms = now_ms or (lambda: time.time_ns() // 1_000_000)
        self.connections = 0
        self.auth_failures = 0
        self.stalls = 0
        self.resync = resync
        self._authed_once = False
        self._limit = limit_for(self.url)
        self.malformed = 0
        self.last_rx = 0.0
        self._ready = asyncio.Event()
        self._fatal: BaseException | None = None
        self._stop = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._subscribed = False

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Until the first authenticated subscription is acknowledged; raises its auth error."""
        await asyncio.wait_for(self._ready.wait(), timeout)
        if self._fatal is not None:
            raise self._fatal

    @property
    def connected(self) -> bool:
        """True while a connection is authenticated, subscribed and being read."""
        return self._ws is not None and self._subscribed

    def stop(self) -> None:
        self._stop.set()
        if self._ws is not None and getattr(self._ws, "transport", None) is not None:
            self._ws.transport.abort()

    async def run(self) -> None:
        failures = 0
        cfg = self.config
        try:
            refusals = 0
            while not self._stop.is_set():
                await self._limit.acquire()
                try:
                    healthy = await self._connection()
                    refusals = 0
                except AuthError as exc:
                    self.auth_failures += 1
                    refusals += 1
                    healthy = False
                    if not self._authed_once and refusals >= 2:
                        self._fatal = exc
                        self._ready.set()
                        log.error("private stream authentication refused", error=str(exc))
                        return
                    log.error("private stream auth refused; resyncing the clock", error=str(exc))
                    if self.resync is not None:
                        with contextlib.suppress(Exception):
                            await self.resync()
                if self._stop.is_set():
                    return
                failures = 0 if healthy else failures + 1
                delay = min(cfg.backoff_initial * 2 ** min(failures, 30), cfg.backoff_max)
                delay *= 0.5 + random.random() / 2
                log.warning("private stream reconnecting", delay=round(delay, 3))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
        finally:
            self._ready.set()

    async def _connection(self) -> bool:
        cfg = self.config
        subscribed = False
        opened = time.monotonic()
        try:
            async with connect(
                self.url,
                ping_interval=None,
                close_timeout=min(cfg.ping_interval, 2.0),
                open_timeout=cfg.connect_timeout,
                compression=None,
            ) as ws:
                self._ws = ws
                self.connections += 1
                self.last_rx = time.monotonic()
                expires = self.now_ms() + AUTH_EXPIRY_MS
                await ws.send(
                    json.dumps(
                        {"req_id": "auth", "op": "auth", "args": ws_auth_args(self.credentials, expires)}
                    )
                )
                await self._expect(ws, "auth")
                await ws.send(json.dumps({"req_id": "sub", "op": "subscribe", "args": self.topics}))
                await self._expect(ws, "subscribe")
                subscribed = self._subscribed = True
                self._authed_once = True
                opened = time.monotonic()
                self._ready.set()
                if self.on_connected is not None:
                    await self.on_connected()
                heart = asyncio.ensure_future(self._heartbeat(ws))
                try:
                    async for raw in ws:
                        self.last_rx = time.monotonic()
                        self._handle(raw)
                finally:
                    heart.cancel()
        except AuthError:
            raise
        except (OSError, TimeoutError, WebSocketException) as exc:
            if not self._stop.is_set():
                log.warning("private stream connection lost", error=f"{type(exc).__name__}: {exc}")
        finally:
            self._ws = None
            self._subscribed = False
            if subscribed and self.on_disconnected is not None:
                self.on_disconnected()
        # only a connection that stayed up resets the backoff (one accepted and dropped at once
        # must meet a growing delay, not a reconnect storm)
        return subscribed and time.monotonic() - opened >= cfg.healthy_after

    async def _expect(self, ws: ClientConnection, op: str) -> None:
        """Read until the reply to ``op``; data arriving meanwhile is handled, not lost."""
        deadline = time.monotonic() + self.config.connect_timeout
        while True:
            raw = await asyncio.wait_for(ws.recv(), max(deadline - time.monotonic(), 0.001))
            try:
                msg = json.loads(raw)
            except ValueError:
                self.malformed += 1
                continue
            if isinstance(msg, dict) and msg.get("op") == op:
                if msg.get("success") is True or msg.get("retCode") == 0:
                    return
                reason = str(msg.get("ret_msg") or msg.get("retMsg") or "refused")
                if op == "auth":
                    raise AuthError(f"private websocket auth refused: {reason}")
                raise AuthError(f"private websocket {op} refused: {reason}")
            self._handle(raw)

    async def _heartbeat(self, ws: ClientConnection) -> None:
        """Ping every period; woken at the two-period silence deadline too, so a dead connection
        is found within two periods, not three."""
        period = self.config.ping_interval
        next_ping = time.monotonic() + period
        while True:
            now = time.monotonic()
            await asyncio.sleep(max(min(next_ping, self.last_rx + 2 * period) - now, 0.0))
            now = time.monotonic()
            if now - self.last_rx >= 2 * period:
                self.stalls += 1
                log.warning(
                    "private stream silent, dropping connection", silent_s=round(now - self.last_rx, 3)
                )
                if getattr(ws, "transport", None) is not None:
                    ws.transport.abort()
                return
            if now < next_ping:
                continue
            next_ping = now + period
            with contextlib.suppress(Exception):
                await ws.send('{"req_id":"ping","op":"ping"}')

    def _handle(self, raw: str | bytes) -> None:
        try:
            msg = json.loads(raw)
        except ValueError:
            self.malformed += 1
            log.warning("malformed private frame skipped", frame=str(raw)[:160])
            return
        if not isinstance(msg, dict):
            self.malformed += 1
            return
        if "topic" in msg and isinstance(msg.get("data"), list):
            try:
                self.on_message(msg)
            except Exception as exc:  # a bad element must not take the account stream down
                self.malformed += 1
                log.error("private message handler failed", topic=msg.get("topic"), error=repr(exc))
