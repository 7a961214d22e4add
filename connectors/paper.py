"""Simulated execution for backtests and paper trading.

Execution rules, the same for every strategy:

* A market order fills at the open of the first bar that starts after the engine saw the bar that
  caused it: a signal computed on bar t's close never trades at bar t's price. The price moves
  against the order by the slippage; the taker fee applies.
* A limit order fills at its price when a later bar's range reaches it, or at the open if the bar
  opens through it (the better price); maker fee, no slippage.
* A stop order triggers when a later bar's range reaches the stop and fills at the stop price, or
  at the open if the bar gaps through it; it then behaves as a market order (slippage, taker fee).
* Within a bar, orders the open reaches fill first (they traded at the first price), then those the
  range reaches: a bar that opens beyond a take-profit fills it at the open even if it later falls
  through the stop. Among orders of one kind the older comes first, so when one bar's range reaches
  both a stop and a take-profit, the stop is taken to have come first (the conservative reading).
* A stop or limit order placed while a bar is filling (a protective exit armed by the fill of its
  entry at the open) works for the rest of that bar: it fills at its own price if the bar's range
  reaches it, never at the open, which traded before it existed.
* An order for an instrument without a bar waits for that instrument's next bar.
* With ``fill_at="close"`` a market order fills instead at the close of the bar it was decided on
  (market-on-close, :meth:`PaperBroker.on_close`, run after the bar's decisions), or of its
  instrument's next bar; slippage and taker fee as at the open.
* Each fill carries the time of its price in the data's labels (``Fill.ts_price``): ``stamps`` say
  how far before the bar's close stamp a fill at (or after) its open and one at its close traded.
* Live (paper trading), a market order fills as soon as the stream reports the next bar's first
  price (:class:`~engine.events.BarOpen`): the same open a backtest fills at, seconds after the
  decision instead of at that bar's close.
* A reduce-only order never increases or flips a position, as on Bybit: its fill is capped at the
  position when it fills (the rest is cancelled), and it is cancelled if there is nothing to reduce.
  The position is the broker's own book of its fills, which is the portfolio's in paper trading.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import replace

import numpy as np

from engine.bus import EventBus
from engine.clock import Clock
from engine.config import CostConfig
from engine.events import BarOpen, BarSet, Fill, Order, OrderStatus, OrderType, OrderUpdate, Side
from engine.numeric import ONE, count_nonzero
from engine.state import capture, restore_into

_LIMIT, _MARKET, _FILLED = OrderType.LIMIT, OrderType.MARKET, OrderStatus.FILLED
_TINY = np.array(1e-12)  # a position this small (relative) is flat


class PaperBroker:
    name = "paper"

    def __init__(
        self,
        bus: EventBus,
        clock: Clock,
        symbols: tuple[str, ...],
        costs: CostConfig,
        *,
        fill_at: str = "next_open",
        stamps: tuple[int, int] = (0, 0),
    ) -> None:
        self.bus = bus
        self.clock = clock
        self.index = {s: i for i, s in enumerate(symbols)}
        self.taker = costs.taker_fee_bps / 1e4
        self.maker = costs.maker_fee_bps / 1e4
        self.slippage = costs.slippage_bps / 1e4
        self._vector_costs = (np.array(self.slippage), np.array(self.taker))  # 0-d (engine.numeric), fixed
        self._working: dict[str, Order] = {}
        self._armed: list[Order] | None = None  # stop/limit orders placed while a bar fills
        self._seq = 0
        self.at_close = fill_at == "close"
        self.open_back, self.close_back = stamps
        """How far before a bar's close stamp its open and its close traded, in the data's labels."""
        self._delisted: dict[str, str] = {}
        self.position = np.zeros(len(symbols))
        """Signed quantity per symbol from this broker's fills (what reduce-only is judged by)."""
        bus.subscribe(BarSet, self.on_bars)
        bus.subscribe(BarOpen, self.on_open)

    _STATE = ("_working", "_seq", "position")

    def state(self) -> dict[str, object]:
        """Working orders and the broker's book: a restarted paper session fills them as before."""
        return capture(self, self._STATE)

    def restore(self, saved: dict[str, object]) -> None:
        restore_into(self, saved)

    def submit(self, order: Order) -> None:
        reason = self._rejection(order)
        status = OrderStatus.REJECTED if reason else OrderStatus.ACCEPTED
        if not reason:
            self._working[order.client_id] = order
            if self._armed is not None and order.type is not OrderType.MARKET:
                self._armed.append(order)
        self.bus.publish(
            OrderUpdate(order.ts_init, self.clock.now_ns(), order.client_id, order.symbol, status, reason)
        )

    def cancel(self, client_id: str) -> None:
        order = self._working.pop(client_id, None)
        if order is not None:
            self.bus.publish(
                OrderUpdate(
                    self.clock.now_ns(), self.clock.now_ns(), client_id, order.symbol, OrderStatus.CANCELLED
                )
            )

    def amend(self, client_id: str, *, quantity: float | None = None, price: float | None = None) -> None:
        order = self._working.get(client_id)
        if order is None:
            return  # already filled or cancelled: that outcome has been published
        amended = replace(
            order,
            quantity=order.quantity if quantity is None else quantity,
            price=order.price if price is None else price,
        )
        reason = self._rejection(amended, amending=True)
        if not reason:
            self._working[client_id] = amended  # same key: keeps its place in the queue
        now = self.clock.now_ns()
        self.bus.publish(
            OrderUpdate(
                now,
                now,
                client_id,
                order.symbol,
                OrderStatus.ACCEPTED,
                f"amend refused: {reason}" if reason else "amended",
            )
        )

    @property
    def working(self) -> bool:
        """Whether any order is waiting to fill."""
        return bool(self._working)

    def open_orders(self) -> Iterable[Order]:
        return list(self._working.values())

    def hold(self, order: Order) -> None:
        """Keep ``order`` working as :meth:`submit` accepts it, without publishing the acceptance:
        for a replay that journaled the acceptance itself and leaves the order to the bus."""
        self._working[order.client_id] = order

    @property
    def delisted(self) -> Mapping[str, str]:
        """Symbols delisted so far, with the reason their orders are refused."""
        return self._delisted

    def _rejection(self, order: Order, *, amending: bool = False) -> str:
        if not amending and order.client_id in self._working:
            return f"duplicate client order id {order.client_id}"
        if order.symbol not in self.index:
            return f"unknown symbol {order.symbol}"
        if self._delisted and order.symbol in self._delisted:
            return self._delisted[order.symbol]
        if not (math.isfinite(order.quantity) and order.quantity > 0):
            return f"quantity must be positive and finite, got {order.quantity}"
        if order.type is not OrderType.MARKET and not (math.isfinite(order.price) and order.price > 0):
            return f"{order.type.value} order needs a positive price, got {order.price}"
        return ""

    def on_bars(self, bars: BarSet) -> None:
        if not self._working:
            return
        ts = bars.ts_event
        at_open: list[tuple[Order, float]] = []
        in_range: list[tuple[Order, float]] = []
        at_close = self.at_close
        for order in self._working.values():
            if order.ts_init >= ts or (at_close and order.type is OrderType.MARKET):
                continue
            i = self.index[order.symbol]
            opn = float(bars.open[i])
            if opn != opn:
                continue
            hit = self._trigger(order, opn, float(bars.high[i]), float(bars.low[i]))
            if hit is not None:
                (at_open if hit[1] else in_range).append((order, hit[0]))
        self._armed = []
        try:
            for order, price in at_open + in_range:
                current = self._working.get(order.client_id)
                if current is order:
                    self._execute(order, price, ts, self.open_back)
                elif current is not None:  # amended by a handler of an earlier fill: from now on
                    self._armed.append(current)
            while self._armed:
                order = self._armed.pop(0)
                if self._working.get(order.client_id) is not order:
                    continue
                i = self.index[order.symbol]
                if self._reached(order, float(bars.high[i]), float(bars.low[i])):
                    self._execute(order, order.price, ts, self.open_back)
        finally:
            self._armed = None

    def on_close(self, bars: BarSet) -> None:
        """``fill_at="close"``: fill the working market orders at this bar's close (subscribed
        after the bar's decisions, so the orders decided on it fill at its close)."""
        if not self._working:
            return
        close = bars.close
        index, working, ts = self.index, self._working, bars.ts_event
        for order in [o for o in working.values() if o.type is _MARKET]:
            price = float(close[index[order.symbol]])
            if price == price and working.get(order.client_id) is order:
                self._execute(order, price, ts, self.close_back)

    def delist(self, symbol: str, price: float, ts: int, reason: str) -> tuple[float, int]:
        """The symbol's data has ended: cancel its working orders, settle its position at ``price``
        (its last close; no fee, no slippage: nothing trades) and refuse its orders from now on.
        Returns the signed quantity settled and the number of orders cancelled."""
        self._delisted[symbol] = reason
        cancelled = [o for o in self._working.values() if o.symbol == symbol]
        for order in cancelled:
            del self._working[order.client_id]
            self._cancelled(order, ts, reason)
        i = self.index[symbol]
        held = float(self.position[i])
        if held:
            self.position[i] = 0.0
            self._seq += 1
            side = Side.SELL if held > 0 else Side.BUY
            cid = f"delist-{symbol}-{ts // 1_000_000}"
            now = self.clock.now_ns()
            self.bus.publish(
                Fill(
                    ts,
                    now,
                    cid,
                    symbol,
                    side,
                    abs(held),
                    price,
                    0.0,
                    "delist",
                    f"paper-{self._seq}",
                    "delisted",
                    ts - self.close_back,
                )
            )
        return held, len(cancelled)

    def _execute(self, order: Order, price: float, ts: int, back: int = 0) -> None:
        del self._working[order.client_id]
        i = self.index[order.symbol]
        qty = self._reducible(order, i) if order.reduce_only else order.quantity
        if qty <= 0.0:
            self._cancelled(order, ts, "reduce-only: no position to reduce")
            return
        self._fill(order, price, ts, qty, back)
        if qty < order.quantity:
            why = f"reduce-only: filled {qty:.8g} of {order.quantity:.8g}, the whole position"
            self._cancelled(order, ts, why)

    def on_open(self, bar: BarOpen) -> None:
        """Fill the market orders decided at or before this bar's start at its first price."""
        if not self._working:
            return
        i = self.index.get(bar.symbol)
        if i is None or not bar.open > 0.0:
            return
        for order in list(self._working.values()):
            if order.symbol != bar.symbol or order.type is not OrderType.MARKET:
                continue
            if order.ts_event > bar.ts_event:
                continue
            if self._working.pop(order.client_id, None) is None:
                continue
            qty = self._reducible(order, i) if order.reduce_only else order.quantity
            if qty <= 0.0:
                self._cancelled(order, bar.ts_event, "reduce-only: no position to reduce")
                continue
            self._fill(order, bar.open, bar.ts_event, qty)
            if qty < order.quantity:
                why = f"reduce-only: filled {qty:.8g} of {order.quantity:.8g}, the whole position"
                self._cancelled(order, bar.ts_event, why)

    def _reducible(self, order: Order, i: int) -> float:
        """How much of a reduce-only order the position lets fill now (0: nothing to reduce)."""
        held = float(self.position[i])
        if held * order.side >= 0.0:
            return 0.0
        if order.quantity <= abs(held) * (1.0 + 1e-12):
            return order.quantity
        return abs(held)

    def _cancelled(self, order: Order, ts: int, reason: str) -> None:
        self.bus.publish(
            OrderUpdate(ts, self.clock.now_ns(), order.client_id, order.symbol, OrderStatus.CANCELLED, reason)
        )

    def _trigger(self, order: Order, opn: float, high: float, low: float) -> tuple[float, bool] | None:
        """Fill price for a bar and whether the open reached it (None: the bar does not)."""
        if order.type is OrderType.MARKET or self._reached(order, opn, opn):
            return opn, True
        if self._reached(order, high, low):
            return order.price, False
        return None

    @staticmethod
    def _reached(order: Order, high: float, low: float) -> bool:
        """Whether prices from ``low`` to ``high`` reach the level of a limit or stop order: a buy
        limit and a sell stop wait below the market, a sell limit and a buy stop above it."""
        below = (order.side is Side.BUY) is (order.type is OrderType.LIMIT)
        return low <= order.price if below else high >= order.price

    def price_market_fills(
        self,
        idx: np.ndarray,
        side: np.ndarray,
        qty: np.ndarray,
        base: np.ndarray,
        signed: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """What :meth:`_fill` does for market orders of distinct symbols ``idx`` (``side`` +1/-1,
        whole quantities ``qty``) at the prices ``base``, in that order, at once: the prices after
        slippage and the taker fees, the broker's book moved, sequence numbers taken. Returns the
        prices, the fees and the sequence number before the first fill (fill k is ``paper-{seq + k
        + 1}``); the caller publishes (or books) the fills. ``signed``: ``qty * side``, when the
        caller has it."""
        slip, rate = self._vector_costs
        price = np.multiply(side, slip)
        np.add(price, ONE, price)
        np.multiply(price, base, price)
        fee = np.multiply(qty, price)
        np.multiply(fee, rate, fee)
        position = self.position
        every = len(idx) == len(position)  # distinct and ascending: every symbol, in order
        if signed is None:
            signed = np.multiply(qty, side)
        held = np.add(position if every else position[idx], signed)
        tiny = np.maximum(qty, ONE)
        np.multiply(tiny, _TINY, tiny)
        tiny = np.less_equal(np.abs(held), tiny)
        if count_nonzero(tiny):
            held[tiny] = 0.0
        if every:
            position[:] = held
        else:
            position[idx] = held
        seq = self._seq
        self._seq += len(idx)
        return price, fee, seq

    def _fill(self, order: Order, price: float, ts: int, qty: float, back: int = 0) -> None:
        """``back``: how far before ``ts`` (the bar's close stamp) the price traded, in the data's labels."""
        side = order.side
        if order.type is _LIMIT:
            rate, liquidity = self.maker, "maker"
        else:
            price *= 1.0 + self.slippage * side
            rate, liquidity = self.taker, "taker"
        fee = qty * price * rate
        i = self.index[order.symbol]
        position = self.position
        held = position[i] + qty * side
        position[i] = 0.0 if abs(held) <= 1e-12 * max(1.0, qty) else held
        self._seq += 1
        now = self.clock.now_ns()
        cid, symbol, publish = order.client_id, order.symbol, self.bus.publish
        publish(
            Fill(
                ts,
                now,
                cid,
                symbol,
                side,
                qty,
                price,
                fee,
                liquidity,
                f"paper-{self._seq}",
                order.tag,
                ts - back,
            )
        )
        if qty == order.quantity:
            publish(OrderUpdate(ts, now, cid, symbol, _FILLED))
