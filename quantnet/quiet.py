"""Replay that publishes only the bars on which something can happen.

With a strategy that precomputes its decisions (:meth:`engine.strategy.Strategy.precompute`), a
bar can change nothing but the marks when the strategy does not decide on it and no order is
working: no fill, no order, no signal. Such runs of bars are booked at once
(:meth:`engine.portfolio.Portfolio.mark_span`, the same numbers ``on_bars`` records one by one);
every other bar goes through the bus exactly as in :func:`engine.bus.replay`, so fills, orders,
the journal and the gates are the same. Only taken when nothing else listens to the bars but
handlers that say on which bars they act (``scheduled``, e.g. delisting): a risk manager, funding,
``every_bar`` rebalancing or any other ``BarSet`` subscriber means every bar is published.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from connectors.paper import PaperBroker
from connectors.replay import BarMatrix
from engine.bus import EventBus
from engine.clock import Clock
from engine.events import BarSet
from engine.orders import OrderManager
from engine.strategy import StrategyHost


def _precomputes(strategy: object) -> bool:
    """Whether the strategy's ``precompute`` speaks for its ``on_bars``: both from the same class
    (a subclass that changes ``on_bars`` inherits a ``precompute`` that no longer does), neither
    replaced on the instance."""
    if "on_bars" in vars(strategy) or "precompute" in vars(strategy):
        return False
    mro = type(strategy).__mro__
    owner = {name: next(k for k in mro if name in vars(k)) for name in ("on_bars", "precompute")}
    return owner["on_bars"] is owner["precompute"]


def replay_quiet(
    bus: EventBus,
    clock: Clock,
    matrix: BarMatrix,
    first: int,
    host: StrategyHost,
    orders: OrderManager,
    *,
    scheduled: Sequence[tuple[Callable[[BarSet], None], Iterable[int]]] = (),
    progress: Callable[[Iterable[Any], int], Iterator[Any]] | None = None,
) -> bool:
    """Replay bars ``first:`` skipping the quiet ones; False (nothing done) when it cannot."""
    broker, portfolio = orders.venue, orders.portfolio
    if matrix.grid is None or orders.every_bar or not isinstance(broker, PaperBroker):
        return False
    known = {broker.on_bars, broker.on_close, portfolio.on_bars, host.on_bars, orders.trade_unpriced}
    known.update(handler for handler, _ in scheduled)
    if not set(bus.subscribers(BarSet)) <= known:
        return False
    if not _precomputes(host.strategy):
        return False
    decisions = host.strategy.precompute(matrix.close)
    if decisions is None:
        return False
    host.use(decisions, matrix.ts_event)
    n = len(matrix)
    due = set(np.asarray(decisions.index, dtype=np.int64).tolist())
    for _, bars in scheduled:
        due.update(bars)
    due = sorted(t for t in due if first <= t < n)
    due.append(n)
    o, h, low, c, v = matrix.grid
    ts_list = matrix.ts_event.tolist()
    symbols = matrix.symbols
    complete = len(matrix.codes) == n * len(symbols)  # every cell holds a bar: no NaN
    publish, advance = bus.publish, clock.advance
    ticks = iter(progress(range(first, n), n - first)) if progress is not None else None
    k, t = 0, first
    while t < n:
        nxt = due[k]
        if t < nxt and host.quiet and not (broker.working or orders.waiting):
            portfolio.mark_span(ts_list[t:nxt], c[t:nxt], complete=complete)
            advance(ts_list[nxt - 1])
            if ticks is not None:
                collections.deque(itertools.islice(ticks, nxt - t), maxlen=0)
            t = nxt
            continue
        if t == nxt:
            k += 1
        ts = ts_list[t]
        advance(ts)
        publish(BarSet(ts, ts, symbols, o[t], h[t], low[t], c[t], v[t], t))
        if ticks is not None:
            next(ticks, None)
        t += 1
    if ticks is not None:
        collections.deque(ticks, maxlen=0)
    return True
