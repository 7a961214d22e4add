"""A local fake of Bybit v5: REST market data and orders, public and private websockets.

It speaks the real message shapes (official examples in ``samples/``), verifies signatures the way
Bybit does (over the raw query string or body it received) and lets tests inject the faults real
clients meet: dropped connections, silent stalls, malformed frames, duplicate and missing
confirmed bars, rate-limit and 403 replies, slow responses, 5xx and clock skew, private-stream
outages (``private_down``), orders filled in several executions (``faults.fill_parts``) and order
updates that overtake their executions.

Orders: market and limit orders, and conditional (stop) orders that trigger when the price moved
by :meth:`FakeBybit.set_price` (or the market clock) reaches ``triggerPrice``; executions are kept
and served by ``/v5/execution/list``.

Prices come from a deterministic function of (symbol, interval, bar start), so a test can ask the
server for the exact series any client should end up with (:meth:`FakeBybit.series`);
``price_shift_ms`` prices every time as another one (a test run today on a fixed date's path). A
market clock (``start_market``) runs virtual time quickly so that one-minute bars close every few
milliseconds; the signing clock stays real (plus ``skew_ms``).

Run by hand: ``python -m tests.fake_bybit --port 8765`` (see ``__main__.py``), then point the CLI at
it with ``--rest-url http://127.0.0.1:8765 --ws-url ws://127.0.0.1:8765/v5/public/{category}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import math
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

SAMPLES = Path(__file__).parent / "samples"
INTERVALS = ("1", "3", "5", "15", "30", "60", "120", "240", "360", "720", "D", "W", "M")
TAKER_FEE = 0.00055
FINAL = ("Filled", "Cancelled", "Rejected", "Deactivated")
WEEK_MS = 7 * 86_400_000
MAKER_FEE = 0.0002


def sample(name: str) -> dict[str, Any]:
    return json.loads((SAMPLES / name).read_text())


def real_ms() -> int:
    return time.time_ns() // 1_000_000


def iv_ms(interval: str) -> int:
    if interval == "D":
        return 86_400_000
    if interval == "W":
        return 7 * 86_400_000
    if interval == "M":
        return 30 * 86_400_000  # the fake's months are 30 days: only fixed-length bars are served
    return int(interval) * 60_000


def _unit(*parts: object) -> float:
    """A deterministic number in [0, 1) from the parts."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def base_coin(symbol: str) -> str:
    """The fake lists USDT pairs only: the base coin is the symbol less its quote."""
    return symbol.removesuffix("USDT")


def _fmt(x: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{round(x / step) * step:.{decimals}f}"


@dataclass
class Instrument:
    symbol: str
    category: str
    base_price: float
    tick: float
    step: float
    min_qty: float
    min_notional: float
    launch_ms: int = 1_577_836_800_000  # 2020-01-01
    max_mkt_qty: float = 0.0
    """Largest market order (0: the sample's value); larger ones are refused as Bybit does."""

    def info(self) -> dict[str, Any]:
        if self.category == "spot":
            item = sample("rest_instruments_info_spot.json")["result"]["list"][0]
            item.update(symbol=self.symbol, baseCoin=self.symbol.removesuffix("USDT"))
            item["priceFilter"]["tickSize"] = _fmt(self.tick, self.tick)
            lot = item["lotSizeFilter"]
            lot.update(basePrecision=_fmt(self.step, self.step), minOrderAmt=str(self.min_notional))
            if self.max_mkt_qty:
                lot["maxMarketOrderQty"] = _fmt(self.max_mkt_qty, self.step)
            return item
        item = sample("rest_instruments_info_linear.json")["result"]["list"][0]
        item.update(symbol=self.symbol, launchTime=str(self.launch_ms), baseCoin=self.symbol[:3])
        if self.category == "inverse":
            item.update(contractType="InversePerpetual", quoteCoin="USD", settleCoin=self.symbol[:3])
        item["priceFilter"]["tickSize"] = _fmt(self.tick, self.tick)
        lot = item["lotSizeFilter"]
        lot.update(
            qtyStep=_fmt(self.step, self.step),
            minOrderQty=_fmt(self.min_qty, self.step),
            minNotionalValue=str(self.min_notional),
        )
        if self.max_mkt_qty:
            lot["maxMktOrderQty"] = _fmt(self.max_mkt_qty, self.step)
        return item

    def market_limit(self) -> float:
        lot = self.info()["lotSizeFilter"]
        return float(lot.get("maxMktOrderQty") or lot.get("maxMarketOrderQty") or 0.0)


def default_instruments() -> list[Instrument]:
    out = []
    for cat in ("linear", "spot"):
        out += [
            Instrument("BTCUSDT", cat, 60_000.0, 0.1, 0.001 if cat == "linear" else 0.000001, 0.001, 5.0),
            Instrument("ETHUSDT", cat, 3_000.0, 0.01, 0.01 if cat == "linear" else 0.00001, 0.01, 5.0),
            Instrument(
                "SOLUSDT",
                cat,
                150.0,
                0.001,
                0.1 if cat == "linear" else 0.001,
                0.1,
                5.0,
                launch_ms=1_635_724_800_000,
            ),
        ]
    out.append(Instrument("BTCUSD", "inverse", 60_000.0, 0.5, 1.0, 1.0, 0.0))
    return out


@dataclass
class FakeOrder:
    order_id: str
    link_id: str
    category: str
    symbol: str
    side: str
    order_type: str
    qty: float
    price: float
    tif: str
    reduce_only: bool
    status: str = "New"
    trigger_price: float = 0.0
    trigger_direction: int = 0
    order_filter: str = "Order"
    cum_qty: float = 0.0
    cum_value: float = 0.0
    cum_fee: float = 0.0
    created: int = 0
    updated: int = 0
    reject_reason: str = "EC_NoError"

    def to_json(self, inst: Instrument) -> dict[str, Any]:
        item = sample("rest_order_realtime_response.json")["result"]["list"][0]
        leaves = 0.0 if self.status in FINAL else self.qty - self.cum_qty
        item.update(
            orderId=self.order_id,
            orderLinkId=self.link_id,
            symbol=self.symbol,
            price=_fmt(self.price, inst.tick) if self.price else "0",
            qty=_fmt(self.qty, inst.step),
            side=self.side,
            positionIdx=0,
            orderStatus=self.status,
            rejectReason=self.reject_reason,
            avgPrice=_fmt(self.cum_value / self.cum_qty, inst.tick / 100) if self.cum_qty else "",
            leavesQty=_fmt(leaves, inst.step),
            leavesValue=str(round(leaves * self.price, 8)),
            cumExecQty=_fmt(self.cum_qty, inst.step),
            cumExecValue=str(round(self.cum_value, 8)),
            cumExecFee=str(round(self.cum_fee, 10)),
            timeInForce=self.tif,
            orderType=self.order_type,
            takeProfit="",
            stopLoss="",
            reduceOnly=self.reduce_only,
            triggerPrice=_fmt(self.trigger_price, inst.tick) if self.trigger_price else "0",
            triggerDirection=self.trigger_direction,
            triggerBy="LastPrice" if self.trigger_price else "UNKNOWN",
            stopOrderType="Stop" if self.trigger_price else "UNKNOWN",
            createdTime=str(self.created),
            updatedTime=str(self.updated),
            category=self.category,
        )
        item.pop("cumFeeDetail", None)
        return item


@dataclass
class Faults:
    """What goes wrong, and when. Bar faults are keyed by the bar's start (ms); REST faults are
    consumed one per matching request, in order."""

    drop_before_confirm: set[int] = field(default_factory=set)
    stall_before_confirm: set[int] = field(default_factory=set)
    malformed_before_confirm: set[int] = field(default_factory=set)
    duplicate_confirm: set[int] = field(default_factory=set)
    skip_confirm: set[int] = field(default_factory=set)
    rest: list[tuple[str, str]] = field(default_factory=list)
    """(path prefix, fault): fault is "10006", "10016", "403", "500", "drop" (connection closed,
    nothing done), "lost" (order placed, then the connection closed), "late:<seconds>" (a create
    still on its way: wait, then act and answer), "slow:<seconds>" (act, then answer late) or
    "reject:<retCode>"."""
    duplicate_executions: bool = False
    fill_parts: int = 1
    """Each fill of an order is split into this many executions (partial fills), each pushed with
    its own order update (PartiallyFilled, ..., Filled)."""
    order_before_execution: bool = False
    """Push the order update ahead of the execution it reports (Bybit does not order the topics)."""
    hide_orders: bool = False
    """/v5/order/realtime and /history show nothing (Bybit's index lagging behind its engine)."""
    no_fee_currency: bool = False
    """Executions without ``feeCurrency``, as the real spot execution frame is."""
    mute: dict[str, tuple[str, int]] = field(default_factory=dict)
    """Public topics fallen silent (pongs still flow) -> (how it heals, connections when muted):
    "subscribe" (any later subscribe of it), "connect" (a subscribe on a connection opened after
    the mute) or "never". Set with :meth:`FakeBybit.mute_topic`."""
    fail_subscribe: int = 0
    """The next this many public subscribe requests are refused with success:false."""
    drop_after_subscribe: bool = False
    """Close every public connection right after acknowledging its subscription."""


@dataclass(eq=False)
class PublicConn:
    ws: web.WebSocketResponse
    category: str
    topics: set[str] = field(default_factory=set)
    zombie: bool = False
    number: int = 0


@dataclass(eq=False)
class PrivateConn:
    ws: web.WebSocketResponse
    authed: bool = False
    topics: set[str] = field(default_factory=set)


class FakeBybit:
    """The fake venue. ``await start()`` binds 127.0.0.1 on a free port (or ``port``)."""

    def __init__(
        self,
        *,
        port: int = 0,
        instruments: list[Instrument] | None = None,
        keys: dict[str, str] | None = None,
        skew_ms: int = 0,
        balance: float = 1_000_000.0,
        coins: dict[str, float] | None = None,
    ) -> None:
        self.port = port
        self.instruments = {(i.category, i.symbol): i for i in instruments or default_instruments()}
        self.keys = dict(keys or {})
        self.skew_ms = skew_ms
        self.balance = balance
        """USDT at the start (the unified wallet's, shared by spot and derivatives)."""
        self.coins: dict[str, float] = dict(coins or {})
        """Spot coins other than USDT at the start (BTC, ETH, ...); trades move them from there."""
        self.fee_coins: dict[str, str] = {}
        """execId -> the coin its fee was charged in (kept when the frame omits feeCurrency)."""
        self.faults = Faults()
        self.requests: list[tuple[str, str]] = []
        self.public: list[PublicConn] = []
        self.private: list[PrivateConn] = []
        self.orders: dict[str, FakeOrder] = {}
        self.executions: list[dict[str, Any]] = []
        self.execution_queries: list[dict[str, str]] = []
        self.execution_page_cap = 100
        """Largest page /v5/execution/list returns, whatever ``limit`` asks (tests of paging)."""
        self.private_down = False
        """While true the private websocket refuses connections (HTTP 503): an outage."""
        self.prices: dict[tuple[str, str], float] = {}
        self.fixed_now_ms: int | None = None
        self.market_now_ms: int | None = None
        self.price_shift_ms = 0
        """Added to a time before it is priced: a market clock started from now with the shift
        to a fixed time serves that time's prices, the same path whatever the day
        (:func:`tests.daemon.helpers.running_fake`)."""
        self.market_step_ms = 0
        self.market_tick = 0.005
        self.connections = 0
        self.connect_times: list[float] = []
        self.private_connections = 0
        self.frames_sent = 0
        self.subscriptions: list[tuple[str, list[str]]] = []
        self.on_subscribed: Callable[[PublicConn], Awaitable[None]] | None = None
        """Hook run after a public subscription is acknowledged (the benchmark's firehose)."""
        self._market_task: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.app = web.Application()
        r = self.app.router
        r.add_get("/v5/market/time", self._time)
        r.add_get("/v5/market/kline", self._kline)
        r.add_get("/v5/market/instruments-info", self._instruments)
        r.add_get("/v5/market/tickers", self._tickers)
        r.add_get("/v5/execution/list", self._execution_list)
        r.add_post("/v5/order/create", self._create)
        r.add_post("/v5/order/amend", self._amend)
        r.add_post("/v5/order/cancel", self._cancel)
        r.add_get("/v5/order/realtime", self._realtime)
        r.add_get("/v5/order/history", self._history)
        r.add_get("/v5/position/list", self._positions)
        r.add_get("/v5/account/wallet-balance", self._wallet)
        r.add_get("/v5/public/{category}", self._public_ws)
        r.add_get("/v5/private", self._private_ws)

    # lifecycle -----------------------------------------------------------------------------

    async def start(self) -> FakeBybit:
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._market_task:
            self._market_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._market_task
        for conn in [*self.public, *self.private]:
            with contextlib.suppress(Exception):
                await conn.ws.close()
        for task in list(self._tasks):
            task.cancel()
        if self._runner:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeBybit:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_public_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v5/public/{{category}}"

    @property
    def ws_private_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v5/private"

    # clocks --------------------------------------------------------------------------------

    def clock_ms(self) -> int:
        """The venue's wall clock: signing windows, server time, rate-limit resets."""
        return real_ms() + self.skew_ms

    def now_ms(self) -> int:
        """Market time: decides which candle is still open."""
        if self.market_now_ms is not None:
            return self.market_now_ms
        if self.fixed_now_ms is not None:
            return self.fixed_now_ms
        return self.clock_ms()

    # the price series ----------------------------------------------------------------------

    def _mid(self, inst: Instrument, t_ms: int) -> float:
        t_ms += self.price_shift_ms
        day = 86_400_000
        wave = 0.04 * math.sin(t_ms / (3 * day)) + 0.01 * math.sin(t_ms / (3_600_000 * 1.7))
        noise = 0.004 * (_unit(inst.symbol, t_ms // 60_000) - 0.5)
        return inst.base_price * (1 + wave + noise)

    def bar(self, category: str, symbol: str, interval: str, start: int) -> list[str]:
        """The closed bar as Bybit's REST row: [start, open, high, low, close, volume, turnover]."""
        inst = self.instruments[(category, symbol)]
        step = iv_ms(interval)
        o = float(_fmt(self._mid(inst, start), inst.tick))
        c = float(_fmt(self._mid(inst, start + step), inst.tick))
        priced = start + self.price_shift_ms
        h = max(o, c) * (1 + 0.002 * _unit(symbol, interval, priced, "h"))
        lo = min(o, c) * (1 - 0.002 * _unit(symbol, interval, priced, "l"))
        v = 1 + 100 * _unit(symbol, interval, priced, "v")
        vol = _fmt(v, 0.001)
        return [
            str(start),
            _fmt(o, inst.tick),
            _fmt(h, inst.tick),
            _fmt(lo, inst.tick),
            _fmt(c, inst.tick),
            vol,
            _fmt(float(vol) * (o + c) / 2, 0.0001),
        ]

    def series(self, category: str, symbol: str, interval: str, first: int, last: int) -> list[tuple]:
        """Closed bars with start in [first, last] as (start, o, h, l, c, volume) floats."""
        step = iv_ms(interval)
        inst = self.instruments[(category, symbol)]
        s = max(first - first % step, inst.launch_ms + (-inst.launch_ms) % step)
        out = []
        while s <= last:
            row = self.bar(category, symbol, interval, s)
            out.append((int(row[0]), *(float(x) for x in row[1:6])))
            s += step
        return out

    def last_price(self, category: str, symbol: str) -> float:
        if (category, symbol) in self.prices:
            return self.prices[(category, symbol)]
        inst = self.instruments[(category, symbol)]
        return float(_fmt(self._mid(inst, self.now_ms()), inst.tick))

    # REST helpers --------------------------------------------------------------------------

    def _envelope(
        self,
        result: Any,
        code: int = 0,
        msg: str = "OK",
        headers: dict | None = None,
        status: int = 200,
        time_ms: int | None = None,
    ) -> web.Response:
        body = {
            "retCode": code,
            "retMsg": msg,
            "result": result if result is not None else {},
            "retExtInfo": {},
            "time": time_ms if time_ms is not None else self.clock_ms(),
        }
        hdrs = {
            "X-Bapi-Limit": "600",
            "X-Bapi-Limit-Status": "599",
            "X-Bapi-Limit-Reset-Timestamp": str(self.clock_ms()),
        }
        hdrs.update(headers or {})
        return web.json_response(body, status=status, headers=hdrs)

    def _error(self, code: int, msg: str) -> web.Response:
        return self._envelope({}, code, msg)

    async def _fault(self, request: web.Request) -> tuple[web.StreamResponse | None, float]:
        """Apply the first queued fault for this path: a reply to send instead, or a delay."""
        for i, (prefix, queued) in enumerate(self.faults.rest):
            if request.path.startswith(prefix) and queued != "lost":
                fault = queued
                del self.faults.rest[i]
                break
        else:
            return None, 0.0
        if fault == "10006":
            reset = self.clock_ms() + 80
            return self._envelope(
                {},
                10006,
                "Too many visits!",
                headers={"X-Bapi-Limit-Status": "0", "X-Bapi-Limit-Reset-Timestamp": str(reset)},
            ), 0.0
        if fault == "10016":
            return self._error(10016, "Internal system error."), 0.0
        if fault == "403":
            return web.Response(status=403, text="<html>403 Forbidden</html>"), 0.0
        if fault == "500":
            return web.Response(status=502, text="<html>502 Bad Gateway</html>"), 0.0
        if fault == "drop":
            request.transport.close()  # type: ignore[union-attr]
            return web.Response(status=500), 0.0
        if fault.startswith("slow:"):
            return None, float(fault.split(":", 1)[1])
        if fault.startswith("late:"):
            return None, -float(fault.split(":", 1)[1])
        if fault.startswith("reject:"):
            return self._error(int(fault.split(":", 1)[1]), "injected rejection"), 0.0
        return None, 0.0

    def _verify(self, request: web.Request, payload: str) -> web.Response | None:
        """Bybit's checks on a signed request: key, timestamp window, then the signature over the
        raw payload it received."""
        key = request.headers.get("X-BAPI-API-KEY", "")
        if not key:
            return self._error(10003, "API key is invalid.")
        secret = self.keys.get(key)
        if secret is None:
            return self._error(10003, "API key is invalid.")
        try:
            ts = int(request.headers.get("X-BAPI-TIMESTAMP", ""))
            recv = int(request.headers.get("X-BAPI-RECV-WINDOW", "5000"))
        except ValueError:
            return self._error(10002, "invalid request, please check your timestamp or recv_window param")
        now = self.clock_ms()
        if not (now - recv <= ts < now + 1000):
            return self._error(
                10002,
                "invalid request, please check your server timestamp or recv_window param. "
                f"req_timestamp[{ts}],server_timestamp[{now}],recv_window[{recv}]",
            )
        origin = f"{ts}{key}{recv}{payload}"
        want = hmac.new(secret.encode(), origin.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want, request.headers.get("X-BAPI-SIGN", "")):
            return self._error(10004, f"error sign! origin_string[{origin}]")
        return None

    async def _checked(self, request: web.Request) -> tuple[dict[str, Any], web.StreamResponse | None]:
        """A signed private call past authentication and the injected faults, or the reply that
        ends it early."""
        body, bad = await self._private_rest(request)
        if bad is not None:
            return {}, bad
        assert body is not None
        reply, _ = await self._fault(request)
        return body, reply

    async def _private_rest(self, request: web.Request) -> tuple[dict[str, Any] | None, web.Response | None]:
        # Bybit hashes what it received: the raw query (not a decoded one) or the raw body
        raw = request.raw_path.partition("?")[2] if request.method == "GET" else await request.text()
        self.requests.append((request.method, request.path))
        bad = self._verify(request, raw)
        if bad is not None:
            return None, bad
        if request.method == "GET":
            return dict(request.query), None
        try:
            body = json.loads(raw)
        except ValueError:
            return None, self._error(10001, "params error: request body is not JSON")
        if not isinstance(body, dict):
            return None, self._error(10001, "params error: request body is not an object")
        return body, None

    # market data endpoints -----------------------------------------------------------------

    async def _time(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(("GET", request.path))
        reply, _ = await self._fault(request)
        if reply is not None:
            return reply
        ns = time.time_ns() + self.skew_ms * 1_000_000
        return self._envelope({"timeSecond": str(ns // 10**9), "timeNano": str(ns)}, time_ms=ns // 10**6)

    async def _kline(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(("GET", request.path))
        reply, delay = await self._fault(request)
        if reply is not None:
            return reply
        if delay:
            await asyncio.sleep(delay)
        q = request.query
        category = q.get("category", "linear")
        symbol = q.get("symbol", "")
        interval = q.get("interval", "")
        if category not in ("spot", "linear", "inverse"):
            return self._error(10001, f"params error: category {category!r} invalid")
        if not symbol:
            return self._error(10001, "params error: symbol is required")
        inst = self.instruments.get((category, symbol))
        if inst is None:
            return self._error(10001, "Not supported symbols")
        if interval not in INTERVALS or interval == "M":
            return self._error(10001, "Invalid period!")
        try:
            limit = int(q.get("limit", "200"))
            start = int(q["start"]) if "start" in q else None
            end = int(q["end"]) if "end" in q else None
        except ValueError:
            return self._error(10001, "params error: start, end and limit must be integers")
        if not 1 <= limit <= 1000:
            return self._error(10001, "params error: limit must be within [1, 1000]")
        step = iv_ms(interval)
        now = self.now_ms()
        open_start = now - now % step
        last = open_start if end is None else min(end - end % step, open_start)
        first_allowed = inst.launch_ms + (-inst.launch_ms) % step
        if start is not None:
            first = max(start - start % step, first_allowed)
            if end is None:
                last = min(last, first + (limit - 1) * step)
        else:
            first = max(last - (limit - 1) * step, first_allowed)
        rows = []
        s = last
        while s >= first and len(rows) < limit:
            row = self.bar(category, symbol, interval, s)
            if s == open_start:
                row = self._partial_row(inst, interval, s, now)
            rows.append(row)
            s -= step
        return self._envelope({"symbol": symbol, "category": category, "list": rows}, time_ms=now)

    def _partial_row(self, inst: Instrument, interval: str, start: int, now: int) -> list[str]:
        final = self.bar(inst.category, inst.symbol, interval, start)
        frac = min(max((now - start) / iv_ms(interval), 0.0), 1.0)
        o, h, lo = float(final[1]), float(final[2]), float(final[3])
        c = min(max(float(_fmt(self._mid(inst, now), inst.tick)), lo), h)
        vol = float(final[5]) * frac
        return [
            final[0],
            final[1],
            _fmt(max(o, c), inst.tick),
            _fmt(min(o, c), inst.tick),
            _fmt(c, inst.tick),
            _fmt(vol, 0.001),
            _fmt(vol * c, 0.0001),
        ]

    async def _instruments(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(("GET", request.path))
        reply, _ = await self._fault(request)
        if reply is not None:
            return reply
        category = request.query.get("category", "")
        if category not in ("spot", "linear", "inverse", "option"):
            return self._error(10001, "params error: category is required")
        symbol = request.query.get("symbol")
        items = [i.info() for (c, s), i in self.instruments.items() if c == category and symbol in (None, s)]
        return self._envelope({"category": category, "list": items, "nextPageCursor": ""})

    # orders --------------------------------------------------------------------------------

    def _find(self, body: dict[str, Any]) -> FakeOrder | None:
        oid = body.get("orderId") or ""
        link = body.get("orderLinkId") or ""
        for order in self.orders.values():
            if (oid and order.order_id == oid) or (link and order.link_id == link):
                return order
        return None

    async def _create(self, request: web.Request) -> web.StreamResponse:
        body, bad = await self._private_rest(request)
        if bad is not None:
            return bad
        assert body is not None
        for i, (prefix, fault) in enumerate(self.faults.rest):
            if fault == "lost" and request.path.startswith(prefix):
                del self.faults.rest[i]
                self._place(body)  # the order exists, but its reply never arrives
                request.transport.close()  # type: ignore[union-attr]
                return web.Response(status=500)
        reply, delay = await self._fault(request)
        if reply is not None:
            return reply
        if delay < 0:  # "late": the order reaches the matching engine only now
            await asyncio.sleep(-delay)
            delay = 0.0
        result = self._place(body)
        if delay:
            await asyncio.sleep(delay)
        return result

    def _place(self, body: dict[str, Any]) -> web.Response:
        category = body.get("category")
        symbol = body.get("symbol")
        inst = self.instruments.get((str(category), str(symbol)))
        if inst is None:
            return self._error(10001, "params error: symbol invalid")
        side, otype = body.get("side"), body.get("orderType")
        if side not in ("Buy", "Sell"):
            return self._error(10001, "params error: side invalid")
        if otype not in ("Market", "Limit"):
            return self._error(10001, "params error: orderType invalid")
        if not isinstance(body.get("qty"), str):
            return self._error(10001, "params error: qty must be a string")
        try:
            qty = float(body["qty"])
            price = float(body.get("price") or 0.0)
            trigger = float(body.get("triggerPrice") or 0.0)
        except ValueError:
            return self._error(10001, "params error: qty, price or triggerPrice invalid")
        link = str(body.get("orderLinkId") or "")
        spot = category == "spot"
        if link and any(o.link_id == link for o in self.orders.values()):
            return (
                self._error(170141, "Duplicate clientOrderId")
                if spot
                else self._error(110072, "OrderLinkedID is duplicate")
            )
        if abs(qty / inst.step - round(qty / inst.step)) > 1e-6:
            return self._error(10001, f"params error: qty {body['qty']} is not a multiple of {inst.step}")
        if otype == "Limit" and (price <= 0 or abs(price / inst.tick - round(price / inst.tick)) > 1e-6):
            return self._error(10001, f"params error: price {body.get('price')} invalid")
        last = self.last_price(str(category), str(symbol))
        direction = 0
        order_filter = str(body.get("orderFilter") or "Order")
        if trigger:
            if abs(trigger / inst.tick - round(trigger / inst.tick)) > 1e-6:
                return self._error(10001, f"params error: triggerPrice {body['triggerPrice']} invalid")
            problem, direction = self._trigger_problem(spot, order_filter, body, trigger, last, inst)
            if problem is not None:
                return problem
        ref = price if otype == "Limit" else trigger or last
        limit = inst.market_limit()
        if otype == "Market" and limit and qty > limit + 1e-12:
            return self._error(
                170136 if spot else 10001,
                "The quantity of a single market order must be less than the maximum value",
            )
        if not spot and qty < inst.min_qty:
            return self._error(10001, "The number of contracts is below minimum")
        if qty * ref < inst.min_notional:
            return (
                self._error(170140, "Order value exceeded lower limit.")
                if spot
                else self._error(110094, "Order does not meet minimum order value 5USDT")
            )
        if spot and not trigger and self._spot_short(str(symbol), str(side), qty, ref):
            return self._error(170131, "Insufficient balance.")
        if not spot and qty * ref > self.balance:
            return self._error(110007, "ab not enough for new order")
        now = self.clock_ms()
        order = FakeOrder(
            order_id=str(uuid.uuid4()) if not spot else str(1_321_003_749_386_327_552 + len(self.orders)),
            link_id=link,
            category=str(category),
            symbol=str(symbol),
            side=str(side),
            order_type=str(otype),
            qty=qty,
            price=price,
            tif="IOC" if otype == "Market" else str(body.get("timeInForce") or "GTC"),
            reduce_only=bool(body.get("reduceOnly", False)),
            status="Untriggered" if trigger else "New",
            trigger_price=trigger,
            trigger_direction=direction,
            order_filter=order_filter if spot else "Order",
            created=now,
            updated=now,
        )
        self.orders[order.order_id] = order
        self._push_order(order)
        crosses = otype == "Market" or (side == "Buy" and price >= last) or (side == "Sell" and price <= last)
        if crosses and not trigger:
            self._fill(order, last, maker=False)
        return self._envelope({"orderId": order.order_id, "orderLinkId": link})

    def _spot_short(self, symbol: str, side: str, qty: float, price: float) -> bool:
        """Whether the unified wallet lacks what a spot order spends: a buy's USDT (its fee is
        taken from the coin it receives), a sell's base coin. A conditional (StopOrder) order
        holds nothing while it waits: it is checked when it triggers."""
        if side == "Buy":
            return qty * price > self.wallet_cash() + 1e-9
        return qty > self.coin_balance(base_coin(symbol)) + 1e-12

    def _trigger_problem(
        self,
        spot: bool,
        order_filter: str,
        body: dict[str, Any],
        trigger: float,
        last: float,
        inst: Instrument,
    ) -> tuple[web.Response | None, int]:
        """Bybit's checks on a conditional order, and its direction (1 rises to, 2 falls to).

        Spot needs ``orderFilter=StopOrder`` and infers the direction from the last price;
        derivatives need ``triggerDirection`` and refuse a trigger the price is already past."""
        if spot:
            if order_filter not in ("StopOrder", "tpslOrder"):
                return self._error(10001, "params error: triggerPrice needs orderFilter StopOrder"), 0
            return None, 1 if trigger > last else 2
        direction = body.get("triggerDirection")
        if direction not in (1, 2):
            return self._error(10001, "TriggerDirection invalid"), 0
        return self._crossed(direction, trigger, last, inst), direction

    def _crossed(self, direction: int, trigger: float, last: float, inst: Instrument) -> web.Response | None:
        t, c = _fmt(trigger, inst.tick), _fmt(last, inst.tick)
        if direction == 1 and trigger <= last:
            return self._error(110092, f"expect Rising, but trigger_price[{t}] <= current[{c}]??LastPrice")
        if direction == 2 and trigger >= last:
            return self._error(110093, f"expect Falling, but trigger_price[{t}] >= current[{c}]??LastPrice")
        return None

    def _fill(self, order: FakeOrder, price: float, *, maker: bool) -> None:
        """Fill what is left of the order at ``price``, in ``faults.fill_parts`` executions."""
        inst = self.instruments[(order.category, order.symbol)]
        left = round((order.qty - order.cum_qty) / inst.step)
        parts = max(1, min(self.faults.fill_parts, left))
        sizes = [left // parts + (1 if k < left % parts else 0) for k in range(parts)]
        for lots in sizes:
            self._execute(order, inst, lots * inst.step, price, maker=maker)

    def _execute(self, order: FakeOrder, inst: Instrument, qty: float, price: float, *, maker: bool) -> None:
        rate = MAKER_FEE if maker else TAKER_FEE
        fee, fee_currency = qty * price * rate, "USDT"
        if order.category == "spot" and order.side == "Buy":
            # a spot buy pays its fee out of the coin it receives
            fee, fee_currency = qty * rate, order.symbol.removesuffix("USDT")
        order.cum_qty += qty
        order.cum_value += qty * price
        order.cum_fee += fee
        done = order.qty - order.cum_qty < inst.step / 2
        order.status = "Filled" if done else "PartiallyFilled"
        order.updated = self.clock_ms()
        execution = sample("ws_private_execution_push.json")["data"][0]
        execution.update(
            category=order.category,
            symbol=order.symbol,
            execFee=str(round(fee, 10)),
            execId=str(uuid.uuid4()),
            execPrice=_fmt(price, inst.tick),
            execQty=_fmt(qty, inst.step),
            execValue=str(round(qty * price, 8)),
            feeRate=str(rate),
            leavesQty=_fmt(max(order.qty - order.cum_qty, 0.0), inst.step),
            orderId=order.order_id,
            orderLinkId=order.link_id,
            orderPrice=_fmt(order.price or price, inst.tick),
            orderQty=_fmt(order.qty, inst.step),
            orderType=order.order_type,
            stopOrderType="Stop" if order.trigger_price else "UNKNOWN",
            side=order.side,
            execTime=str(order.updated),
            isMaker=maker,
            seq=len(self.executions) + 1,
            closedSize="0",
            feeCurrency=fee_currency,
        )
        self.fee_coins[execution["execId"]] = fee_currency
        if self.faults.no_fee_currency:
            del execution["feeCurrency"]
        self.executions.append(execution)
        if self.faults.order_before_execution:
            self._push_order(order)
        self._push("execution", [execution], repeat=2 if self.faults.duplicate_executions else 1)
        if not self.faults.order_before_execution:
            self._push_order(order)

    def replay_executions(self) -> None:
        """Push every execution so far again, as a late or repeated websocket delivery would."""
        for execution in self.executions:
            self._push("execution", [execution])

    def set_price(self, category: str, symbol: str, price: float) -> None:
        """Move the last price: conditional orders it reaches trigger and fill at it as takers,
        resting limit orders it reaches fill at their price as makers."""
        self.prices[(category, symbol)] = price
        self._check_triggers(category, symbol, price)
        for order in list(self.orders.values()):
            if order.category != category or order.symbol != symbol:
                continue
            if order.status not in ("New", "PartiallyFilled") or order.order_type != "Limit":
                continue
            buy = order.side == "Buy"
            if (buy and price <= order.price) or (not buy and price >= order.price):
                self._fill(order, order.price, maker=True)

    def _check_triggers(self, category: str, symbol: str, price: float) -> None:
        for order in list(self.orders.values()):
            if order.category != category or order.symbol != symbol or order.status != "Untriggered":
                continue
            rises = order.trigger_direction == 1
            if (rises and price >= order.trigger_price) or (not rises and price <= order.trigger_price):
                order.updated = self.clock_ms()
                if order.category == "spot" and self._spot_short(
                    order.symbol, order.side, order.qty - order.cum_qty, price
                ):
                    order.status, order.reject_reason = "Rejected", "EC_InsufficientBalance"
                    self._push_order(order)
                    continue
                order.status = "Triggered"
                self._push_order(order)
                if order.order_type == "Limit":
                    order.status = "New"  # rests; set_price matches it next
                else:
                    self._fill(order, price, maker=False)

    async def _amend(self, request: web.Request) -> web.StreamResponse:
        body, early = await self._checked(request)
        if early is not None:
            return early
        order = self._find(body)
        if order is None or order.status not in ("New", "PartiallyFilled", "Untriggered"):
            return self._error(110001, "order not exists or too late to replace")
        inst = self.instruments[(order.category, order.symbol)]
        if body.get("triggerPrice"):
            if order.status != "Untriggered":
                return self._error(10001, "params error: triggerPrice of an active order")
            trigger = float(body["triggerPrice"])
            crossed = self._crossed(
                order.trigger_direction, trigger, self.last_price(order.category, order.symbol), inst
            )
            if crossed is not None:
                return crossed
            order.trigger_price = trigger
        if body.get("qty"):
            order.qty = float(body["qty"])
        if body.get("price"):
            order.price = float(body["price"])
        order.updated = self.clock_ms()
        self._push_order(order)
        return self._envelope({"orderId": order.order_id, "orderLinkId": order.link_id})

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        body, raced = await self._private_rest(request)
        if raced is not None:
            return raced
        assert body is not None
        for i, (prefix, fault) in enumerate(self.faults.rest):
            if fault == "race" and request.path.startswith(prefix):
                # the cancel is accepted, but a fill reaches the order first: it ends Filled
                del self.faults.rest[i]
                order = self._find(body)
                if order is not None and order.status in ("New", "PartiallyFilled"):
                    price = order.price or self.last_price(order.category, order.symbol)
                    self._fill(order, price, maker=True)
                    return self._envelope({"orderId": order.order_id, "orderLinkId": order.link_id})
        early, _ = await self._fault(request)
        if early is not None:
            return early
        order = self._find(body)
        if order is None or order.status not in ("New", "PartiallyFilled", "Untriggered"):
            return self._error(110001, "order not exists or too late to cancel")
        if order.category == "spot" and str(body.get("orderFilter") or "Order") != order.order_filter:
            return self._error(170213, "Order does not exist.")  # spot looks in one order book only
        order.status = "Deactivated" if order.status == "Untriggered" else "Cancelled"
        order.updated = self.clock_ms()
        self._push_order(order)
        return self._envelope({"orderId": order.order_id, "orderLinkId": order.link_id})

    async def _realtime(self, request: web.Request) -> web.StreamResponse:
        q, early = await self._checked(request)
        if early is not None:
            return early
        found = []
        for order in sorted(self.orders.values(), key=lambda o: o.created, reverse=True):
            if self.faults.hide_orders:
                break
            if q.get("category") and order.category != q["category"]:
                continue
            if q.get("symbol") and order.symbol != q["symbol"]:
                continue
            if q.get("orderLinkId") and order.link_id != q["orderLinkId"]:
                continue
            if q.get("orderId") and order.order_id != q["orderId"]:
                continue
            by_id = q.get("orderLinkId") or q.get("orderId")
            # spot answers with active orders only unless openOnly=1 asks for the recent closed ones
            closed_too = q.get("openOnly") == "1" if order.category == "spot" else bool(by_id)
            if not closed_too and order.status not in ("New", "PartiallyFilled", "Untriggered"):
                continue
            found.append(order.to_json(self.instruments[(order.category, order.symbol)]))
        return self._envelope(
            {
                "list": found[: int(q.get("limit", 20))],
                "nextPageCursor": "",
                "category": q.get("category", ""),
            }
        )

    async def _history(self, request: web.Request) -> web.StreamResponse:
        """Order history: orders of any status, newest first, by orderLinkId/orderId/symbol."""
        q, early = await self._checked(request)
        if early is not None:
            return early
        found = [
            order.to_json(self.instruments[(order.category, order.symbol)])
            for order in sorted(self.orders.values(), key=lambda o: o.created, reverse=True)
            if order.category == q.get("category")
            and not self.faults.hide_orders
            and all(not q.get(k) or q[k] == v for k, v in self._order_keys(order).items())
        ]
        page = found[: int(q.get("limit", 20))]
        return self._envelope({"list": page, "nextPageCursor": "", "category": q.get("category", "")})

    def position(self, category: str, symbol: str) -> tuple[float, float]:
        """(signed size, average entry price) from the executions, as a one-way-mode position."""
        size = cost = 0.0
        for ex in self.executions:
            if ex["category"] != category or ex["symbol"] != symbol or ex.get("execType", "Trade") != "Trade":
                continue
            q = float(ex["execQty"]) * (1 if ex["side"] == "Buy" else -1)
            price = float(ex["execPrice"])
            if size == 0 or (size > 0) == (q > 0):
                cost += q * price
                size += q
            else:
                new = size + q
                if abs(new) < 1e-12:
                    size, cost = 0.0, 0.0
                elif (new > 0) == (size > 0):
                    cost *= new / size
                    size = new
                else:
                    size, cost = new, new * price
        return size, (cost / size if size else 0.0)

    def wallet_cash(self) -> float:
        """USDT: the starting balance less what trades paid (notional both ways, fees charged in
        USDT; a spot buy's fee comes out of the coin it receives instead)."""
        cash = self.balance
        for ex in self.executions:
            q = float(ex["execQty"]) * (1 if ex["side"] == "Buy" else -1)
            fee = float(ex["execFee"]) if self._fee_coin(ex) == "USDT" else 0.0
            cash -= q * float(ex["execPrice"]) + fee
        return cash

    def coin_balance(self, coin: str) -> float:
        """A spot coin's wallet balance: the start plus what spot buys brought in (net of a fee
        charged in it) less what spot sells took out."""
        held = self.coins.get(coin, 0.0)
        for ex in self.executions:
            if ex["category"] != "spot" or base_coin(ex["symbol"]) != coin:
                continue
            q = float(ex["execQty"])
            held += q if ex["side"] == "Buy" else -q
            if self._fee_coin(ex) == coin:
                held -= float(ex["execFee"])
        return held

    def _fee_coin(self, ex: dict[str, Any]) -> str:
        return self.fee_coins.get(str(ex.get("execId")), str(ex.get("feeCurrency") or "USDT"))

    async def _positions(self, request: web.Request) -> web.StreamResponse:
        q, early = await self._checked(request)
        if early is not None:
            return early
        category = q.get("category", "")
        items = []
        for (cat, symbol), inst in self.instruments.items():
            if cat != category or (q.get("symbol") and q["symbol"] != symbol):
                continue
            size, avg = self.position(cat, symbol)
            if not size and not q.get("symbol"):
                continue
            mark = self.last_price(cat, symbol)
            items.append(
                {
                    "positionIdx": 0,
                    "symbol": symbol,
                    "side": "Buy" if size > 0 else "Sell" if size < 0 else "",
                    "size": _fmt(abs(size), inst.step),
                    "avgPrice": str(round(avg, 8)),
                    "markPrice": _fmt(mark, inst.tick),
                    "positionValue": str(round(abs(size) * avg, 8)),
                    "unrealisedPnl": str(round(size * (mark - avg), 8)),
                }
            )
        return self._envelope({"list": items, "nextPageCursor": "", "category": category})

    async def _wallet(self, request: web.Request) -> web.StreamResponse:
        q, early = await self._checked(request)
        if early is not None:
            return early
        # linear positions are booked at their notional in wallet_cash: equity adds their value
        # back; the wallet balance is the equity less their unrealised P&L
        equity = self.wallet_cash()
        upl = 0.0
        for cat, symbol in self.instruments:
            if cat == "linear":
                size, avg = self.position(cat, symbol)
                mark = self.last_price(cat, symbol)
                equity += size * mark
                upl += size * (mark - avg)
        coins = [self._coin("USDT", equity - upl, equity, 1.0, upl)]
        total = equity
        wanted = set(filter(None, q.get("coin", "").split(",")))
        for coin in sorted({*self.coins, *(base_coin(s) for c, s in self.instruments if c == "spot")}):
            held = self.coin_balance(coin)
            if abs(held) < 1e-12 or (wanted and coin not in wanted):
                continue  # Bybit lists only non-zero coins unless asked for one
            pair = ("spot", f"{coin}USDT")
            price = self.last_price(*pair) if pair in self.instruments else 0.0
            coins.append(self._coin(coin, held, held, price, 0.0))
            total += held * price
        if wanted:
            coins = [c for c in coins if c["coin"] in wanted]
        return self._envelope(
            {
                "list": [
                    {
                        "accountType": q.get("accountType", "UNIFIED"),
                        "totalEquity": str(round(total, 8)),
                        "totalWalletBalance": str(round(total - upl, 8)),
                        "coin": coins,
                    }
                ]
            }
        )

    @staticmethod
    def _coin(coin: str, balance: float, equity: float, usd_price: float, upl: float) -> dict[str, Any]:
        """One coin of the unified wallet, in the v5 shape (numbers as strings)."""
        return {
            "coin": coin,
            "equity": f"{equity:.10f}".rstrip("0").rstrip("."),
            "walletBalance": f"{balance:.10f}".rstrip("0").rstrip("."),
            "usdValue": str(round(equity * usd_price, 8)),
            "locked": "0",
            "spotBorrow": "0",
            "borrowAmount": "",
            "unrealisedPnl": str(round(upl, 8)),
            "cumRealisedPnl": "0",
            "marginCollateral": True,
            "collateralSwitch": True,
        }

    @staticmethod
    def _order_keys(order: FakeOrder) -> dict[str, str]:
        return {"symbol": order.symbol, "orderLinkId": order.link_id, "orderId": order.order_id}

    async def _execution_list(self, request: web.Request) -> web.StreamResponse:
        """Trade history, newest first, in pages chained by an opaque (URL-encoded) cursor that
        names the last execution served, so executions arriving between pages shift nothing."""
        q, bad = await self._private_rest(request)
        if bad is not None:
            return bad
        assert q is not None
        self.execution_queries.append(dict(q))
        reply, delay = await self._fault(request)
        if reply is not None:
            return reply
        if delay:
            await asyncio.sleep(delay)
        if q.get("category") not in ("spot", "linear", "inverse", "option"):
            return self._error(10001, "params error: category is required")
        try:
            limit = int(q.get("limit", "50"))
            start = int(q["startTime"]) if "startTime" in q else None
            end = int(q["endTime"]) if "endTime" in q else None
            after = tuple(int(x) for x in q["cursor"].split(":")) if q.get("cursor") else None
        except ValueError:
            return self._error(10001, "params error: startTime, endTime, limit or cursor invalid")
        if not 1 <= limit <= 100:
            return self._error(10001, "params error: limit must be within [1, 100]")
        if start is None and end is None:
            end = self.clock_ms()
        if start is None:
            start = end - WEEK_MS  # type: ignore[operator]
        if end is None:
            end = start + WEEK_MS
        if end - start > WEEK_MS:
            return self._error(10001, "params error: the time range cannot exceed 7 days")
        found = []
        for ex in sorted(self.executions, key=lambda e: (int(e["execTime"]), e["seq"]), reverse=True):
            key = (int(ex["execTime"]), int(ex["seq"]))
            if after is not None and key >= after:
                continue
            if ex["category"] != q["category"] or not start <= key[0] <= end:
                continue
            if any(q.get(f) and ex[f] != q[f] for f in ("symbol", "orderId", "orderLinkId", "execType")):
                continue
            found.append(ex)
        page = found[: min(limit, self.execution_page_cap)]
        cursor = ""
        if len(found) > len(page):
            cursor = f"{page[-1]['execTime']}%3A{page[-1]['seq']}"
        return self._envelope(
            {
                "nextPageCursor": cursor,
                "category": q["category"],
                "list": [self._execution_row(ex) for ex in page],
            }
        )

    def _execution_row(self, ex: dict[str, Any]) -> dict[str, Any]:
        """A stored (websocket-shaped) execution in the REST trade-history shape."""
        row = sample("rest_execution_list_response.json")["result"]["list"][0]
        for key in row:
            if key in ex and key != "extraFees":
                row[key] = ex[key]
        return row

    async def _tickers(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(("GET", request.path))
        reply, _ = await self._fault(request)
        if reply is not None:
            return reply
        category = request.query.get("category", "")
        symbol = request.query.get("symbol", "")
        if symbol:
            inst = self.instruments.get((category, symbol))
            if inst is None:
                return self._error(10001, "Not supported symbols")
            chosen = [inst]
        else:  # every symbol of the category, as Bybit answers without one
            chosen = [i for (c, _), i in self.instruments.items() if c == category]
        items = []
        for inst in chosen:
            item = sample("rest_tickers_spot.json")["result"]["list"][0]
            last = self.last_price(category, inst.symbol)
            item.update(
                symbol=inst.symbol,
                lastPrice=_fmt(last, inst.tick),
                bid1Price=_fmt(last - inst.tick, inst.tick),
                ask1Price=_fmt(last + inst.tick, inst.tick),
            )
            items.append(item)
        return self._envelope({"category": category, "list": items})

    # private websocket ---------------------------------------------------------------------

    def _push_order(self, order: FakeOrder) -> None:
        self._push("order", [order.to_json(self.instruments[(order.category, order.symbol)])])

    def _push(self, topic: str, data: list[dict[str, Any]], repeat: int = 1) -> None:
        msg = json.dumps(
            {"id": uuid.uuid4().hex, "topic": topic, "creationTime": self.clock_ms(), "data": data}
        )
        if self.private_down:
            return  # an outage: nothing reaches the clients
        for conn in self.private:
            if conn.authed and (topic in conn.topics or f"{topic}.{data[0].get('category')}" in conn.topics):
                for _ in range(repeat):
                    self._spawn(conn.ws.send_str(msg))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _private_ws(self, request: web.Request) -> web.StreamResponse:
        if self.private_down:
            return web.Response(status=503, text="private stream unavailable")
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self.private_connections += 1
        conn = PrivateConn(ws)
        self.private.append(conn)
        conn_id = uuid.uuid4().hex[:20] + "-p"
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    req = json.loads(msg.data)
                except ValueError:
                    continue
                op = req.get("op")
                reply: dict[str, Any] = {"success": True, "ret_msg": "", "op": op, "conn_id": conn_id}
                if "req_id" in req:
                    reply["req_id"] = req["req_id"]
                if op == "ping":
                    reply = {
                        "req_id": req.get("req_id", ""),
                        "op": "pong",
                        "args": [str(self.clock_ms())],
                        "conn_id": conn_id,
                    }
                elif op == "auth":
                    reason = self._ws_auth_problem(req.get("args"))
                    conn.authed = reason is None
                    if reason:
                        reply.update(success=False, ret_msg=reason)
                elif op == "subscribe":
                    if not conn.authed:
                        reply.update(success=False, ret_msg="Request not authorized")
                    else:
                        conn.topics.update(str(t) for t in req.get("args") or [])
                else:
                    reply.update(success=False, ret_msg=f"error:unknown op {op}")
                await ws.send_str(json.dumps(reply))
        finally:
            self.private.remove(conn)
        return ws

    def _ws_auth_problem(self, args: Any) -> str | None:
        if not isinstance(args, list) or len(args) != 3:
            return "Params Error"
        key, expires, sig = args
        secret = self.keys.get(str(key))
        if secret is None:
            return "Invalid apikey"
        try:
            exp = int(expires)
        except (TypeError, ValueError):
            return "Params Error"
        if exp <= self.clock_ms():
            return "Params Error: expires is in the past"
        want = hmac.new(secret.encode(), f"GET/realtime{exp}".encode(), hashlib.sha256).hexdigest()
        return None if hmac.compare_digest(want, str(sig)) else "Signature verification failed"

    async def drop_private(self) -> None:
        for conn in list(self.private):
            with contextlib.suppress(Exception):
                await conn.ws.close()

    # public websocket ----------------------------------------------------------------------

    async def _public_ws(self, request: web.Request) -> web.StreamResponse:
        category = request.match_info["category"]
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self.connections += 1
        self.connect_times.append(time.monotonic())
        conn = PublicConn(ws, category, number=self.connections)
        self.public.append(conn)
        conn_id = str(uuid.uuid4())
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT or conn.zombie:
                    continue
                try:
                    req = json.loads(msg.data)
                except ValueError:
                    continue
                await self._public_request(conn, conn_id, req)
        finally:
            if conn in self.public:
                self.public.remove(conn)
        return ws

    def mute_topic(self, topic: str, heal: str) -> None:
        self.faults.mute[topic] = (heal, self.connections)

    def _heal(self, conn_no: int, topics: list[str]) -> None:
        for topic in topics:
            heal, at = self.faults.mute.get(topic, ("", 0))
            if heal == "subscribe" or (heal == "connect" and conn_no > at):
                del self.faults.mute[topic]

    async def _public_request(self, conn: PublicConn, conn_id: str, req: dict[str, Any]) -> None:
        op = req.get("op")
        spot = conn.category == "spot"
        reply: dict[str, Any] = {"success": True, "ret_msg": "", "conn_id": conn_id}
        if "req_id" in req or not spot:
            reply["req_id"] = req.get("req_id", "")
        reply["op"] = op
        if op == "ping":
            reply["ret_msg"] = "pong"
            await conn.ws.send_str(json.dumps(reply))
            return
        if op not in ("subscribe", "unsubscribe"):
            reply.update(success=False, ret_msg=f"error:unknown op {op}")
            await conn.ws.send_str(json.dumps(reply))
            return
        args = [str(a) for a in req.get("args") or []]
        self.subscriptions.append((conn.category, args))
        if spot:
            reply["ret_msg"] = op
        if spot and len(args) > 10:
            reply.update(success=False, ret_msg=f"error:args size >10, size={len(args)}")
            await conn.ws.send_str(json.dumps(reply))
            return
        bad = [a for a in args if not self._topic_ok(conn.category, a)]
        if bad:
            reply.update(success=False, ret_msg=f"error:handler not found,topic:{bad[0]}")
            await conn.ws.send_str(json.dumps(reply))
            return
        if op == "unsubscribe":
            conn.topics.difference_update(args)
            await conn.ws.send_str(json.dumps(reply))
            return
        if self.faults.fail_subscribe > 0:
            self.faults.fail_subscribe -= 1
            reply.update(success=False, ret_msg="error:internal error, please retry")
            await conn.ws.send_str(json.dumps(reply))
            return
        self._heal(conn.number, args)
        conn.topics.update(args)
        await conn.ws.send_str(json.dumps(reply))
        if self.faults.drop_after_subscribe:
            await conn.ws.close()
            return
        if self.on_subscribed is not None:
            self._spawn(self.on_subscribed(conn))
            return
        for topic in args:  # the current candle, straight away, as Bybit does
            if topic in self.faults.mute:
                continue
            _, interval, symbol = topic.split(".")
            now = self.now_ms()
            start = now - now % iv_ms(interval)
            inst = self.instruments[(conn.category, symbol)]
            await conn.ws.send_str(
                self._frame(conn.category, topic, [self._partial(inst, interval, start, now)])
            )

    def _topic_ok(self, category: str, topic: str) -> bool:
        parts = topic.split(".")
        return (
            len(parts) == 3
            and parts[0] == "kline"
            and parts[1] in INTERVALS
            and parts[1] != "M"
            and (category, parts[2]) in self.instruments
        )

    def _element(self, row: list[str], interval: str, confirm: bool, ts: int) -> dict[str, Any]:
        start = int(row[0])
        return {
            "start": start,
            "end": start + iv_ms(interval) - 1,
            "interval": interval,
            "open": row[1],
            "close": row[4],
            "high": row[2],
            "low": row[3],
            "volume": row[5],
            "turnover": row[6],
            "confirm": confirm,
            "timestamp": ts,
        }

    def _partial(self, inst: Instrument, interval: str, start: int, now: int) -> dict[str, Any]:
        return self._element(self._partial_row(inst, interval, start, now), interval, False, now)

    def _frame(self, category: str, topic: str, data: list[dict[str, Any]]) -> str:
        ts = data[-1]["timestamp"]
        if category == "spot":  # spot frames begin with "type", linear ones with "topic"
            return json.dumps({"type": "snapshot", "topic": topic, "data": data, "ts": ts})
        return json.dumps({"topic": topic, "data": data, "ts": ts, "type": "snapshot"})

    # the market clock ----------------------------------------------------------------------

    def start_market(self, start_ms: int, *, step_ms: int = 20_000, tick: float = 0.005) -> None:
        """Run virtual time from ``start_ms``: every ``tick`` real seconds it advances by
        ``step_ms`` and every subscribed kline topic gets its update (and, at a boundary, its
        confirmed bar, subject to the bar faults)."""
        self.market_now_ms = start_ms
        self.market_step_ms = step_ms
        self.market_tick = tick
        self._market_task = asyncio.ensure_future(self._market())

    def stop_market(self) -> None:
        if self._market_task:
            self._market_task.cancel()

    async def _market(self) -> None:
        while True:
            await asyncio.sleep(self.market_tick)
            assert self.market_now_ms is not None
            prev = self.market_now_ms
            now = prev + self.market_step_ms
            self.market_now_ms = now
            for key in {(o.category, o.symbol) for o in self.orders.values() if o.status == "Untriggered"}:
                if key not in self.prices:  # a price pinned by set_price does not drift
                    self._check_triggers(*key, self.last_price(*key))
            topics: dict[tuple[str, str], list[PublicConn]] = defaultdict(list)
            for conn in self.public:
                if not conn.zombie:
                    for topic in conn.topics:
                        if topic not in self.faults.mute:
                            topics[(conn.category, topic)].append(conn)
            for (category, topic), conns in topics.items():
                await self._tick_topic(category, topic, conns, prev, now)

    async def _tick_topic(
        self, category: str, topic: str, conns: list[PublicConn], prev: int, now: int
    ) -> None:
        _, interval, symbol = topic.split(".")
        inst = self.instruments[(category, symbol)]
        step = iv_ms(interval)
        cur = now - now % step
        closed = cur - step
        frames: list[str] = []
        if prev - prev % step < cur:  # a boundary was crossed: bar `closed` is final
            if closed in self.faults.drop_before_confirm:
                self.faults.drop_before_confirm.discard(closed)
                for conn in list(self.public):
                    self.public.remove(conn)
                    with contextlib.suppress(Exception):
                        await conn.ws.close()
                return
            if closed in self.faults.stall_before_confirm:
                self.faults.stall_before_confirm.discard(closed)
                for conn in self.public:
                    conn.zombie = True  # silent from now on: no data, no pongs
                return
            if closed in self.faults.malformed_before_confirm:
                frames += [
                    '{"topic":"' + topic + '","data":[{"start":',
                    "[1,2,3]",
                    json.dumps(
                        {
                            "topic": topic,
                            "data": [{"start": "x", "confirm": True}],
                            "ts": now,
                            "type": "snapshot",
                        }
                    ),
                    json.dumps({"topic": topic, "data": "nope", "ts": now, "type": "snapshot"}),
                ]
            new = self._element(self._partial_row(inst, interval, cur, cur), interval, False, now)
            new.update(volume="0", turnover="0")
            if closed in self.faults.skip_confirm:
                frames.append(self._frame(category, topic, [new]))
            else:
                final = self._element(self.bar(category, symbol, interval, closed), interval, True, now)
                copies = 2 if closed in self.faults.duplicate_confirm else 1
                for _ in range(copies):
                    if category == "spot":
                        frames.append(self._frame(category, topic, [final]))
                    else:
                        frames.append(self._frame(category, topic, [final, new]))
                if category == "spot":
                    frames.append(self._frame(category, topic, [new]))
        else:
            frames.append(self._frame(category, topic, [self._partial(inst, interval, cur, now)]))
        for conn in conns:
            if conn.zombie or conn.ws.closed:
                continue
            for frame in frames:
                with contextlib.suppress(Exception):
                    await conn.ws.send_str(frame)
                    self.frames_sent += 1
