"""From target weights to orders: the path every strategy's signal takes to a venue.

The order manager sizes the difference between target and current position (counting what is
already on its way), passes each order through the pre-trade gates (the risk manager is one) and
hands survivors to the execution venue. Orders, and only orders, leave through here.

When it trades is the ``rebalance`` mode: ``on_change`` trades an asset when its target changes
(or, with ``rebalance_band``, when its weight drifts that far from it), so between changes a
position is a fixed quantity and its weight drifts with prices; ``every_bar`` brings every weight
back to its target after each bar (:meth:`OrderManager.rebalance`), so weights stay constant, as in
a vectorised backtest that multiplies weights by returns.
"""

from __future__ import annotations

import contextlib
import math
from typing import Protocol

import numpy as np
import structlog

from engine.bus import EventBus
from engine.clock import Clock
from engine.events import BarSet, Fill, Order, OrderStatus, OrderType, OrderUpdate, Side, Signal
from engine.numeric import ZERO, count_nonzero
from engine.portfolio import Portfolio
from engine.ports import ExecutionVenue
from engine.state import capture, restore_into

log = structlog.get_logger("engine.orders")

_DONE = (OrderStatus.CANCELLED, OrderStatus.REJECTED, OrderStatus.FILLED)
_BUY, _SELL, _MARKET = Side.BUY, Side.SELL, OrderType.MARKET
_SAME = np.array(1e-12)  # a target this close to the standing one is no change (0-d: engine.numeric)
_NO_CONTEXT = contextlib.nullcontext()  # every price positive: nothing to silence


class OrderGate(Protocol):
    def review(self, order: Order) -> Order | None:
        """Return the order to send (possibly reduced) or None to block it; explain on the bus."""
        ...


def client_order_id(strategy: str, symbol: str, ts_ns: int, tag: str = "", instance: str = "") -> str:
    """Deterministic id: the same decision always maps to the same id, so a venue can reject a
    resend instead of opening a second position. ``instance`` (a daemon's id, persisted with its
    state) keeps two engines running the same strategy apart and is stable across restarts."""
    suffix = f"-{tag}" if tag else ""
    prefix = f"{instance}-" if instance else ""
    return f"{prefix}{strategy}-{symbol}-{ts_ns // 1_000_000}{suffix}"


class OrderManager:
    vector_from = 4
    """Assets per decision from which orders are sized all at once (fewer: one at a time)."""

    def __init__(
        self,
        bus: EventBus,
        clock: Clock,
        portfolio: Portfolio,
        venue: ExecutionVenue,
        *,
        gates: tuple[OrderGate, ...] = (),
        rebalance: str = "on_change",
        rebalance_band: float = 0.0,
        min_trade_notional: float = 0.0,
        instance_id: str = "",
        long_only: bool = False,
    ) -> None:
        self.bus = bus
        self.clock = clock
        self.portfolio = portfolio
        self.venue = venue
        self.gates = gates
        self.every_bar = rebalance == "every_bar"
        self.rebalance_band = rebalance_band
        self.min_trade_notional = min_trade_notional
        self.instance_id = instance_id
        self.long_only = long_only
        """A market that cannot be sold short (spot): a negative target is held as flat."""
        n = len(portfolio.symbols)
        self._clipped = np.zeros(n, dtype=bool)  # symbols whose negative target was logged
        self.targets = np.full(n, np.nan)
        self.units = np.zeros(n, dtype=bool)  # targets held in units of the instrument, not weights
        self.pending = np.zeros(n)
        self._open: dict[str, tuple[int, float]] = {}
        self._open_count = np.zeros(n, dtype=np.int64)
        self.unpriced = np.zeros(n, dtype=bool)
        """Targets not traded yet because their symbol has had no price; they trade on its first bar."""
        self._any_unpriced = False
        self.unknown: dict[str, int] = {}
        """Orders whose fate the venue left unknown, by client id: their symbols send nothing new."""
        self._strategy = ""  # whose targets these are (every_bar orders are in its name)
        bus.subscribe(Signal, self.on_signal)
        bus.subscribe(Fill, self.on_fill)
        bus.subscribe(OrderUpdate, self.on_order_update)

    def on_signal(self, signal: Signal) -> None:
        new = signal.targets
        if self.long_only:
            new = self._no_shorts(new)
        old = self.targets
        given = np.equal(new, new)  # not NaN
        self._strategy = signal.strategy
        np.copyto(self.units, signal.units, where=given)
        if self.every_bar:
            np.copyto(old, new, where=given)  # traded by rebalance() once the bar's decisions are in
            return
        same = np.subtract(new, old)
        np.abs(same, same)
        same = np.less_equal(same, _SAME)
        changed = np.logical_not(same, same)  # not "greater": NaN against a target is a change
        changed |= self.unpriced
        changed &= given
        if self.rebalance_band > 0 and not signal.units:
            drift = np.abs(self.portfolio.weights() - np.where(given, new, old))
            changed |= given & (drift > self.rebalance_band)
        np.copyto(old, new, where=given)
        idx = changed.nonzero()[0]
        self._rebalance_all(idx, new[idx], signal.strategy, signal.ts_event)

    def _no_shorts(self, targets: np.ndarray) -> np.ndarray:
        """Negative targets as 0 (flat), logged once per symbol: the position is sold down to
        nothing, never below (a spot sell beyond the coins held is refused by the venue)."""
        short = targets < 0.0  # NaN (no target) compares false and stays NaN
        if not short.any():
            return targets
        for i in np.flatnonzero(short & ~self._clipped).tolist():
            self._clipped[i] = True
            log.warning(
                "long-only market: a negative target is held as flat (logged once per symbol)",
                symbol=self.portfolio.symbols[i],
                target=float(targets[i]),
            )
        return np.where(short, 0.0, targets)

    def rebalance(self, bars: BarSet) -> None:
        """``every_bar``: trade every asset with a target and a bar back to its target weight.

        Subscribed to the bar after the strategies (by the wiring), so it sizes this bar's targets
        from this bar's marks, with one order per asset and bar."""
        if not self._strategy:
            return
        live = np.flatnonzero((self.targets == self.targets) & (bars.close == bars.close))
        self._rebalance_all(live, self.targets[live], self._strategy, bars.ts_event)

    def trade_unpriced(self, bars: BarSet) -> None:
        """``on_change``: trade the targets that waited for a price, on their symbol's first bar
        (subscribed after the strategies, whose own new targets for the bar come first)."""
        if not self._any_unpriced:
            return
        ready = self.unpriced & (bars.close == bars.close)
        for i in np.flatnonzero(ready):
            self._rebalance(int(i), float(self.targets[i]), self._strategy, bars.ts_event)
        self._any_unpriced = bool(self.unpriced.any())

    @property
    def waiting(self) -> bool:
        """Whether a target waits for its symbol's first price (the next bar may trade it)."""
        return self._any_unpriced

    def _rebalance_all(self, idx: np.ndarray, targets: np.ndarray, strategy: str, ts: int) -> None:
        """:meth:`_rebalance` for each asset of ``idx`` in turn, the sizing done for all at once:
        with no gate, sending one asset's order changes nothing another's is sized from (the
        venue fills later), so the same arithmetic elementwise gives the same orders."""
        if len(idx) < self.vector_from or self.gates:
            for i, target in zip(idx.tolist(), targets.tolist(), strict=True):
                self._rebalance(i, target, strategy, ts)
            return
        sized = self.sizes(idx, targets)
        if sized is not None:
            self.send_sized(*sized, strategy, ts)

    def send_sized(
        self, send: np.ndarray, delta: np.ndarray, size: np.ndarray, strategy: str, ts: int
    ) -> None:
        """Submit the market orders :meth:`sizes` worked out, one per asset, in asset order."""
        symbols, instance, now = self.portfolio.symbols, self.instance_id, self.clock.now_ns()
        for i, d, q in zip(send.tolist(), delta.tolist(), size.tolist(), strict=True):
            symbol = symbols[i]
            order = Order(
                client_order_id(strategy, symbol, ts, instance=instance),
                ts,
                now,
                symbol,
                _BUY if d > 0 else _SELL,
                q,
                _MARKET,
                strategy=strategy,
            )
            self.submit(order)

    def sizes(self, idx: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The orders :meth:`_rebalance_all` sends for assets ``idx`` (ascending, distinct) at
        ``targets``, without sending them: (assets, signed quantities, sizes), or None when the
        equity allows none. Marks the symbols without a price as waiting, as sending would."""
        pf = self.portfolio
        every = len(idx) == len(self.targets)  # distinct and ascending: every symbol, in order
        price = pf.last_price if every else pf.last_price[idx]
        if every:
            self.unpriced[:] = False
        else:
            self.unpriced[idx] = False
        unpriced = np.less_equal(price, ZERO)
        waiting = count_nonzero(unpriced)
        if waiting:  # symbols without a price yet: keep their targets for their first bar
            waits = unpriced & (targets != 0.0)
            if waits.any():
                self.unpriced[idx[waits]] = self._any_unpriced = True
        equity = pf.equity
        if not math.isfinite(equity) or equity <= 0.0:
            return None
        units = self.units if every else self.units[idx]
        with np.errstate(divide="ignore", invalid="ignore") if waiting else _NO_CONTEXT:
            in_units = count_nonzero(units)
            if in_units == len(idx):
                wanted = targets.copy()
            else:
                wanted = np.multiply(targets, np.array(equity))  # 0-d: see engine.numeric
                np.divide(wanted, price, wanted)
                if in_units:
                    np.copyto(wanted, targets, where=units)
            delta = np.subtract(wanted, pf.qty if every else pf.qty[idx], wanted)
            if count_nonzero(self.pending):  # x - 0.0 is x (-0.0 or not, a zero is not sent)
                np.subtract(delta, self.pending if every else self.pending[idx], delta)
            size = np.abs(delta)
            floor = np.array(max(self.min_trade_notional, 1e-9 * equity))
            send = np.multiply(size, price)
            small = np.less_equal(send, floor)  # not "greater": a NaN size is sent (and refused)
        if not waiting and not count_nonzero(small):
            return idx, delta, size
        send = np.logical_not(small, small)
        if waiting:
            send &= ~unpriced
        k = send.nonzero()[0]
        if len(k) == len(idx):
            return idx, delta, size
        return idx[k], delta[k], size[k]

    def _rebalance(self, i: int, target: float, strategy: str, ts: int) -> None:
        pf = self.portfolio
        price = float(pf.last_price[i])
        self.unpriced[i] = False
        if price <= 0.0:
            if target != 0.0:  # a symbol without a price yet: keep the target for its first bar
                self.unpriced[i] = self._any_unpriced = True
            return
        if not math.isfinite(pf.equity) or pf.equity <= 0.0:
            return
        wanted = target if self.units[i] else target * pf.equity / price
        delta = wanted - pf.qty[i] - self.pending[i]
        if abs(delta) * price <= max(self.min_trade_notional, 1e-9 * pf.equity):
            return
        symbol = pf.symbols[i]
        order = Order(
            client_order_id(strategy, symbol, ts, instance=self.instance_id),
            ts,
            self.clock.now_ns(),
            symbol,
            Side.BUY if delta > 0 else Side.SELL,
            abs(float(delta)),
            OrderType.MARKET,
            strategy=strategy,
        )
        self.submit(order)

    def submit(self, order: Order) -> bool:
        """Send an order through the gates to the venue; False if a gate blocked it."""
        if order.client_id in self._open:
            log.warning("order id already working; not sent twice", client_id=order.client_id)
            return False
        if self.unknown and self.portfolio.index[order.symbol] in self.unknown.values():
            log.warning("order not sent: an earlier order's fate is unknown", symbol=order.symbol)
            return False
        for gate in self.gates:
            reviewed = gate.review(order)
            if reviewed is None:
                return False
            order = reviewed
        self._track(order)
        self.bus.publish(order)
        self.venue.submit(order)
        return True

    def working(self) -> list[str]:
        """Client ids of the orders on their way (sent, not yet finished)."""
        return list(self._open)

    @property
    def has_open(self) -> bool:
        """Whether any order is on its way (:meth:`working` without the list)."""
        return bool(self._open)

    @property
    def strategy(self) -> str:
        """Whose targets these are: ``every_bar`` orders are sent in its name (empty: none yet)."""
        return self._strategy

    def sent(self, order: Order) -> None:
        """Count ``order`` as on its way, as :meth:`submit` leaves it, for a replay that sent it
        itself and has already added it to ``pending``."""
        self._track(order, pending=False)

    def adopt(self, order: Order) -> None:
        """Count an order found working at the venue (an adoption) as on its way from this book,
        without sending it: its fills and its end settle it like any other."""
        self._track(order)

    def _track(self, order: Order, *, pending: bool = True) -> None:
        i = self.portfolio.index[order.symbol]
        signed = order.quantity * order.side
        if pending:
            self.pending[i] += signed
        self._open_count[i] += 1
        self._open[order.client_id] = (i, signed)

    def on_fill(self, fill: Fill) -> None:
        entry = self._open.get(fill.client_id)
        if entry is None:
            return
        i, remaining = entry
        signed = fill.quantity * fill.side
        self.pending[i] -= signed
        remaining -= signed
        if abs(remaining) <= 1e-12 * max(1.0, abs(signed)):
            self._close(fill.client_id, i)
        else:
            self._open[fill.client_id] = (i, remaining)

    def on_order_update(self, update: OrderUpdate) -> None:
        if update.status is OrderStatus.UNKNOWN:
            entry = self._open.get(update.client_id)
            if entry is not None:
                self.unknown[update.client_id] = entry[0]
            return
        if self.unknown:
            self.unknown.pop(update.client_id, None)
        if update.status not in _DONE:
            return
        entry = self._open.get(update.client_id)
        if entry is not None:
            i, remaining = entry
            self.pending[i] -= remaining
            self._close(update.client_id, i)

    _STATE = ("targets", "units", "pending", "_open", "_open_count", "unpriced", "_any_unpriced", "unknown")

    def state(self) -> dict[str, object]:
        """Targets and orders on their way: after a restart the same targets do not trade again."""
        return capture(self, self._STATE)

    def restore(self, saved: dict[str, object]) -> None:
        restore_into(self, saved)

    def _close(self, client_id: str, i: int) -> None:
        del self._open[client_id]
        self._open_count[i] -= 1
        if self._open_count[i] == 0:
            self.pending[i] = 0.0  # no float residue once nothing is on its way
