"""The Bybit execution venue: engine orders to signed v5 REST calls, account stream to bus events.

Implements :class:`engine.ports.ExecutionVenue`. ``submit``/``cancel``/``amend`` return at once
and schedule the work on the running loop; outcomes come back on the bus as
:class:`~engine.events.OrderUpdate` and :class:`~engine.events.Fill` events (``bus.post``).

Idempotency: every order carries an ``orderLinkId`` derived from its deterministic client id
(strategy, instrument, decision time). When the outcome of a create is unknown (timeout, lost
connection, 5xx, 10006, 10016), the adapter first asks ``/v5/order/realtime`` and then the order
history for that orderLinkId and resends only if Bybit has no such order; a resend that races a
late original is refused by Bybit as a duplicate (110072/170141), which is again resolved by
reconciliation. So a retried decision can never open a second position. A cancel asked for while
the create is unresolved waits for its outcome (or keeps it from being sent): sent at once, it could
overtake the create, find nothing, and leave the order working.

No fill is lost: executions are published once per ``execId`` whichever way they arrive. After
every private-stream (re)connect, after a reconciliation that finds executed quantity, and every
few seconds while the stream is down, the adapter reads ``/v5/execution/list`` from the last
execution it saw (less a margin) and publishes what the stream missed, merged in execution-time
order with what the stream delivers meanwhile. An order update that reports more executed
quantity than the fills published so far is held back until those fills are out, so the bus
always sees a fill before the PARTIALLY_FILLED or FILLED it explains (as the paper broker does).

Fees are booked in the quote coin. A spot buy's fee is charged in the base coin it receives
(``feeCurrency``; the real spot frame omits it): the fill's quantity is what reaches the wallet
(``execQty`` less that fee) and its fee that coin's value at the execution price, so the book holds
exactly the wallet's coins and pays exactly the USDT the trade cost.

Spot accounts (:meth:`BybitExecution.account`) are the unified wallet's coins: each traded
symbol's base coin balance is its position, the USDT balance its cash.

STOP orders become Bybit conditional market orders (``triggerPrice``; ``triggerDirection`` on
derivatives, ``orderFilter=StopOrder`` on spot). A stop whose trigger the price has already passed
is sent as a market order, as the paper broker fills a stop gapped through at the next price.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

import structlog

from connectors.bybit.config import BybitConfig
from connectors.bybit.errors import (
    BybitError,
    DuplicateOrder,
    InsufficientBalance,
    IpBanned,
    OrderNotFound,
    OrderRejected,
    RateLimited,
    ServerError,
)
from connectors.bybit.private_ws import PrivateStream
from connectors.bybit.rest import BybitRest, as_float, as_int, rules_from_info
from connectors.bybit.signing import Credentials
from engine.bus import EventBus
from engine.events import (
    Bar,
    Fill,
    ForeignExecution,
    Funding,
    Order,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Side,
)
from engine.instruments import InstrumentRules

log = structlog.get_logger("connectors.bybit.execution")

_LINK_ID = re.compile(r"^[A-Za-z0-9_-]{1,36}$")
_INSTANCE = re.compile(r"^[A-Za-z0-9]{1,16}$")
_FINISHED_KEPT = 10_000
"""Finished orders remembered (by orderLinkId) after they leave memory, for late executions."""
_MS = 1_000_000
_WEEK_MS = 7 * 86_400_000
_EXEC_PAGE = 100
_MAX_PAGES = 1000
_TRIGGER_PASSED = frozenset({110092, 110093})
"""retCodes of a conditional order whose trigger the last price has already passed."""
_TERMINAL = (OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED)
_EXECUTED = (OrderStatus.PARTIALLY_FILLED, OrderStatus.FILLED, OrderStatus.CANCELLED)
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


def link_id_for(order: Order, instance: str = "") -> str:
    """The order's own client id when Bybit accepts it as an orderLinkId (the engine's ids are
    already deterministic), otherwise a digest of it; never random.

    With ``instance`` (a daemon's id, created with its state directory and persisted there) the
    id is ``<instance>-<digest of instance and client id>``, 36 characters at most: the same intent
    of the same instance gets the same id after a restart (so recovery finds its order), two
    instances running the same strategy never share one (risk exits included, whose client ids
    carry no instance), and the prefix tells the instance's orders from everyone else's."""
    if instance:
        if not _INSTANCE.match(instance):
            raise ValueError(f"instance id {instance!r} must be 1-16 letters or digits")
        key = order.client_id or f"{order.strategy}-{order.symbol}-{order.ts_event}-{order.tag}"
        digest = hashlib.blake2b(f"{instance}|{key}".encode(), digest_size=16).hexdigest()
        return f"{instance}-{digest}"[:36]
    if order.client_id:
        return order.client_id if _LINK_ID.match(order.client_id) else _digest(order.client_id)
    return order_link_id(order.strategy, order.symbol, order.ts_event, order.tag)


def _digest(text: str) -> str:
    return "qn-" + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()[:32]


def market_limit(item: Mapping[str, Any]) -> float:
    """The largest market order an instrument takes (0: not given): ``maxMktOrderQty`` on
    derivatives (150 BTC on linear BTCUSDT against 1,500 for limit orders), ``maxMarketOrderQty``
    on spot."""
    lot = item.get("lotSizeFilter") or {}
    return as_float(lot.get("maxMktOrderQty") or lot.get("maxMarketOrderQty"))


def format_step(value: float, step: float) -> str:
    """A decimal string on the step's grid with the step's decimals (Bybit wants strings)."""
    if step <= 0:
        return f"{value:.10f}".rstrip("0").rstrip(".")
    text = f"{step:.12f}".rstrip("0")
    decimals = len(text.split(".")[1]) if "." in text else 0
    return f"{value:.{decimals}f}"


def execution_key(item: Mapping[str, Any]) -> tuple[int, int, str, float, str]:
    """Sort key in execution order: time, then Bybit's sequence; within one millisecond of one
    order the larger ``leavesQty`` came first (Bybit's own advice for equal ``execTime``)."""
    return (
        as_int(item.get("execTime")),
        as_int(item.get("seq")),
        str(item.get("orderId") or ""),
        -as_float(item.get("leavesQty")),
        str(item.get("execId") or ""),
    )


@dataclass(slots=True)
class _Tracked:
    order: Order
    link_id: str
    qty: float
    price: float
    status: OrderStatus = OrderStatus.SUBMITTED
    venue_order_id: str = ""
    filled: float = 0.0
    conditional: bool = False
    """Working at Bybit as a conditional order (a STOP whose trigger had not been passed)."""
    held: tuple[OrderStatus, str, float] | None = None
    """A status waiting for its fills: (status, reason, Bybit's cumExecQty)."""
    note: str = ""
    placing: bool = True
    """The create has not resolved yet (sent or about to be, outcome unknown)."""
    cancel_wanted: bool = False
    """Cancel asked for while the create was unresolved: sent once Bybit is known to have it."""
    cancel_sent: bool = False
    sent_ms: int = 0
    """Venue time of the last create sent: after it plus the recv window, Bybit can no longer
    accept that request, so an order it does not show by then was never placed."""


class BybitExecution:
    """``ExecutionVenue`` for Bybit v5 (one category per adapter, as configured).

    Construct, then ``await venue.start()`` (credentials from the environment variables named in
    the config, clock offset, instrument rules, private stream) and ``await venue.stop()`` at the
    end. ``rules`` may be given to skip the instruments-info call.

    ``catchup_margin_ms`` is how far before the last execution seen a catch-up starts reading
    (executions can be indexed late); ``fill_grace`` is how long an order update may wait for the
    fills it reports before they are fetched for that order; ``outage_poll`` is the catch-up period
    while the private stream is down.
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
        catchup_margin_ms: int = 60_000,
        fill_grace: float = 2.0,
        outage_poll: float = 5.0,
        instance_id: str = "",
        market_limits: Mapping[str, float] | None = None,
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
        self.catchup_margin_ms = catchup_margin_ms
        self.fill_grace = fill_grace
        self.outage_poll = outage_poll
        self.instance_id = instance_id
        self.market_limits: dict[str, float] = dict(market_limits or {})
        """Largest market order per symbol (``maxMktOrderQty``; spot ``maxMarketOrderQty``)."""
        self.coins: dict[str, tuple[str, str]] = {}
        """(base coin, quote coin) per symbol, from the instruments (spot balances are per coin)."""
        self.orders: dict[str, _Tracked] = {}
        self._resend: Callable[[Order], bool] | None = None
        self._finished: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._by_link: dict[str, _Tracked] = {}
        self._symbols: set[str] = set()
        self._seen_exec: OrderedDict[str, None] = OrderedDict()
        self._last_price: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._session_ms = 0
        self._last_exec_ms = 0
        self._catchup_from: int | None = None
        self._catchup_task: asyncio.Task[Any] | None = None
        self._poll_task: asyncio.Task[Any] | None = None
        self._live_held: list[Mapping[str, Any]] | None = None
        self.stream: PrivateStream | None = None
        self.duplicate_executions = 0
        self.malformed_executions = 0
        self.funding_payments = 0
        self.task_failures = 0
        self.ignored_duplicates = 0
        self.resends = 0
        self.reconciliations = 0
        self.catchups = 0
        self.caught_up = 0
        self.catchup_failures = 0
        self.stops_passed = 0
        self.foreign_fees = 0
        self.foreign_executions = 0
        """Fills on the account of orders this engine never placed (not booked; reported)."""
        self.unknown_outcomes = 0
        self.cancel_give_ups = 0
        self.clipped = 0
        """Executions whose fee was in neither the base nor the quote coin (booked as reported)."""
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
        self._session_ms = self._last_exec_ms = self.rest.now_ms()
        if not self.rules:
            infos = await self.rest.instruments(self.category)
            self.rules = {s: rules_from_info(item, self.category) for s, item in infos.items()}
            for s, item in infos.items():
                limit = market_limit(item)
                if limit > 0:
                    self.market_limits.setdefault(s, limit)
                if item.get("baseCoin") and item.get("quoteCoin"):
                    self.coins[s] = (str(item["baseCoin"]), str(item["quoteCoin"]))
        if self.use_private_stream:
            self.stream = PrivateStream(
                self.config,
                creds,
                on_message=self.on_private_message,
                on_connected=self._resync,
                on_disconnected=self._on_disconnected,
                now_ms=self.rest.now_ms,
                resync=self.rest.sync_time,
            )
            self._spawn(self.stream.run())
            await self.stream.wait_ready(self.config.connect_timeout * 2)
        self._spawn(self._clock_sync())

    async def stop(self) -> None:
        self._stopping = True
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
        """Wait until every scheduled request and catch-up has finished (tests, orderly
        shutdown)."""
        while True:
            busy = [t for t in self._tasks if getattr(t, "_qn_request", False) and not t.done()]
            if not busy:
                return
            await asyncio.gather(*busy, return_exceptions=True)

    def _spawn(self, coro: Any, request: bool = False) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task._qn_request = request  # type: ignore[attr-defined]
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        """A background request that dies must say so in the log, not in a garbage-collector note."""
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.task_failures += 1
            exc = task.exception()
            log.error("background exchange task failed", error=f"{type(exc).__name__}: {exc}")

    async def _clock_sync(self) -> None:
        while True:
            await asyncio.sleep(self.config.time_sync_interval)
            with contextlib.suppress(BybitError, OSError, TimeoutError):
                await self.rest.sync_time()

    # ExecutionVenue ------------------------------------------------------------------------

    def submit(self, order: Order) -> None:
        """Round to the instrument's rules, refuse what Bybit would refuse, then send async."""
        link = link_id_for(order, self.instance_id)
        if order.client_id in self.orders or link in self._by_link or link in self._finished:
            # the same decision submitted again: a no-op (rejecting it under the same client id
            # would read as a rejection of the order that is working)
            self.ignored_duplicates += 1
            log.warning("order already submitted; ignored", client_id=order.client_id, order_link_id=link)
            return
        problem, qty, price = self._prepare(order)
        if problem:
            self._update(order.client_id, order.symbol, OrderStatus.REJECTED, problem)
            return
        tracked = _Tracked(order, link, qty, price, conditional=order.type is OrderType.STOP)
        self._clip_market(tracked)
        self.orders[order.client_id] = tracked
        self._by_link[link] = tracked
        self._symbols.add(order.symbol)
        self._spawn(self._place(tracked), request=True)

    def _clip_market(self, t: _Tracked) -> None:
        """Bybit refuses a market order above the instrument's maximum outright: send the
        maximum (the rest is traded on a later decision)."""
        limit = self.market_limits.get(t.order.symbol, 0.0)
        if limit > 0 and t.order.type is not OrderType.LIMIT and t.qty > limit:
            rules = self.rules[t.order.symbol]
            asked = format_step(t.qty, rules.qty_step)
            t.qty = rules.round_qty(limit)
            t.note = f"market order clipped from {asked} to Bybit's maximum {limit:g}"
            self.clipped += 1
            log.warning(t.note, client_id=t.order.client_id, symbol=t.order.symbol)

    def cancel(self, client_id: str) -> None:
        """Cancel now if Bybit is known to have the order; otherwise remember it: a cancel that
        overtook its create would find nothing, and the create would then leave the order working."""
        tracked = self.orders.get(client_id)
        if tracked is None or tracked.status in _TERMINAL:
            return
        tracked.cancel_wanted = True
        if tracked.placing and tracked.status is OrderStatus.SUBMITTED:
            return  # _place sends it, or does not send the create at all
        self._send_cancel(tracked)

    def _send_cancel(self, t: _Tracked) -> None:
        t.cancel_sent = True
        self._spawn(self._cancel(t), request=True)

    def amend(self, client_id: str, *, quantity: float | None = None, price: float | None = None) -> None:
        """Change a working order's quantity and/or price (a limit's price, a stop's trigger),
        rounded like on submit."""
        tracked = self.orders.get(client_id)
        if tracked is None or tracked.status in _TERMINAL:
            self._update(client_id, "", OrderStatus.REJECTED, f"amend: no working order {client_id}")
            return
        self._spawn(self._amend(tracked, quantity, price), request=True)

    # restart -------------------------------------------------------------------------------

    async def resume(
        self,
        orders: Iterable[Order],
        seen_exec_ids: Iterable[str] = (),
        resend: Callable[[Order], bool] | None = None,
    ) -> None:
        """After a restart: take back the orders the journal says were on their way and settle
        each against Bybit before anything new is sent. Found: its state and every execution the
        journal lacks (``seen_exec_ids`` are those it has) are published. Not found once its
        create can no longer arrive (recv window): it was never placed, so it is sent now (same
        orderLinkId) when ``resend`` says the decision is still fresh, and rejected otherwise."""
        self._resend = resend
        for exec_id in seen_exec_ids:
            self._seen_exec[exec_id] = None
        tracked = []
        for order in orders:
            link = link_id_for(order, self.instance_id)
            if order.client_id in self.orders or link in self._by_link:
                continue
            t = _Tracked(order, link, order.quantity, order.price, placing=False)
            t.conditional = order.type is OrderType.STOP
            t.sent_ms = self._session_ms  # any create of it left the previous process before this one began
            self.orders[order.client_id] = t
            self._by_link[link] = t
            self._symbols.add(order.symbol)
            tracked.append(t)
        await asyncio.gather(*(self._resume_one(t) for t in tracked))

    def pair(self, symbol: str) -> tuple[str, str]:
        """(base coin, quote coin) of a symbol: the venue's, else read off a ``...USDT`` name."""
        known = self.coins.get(symbol)
        if known is not None:
            return known
        if symbol.endswith("USDT"):
            return symbol.removesuffix("USDT"), "USDT"
        return symbol, ""

    def tracks(self, link: str) -> bool:
        """Whether an order under this orderLinkId is being followed (sent, resumed or adopted)."""
        return link in self._by_link

    def adopt(self, order: Order, link: str) -> None:
        """Track a working order found at Bybit under ``link`` (an adoption at start-up)."""
        t = _Tracked(order, link, order.quantity, order.price, status=OrderStatus.ACCEPTED, placing=False)
        self.orders[order.client_id] = t
        self._by_link[link] = t
        self._symbols.add(order.symbol)

    async def _resume_one(self, t: _Tracked) -> None:
        delay = self.reconcile_delay
        while True:
            answered, item = await self._lookup(t)
            if answered and item is None:
                wait = (t.sent_ms + self.config.recv_window + 1000 - self.rest.now_ms()) / 1000
                if wait > 0:
                    await asyncio.sleep(wait)  # a create sent just before the restart may still land
                    continue
            if answered:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.config.backoff_max)
        if item is None:
            if self._resend is not None and self._resend(t.order):
                log.warning("order not at Bybit after the restart; sending it", order_link_id=t.link_id)
                # the journal has the order as decided: rounded and checked as on a first submit
                # (unrounded, the decimal string would round half up: a spot sell of more coin than held)
                problem, t.qty, t.price = self._prepare(t.order)
                if problem:
                    self._set(t, OrderStatus.REJECTED, f"not sent again after the restart: {problem}")
                    return
                self._clip_market(t)
                t.placing = True
                self._spawn(self._place(t), request=True)
                return
            self._set(t, OrderStatus.REJECTED, "not at Bybit after the restart: it was never placed")
            return
        log.info("order resumed from the journal", order_link_id=t.link_id, status=item.get("orderStatus"))
        for execution in sorted(await self._execution_pages({"orderLinkId": t.link_id}), key=execution_key):
            self._apply_execution(execution, late=True, advance=False)
        self._apply_order(item)
        if t.status is OrderStatus.SUBMITTED:
            self._set(t, OrderStatus.ACCEPTED, "resumed after a restart")

    async def account(self) -> dict[str, Any]:
        """Bybit's view of the account for start-up reconciliation: open orders, positions
        (signed size, average and mark price, by symbol) and the USDT equity; on spot, the
        wallet's coins as positions and its USDT balance as ``cash`` (:meth:`_spot_wallet`)."""
        query: dict[str, Any] = {"category": self.category, "limit": 50}
        if self.category != "spot":
            query["settleCoin"] = "USDT"
        orders: list[Mapping[str, Any]] = []
        cursor = ""
        for _ in range(_MAX_PAGES):
            page_query = {**query, **({"cursor": cursor} if cursor else {})}
            result = await self.rest.request("GET", "/v5/order/realtime", page_query, signed=True)
            orders += result.get("list") or []
            cursor = str(result.get("nextPageCursor") or "")
            if not cursor or not result.get("list"):
                break
        if self.category == "spot":
            return {"orders": orders, **(await self._spot_wallet())}
        positions: dict[str, tuple[float, float, float]] = {}
        result = await self.rest.request(
            "GET", "/v5/position/list", {"category": self.category, "settleCoin": "USDT"}, signed=True
        )
        for item in result.get("list") or []:
            size = as_float(item.get("size")) * (-1.0 if item.get("side") == "Sell" else 1.0)
            if size:
                positions[str(item.get("symbol"))] = (
                    size,
                    as_float(item.get("avgPrice")),
                    as_float(item.get("markPrice")),
                )
        wallet = await self.rest.request(
            "GET", "/v5/account/wallet-balance", {"accountType": "UNIFIED"}, signed=True
        )
        equity = 0.0
        for account in wallet.get("list") or []:
            for coin in account.get("coin") or []:
                if coin.get("coin") == "USDT":
                    equity += as_float(coin.get("equity"))
        return {"orders": orders, "positions": positions, "equity": equity}

    async def _spot_wallet(self) -> dict[str, Any]:
        """The unified wallet as spot positions: the base coin balance of each USDT pair (its
        whole ``walletBalance``, coins locked in orders included) at the last price, and the
        USDT balance as cash; ``equity`` is their sum. Coins without a USDT pair here are left
        out (nothing to trade them against)."""
        wallet = await self.rest.request(
            "GET", "/v5/account/wallet-balance", {"accountType": "UNIFIED"}, signed=True
        )
        by_coin: dict[str, str] = {}
        for symbol in sorted(self.rules):
            base, quote = self.pair(symbol)
            if quote == "USDT":
                by_coin.setdefault(base, symbol)
        cash = 0.0
        held: dict[str, tuple[float, float]] = {}
        for account in wallet.get("list") or []:
            for coin in account.get("coin") or []:
                name = str(coin.get("coin") or "")
                balance = as_float(coin.get("walletBalance"))
                if name == "USDT":
                    cash += balance
                elif balance and name in by_coin:
                    held[by_coin[name]] = (balance, as_float(coin.get("usdValue")))
        marks: dict[str, float] = {}
        if held:
            try:
                result = await self.rest.request("GET", "/v5/market/tickers", {"category": "spot"})
                marks = {str(t.get("symbol")): as_float(t.get("lastPrice")) for t in result.get("list") or []}
            except BybitError as exc:
                log.warning("spot tickers unavailable; coins valued at their usdValue", error=str(exc))
        positions: dict[str, tuple[float, float, float]] = {}
        equity = cash
        for symbol, (balance, usd) in held.items():
            mark = marks.get(symbol) or (usd / balance if balance else 0.0)
            positions[symbol] = (balance, mark, mark)  # a wallet has no entry price: the mark stands in
            equity += balance * mark
        return {"positions": positions, "equity": equity, "cash": cash}

    def open_orders(self) -> Iterable[Order]:
        return [t.order for t in self.orders.values() if t.status not in _TERMINAL]

    # validation ----------------------------------------------------------------------------

    def _on_bar(self, bar: Bar) -> None:
        self._last_price[bar.symbol] = bar.close

    def _prepare(self, order: Order) -> tuple[str | None, float, float]:
        rules = self.rules.get(order.symbol)
        if rules is None:
            return f"unknown {self.category} symbol {order.symbol!r} on Bybit", 0.0, 0.0
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
        if order.type is not OrderType.MARKET:
            if not (order.price > 0 and math.isfinite(order.price)):
                limit = order.type is OrderType.LIMIT
                what = (
                    "limit order without a valid price"
                    if limit
                    else "stop order without a valid trigger price"
                )
                return f"{order.symbol}: {what} ({order.price})", 0.0, 0.0
            # a sell rounds up: a limit never sells cheaper, a protective sell stop triggers no
            # later than asked (and a buy rounds down, for the same two reasons)
            price = rules.round_price(order.price, up=order.side is Side.SELL)
        reference = price or self._last_price.get(order.symbol, 0.0)
        check = rules if reference > 0 else replace(rules, min_notional=0.0)
        problem = check.rejection(qty, reference)
        if problem and qty != order.quantity:
            problem += f" (after rounding {order.quantity} down to the step {rules.qty_step})"
        return problem, qty, price

    def _body(self, t: _Tracked) -> dict[str, Any]:
        rules = self.rules[t.order.symbol]
        spot = self.category == "spot"
        limit = t.order.type is OrderType.LIMIT
        body: dict[str, Any] = {
            "category": self.category,
            "symbol": t.order.symbol,
            "side": "Buy" if t.order.side is Side.BUY else "Sell",
            "orderType": "Limit" if limit else "Market",
            "qty": format_step(t.qty, rules.qty_step),
            "orderLinkId": t.link_id,
        }
        if limit:
            body["price"] = format_step(t.price, rules.tick_size)
            body["timeInForce"] = "GTC"
        elif spot:
            body["marketUnit"] = "baseCoin"  # the engine sizes in base units; spot buys default to quote
        if t.conditional:
            body["triggerPrice"] = format_step(t.price, rules.tick_size)
            if spot:
                body["orderFilter"] = "StopOrder"  # spot infers the direction from the last price
            else:
                body["triggerDirection"] = 1 if t.order.side is Side.BUY else 2
                body["triggerBy"] = "LastPrice"
        if t.order.reduce_only and not spot:
            body["reduceOnly"] = True
        return body

    # requests ------------------------------------------------------------------------------

    async def _place(self, t: _Tracked) -> None:
        """Create the order; a cancel asked for meanwhile follows once the outcome is known."""
        try:
            await self._create(t)
        finally:
            t.placing = False
            if t.cancel_wanted and not t.cancel_sent and t.status not in _TERMINAL:
                self._send_cancel(t)

    async def _create(self, t: _Tracked) -> None:
        if t.conditional and self.category == "spot" and await self._spot_trigger_passed(t):
            self._as_market(t, "the last price is already past the trigger")
        body = self._body(t)
        last_error: BybitError | None = None
        attempt = 0
        while attempt < self.max_attempts:
            attempt += 1
            if t.cancel_wanted:
                # not sent, or sent and not found by reconciliation: not (re)sent now
                why = "before it was sent" if attempt == 1 else "after Bybit had not received it"
                self._set(t, OrderStatus.CANCELLED, f"cancelled {why}")
                return
            if attempt > 1:
                self.resends += 1
                log.warning("resending order", order_link_id=t.link_id, attempt=attempt)
            try:
                t.sent_ms = self.rest.now_ms()
                result = await self.rest.request(
                    "POST", "/v5/order/create", body, signed=True, idempotent=False
                )
            except DuplicateOrder:
                # proof that an earlier attempt went through: never a rejection, whatever the lookup says
                if await self._reconcile(t):
                    return
                self._unknown(t, "Bybit reports the orderLinkId as existing but does not show it yet", True)
                return
            except (ServerError, RateLimited, IpBanned) as exc:
                last_error = exc
                log.warning("order outcome unknown; reconciling", order_link_id=t.link_id, error=str(exc))
                await self._wait_after(exc)
                if await self._reconcile(t):
                    return
                continue
            except InsufficientBalance as exc:
                self._set(t, OrderStatus.REJECTED, self._short_of_funds(t, exc))
                return
            except OrderRejected as exc:
                if t.conditional and exc.ret_code in _TRIGGER_PASSED:
                    self._as_market(t, str(exc))  # refused before acting: same orderLinkId is free
                    body = self._body(t)
                    attempt -= 1
                    continue
                self._set(t, OrderStatus.REJECTED, str(exc))
                return
            except BybitError as exc:
                self._set(t, OrderStatus.REJECTED, str(exc))
                return
            t.venue_order_id = str(result.get("orderId", ""))
            self._set(t, OrderStatus.ACCEPTED, t.note)
            return
        self._unknown(t, f"outcome unknown after {self.max_attempts} attempts: {last_error}", False)

    def _short_of_funds(self, t: _Tracked, exc: InsufficientBalance) -> str:
        """The rejection reason for an order the account cannot pay for: what it needed."""
        symbol, qty = t.order.symbol, format_step(t.qty, self.rules[t.order.symbol].qty_step)
        buy = t.order.side is Side.BUY
        if self.category == "spot":
            base, quote = self.pair(symbol)
            price = t.price or self._last_price.get(symbol, 0.0)
            need = (
                (f"about {qty} x {price:g} = {t.qty * price:,.2f} {quote}" if price else quote)
                if buy
                else f"{qty} {base}"
            )
            why = (
                f"insufficient balance: a spot {'buy' if buy else 'sell'} of {qty} {symbol} needs "
                f"{need}, more than the unified wallet holds free"
            )
        else:
            why = f"insufficient balance: not enough margin for {'buy' if buy else 'sell'} {qty} {symbol}"
        log.error("order rejected for insufficient balance", order_link_id=t.link_id, reason=why)
        return f"{why} (Bybit: {exc})"

    def _unknown(self, t: _Tracked, why: str, exists: bool) -> None:
        """Neither placed nor refused for sure: UNKNOWN (the order manager sends nothing more for
        the symbol) until a lookup finds the order or proves it absent."""
        self.unknown_outcomes += 1
        log.error("order outcome unknown; reconciling in the background", order_link_id=t.link_id, why=why)
        self._set(t, OrderStatus.UNKNOWN, why)
        self._spawn(self._resolve_unknown(t, exists))

    async def _resolve_unknown(self, t: _Tracked, exists: bool) -> None:
        """Ask until Bybit shows the order, or, for one never acknowledged, until a lookup made
        after the last create's recv window (Bybit accepts no request older than that) finds
        nothing: then it was never placed."""
        delay = max(self.reconcile_delay, 0.01)
        while not self._stopping and t.status is OrderStatus.UNKNOWN:
            await asyncio.sleep(delay)
            answered, item = await self._lookup(t)
            if item is not None:
                self._found(t, item, "background reconciliation")
                return
            expired = self.rest.now_ms() > t.sent_ms + self.config.recv_window + 1000
            if answered and expired and not exists:
                self._set(
                    t,
                    OrderStatus.REJECTED,
                    f"not placed: Bybit has no order {t.link_id} after the last attempt's recv window",
                )
                return
            delay = min(delay * 2, self.config.backoff_max)

    def _as_market(self, t: _Tracked, why: str) -> None:
        """A stop whose trigger is already passed would be refused (derivatives) or, on spot, armed
        in the wrong direction: send it as the market order it would have become."""
        t.conditional = False
        t.note = f"stop trigger {t.price:g} already passed; sent as a market order"
        self.stops_passed += 1
        log.warning(t.note, order_link_id=t.link_id, symbol=t.order.symbol, venue=why)

    async def _spot_trigger_passed(self, t: _Tracked) -> bool:
        symbol = t.order.symbol
        try:
            result = await self.rest.request(
                "GET", "/v5/market/tickers", {"category": "spot", "symbol": symbol}
            )
            last = float(result["list"][0]["lastPrice"])
        except (BybitError, LookupError, TypeError, ValueError) as exc:
            last = self._last_price.get(symbol, 0.0)
            log.warning(
                "spot ticker unavailable; judging the stop by the last bar", symbol=symbol, error=str(exc)
            )
        if not last > 0:
            return False
        return last >= t.price if t.order.side is Side.BUY else last <= t.price

    async def _wait_after(self, exc: BybitError) -> None:
        wait = self.reconcile_delay
        if isinstance(exc, RateLimited) and exc.reset_ms:
            wait = max(wait, min((exc.reset_ms - self.rest.now_ms()) / 1000.0, self.config.backoff_max))
        elif isinstance(exc, IpBanned):
            wait = self.config.ban_backoff
        await asyncio.sleep(max(wait, 0.0))

    async def _reconcile(self, t: _Tracked) -> bool:
        """Look the order up by orderLinkId; apply and return True if Bybit has it. The lookup
        itself is a read and is retried until it gives an answer. Executed quantity that no
        published fill accounts for starts a catch-up of executions.

        ``/v5/order/realtime`` lists only active orders on spot (and, after a Bybit restart, on
        unified accounts), so an order that filled or was cancelled is looked for in the order
        history before the caller concludes that Bybit never had it and resends."""
        self.reconciliations += 1
        _, item = await self._lookup(t)
        if item is None:
            return False
        self._found(t, item, "reconciliation")
        return True

    def _found(self, t: _Tracked, item: Mapping[str, Any], source: str) -> None:
        log.info(f"order found by {source}", order_link_id=t.link_id, status=item.get("orderStatus"))
        self._apply_order(item)
        if as_float(item.get("cumExecQty")) > t.filled + self._tolerance(t):
            self.request_catchup()

    async def _lookup(self, t: _Tracked) -> tuple[bool, Mapping[str, Any] | None]:
        """(answered, Bybit's record of the order): answered False when a query got no reply."""
        for path in ("/v5/order/realtime", "/v5/order/history"):
            items = await self._orders_by_link(path, t)
            if items is None:
                return False, None
            for item in items:
                if item.get("orderLinkId") == t.link_id:
                    return True, item
        return True, None

    async def _orders_by_link(self, path: str, t: _Tracked) -> list[Mapping[str, Any]] | None:
        """The orders ``path`` lists for the order's orderLinkId; None when no answer came."""
        query = {"category": self.category, "symbol": t.order.symbol, "orderLinkId": t.link_id}
        for attempt in range(self.max_attempts * 2):
            try:
                result = await self.rest.request("GET", path, query, signed=True)
                return list(result.get("list") or [])
            except BybitError as exc:
                log.warning("reconciliation query failed", order_link_id=t.link_id, path=path, error=str(exc))
                await asyncio.sleep(self.config.backoff_initial * 2**attempt)
        return None

    async def _cancel(self, t: _Tracked) -> None:
        body: dict[str, Any] = {"category": self.category, "symbol": t.order.symbol, "orderLinkId": t.link_id}
        if t.conditional and self.category == "spot":
            body["orderFilter"] = "StopOrder"  # spot looks for the order in one book only
        error: BybitError | None = None
        for _ in range(self.max_attempts):
            try:
                await self.rest.request("POST", "/v5/order/cancel", body, signed=True, idempotent=False)
                # acknowledged is not cancelled: a fill can race it; the order stream (or a
                # lookup) says which way it ended
                self._spawn(self._confirm_final(t))
                return
            except OrderNotFound:
                await self._reconcile(t)  # filled or cancelled already: report what it is
                return
            except (ServerError, RateLimited, IpBanned) as exc:
                error = exc
                await self._wait_after(exc)
                if await self._reconcile(t) and t.status in _TERMINAL:
                    return
            except BybitError as exc:
                log.error("cancel refused", order_link_id=t.link_id, error=str(exc))
                t.cancel_sent = False
                return
        self.cancel_give_ups += 1
        t.cancel_sent = False  # a later cancel() tries again
        log.error(
            "cancel given up; the order may still be working",
            order_link_id=t.link_id,
            attempts=self.max_attempts,
            error=str(error),
        )

    async def _confirm_final(self, t: _Tracked) -> None:
        """After a cancel's acknowledgement: give the order stream ``fill_grace`` to report the
        final state, then look it up until it is final."""
        delay = self.fill_grace
        while not self._stopping and t.status not in _TERMINAL:
            await asyncio.sleep(delay)
            if t.status in _TERMINAL or t.held is not None:
                return
            await self._reconcile(t)
            delay = min(delay * 2, 60.0)

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
            key = "triggerPrice" if t.conditional else "price"
            body[key] = format_step(rules.round_price(price, up=t.order.side is Side.SELL), rules.tick_size)
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
            t.price = float(body["triggerPrice" if t.conditional else "price"])
        t.order = replace(t.order, quantity=t.qty, price=t.price if price is not None else t.order.price)
        if t.status not in _TERMINAL:
            self._set(t, t.status, "amended", force=True)

    async def _resync(self) -> None:
        """After a private-stream (re)connect, updates and executions may have been missed: catch
        up on executions and ask for each order still thought to be working."""
        if self._poll_task is not None:
            self._poll_task.cancel()
            self._poll_task = None
        self._catch_up_everything()

    def _catch_up_everything(self) -> None:
        self.request_catchup()
        for t in [t for t in self.orders.values() if t.status not in _TERMINAL]:
            self._spawn(self._reconcile(t))

    def _on_disconnected(self) -> None:
        """Mark where the gap starts (later live executions must not move it) and poll REST for
        executions and working orders until the stream is back."""
        if self._stopping:
            return
        self._mark_gap()
        if self._poll_task is None or self._poll_task.done():
            self._poll_task = self._spawn(self._poll_during_outage())

    async def _poll_during_outage(self) -> None:
        while True:
            await asyncio.sleep(self.outage_poll)
            if self.stream is not None and self.stream.connected:
                return
            self._catch_up_everything()

    # execution catch-up --------------------------------------------------------------------

    def _mark_gap(self) -> None:
        since = self._last_exec_ms
        self._catchup_from = since if self._catchup_from is None else min(self._catchup_from, since)

    def request_catchup(self) -> None:
        """Fetch and publish the executions since the last one seen (less the margin). Requests
        made while a catch-up runs are merged into one more pass; live executions wait meanwhile
        so that the merge goes out in execution-time order."""
        if self._rest is None or self._stopping:
            return
        self._mark_gap()
        if self._catchup_task is None or self._catchup_task.done():
            self._live_held = []  # from now on: the loop opens it per attempt, not in its backoff
            self._catchup_task = self._spawn(self._catchup_loop(), request=True)

    async def _catchup_loop(self) -> None:
        delay = self.config.backoff_initial
        while self._catchup_from is not None:
            since, self._catchup_from = self._catchup_from, None
            if self._live_held is None:
                self._live_held = []
            items: list[Mapping[str, Any]] = []
            failed = False
            try:
                timeout = max(5.0, 3 * self.config.request_timeout)
                items = await asyncio.wait_for(
                    self._executions_since(since - self.catchup_margin_ms), timeout
                )
                self.catchups += 1
            except (BybitError, OSError, TimeoutError, ValueError) as exc:
                failed = True
                self.catchup_failures += 1
                self._catchup_from = since if self._catchup_from is None else min(since, self._catchup_from)
                log.error(
                    "execution catch-up failed; retrying", since_ms=since, error=str(exc), retry_in=delay
                )
            live, self._live_held = self._live_held or [], None
            batch = [(item, True) for item in items] + [(item, False) for item in live]
            batch.sort(key=lambda pair: execution_key(pair[0]))
            for item, late in batch:
                self._apply_execution(item, late=late)
            if failed:
                await asyncio.sleep(delay)  # live fills flow meanwhile; the gap is kept
                delay = min(delay * 2, self.config.backoff_max)

    async def _executions_since(self, since_ms: int) -> list[Mapping[str, Any]]:
        """Every execution of the traded symbols from ``since_ms`` on, in windows of at most the
        seven days Bybit serves per query."""
        now = self.rest.now_ms()
        out: list[Mapping[str, Any]] = []
        for symbol in sorted(self._symbols):
            start = since_ms
            while True:
                if now - start <= _WEEK_MS:  # startTime alone: up to startTime + 7 days
                    out += await self._execution_pages({"symbol": symbol, "startTime": start})
                    break
                end = start + _WEEK_MS
                out += await self._execution_pages({"symbol": symbol, "startTime": start, "endTime": end})
                start = end + 1
        return out

    async def _execution_pages(self, params: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        items: list[Mapping[str, Any]] = []
        cursor = ""
        for _ in range(_MAX_PAGES):
            query: dict[str, Any] = {"category": self.category, **params, "limit": _EXEC_PAGE}
            if cursor:
                query["cursor"] = quote(cursor, safe="%")  # Bybit's cursors come URL-encoded already
            result = await self.rest.request("GET", "/v5/execution/list", query, signed=True)
            page = result.get("list") or []
            items.extend(page)
            cursor = str(result.get("nextPageCursor") or "")
            if not cursor or not page:
                return items
        raise ServerError(f"execution list still paging after {_MAX_PAGES} pages", path="/v5/execution/list")

    async def _await_fills(self, t: _Tracked) -> None:
        """An order update reported executions no fill has shown: give the stream ``fill_grace``,
        then read this order's executions, and keep trying (loudly) while the status waits."""
        delay = self.fill_grace
        while t.held is not None:
            await asyncio.sleep(delay)
            if t.held is None:
                return
            try:
                items = await self._execution_pages({"orderLinkId": t.link_id})
            except (BybitError, OSError, TimeoutError, ValueError) as exc:
                log.warning("order executions query failed", order_link_id=t.link_id, error=str(exc))
                items = []
            for item in sorted(items, key=execution_key):
                self._apply_execution(item, late=True, advance=False)
            if t.held is not None:
                log.error(
                    "order reports executions not seen yet; its status waits for them",
                    client_id=t.order.client_id,
                    venue_cum_qty=t.held[2],
                    filled=t.filled,
                    status=t.held[0].value,
                )
                delay = min(delay * 2, 60.0)

    # account stream ------------------------------------------------------------------------

    def on_private_message(self, msg: dict[str, Any]) -> None:
        topic = str(msg.get("topic", ""))
        if topic.startswith("execution"):
            if self._live_held is not None:
                self._live_held.extend(msg["data"])  # a catch-up is running: merged in time order
                return
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
        if (
            t.cancel_wanted
            and not t.cancel_sent
            and not t.placing
            and status in (OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED)
        ):
            self._send_cancel(t)  # a create given up after its cancel has reached Bybit late
        reason = ""
        if status is OrderStatus.REJECTED or (status is OrderStatus.CANCELLED and item.get("rejectReason")):
            code = str(item.get("rejectReason") or "")
            reason = "" if code == "EC_NoError" else code
        cum = as_float(item.get("cumExecQty"))
        if status in _EXECUTED and cum > t.filled + self._tolerance(t):
            if t.held is None:
                self._spawn(self._await_fills(t))
            if t.held is None or cum >= t.held[2]:
                t.held = (status, reason, cum)
            return
        self._set(t, status, reason)

    def _apply_execution(self, item: Mapping[str, Any], *, late: bool = False, advance: bool = True) -> bool:
        """Publish one execution as a Fill unless its execId was seen; True if published.

        ``late`` marks one read from the trade history; ``advance`` False keeps it from moving
        the point the next catch-up starts from (a query for one order proves nothing about
        the others)."""
        exec_id = str(item.get("execId") or "")
        if not exec_id or exec_id in self._seen_exec:
            self.duplicate_executions += 1
            return False
        try:
            qty = float(item["execQty"])
            price = float(item["execPrice"])
            fee = float(item.get("execFee") or 0.0)
        except (KeyError, TypeError, ValueError):
            qty = price = math.nan
        if not (qty > 0 and math.isfinite(qty) and price > 0 and math.isfinite(price) and math.isfinite(fee)):
            # not marked as seen: the trade history may still deliver it whole
            self.malformed_executions += 1
            log.error("malformed execution skipped", exec_id=exec_id, item=str(dict(item))[:200])
            return False
        exec_ms = as_int(item.get("execTime"))
        link = str(item.get("orderLinkId") or "")
        t = self._by_link.get(link) if link else None
        finished = self._finished.get(link) if t is None and link else None
        if late and t is None and finished is None and exec_ms < self._session_ms:
            return False  # before this session and not one of its orders: never the stream's to show
        self._seen_exec[exec_id] = None
        if len(self._seen_exec) > 100_000:
            self._seen_exec.popitem(last=False)
        if advance and exec_ms > self._last_exec_ms:
            self._last_exec_ms = exec_ms
        kind = item.get("execType", "Trade")
        if kind == "Funding":
            # settled on the position, not an order's fill: still cash, so it is booked and journaled
            signed = qty if item.get("side") == "Buy" else -qty
            self.bus.post(
                Funding(
                    exec_ms * _MS,
                    time.time_ns(),
                    str(item.get("symbol")),
                    signed,
                    price,
                    as_float(item.get("feeRate")),
                    fee,
                )
            )
            self.funding_payments += 1
            return True
        if kind != "Trade":
            return False  # delivery, ADL and other bookkeeping: not fills of our orders
        fee, in_base = self._fees(item, fee, price)
        side = Side.BUY if item.get("side") == "Buy" else Side.SELL
        if t is None and finished is None:
            # not an order of this engine: the account moved under it; report, never book
            self.foreign_executions += 1
            symbol = str(item.get("symbol"))
            log.error(
                "execution of an order this engine did not place; not booked",
                symbol=symbol,
                side=side.name.lower(),
                qty=qty,
                price=price,
                exec_id=exec_id,
                order_link_id=link,
            )
            self.bus.post(
                ForeignExecution(
                    exec_ms * _MS,
                    time.time_ns(),
                    symbol,
                    side,
                    qty,
                    price,
                    fee,
                    exec_id,
                    link,
                    str(item.get("orderId") or ""),
                )
            )
            return True
        client_id = t.order.client_id if t is not None else finished[0]  # type: ignore[index]
        fill = Fill(
            exec_ms * _MS,
            time.time_ns(),
            client_id,
            str(item.get("symbol")),
            side,
            qty - in_base if side is Side.BUY else qty + in_base,  # the wallet's change in the coin
            price,
            fee,
            "maker" if item.get("isMaker") else "taker",
            exec_id,
            t.order.tag if t is not None else finished[1],  # type: ignore[index]
        )
        self.bus.post(fill)
        if late:
            self.caught_up += 1
            log.info("missed execution published from trade history", exec_id=exec_id, client_id=client_id)
        if t is not None:
            t.filled += qty
            tol = self._tolerance(t)
            if t.held is not None and t.filled >= t.held[2] - tol:
                status, reason, _ = t.held
                t.held = None
                self._set(t, status, reason)
            elif t.status in (OrderStatus.SUBMITTED, OrderStatus.ACCEPTED) and t.filled < t.qty - tol:
                self._set(t, OrderStatus.PARTIALLY_FILLED)
        return True

    def _fees(self, item: Mapping[str, Any], fee: float, price: float) -> tuple[float, float]:
        """(the execution's fee in the quote coin, which the portfolio books it in; the part of
        the executed quantity it took, when charged in the base coin).

        Spot charges a buy's fee in the base coin it receives (``feeCurrency``), worth
        ``fee · execPrice`` in quote: the wallet receives ``execQty - fee``. A fee in a third coin
        (a fee-deduction token) has no price here: it is booked as reported, with a warning and a
        count, rather than guessed."""
        currency = str(item.get("feeCurrency") or "")
        symbol = str(item.get("symbol") or "")
        if self.category != "spot" or not fee:
            return fee, 0.0
        base, quote = self.pair(symbol)
        if not currency:
            # the real spot execution frame has no feeCurrency: a buy pays in the coin it receives
            currency = base if item.get("side") == "Buy" else quote
        if currency == quote or (not quote and symbol.endswith(currency)):
            return fee, 0.0
        if currency == base or (not quote and symbol.startswith(currency)):
            return fee * price, fee
        self.foreign_fees += 1
        log.warning(
            "execution fee in a coin that is neither base nor quote; booked as reported",
            exec_id=item.get("execId"),
            symbol=symbol,
            fee=fee,
            fee_currency=currency,
        )
        return fee, 0.0

    def _tolerance(self, t: _Tracked) -> float:
        rules = self.rules.get(t.order.symbol)
        step = rules.qty_step if rules is not None else 0.0
        return step / 2 if step > 0 else 1e-9 * max(1.0, t.qty)

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
        if status in _TERMINAL and t.held is None:
            self._forget(t)

    def _forget(self, t: _Tracked) -> None:
        """A finished order leaves memory; its orderLinkId is kept (bounded) so that a late
        execution is still known as this engine's and a resubmit as a repeat."""
        if self.orders.get(t.order.client_id) is t:
            del self.orders[t.order.client_id]
        if self._by_link.get(t.link_id) is t:
            del self._by_link[t.link_id]
        self._finished[t.link_id] = (t.order.client_id, t.order.tag)
        if len(self._finished) > _FINISHED_KEPT:
            self._finished.popitem(last=False)

    def _update(
        self, client_id: str, symbol: str, status: OrderStatus, reason: str = "", venue_id: str = ""
    ) -> None:
        now = time.time_ns()
        if status is OrderStatus.REJECTED:
            log.warning("order rejected", client_id=client_id, reason=reason)
        self.bus.post(OrderUpdate(now, now, client_id, symbol, status, reason, venue_id))
