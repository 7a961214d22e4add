"""The daemon's operations endpoint: ``/healthz``, ``/metrics`` (Prometheus) and the signals
websocket ``/signals``, on 127.0.0.1, plus the optional signal webhook.

Nothing here runs on the bar loop: the loop hands records to per-client queues and to the webhook
queue and returns; slow clients and a slow webhook fall behind (and drop, counted), never the
daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

if TYPE_CHECKING:
    from quantnet.daemon import Daemon

log = structlog.get_logger("quantnet.ops")

_STATE_CODE = {"active": 0, "reducing": 1, "halted": 2, "signal-only": 0}
CLIENT_QUEUE = 10_000


class DaemonCollector:
    """Reads the daemon's counters at scrape time: the bar loop pays nothing for metrics."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def collect(self) -> Any:
        d = self.daemon
        st = d.stats
        node = d.node
        stream = d.stream.stats if d.stream is not None else None
        assembler = d.assembler

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"quantnet_{name}", doc, value=value)

        yield gauge("bars_processed", "cross-sections processed and committed", st.bars)
        yield gauge("bars_late", "cross-sections processed during catch-up after downtime", st.late)
        missing = assembler.incomplete + (stream.venue_holes if stream else 0)
        yield gauge("bars_missing", "cross-sections published with a symbol missing", missing)
        yield gauge("bars_dropped_late", "bars that arrived after their cross-section", assembler.late)
        yield gauge("orders", "orders sent", st.orders)
        yield gauge("fills", "fills booked", node.portfolio.n_fills if node else 0)
        yield gauge("rejects", "orders rejected (risk or venue)", st.rejects)
        yield gauge("reconnects", "public websocket reconnects", stream.reconnects if stream else 0)
        yield gauge(
            "malformed_frames", "websocket frames skipped as malformed", stream.malformed if stream else 0
        )
        if node is not None:
            pf = node.portfolio
            yield gauge("equity", "marked-to-market equity", pf.equity)
            peak = d.peak or pf.equity
            yield gauge(
                "drawdown", "fall from the equity peak (fraction)", 1 - pf.equity / peak if peak else 0.0
            )
        yield gauge("risk_state", "0 active, 1 reducing, 2 halted", _STATE_CODE.get(d.trading_state(), 0))
        yield gauge("last_bar_timestamp_seconds", "close time of the last committed bar", d.last_ts / 1e9)


class OpsServer:
    def __init__(self, daemon: Daemon, port: int, host: str = "127.0.0.1") -> None:
        self.daemon = daemon
        self.port = port
        self.host = host
        self.registry = CollectorRegistry()
        self.registry.register(DaemonCollector(daemon))  # type: ignore[arg-type]
        self.latency = Histogram(
            "quantnet_signal_latency_seconds",
            "last confirming frame of a cross-section to its committed signal",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0),
            registry=self.registry,
        )
        self.ws_clients_dropped = Counter(
            "quantnet_ws_records_dropped",
            "signal records not delivered to a slow client",
            registry=self.registry,
        )
        self.ws_clients = Gauge("quantnet_ws_clients", "signals websocket clients", registry=self.registry)
        self.webhook_failures = Counter(
            "quantnet_webhook_failures", "webhook POST attempts that failed", registry=self.registry
        )
        self._clients: set[asyncio.Queue[str | None]] = set()
        self._latest: dict[str, dict[str, Any]] = {}
        self._webhook: asyncio.Queue[list[dict[str, Any]]] | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._runner: web.AppRunner | None = None
        app = self.app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/signals", self._signals)

    async def start(self) -> None:
        d = self.daemon
        for record in d.journal.latest_signals() if d.journal is not None else []:
            self._latest[record["symbol"]] = record
        d.listeners.append(self.publish)
        url = d.live.webhook_url
        if url:
            self._webhook = asyncio.Queue(maxsize=100_000)
            self._tasks.append(asyncio.ensure_future(self._post_loop(url)))
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info(
            "ops endpoint",
            healthz=f"http://{self.host}:{self.port}/healthz",
            signals=f"ws://{self.host}:{self.port}/signals",
        )

    async def stop(self) -> None:
        for q in list(self._clients):
            q.put_nowait(None)
        for task in self._tasks:
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    # the bar loop's side: never waits ---------------------------------------------------------

    def publish(self, records: list[dict[str, Any]]) -> None:
        if self.daemon.last_latency is not None:
            self.latency.observe(self.daemon.last_latency)
        for record in records:
            self._latest[record["symbol"]] = record
        if self._clients:
            text = [json.dumps(r, separators=(",", ":")) for r in records]
            for q in self._clients:
                for line in text:
                    try:
                        q.put_nowait(line)
                    except asyncio.QueueFull:
                        self.ws_clients_dropped.inc()
        if self._webhook is not None:
            try:
                self._webhook.put_nowait(records)
            except asyncio.QueueFull:
                self.webhook_failures.inc()

    # HTTP --------------------------------------------------------------------------------------

    async def _healthz(self, _: web.Request) -> web.Response:
        body = self.daemon.health()
        return web.json_response(body, status=200 if body["status"] == "ok" else 503)

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), content_type="text/plain", charset="utf-8")

    async def _signals(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=30.0)
        await ws.prepare(request)
        q: asyncio.Queue[str | None] = asyncio.Queue(maxsize=CLIENT_QUEUE)
        for record in sorted(self._latest.values(), key=lambda r: r["seq"]):
            q.put_nowait(json.dumps(record, separators=(",", ":")))
        self._clients.add(q)
        self.ws_clients.inc()
        reader = asyncio.ensure_future(ws.receive())  # notices the client leaving
        try:
            while True:
                getter = asyncio.ensure_future(q.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                line = getter.result()
                if line is None:
                    break
                await ws.send_str(line)
        except (ConnectionResetError, aiohttp.ClientError):
            pass
        finally:
            reader.cancel()
            self._clients.discard(q)
            self.ws_clients.dec()
            with contextlib.suppress(Exception):
                await ws.close()
        return ws

    async def _post_loop(self, url: str) -> None:
        """Each bar's records in one POST (a JSON array), in order, retried with exponential
        backoff and jitter up to a minute between tries; later bars wait behind it."""
        assert self._webhook is not None
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            while True:
                records = await self._webhook.get()
                delay = 0.5
                while True:
                    try:
                        async with session.post(url, json=records) as reply:
                            if reply.status < 300:
                                break
                            why = f"HTTP {reply.status}"
                    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                        why = f"{type(exc).__name__}: {exc}"
                    self.webhook_failures.inc()
                    log.warning("webhook POST failed; retrying", error=why, retry_in=round(delay, 2))
                    await asyncio.sleep(delay * (0.5 + random.random() / 2))
                    delay = min(delay * 2, 60.0)
