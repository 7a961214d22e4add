"""The Bybit execution venue: engine orders to signed v5 REST calls, account stream to bus events.

Implements :class:`engine.ports.ExecutionVenue`. ``submit``/``cancel``/``amend`` return at once
and schedule the work on the running loop; outcomes come back on the bus as
:class:`~engine.events.OrderUpdate` and :class:`~engine.events.Fill` events (``bus.post``).

Idempotency: every order carries an ``orderLinkId`` derived from its deterministic client id
(strategy, instrument, decision time). When the outcome of a create is unknown (timeout, lost
connection, 5xx, 10006, 10016), the adapter first asks ``/v5/order/realtime`` for that
orderLinkId and resends only if Bybit has no such order; a resend that races a late original is
refused by Bybit as a duplicate (110072/170141), which is again resolved by reconciliation. So a
retried decision can never open a second position.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import re
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import structlog

from connectors.bybit.config import BybitConfig
from connectors.bybit.errors import (
    BybitError,
    DuplicateOrder,
    IpBanned,
    OrderNotFound,
    RateLimited,
    ServerError,
)
from connectors.bybit.private_ws import PrivateStream
from connectors.bybit.rest import BybitRest
from connectors.bybit.signing import Credentials
from engine.bus import EventBus
from engine.events import Bar, Fill, Order, OrderStatus, OrderType, OrderUpdate, Side
from engine.instruments import InstrumentRules

log = structlog.get_logger("connectors.bybit.execution")

_LINK_ID = re.compile(r"^[A-Za-z0-9_-]{1,36}$")
_MS = 1_000_000
_TERMINAL = (OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED)
STATUS = {
    "Created": OrderStatus.SUBMITTED,
    "New": OrderStatus.ACCEPTED,
    "Untriggered": OrderStatus.ACCEPTED,
    "Triggered": OrderStatus.ACCEPTED,
    "PartiallyFilled": OrderStatus.PARTIALLY_FILLED,
    "Filled": OrderStatus.FILLED,
    "Cancelled": OrderStatus.CANCELLED,
    "PartiallyFilledCanceled": OrderStatus.CANCELLED,
    "Deactivated": OrderStatus.CANCELLED,
    "Rejected": OrderStatus.REJECTED,
}


def order_link_id(strategy: str, symbol: str, decision_ts_ns: int, tag: str = "") -> str:
    """Bybit ``orderLinkId`` for a decision: readable when it fits Bybit's 36 characters of
    ``[A-Za-z0-9_-]``, else a stable digest of the same inputs."""
    readable = f"{strategy}-{symbol}-{decision_ts_ns // _MS}" + (f"-{tag}" if tag else "")
    return readable if _LINK_ID.match(readable) else _digest(readable)


def link_id_for(order: Order) -> str:
    """The order's own client id when Bybit accepts it as an orderLinkId (the engine's ids are
    already deterministic), otherwise a digest of it; never random."""
    if order.client_id:
        return order.client_id if _LINK_ID.match(order.client_id) else _digest(order.client_id)
    return order_link_id(order.strategy, order.symbol, order.ts_event, order.tag)


def _digest(text: str) -> str:
    return "qn-" + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()[:32]


def format_step(value: float, step: float) -> str:
    """A decimal string on the step's grid with the step's decimals (Bybit wants strings)."""
    if step <= 0:
        return f"{value:.10f}".rstrip("0").rstrip(".")
    text = f"{step:.12f}".rstrip("0")
    decimals = len(text.split(".")[1]) if "." in text else 0
    return f"{value:.{decimals}f}"


@dataclass(slots=True)
class _Tracked:
    order: Order
    link_id: str
    qty: float
    price: float
    status: OrderStatus = OrderStatus.SUBMITTED
    venue_order_id: str = ""
    filled: float = 0.0


class BybitExecution:
    """``ExecutionVenue`` for Bybit v5 (one category per adapter, as configured).

    Construct, then ``await venue.start()`` (credentials from the environment variables named in
    the config, clock offset, instrument rules, private stream) and ``await venue.stop()`` at the
    end. ``rules`` may be given to skip the instruments-info call.
    """

    name = "bybit"

    def __init__(
        self,
        bus: EventBus,
        *,
        config: BybitConfig | None = None,
        credentials: Credentials | None = None,
        rules: Mapping[str, InstrumentRules] | None = None,
        rest: BybitRest | None = None,
        max_attempts: int = 4,
        reconcile_delay: float = 0.2,
        private_stream: bool = True,
    ) -> None:
        self.bus = bus
        self.config = config or BybitConfig()
        self.category = self.config.category
        self._credentials = credentials
        self._rest = rest
        self.rules: dict[str, InstrumentRules] = dict(rules or {})
        self.max_attempts = max_attempts
        self.reconcile_delay = reconcile_delay
        self.use_private_stream = private_stream
        self.orders: dict[str, _Tracked] = {}
        self._by_link: dict[str, _Tracked] = {}
        self._seen_exec: OrderedDict[str, None] = OrderedDict()
        self._last_price: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.stream: PrivateStream | None = None
        self.duplicate_executions = 0
        self.ignored_duplicates = 0
        self.resends = 0
        self.reconciliations = 0
        bus.subscribe(Bar, self._on_bar)

    # lifecycle -----------------------------------------------------------------------------

    @property
    def rest(self) -> BybitRest:
        if self._rest is None:
            raise RuntimeError("BybitExecution.start() has not run")
        return self._rest

    async def start(self) -> None:
        creds = self._credentials or Credentials.from_env(self.config.api_key_env, self.config.api_secret_env)
        self._credentials = creds
        if self._rest is None:
            self._rest = BybitRest(self.config, credentials=creds)
        elif self._rest.credentials is None:
            self._rest.credentials = creds
        await self.rest.sync_time()
        if not self.rules:
            self.rules = await self.rest.instrument_rules(self.category)
        if self.use_private_stream:
            self.stream = PrivateStream(
                self.config,
                creds,
                on_message=self.on_private_message,
                on_connected=self._resync,
                now_ms=self.rest.now_ms,
            )
            self._spawn(self.stream.run())
            await self.stream.wait_ready(self.config.connect_timeout * 2)
        self._spawn(self._clock_sync())

    async def stop(self) -> None:
        if self.stream is not None:
            self.stream.stop()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._rest is not None:
            await self._rest.close()

    async def drain(self) -> None:
        """Wait until every scheduled request has finished (tests, orderly shutdown)."""
        while True:
            busy = [t for t in self._tasks if getattr(t, "_qn_request", False) and not t.done()]
            if not busy:
                return
            await asyncio.gather(*busy, return_exceptions=True)

    def _spawn(self, coro: Any, request: bool = False) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task._qn_request = request  # type: ignore[attr-defined]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _clock_sync(self) -> None:
        while True:
            await asyncio.sleep(self.config.time_sync_interval)
            with contextlib.suppress(BybitError, OSError, TimeoutError):
                await self.rest.sync_time()

    # ExecutionVenue ------------------------------------------------------------------------

    def submit(self, order: Order) -> None:
        """Round to the instrument's rules, refuse what Bybit would refuse, then send async."""
        link = link_id_for(order)
        if order.client_id in self.orders or link in self._by_link:
            # the same decision submitted again: a no-op (rejecting it under the same client id
            # would read as a rejection of the order that is working)
            self.ignored_duplicates += 1
            log.warning("order already submitted; ignored", client_id=order.client_id, order_link_id=link)
            return
        problem, qty, price = self._prepare(order)
        if problem:
            self._update(order.client_id, order.symbol, OrderStatus.REJECTED, problem)
            return
        tracked = _Tracked(order, link, qty, price)
        self.orders[order.client_id] = tracked
        self._by_link[link] = tracked
        self._spawn(self._place(tracked), request=True)

    def cancel(self, client_id: str) -> None:
        tracked = self.orders.get(client_id)
        if tracked is None or tracked.status in _TERMINAL:
            return
        self._spawn(self._cancel(tracked), request=True)

    def amend(self, client_id: str, *, quantity: float | None = None, price: float | None = None) -> None:
        """Change a working order's quantity and/or limit price (rounded like on submit)."""
        tracked = self.orders.get(client_id)
        if tracked is None or tracked.status in _TERMINAL:
            self._update(client_id, "", OrderStatus.REJECTED, f"amend: no working order {client_id}")
            return
        self._spawn(self._amend(tracked, quantity, price), request=True)

    def open_orders(self) -> Iterable[Order]:
        return [t.order for t in self.orders.values() if t.status not in _TERMINAL]

    # validation ----------------------------------------------------------------------------

    def _on_bar(self, bar: Bar) -> None:
        self._last_price[bar.symbol] = bar.close

    def _prepare(self, order: Order) -> tuple[str | None, float, float]:
        rules = self.rules.get(order.symbol)
        if rules is None:
            return f"unknown {self.category} symbol {order.symbol!r} on Bybit", 0.0, 0.0
        if order.type is OrderType.STOP:
            return "stop orders are not supported by the Bybit adapter", 0.0, 0.0
        if not (order.quantity > 0 and math.isfinite(order.quantity)):
            return f"{order.symbol}: quantity {order.quantity} is not a positive number", 0.0, 0.0
        qty = rules.round_qty(order.quantity)
        if qty <= 0:
            least = max(rules.min_qty, rules.qty_step)
            return (
                f"{order.symbol}: quantity {order.quantity} is below the minimum {least} "
                f"(rounds down to 0 at the step {rules.qty_step})",
                0.0,
                0.0,
            )
        price = 0.0
        if order.type is OrderType.LIMIT:
            if not (order.price > 0 and math.isfinite(order.price)):
                return f"{order.symbol}: limit order without a valid price ({order.price})", 0.0, 0.0
            price = rules.round_price(order.price, up=order.side is Side.SELL)
        reference = price or self._last_price.get(order.symbol, 0.0)
        check = rules if reference > 0 else replace(rules, min_notional=0.0)
        problem = check.rejection(qty, reference)
        if problem and qty != order.quantity:
            problem += f" (after rounding {order.quantity} down to the step {rules.qty_step})"
        return problem, qty, price

    def _body(self, t: _Tracked) -> dict[str, Any]:
        rules = self.rules[t.order.symbol]
        body: dict[str, Any] = {
            "category": self.category,
            "symbol": t.order.symbol,
            "side": "Buy" if t.order.side is Side.BUY else "Sell",
            "orderType": "Limit" if t.order.type is OrderType.LIMIT else "Market",
            "qty": format_step(t.qty, rules.qty_step),
            "orderLinkId": t.link_id,
        }
        if t.order.type is OrderType.LIMIT:
            body["price"] = format_step(t.price, rules.tick_size)
            body["timeInForce"] = "GTC"
        elif self.category == "spot":
            body["marketUnit"] = "baseCoin"  # the engine sizes in base units; spot buys default to quote
        if t.order.reduce_only and self.category != "spot":
            body["reduceOnly"] = True
        return body

    # requests ------------------------------------------------------------------------------

    async def _place(self, t: _Tracked) -> None:
        body = self._body(t)
        last_error: BybitError | None = None
        for attempt in range(1, self.max_attempts + 1):
            if attempt > 1:
                self.resends += 1
                log.warning("resending order", order_link_id=t.link_id, attempt=attempt)
            try:
                result = await self.rest.request(
                    "POST", "/v5/order/create", body, signed=True, idempotent=False
                )
            except DuplicateOrder:
                if await self._reconcile(t):
                    return
                last_error = ServerError("duplicate orderLinkId but the order cannot be found")
                continue
            except (ServerError, RateLimited, IpBanned) as exc:
                last_error = exc
                log.warning("order outcome unknown; reconciling", order_link_id=t.link_id, error=str(exc))
                await self._wait_after(exc)
                if await self._reconcile(t):
                    return
                continue
            except BybitError as exc:
                self._set(t, OrderStatus.REJECTED, str(exc))
                return
            t.venue_order_id = str(result.get("orderId", ""))
            self._set(t, OrderStatus.ACCEPTED)
            return
        self._set(t, OrderStatus.REJECTED, f"not placed after {self.max_attempts} attempts: {last_error}")

    async def _wait_after(self, exc: BybitError) -> None:
        wait = self.reconcile_delay
        if isinstance(exc, RateLimited) and exc.reset_ms:
            wait = max(wait, min((exc.reset_ms - self.rest.now_ms()) / 1000.0, self.config.backoff_max))
        elif isinstance(exc, IpBanned):
            wait = self.config.ban_backoff
        await asyncio.sleep(max(wait, 0.0))

    async def _reconcile(self, t: _Tracked) -> bool:
        """Look the order up by orderLinkId; apply and return True if Bybit has it. The lookup
        itself is a read and is retried until it gives an answer."""
        self.reconciliations += 1
        for attempt in range(self.max_attempts * 2):
            try:
                result = await self.rest.request(
                    "GET",
                    "/v5/order/realtime",
                    {"category": self.category, "symbol": t.order.symbol, "orderLinkId": t.link_id},
                    signed=True,
                )
                break
            except BybitError as exc:
                log.warning("reconciliation query failed", order_link_id=t.link_id, error=str(exc))
                await asyncio.sleep(self.config.backoff_initial * 2**attempt)
        else:
            return False
        for item in result.get("list") or []:
            if item.get("orderLinkId") == t.link_id:
                log.info(
                    "order found by reconciliation", order_link_id=t.link_id, status=item.get("orderStatus")
                )
                self._apply_order(item)
                return True
        return False

    async def _cancel(self, t: _Tracked) -> None:
        body = {"category": self.category, "symbol": t.order.symbol, "orderLinkId": t.link_id}
        for _ in range(self.max_attempts):
            try:
                await self.rest.request("POST", "/v5/order/cancel", body, signed=True, idempotent=False)
                self._set(t, OrderStatus.CANCELLED)
                return
            except OrderNotFound:
                await self._reconcile(t)  # filled or cancelled already: report what it is
                return
            except (ServerError, RateLimited, IpBanned) as exc:
                await self._wait_after(exc)
                if await self._reconcile(t) and t.status in _TERMINAL:
                    return
            except BybitError as exc:
                log.error("cancel refused", order_link_id=t.link_id, error=str(exc))
                return

    async def _amend(self, t: _Tracked, quantity: float | None, price: float | None) -> None:
        rules = self.rules[t.order.symbol]
        body: dict[str, Any] = {"category": self.category, "symbol": t.order.symbol, "orderLinkId": t.link_id}
        if quantity is not None:
            qty = rules.round_qty(quantity)
            problem = rules.rejection(
                qty, price or t.price or self._last_price.get(t.order.symbol, 0.0) or math.inf
            )
            if problem:
                self._set(t, t.status, f"amend refused: {problem}", force=True)
                return
            body["qty"] = format_step(qty, rules.qty_step)
        if price is not None:
            body["price"] = format_step(
                rules.round_price(price, up=t.order.side is Side.SELL), rules.tick_size
            )
        try:
            await self.rest.request("POST", "/v5/order/amend", body, signed=True, idempotent=False)
        except (ServerError, RateLimited, IpBanned) as exc:
            await self._wait_after(exc)
            await self._reconcile(t)
            return
        except BybitError as exc:
            self._set(t, t.status, f"amend refused: {exc}", force=True)
            return
        if quantity is not None:
            t.qty = float(body["qty"])
        if price is not None:
            t.price = float(body["price"])

    async def _resync(self) -> None:
        """After a private-stream (re)connect, updates may have been missed: ask for each order
        still thought to be working."""
        for t in [t for t in self.orders.values() if t.status not in _TERMINAL]:
            self._spawn(self._reconcile(t))

    # account stream ------------------------------------------------------------------------

    def on_private_message(self, msg: dict[str, Any]) -> None:
        topic = str(msg.get("topic", ""))
        if topic.startswith("execution"):
            for item in msg["data"]:
                self._apply_execution(item)
        elif topic.startswith("order"):
            for item in msg["data"]:
                self._apply_order(item)

    def _apply_order(self, item: Mapping[str, Any]) -> None:
        status = STATUS.get(str(item.get("orderStatus")))
        if status is None:
            log.warning("unknown order status ignored", status=item.get("orderStatus"))
            return
        t = self._by_link.get(str(item.get("orderLinkId") or ""))
        if t is None:
            return  # an order this engine did not send (manual, another bot): not ours to report
        if item.get("orderId"):
            t.venue_order_id = str(item["orderId"])
        reason = ""
        if status is OrderStatus.REJECTED or (status is OrderStatus.CANCELLED and item.get("rejectReason")):
            code = str(item.get("rejectReason") or "")
            reason = "" if code == "EC_NoError" else code
        self._set(t, status, reason)

    def _apply_execution(self, item: Mapping[str, Any]) -> None:
        exec_id = str(item.get("execId") or "")
        if not exec_id or exec_id in self._seen_exec:
            self.duplicate_executions += 1
            return
        self._seen_exec[exec_id] = None
        if len(self._seen_exec) > 100_000:
            self._seen_exec.popitem(last=False)
        if item.get("execType", "Trade") != "Trade":
            return  # funding, delivery, ADL bookkeeping: not fills of our orders
        link = str(item.get("orderLinkId") or "")
        t = self._by_link.get(link)
        client_id = t.order.client_id if t is not None else link or str(item.get("orderId", ""))
        qty = float(item["execQty"])
        fill = Fill(
            int(item.get("execTime") or 0) * _MS,
            time.time_ns(),
            client_id,
            str(item.get("symbol")),
            Side.BUY if item.get("side") == "Buy" else Side.SELL,
            qty,
            float(item["execPrice"]),
            float(item.get("execFee") or 0.0),
            "maker" if item.get("isMaker") else "taker",
            exec_id,
            t.order.tag if t is not None else "",
        )
        if t is not None:
            t.filled += qty
        self.bus.post(fill)

    # events --------------------------------------------------------------------------------

    def _set(self, t: _Tracked, status: OrderStatus, reason: str = "", *, force: bool = False) -> None:
        """Publish a status change once; terminal states are final."""
        if t.status in _TERMINAL and not force:
            return
        if status == t.status and not force:
            return
        if status is OrderStatus.ACCEPTED and t.status is OrderStatus.PARTIALLY_FILLED:
            return  # a late create reply must not move the order backwards
        t.status = status
        self._update(t.order.client_id, t.order.symbol, status, reason, t.venue_order_id)

    def _update(
        self, client_id: str, symbol: str, status: OrderStatus, reason: str = "", venue_id: str = ""
    ) -> None:
        now = time.time_ns()
        if status is OrderStatus.REJECTED:
            log.warning("order rejected", client_id=client_id, reason=reason)
        self.bus.post(OrderUpdate(now, now, client_id, symbol, status, reason, venue_id))
