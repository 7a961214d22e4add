"""Every-bar rebalancing replayed with one vector pass per bar instead of one event per order.

With ``[portfolio] rebalance = "every_bar"`` each bar sends a market order for every asset with a
target, and each order is about five events (order, acceptance, fill, position change, filled)
through Python handlers: at 20 assets the order path, not the strategy, sets the speed. When the
bus holds only the components this module knows, wired as :func:`quantnet.backtest.assemble` wires
them (paper broker, portfolio, order manager, the strategy's host, a journal, a risk manager with
only the drawdown and daily-loss limits, the fill and risk-event lists), a bar is done as the
bus would do it with the orders handled all at once: :meth:`OrderManager.sizes` sizes them,
:meth:`PaperBroker.price_market_fills` prices them and :meth:`Portfolio.book_fills` books them,
each the same arithmetic as the per-order handler, elementwise, because every order of a bar is
for a different asset. The journal gets the same records in the same order, the fill list the
same fills, the risk manager its bar checks.

A bar on which anything else can happen goes through the bus as before: an order of another kind
is working (a flatten after a halt), the trading state is not active, a symbol is delisted on it,
a target stands from the warm-up, an order could be refused (a non-finite size, a delisted
symbol), or (filling at the next open) a symbol with an order has no bar. Orders still working at
the end are handed to the broker and the order manager as :meth:`OrderManager.submit` leaves them.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from connectors.paper import PaperBroker
from connectors.replay import BarMatrix
from engine.bus import EventBus, call_handler
from engine.clock import Clock
from engine.events import (
    BarSet,
    Fill,
    Funding,
    Order,
    OrderStatus,
    OrderType,
    OrderUpdate,
    PositionUpdate,
    RiskEvent,
    Side,
    Signal,
    TradingState,
)
from engine.numeric import count_nonzero
from quantnet.quiet import _precomputes

_BUY, _SELL, _MARKET = Side.BUY, Side.SELL, OrderType.MARKET
_ACCEPTED, _FILLED, _ACTIVE = OrderStatus.ACCEPTED, OrderStatus.FILLED, TradingState.ACTIVE


def _wiring(bus: EventBus, node: Any, journal: Any, scheduled: Sequence[Callable[[BarSet], None]]) -> bool:
    """Whether every subscriber of the events a bar causes is one this module does the work of,
    in the order :func:`quantnet.backtest.assemble` subscribes them."""
    host, orders, portfolio, risk = node.host, node.orders, node.portfolio, node.risk
    broker = orders.venue
    rec = (journal.record,) if journal is not None else ()
    risk_bars: tuple[Callable[..., None], ...] = ()
    flat_update: tuple[Callable[..., None], ...] = ()
    flat_fill: tuple[Callable[..., None], ...] = ()
    if risk is not None:
        if orders.gates != (risk,) or not risk.only_bar_checks:
            return False
        if risk.on_bars in bus.subscribers(BarSet):
            risk_bars = (risk.on_bars,)
        if risk.on_flatten_fill in bus.subscribers(Fill):
            flat_fill, flat_update = (risk.on_flatten_fill,), (risk.on_flatten_update,)
    elif orders.gates:
        return False
    closing = (broker.on_close,) if broker.at_close else ()
    expected = {
        BarSet: (
            *scheduled,
            broker.on_bars,
            portfolio.on_bars,
            *risk_bars,
            host.on_bars,
            orders.rebalance,
            *closing,
        ),
        Signal: (orders.on_signal,),
        Order: rec,
        OrderUpdate: (*rec, orders.on_order_update, *flat_update),
        Fill: (*rec, portfolio.on_fill, orders.on_fill, *flat_fill, node.fills.append),
        PositionUpdate: rec,
        RiskEvent: (*rec, node.risk_events.append),
        Funding: (*rec, portfolio.on_funding),
    }
    return all(bus.subscribers(kind) == handlers for kind, handlers in expected.items())


class _Batch:
    """A bar's market orders, one per asset (``idx`` ascending), sent but not yet filled (or, once
    filled at ``at``, its fills: ``price``, ``fee``, ``seq`` the broker's sequence number before the
    first). ``ts``: the bar it was decided on (its client ids)."""

    __slots__ = (
        "at",
        "back",
        "fee",
        "idx",
        "names",
        "orders",
        "price",
        "seq",
        "side",
        "signed",
        "size",
        "ts",
    )

    def __init__(
        self, ts: int, idx: np.ndarray, signed: np.ndarray, size: np.ndarray, names: list[str]
    ) -> None:
        self.ts = ts
        self.idx = idx
        self.side = np.sign(signed)  # +1.0 buy, -1.0 sell: a sent size is finite and above zero
        self.size = size  # |signed|, so size * side is signed to the bit
        self.signed = signed
        self.names = names  # client id prefix per symbol
        self.orders: list[Order] | None = None

    def ids(self) -> list[str]:
        stamp = str(self.ts // 1_000_000)
        names = self.names
        return [names[i] + stamp for i in self.idx.tolist()]

    def sides(self) -> list[Side]:
        return [_BUY if s > 0 else _SELL for s in self.side.tolist()]


def replay_every_bar(
    bus: EventBus,
    clock: Clock,
    matrix: BarMatrix,
    first: int,
    node: Any,
    *,
    journal: Any = None,
    scheduled: Sequence[tuple[Callable[[BarSet], None], Iterable[int]]] = (),
    progress: Callable[[Iterable[Any], int], Iterator[Any]] | None = None,
) -> bool:
    """Replay bars ``first:`` of an every-bar rebalancing backtest; False (nothing done) when the
    wiring is not the one this module knows. ``node`` is the backtest's TradingNode: fills not
    journaled are left in ``node.fill_batches`` as :func:`fill_columns` reads them (after every
    Fill in ``node.fills``)."""
    host, orders, portfolio, risk = node.host, node.orders, node.portfolio, node.risk
    broker = orders.venue
    if matrix.grid is None or not orders.every_bar or not isinstance(broker, PaperBroker):
        return False
    if not _wiring(bus, node, journal, [handler for handler, _ in scheduled]):
        return False
    o, h, low, c, v = matrix.grid
    at_close = broker.at_close
    base_prices = c if at_close else o
    with np.errstate(invalid="ignore"):
        if not (0.0 <= broker.slippage < 1.0) or (base_prices <= 0.0).any() or (c <= 0.0).any():
            return False  # prices the portfolio would refuse: the bus reports them
    if not host.planned and _precomputes(host.strategy):
        decisions = host.strategy.precompute(matrix.close)
        if decisions is not None:
            host.use(decisions, matrix.ts_event)
    n = len(matrix)
    due: set[int] = set()
    for _, bars_due in scheduled:
        due.update(bars_due)
    ts_list = matrix.ts_event.tolist()
    symbols = matrix.symbols
    publish, advance = bus.publish, clock.advance
    record = journal.record if journal is not None else None
    positions = bool(bus.subscribers(PositionUpdate))
    risk_bars = risk is not None and risk.on_bars in bus.subscribers(BarSet)
    strategy, units = host.strategy.name, host.strategy.units
    open_back, close_back = broker.open_back, broker.close_back
    instance = orders.instance_id
    prefixes: dict[str, list[str]] = {}
    delisted_seen = 0
    delisted = np.zeros(len(symbols), dtype=bool)
    pending, fills, batches = orders.pending, node.fills, node.fill_batches
    book, price_fills = portfolio.book_fills, broker.price_market_fills
    ticks = iter(progress(range(first, n), n - first)) if progress is not None else None
    held: _Batch | None = None  # next open: the orders of the bar before, to fill at this one's open
    count = count_nonzero
    priced = c == c
    all_priced = priced.all(axis=1).tolist()
    everyone = np.arange(len(symbols))
    everyone.setflags(write=False)  # every batch of all symbols shares it

    def make_orders(batch: _Batch) -> list[Order]:
        ts, name = batch.ts, batch_strategy
        batch.orders = [
            Order(cid, ts, ts, symbols[i], side, q, _MARKET, strategy=name)
            for cid, i, side, q in zip(
                batch.ids(), batch.idx.tolist(), batch.sides(), batch.size.tolist(), strict=True
            )
        ]
        return batch.orders

    def hand_over(batch: _Batch) -> None:
        """Leave the batch's orders working at the broker and on their way at the order manager,
        as :meth:`OrderManager.submit` leaves them."""
        for order in batch.orders if batch.orders is not None else make_orders(batch):
            broker.hold(order)
            orders.sent(order)

    def flush() -> None:
        """Make the batched fills Fill objects, before the bus adds any of its own."""
        if batches:
            fills.extend(_fills(batches, symbols))
            batches.clear()

    def fill(batch: _Batch, ts: int, base: np.ndarray, back: int) -> None:
        """Fill the batch at ``base`` (one price per order): the broker's fills, the portfolio's
        bookings and the order manager's settlement, journaled as the bus would deliver them."""
        idx = batch.idx
        price, fee, seq = price_fills(idx, batch.side, batch.size, base, batch.signed)
        new, avg = book(idx, batch.size, batch.signed, price, fee)
        if len(idx) == len(pending):
            pending.fill(0.0)
        else:
            pending[idx] = 0.0
        batch.at, batch.back, batch.price, batch.fee, batch.seq = ts, back, price, fee, seq
        if record is None:
            batches.append(batch)
            return
        made = _fills([batch], symbols)
        fills.extend(made)
        pnl = portfolio.realized_pnl[idx].tolist()
        for f, q, a, r in zip(made, new.tolist(), avg.tolist(), pnl, strict=True):
            record(f)
            if positions:
                record(PositionUpdate(ts, ts, f.symbol, q, a, r))
            record(OrderUpdate(ts, ts, f.client_id, f.symbol, _FILLED))

    batch_strategy = strategy
    t = first
    while t < n:
        if ticks is not None:
            next(ticks, None)
        ts = ts_list[t]
        if held is not None and (t in due or count(np.isnan(o[t][held.idx]))):
            hand_over(held)
            held = None
        if t in due or broker.working or orders.has_open or orders.unknown or host.standing is not None:
            flush()
            advance(ts)
            publish(BarSet(ts, ts, symbols, o[t], h[t], low[t], c[t], v[t], t))
            t += 1
            continue
        advance(ts)
        bars = BarSet(ts, ts, symbols, o[t], h[t], low[t], c[t], v[t], t)
        if held is not None:
            fill(held, ts, o[t][held.idx], open_back)
            held = None
        portfolio.on_bars(bars)
        if risk_bars:
            call_handler(risk.on_bars, bars)
            if risk.state is not _ACTIVE or risk.halted or broker.working or orders.has_open:
                flush()  # the rest of the bar (a halt's flatten, say) is the bus's
                for handler in (host.on_bars, orders.rebalance, *((broker.on_close,) if at_close else ())):
                    call_handler(handler, bars)
                t += 1
                continue
        targets = call_handler(host.decide, bars, name=host.on_bars)
        if targets is not None:
            orders.on_signal(Signal(ts, ts, strategy, targets, units))
        batch_strategy = orders.strategy
        t += 1
        if not batch_strategy:
            continue
        goal = orders.targets
        close = c[t - 1]
        given = np.equal(goal, goal)
        if all_priced[t - 1] and count(given) == len(goal):
            sized = orders.sizes(everyone, goal)
        else:
            live = np.logical_and(given, priced[t - 1]).nonzero()[0]
            sized = orders.sizes(live, goal[live])
        if sized is None or not len(sized[0]):
            continue
        idx, delta, size = sized
        gone = broker.delisted
        if len(gone) != delisted_seen:
            delisted_seen = len(gone)
            delisted[:] = [s in gone for s in symbols]
        if count(np.isfinite(size)) < len(size) or (delisted_seen and count(delisted[idx])):
            flush()
            orders.send_sized(idx, delta, size, batch_strategy, ts)  # refusals: as the bus has them
            if at_close:
                broker.on_close(bars)
            continue
        names = prefixes.get(batch_strategy)
        if names is None:
            lead = f"{instance}-" if instance else ""
            names = prefixes[batch_strategy] = [f"{lead}{batch_strategy}-{s}-" for s in symbols]
        batch = _Batch(ts, idx, delta, size, names)
        if record is not None:  # as submit() and the broker's acceptance journal them
            for order in make_orders(batch):
                record(order)
                record(OrderUpdate(ts, ts, order.client_id, order.symbol, _ACCEPTED, ""))
        if at_close:
            fill(batch, ts, close if len(idx) == len(close) else close[idx], close_back)
        else:
            pending[idx] += batch.signed
            held = batch
    if held is not None:
        hand_over(held)
    if ticks is not None:
        collections.deque(ticks, maxlen=0)
    return True


def _fills(batches: Sequence[_Batch], symbols: tuple[str, ...]) -> list[Fill]:
    """The Fill objects the broker publishes for filled batches, in order."""
    out: list[Fill] = []
    for b in batches:
        ts, back, seq = b.at, b.back, b.seq
        out.extend(
            Fill(ts, ts, cid, symbols[i], s, q, p, f, "taker", f"paper-{k}", "", ts - back)
            for cid, i, s, q, p, f, k in zip(
                b.ids(),
                b.idx.tolist(),
                b.sides(),
                b.size.tolist(),
                b.price.tolist(),
                b.fee.tolist(),
                range(seq + 1, seq + 1 + len(b.idx)),
                strict=True,
            )
        )
    return out


def fill_columns(batches: Sequence[_Batch], symbols: tuple[str, ...]) -> dict[str, list[Any]]:
    """The batched fills as the columns of a backtest's trades (the values its Fill objects would
    give: fill time in the data's labels, symbol, side, quantity, price, fee, bar stamp)."""
    if not batches:
        return {k: [] for k in ("ts_price", "symbol", "side", "quantity", "price", "fee", "ts_event")}
    idx = np.concatenate([b.idx for b in batches])
    counts = [len(b.idx) for b in batches]
    ts_event = np.repeat(np.array([b.at for b in batches], dtype=np.int64), counts)
    ts_price = ts_event - np.repeat(np.array([b.back for b in batches], dtype=np.int64), counts)
    names = np.array(symbols, dtype=object)
    return {
        "ts_price": np.where(ts_price != 0, ts_price, ts_event).tolist(),
        "symbol": names[idx].tolist(),
        "side": np.where(np.concatenate([b.side for b in batches]) > 0, "buy", "sell").tolist(),
        "quantity": np.concatenate([b.size for b in batches]).tolist(),
        "price": np.concatenate([b.price for b in batches]).tolist(),
        "fee": np.concatenate([b.fee for b in batches]).tolist(),
        "ts_event": ts_event.tolist(),
    }
