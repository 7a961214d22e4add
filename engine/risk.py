"""The risk manager: pre-trade limits, protective exits, daily-loss and drawdown limits, trading state.

It stands between every strategy and the venue in two places:

* As the order manager's last gate it reviews each order before it leaves (:meth:`RiskManager.review`):
  the trading state, the exposure limits, the instrument's tick and lot rules.
* On the bus it handles each bar after the portfolio has marked it and before any strategy sees it:
  it measures the day's loss and the drawdown, moves the trading state, and keeps protective exit
  orders resting at the venue for every open position.

Trading states (:class:`~engine.events.TradingState`): ACTIVE trades freely. REDUCING (the day's
loss exceeded ``max_daily_loss``) lets orders only reduce positions until the next trading day.
HALTED (the equity fell more than ``max_drawdown`` below its peak) cancels every working order,
flattens every position with market orders and then lets nothing but reductions through until an
operator resets it (``quantnet risk reset`` or ``clear_halt`` in the config). In paper and live
trading the halt is written to ``state_file`` so that a restart stays halted; a backtest keeps it in
memory (``persist=False``), so one backtest's halt never stops the next. Losses are measured on
equity marked at bar closes, so a limit is detected at the close of the bar that crosses it and can
be overshot by that bar's move (and, for the flatten, by the gap to the next open).

Exit rules, the same in a backtest and live, because the venue fills them:

* The stop is a resting reduce-only STOP order: it fills intrabar at the stop price when a bar's
  range reaches it, or at the open when a bar gaps through it. Its level is the tighter of
  ``entry · (1 ∓ stop_loss)`` and ``best · (1 ∓ trailing_stop)``, ``best`` being the highest high
  (long) or lowest low (short) since entry. ``best`` moves when a bar closes and the new level
  applies from the next bar; a close already beyond it fills the stop at the next open.
* The take-profit is a resting reduce-only LIMIT order at ``entry · (1 ± take_profit)``. Stop and
  take-profit are one-cancels-other. The stop sits ahead of the take-profit in the venue's queue,
  so when one bar's range reaches both the stop is taken to have come first (the conservative
  reading); a bar that opens beyond the take-profit fills it at the open.
* ``entry`` is the position's average fill price: exits are armed by the entry's fill, not before.
  On the entry bar they work from the fill on, so they can fill at their level if the rest of the
  bar reaches it, never at the open that filled the entry.
* An order that reduces a position shrinks the exits, when it is accepted, to the position it
  leaves; one that closes or flips it cancels them (the exits of a new side are armed by its
  fill), so an exit and a market order never both close the same quantity. An order that adds to
  a position leaves the exits covering what is held until its fill re-prices them.
* A position the venue would take no exit for gets none, and one ``exit_skipped`` event rather
  than a rejected exit every bar: at level info when it rounds down to no lot (on spot, the dust
  a sell leaves of a balance net of the buy's fee), a warning when it is below the venue's minimum
  order. Live trading gives the risk manager the exchange's instrument rules
  (:meth:`RiskManager.use_rules`).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from pydantic import BaseModel, ConfigDict, ValidationError

from engine.config import RiskConfig
from engine.events import (
    BarSet,
    Fill,
    Order,
    OrderStatus,
    OrderType,
    OrderUpdate,
    RiskEvent,
    Side,
    TradingState,
)
from engine.instruments import InstrumentRules
from engine.orders import OrderManager, client_order_id
from engine.state import capture, restore_into

__all__ = [
    "STATE_CODES",
    "RiskManager",
    "RiskStateError",
    "clear_halt",
    "read_state",
    "rules_from_config",
    "write_state",
]

log = structlog.get_logger("engine.risk")

STATE_CODES: dict[TradingState, int] = {
    TradingState.ACTIVE: 0,
    TradingState.REDUCING: 1,
    TradingState.HALTED: 2,
}
"""Numeric trading state for metrics: 0 active, 1 reducing, 2 halted."""

_DAY_NS = 86_400 * 1_000_000_000
_HOUR_NS = 3_600 * 1_000_000_000
_DONE = (OrderStatus.CANCELLED, OrderStatus.REJECTED, OrderStatus.FILLED)
_REL = 1e-12


# persisted state ------------------------------------------------------------------------------


class RiskStateError(ValueError):
    """The persisted risk state cannot be trusted; the message names the file and the problem."""


class _Halt(BaseModel):
    """The schema of ``state_file``: what :meth:`RiskManager._halt` and :func:`clear_halt` write.

    Strict, so that ``"halted": "false"`` is refused instead of read as a halt (or, worse, a
    ``"halted": 0`` as none); the limit's figures at the breach (equity, peak) ride along as extras.
    """

    model_config = ConfigDict(strict=True, extra="allow")

    halted: bool
    rule: str = ""
    reason: str = ""
    ts_event: int | None = None
    time: str = ""
    reset_by: str = ""
    reset_at: str = ""
    last_halt: dict[str, Any] | None = None


def read_state(path: str | Path) -> dict[str, Any]:
    """The persisted risk state; ``{}`` when there is no file.

    Anything else that is not a valid state (unreadable, empty, not JSON, wrong types) raises
    RiskStateError instead of reading as "not halted": resuming trading on a guess is the one thing
    a halt must never do.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except IsADirectoryError:
        raise RiskStateError(f"{p}: risk state file is a directory; point state_file at a file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RiskStateError(f"{p}: cannot read the risk state: {exc}") from None
    if not text.strip():
        raise RiskStateError(f"{p}: risk state file is empty; check the account, then fix or remove it")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RiskStateError(
            f"{p}: risk state is not valid JSON ({exc.msg}); check the account, then fix it"
        ) from None
    if not isinstance(data, dict):
        raise RiskStateError(f"{p}: risk state must be a JSON object")
    try:
        _Halt.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"'{'.'.join(str(x) for x in e['loc'])}': {e['msg']} (got {e.get('input')!r})"
            if e["loc"]
            else e["msg"]
            for e in exc.errors()
        )
        raise RiskStateError(f"{p}: invalid risk state: {problems}") from None
    return data


def write_state(path: str | Path, data: Mapping[str, Any]) -> None:
    """Write atomically (temporary file, then rename): a crash leaves the old state, never half."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(dict(data), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, p)


def clear_halt(path: str | Path, *, by: str) -> dict[str, Any] | None:
    """Clear a persisted halt; return the halt record that was cleared, or None if not halted.

    The cleared halt is kept under ``last_halt`` with who reset it and when, for the audit trail.
    """
    state = read_state(path)
    if not state.get("halted"):
        return None
    write_state(
        path,
        {
            "halted": False,
            "reset_by": by,
            "reset_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "last_halt": state,
        },
    )
    return state


def rules_from_config(config: RiskConfig, symbols: Sequence[str]) -> dict[str, InstrumentRules]:
    """Instrument rules per symbol from ``[risk.instruments]``; ``"*"`` covers the unnamed ones."""
    default = config.instruments.get("*")
    out: dict[str, InstrumentRules] = {}
    for symbol in symbols:
        entry = config.instruments.get(symbol, default)
        if entry is not None:
            out[symbol] = InstrumentRules(symbol, **entry.model_dump())
    return out


# sizing ---------------------------------------------------------------------------------------


def _headroom(start: float, step: float, cap: float) -> float:
    """Largest ``t`` in [0, 1] with ``|start + step·t| <= cap``.

    When even the best point of the segment is beyond the cap, that point: a limit never blocks the
    part of an order that moves back towards it.
    """
    if step == 0.0:
        return 1.0
    best = min(max(-start / step, 0.0), 1.0)
    if abs(start + step * best) > cap:
        return best
    return min(1.0, (math.copysign(cap, step) - start) / step)


@dataclass(slots=True)
class _Exit:
    """A protective order working at the venue on behalf of risk."""

    order: Order
    index: int
    rule: str
    remaining: float


class RiskManager:
    """Pre-trade gate and position guard for every strategy on one order manager.

    Constructing it installs it as the last gate of ``orders`` and subscribes it to the bus, so it
    must be built after the portfolio and before the strategy hosts (its bar handler then runs
    between the portfolio's mark and the strategies' decisions). ``rules`` are the venue's
    instrument rules; by default they come from ``config.instruments``. ``persist`` reads and
    writes ``config.state_file`` (paper and live); without it the trading state lives in memory.

    Pre-trade review of each order (reductions of a position always pass; only the part of an
    order that adds risk is checked):

    * trading state REDUCING or HALTED: the order is cut to its reducing part, or rejected;
    * ``max_order_notional``: an order adding more exposure than this fraction of equity is
      *rejected* (a fat-finger guard: shrinking a wrong order would still send it);
    * ``max_position``, ``max_gross_exposure``, ``max_net_exposure``: the order is *cut down* to the
      largest size within the limit, counting orders still in flight, or rejected if nothing fits
      (the strategy gets as much of its target as the limits allow);
    * instrument rules: quantity rounded down to the lot, capped at ``max_qty``, limit and stop
      prices rounded to the tick (never a worse limit, never an earlier trigger); an order below
      ``min_qty`` or ``min_notional`` is *rejected*. An order that closes a position is not rounded
      or refused for being small: dust would otherwise stay forever.

    Every rejection and cut publishes a :class:`~engine.events.RiskEvent` naming the rule, as do
    exit fills, limit breaches and state changes. A blocked or cut order is not retried: the order
    manager trades again when the strategy's target changes or drifts beyond its rebalance band.
    """

    def __init__(
        self,
        orders: OrderManager,
        config: RiskConfig,
        *,
        rules: Mapping[str, InstrumentRules] | None = None,
        persist: bool = True,
    ) -> None:
        self.config = config
        self.orders = orders
        self.portfolio = pf = orders.portfolio
        self.bus = bus = orders.bus
        self.clock = orders.clock
        self.venue = orders.venue
        self.symbols = pf.symbols
        self._index = pf.index
        n = len(pf.symbols)
        by_symbol = rules_from_config(config, pf.symbols) if rules is None else rules
        self._rules: list[InstrumentRules | None] = [by_symbol.get(s) for s in pf.symbols]

        self.state = TradingState.ACTIVE
        self.halted = False
        self.counts: Counter[str] = Counter()
        self.rejected = 0
        self.resized = 0
        self.bars_in_state: Counter[TradingState] = Counter()

        self.peak_equity = pf.equity
        self.day_start_equity = pf.equity
        self._last_equity = pf.equity
        self._day: int | None = None
        self._day_offset = config.day_start_hour * _HOUR_NS
        self._reducing = False

        self._stops = config.stop_loss is not None or config.trailing_stop is not None
        self._exits_on = self._stops or config.take_profit is not None
        self._exits: dict[str, _Exit] = {}
        self._stop_id: list[str | None] = [None] * n
        self._tp_id: list[str | None] = [None] * n
        self._synced = np.zeros(n)  # position the working exits were placed for (NaN: re-place)
        self._dirty = np.zeros(n, dtype=bool)  # filled since the exits were placed
        self._side = np.zeros(n)  # sign of each position, kept by on_fill
        self._best = np.full(n, np.nan)  # best price since the position opened (trailing stop)
        self._unprotected = np.full(n, np.nan)  # position left without exits, warned about once
        self._seq = 0
        self._flattening: dict[str, tuple[int, float]] = {}  # flatten orders working: (index, signed left)

        self.halt_record: dict[str, Any] | None = None
        """The halt in force (rule, reason, time, figures), None when not halted."""
        self._state_path = Path(config.state_file) if config.state_file and persist else None
        self._startup: list[tuple[str, str]] = []
        self._started = False
        if self._state_path is not None:
            self._restore(self._state_path)
        self._refresh_state()

        orders.gates = (*orders.gates, self)
        per_bar = config.max_daily_loss is not None or config.max_drawdown is not None
        if per_bar or self._exits_on or self._state_path is not None:
            bus.subscribe(BarSet, self.on_bars)
        if self._exits_on:
            bus.subscribe(Fill, self.on_fill)
            bus.subscribe(OrderUpdate, self.on_order_update)
        if config.max_drawdown is not None or self._state_path is not None:
            bus.subscribe(Fill, self.on_flatten_fill)
            bus.subscribe(OrderUpdate, self.on_flatten_update)

    @property
    def only_bar_checks(self) -> bool:
        """Whether :meth:`review` passes every order unchanged while trading is active and the
        only bus work is the per-bar limits: no exits, no pre-trade limits, no instrument rules, no
        state file. A replay may then size and fill a bar's orders without the manager seeing each."""
        cfg = self.config
        limits = (cfg.max_order_notional, cfg.max_position, cfg.max_gross_exposure, cfg.max_net_exposure)
        return (
            not self._exits_on
            and all(limit is None for limit in limits)
            and all(rule is None for rule in self._rules)
            and self._state_path is None
        )

    def use_rules(self, rules: Mapping[str, InstrumentRules]) -> None:
        """Take the venue's instrument rules (live trading reads them from the exchange once
        connected) in place of ``[risk.instruments]`` for the symbols they cover."""
        self._rules = [rules.get(s, mine) for s, mine in zip(self.symbols, self._rules, strict=True)]

    # pre-trade --------------------------------------------------------------------------------

    def review(self, order: Order) -> Order | None:
        """The order to send (possibly cut, rounded) or None when it is rejected; see the class."""
        i = self._index.get(order.symbol)
        if i is None:
            return order
        pf = self.portfolio
        priced = order.type is not OrderType.MARKET
        price = order.price if priced else float(pf.last_price[i])
        if not (math.isfinite(price) and price > 0):
            return self._reject(order, "no_price", "no price to value the order against the limits")
        if order.client_id in self._flattening:
            # sized from the position: orders still being cancelled must not shrink it
            held = float(pf.qty[i]) + self._flatten_pending(i, but=order.client_id)
        else:
            held = float(pf.qty[i] + self.orders.pending[i])
        delta = order.quantity * order.side
        reducing = min(1.0, abs(held) / order.quantity) if held * delta < 0 else 0.0
        t, rule, why = 1.0, "", ""
        if reducing < 1.0:
            t, rule, why = self._new_risk(i, held, delta, price, reducing)
        # cut to exactly the close when that is all that passes: no float residue as a new position
        qty = abs(held) if 0.0 < reducing < 1.0 and t == reducing else order.quantity * t
        closes = reducing > 0 and abs(held + math.copysign(qty, delta)) <= _REL * max(1.0, abs(held))
        rules = self._rules[i]
        if rules is not None and not closes:
            if rules.max_qty and qty > rules.max_qty:
                qty, rule, why = rules.max_qty, "max_qty", f"venue maximum quantity {rules.max_qty:g}"
            qty = rules.round_qty(qty)
        if qty <= 0.0 or (not closes and qty * price <= 1e-9 * abs(pf.equity)):
            return self._reject(order, rule or "lot_size", why or "quantity rounds to zero lots")
        if rules is not None and not closes:
            problem = rules.rejection(qty, price)
            if problem is not None:
                return self._reject(order, "instrument", problem.removeprefix(f"{order.symbol}: "))
        new_price = order.price
        if priced and rules is not None and rules.tick_size > 0:
            # one policy with the venues: a sell rounds up, a buy down (a limit never trades at a
            # worse price, a stop triggers no later than asked)
            new_price = rules.round_price(order.price, up=order.side is Side.SELL)
        if rule and qty < order.quantity * (1 - 1e-9):
            self.resized += 1
            self._emit(
                order.ts_event,
                rule,
                f"{order.side.name.lower()} {order.quantity:.8g} cut to {qty:.8g}: {why}",
                order.symbol,
                {"requested": order.quantity, "quantity": qty, "client_id": order.client_id},
            )
        if qty == order.quantity and (new_price == order.price or not priced):
            return order
        return replace(order, quantity=qty, price=new_price)

    def _new_risk(
        self, i: int, held: float, delta: float, price: float, reducing: float
    ) -> tuple[float, str, str]:
        """Largest fraction of the order within every limit (never below its reducing part), with the
        binding rule and why."""
        if self.state is not TradingState.ACTIVE:
            return reducing, "trading_state", f"trading state {self.state.value}: orders may only reduce"
        pf = self.portfolio
        equity = pf.equity
        if not equity > 0:
            return reducing, "equity", "no equity left"
        cfg = self.config
        added = abs(delta) * (1.0 - reducing) * price
        if cfg.max_order_notional is not None and added > cfg.max_order_notional * equity * (1 + 1e-9):
            cap = cfg.max_order_notional * equity
            return (
                reducing,
                "max_order_notional",
                f"adds {added:,.2f} of exposure, above {cfg.max_order_notional:.2%} of equity ({cap:,.2f})",
            )
        start, step = held * price, delta * price
        t, rule, why = 1.0, "", ""
        if cfg.max_position is not None:
            h = _headroom(start, step, cfg.max_position * equity)
            if h < t:
                t, rule, why = h, "max_position", f"position limit {cfg.max_position:.2%} of equity"
        if cfg.max_gross_exposure is not None or cfg.max_net_exposure is not None:
            values = (pf.qty + self.orders.pending) * pf.last_price
            values[i] = start
            if cfg.max_gross_exposure is not None:
                others = float(np.abs(values).sum()) - abs(start)
                h = _headroom(start, step, cfg.max_gross_exposure * equity - others)
                if h < t:
                    t, rule, why = (
                        h,
                        "max_gross_exposure",
                        (f"gross exposure limit {cfg.max_gross_exposure:.2%} of equity"),
                    )
            if cfg.max_net_exposure is not None:
                h = _headroom(float(values.sum()), step, cfg.max_net_exposure * equity)
                if h < t:
                    t, rule, why = (
                        h,
                        "max_net_exposure",
                        f"net exposure limit {cfg.max_net_exposure:.2%} of equity",
                    )
        return max(t, reducing), rule, why

    def _reject(self, order: Order, rule: str, why: str) -> None:
        self.rejected += 1
        self._emit(
            order.ts_event,
            rule,
            f"{order.side.name.lower()} {order.quantity:.8g} rejected: {why}",
            order.symbol,
            {"requested": order.quantity, "client_id": order.client_id},
        )
        return None

    # per bar ----------------------------------------------------------------------------------

    def on_bars(self, bars: BarSet) -> None:
        ts = bars.ts_event
        if not self._started:
            self._start(ts)
        equity = self.portfolio.equity
        cfg = self.config
        if cfg.max_daily_loss is not None and not self.halted:
            day = (ts - 1 - self._day_offset) // _DAY_NS  # a bar stamped at midnight closes the day before
            if day != self._day:
                self._day = day
                self.day_start_equity = self._last_equity
                if self._reducing:
                    self._reducing = False
                    self._refresh_state()
                    self._emit(ts, "daily_loss_reset", "new trading day: the daily loss limit is lifted")
            start = self.day_start_equity
            if not self._reducing and _daily_loss_breached(start, equity, cfg.max_daily_loss):
                self._reducing = True
                self._refresh_state()
                lost = f"{1.0 - equity / start:.2%}" if start > 0 else "a loss from non-positive equity"
                self._emit(
                    ts,
                    "daily_loss",
                    f"day's loss {lost} (from {start:,.2f} to {equity:,.2f}) exceeds "
                    f"{cfg.max_daily_loss:.2%}: only reducing orders until the next trading day",
                    details={"equity": equity, "day_start_equity": start},
                )
        if cfg.max_drawdown is not None and not self.halted:
            if equity > self.peak_equity:
                self.peak_equity = equity
            peak = self.peak_equity
            if equity < peak * (1.0 - cfg.max_drawdown):
                self._halt(
                    ts,
                    "max_drawdown",
                    f"drawdown {1.0 - equity / peak:.2%} from the peak {peak:,.2f} exceeds "
                    f"{cfg.max_drawdown:.2%}: flattening and halting until an operator resets",
                    {"equity": equity, "peak_equity": peak},
                )
        self._last_equity = equity
        if self._exits_on and not self.halted:
            self._refresh_exits(bars)
        self.bars_in_state[self.state] += 1

    def _start(self, ts: int) -> None:
        self._started = True
        for rule, message in self._startup:
            self._emit(ts, rule, message, level="error" if self.halted else "warning")
        if self.halted:
            self._flatten(ts)

    def _refresh_exits(self, bars: BarSet) -> None:
        """Move trailing extremes with the closed bar and re-place the exits of positions that were
        filled or reached a new extreme. Positions with orders in flight keep the exits placed when
        those were accepted until they settle."""
        side = self._side
        if self.config.trailing_stop is not None:
            best = self._best
            higher = (side > 0) & (bars.high > best)
            lower = (side < 0) & (bars.low < best)
            np.copyto(best, bars.high, where=higher)
            np.copyto(best, bars.low, where=lower)
            need = higher | lower | self._dirty
        else:
            need = self._dirty.copy()
        need |= self.portfolio.qty != self._synced
        need &= self.orders.pending == 0
        if need.any():
            ts = bars.ts_event
            for i in np.flatnonzero(need):
                self._sync(int(i), ts)

    # exits ------------------------------------------------------------------------------------

    def _levels(self, side: float, entry: float, best: float) -> tuple[float, str, float]:
        """Stop level, the rule that set it, and take-profit level for a position (NaN: none)."""
        cfg = self.config
        stop, rule = math.nan, ""
        if cfg.stop_loss is not None:
            stop, rule = entry * (1.0 - side * cfg.stop_loss), "stop_loss"
        if cfg.trailing_stop is not None and math.isfinite(best):
            trail = best * (1.0 - side * cfg.trailing_stop)
            if not math.isfinite(stop) or (trail - stop) * side > 0:
                stop, rule = trail, "trailing_stop"
        tp = entry * (1.0 + side * cfg.take_profit) if cfg.take_profit is not None else math.nan
        return stop, rule, tp

    def _sync(self, i: int, ts: int) -> None:
        """Place the exits for the part of symbol ``i``'s position that its orders in flight leave
        open, at levels from the average fill price (none while nothing is filled)."""
        pf = self.portfolio
        self._dirty[i] = False
        held = float(pf.qty[i])
        target = held + float(self.orders.pending[i])
        if held * target <= 0.0 or abs(target) <= _REL * max(1.0, abs(held)):
            self._cancel_exits(i)
            self._synced[i] = 0.0 if target == 0.0 or held == 0.0 else math.nan
            return
        covered = held if abs(held) <= abs(target) else target
        side = 1.0 if held > 0 else -1.0
        stop, rule, tp = self._levels(side, float(pf.avg_price[i]), float(self._best[i]))
        self._place(i, covered, stop, rule, tp, ts)

    def _place(self, i: int, target: float, stop: float, rule: str, tp: float, ts: int) -> None:
        rules = self._rules[i]
        qty = abs(target) if rules is None else rules.round_qty(abs(target))
        refused = self._refused(i, target, qty, stop, tp)
        if refused:
            # the venue would refuse every exit for it (and selling it at all): one event per
            # position, not an exit rejected every bar
            self._cancel_exits(i)
            self._synced[i] = target
            if self._unprotected[i] != target:
                self._unprotected[i] = target
                self._emit(
                    ts,
                    "exit_skipped",
                    f"no exit orders for the position {target:.8g}: {refused}",
                    self.symbols[i],
                    {"position": target},
                    level="info" if qty <= 0.0 else "warning",  # nothing to protect, or unprotectable
                )
            return
        self._unprotected[i] = math.nan
        long = target > 0
        side = Side.SELL if long else Side.BUY
        placed = True
        replaced = False
        if self._stops and stop > 0:  # NaN: no level to place
            price = stop if rules is None else rules.round_price(stop, up=long)
            current = self._exits.get(self._stop_id[i] or "")
            if current is not None and _same(current.order, side, qty, current.order.price):
                if current.order.price != price:  # a trailing stop moves: amend in place
                    current.order = replace(current.order, price=price)
                    self.venue.amend(current.order.client_id, price=price)
                current.rule = rule
            else:
                if current is not None:
                    self._cancel(current)
                self._stop_id[i] = self._submit(i, side, qty, OrderType.STOP, price, rule, ts)
                placed = placed and self._stop_id[i] is not None
                replaced = True
        if self.config.take_profit is not None and tp > 0:
            price = tp if rules is None else rules.round_price(tp, up=long)
            current = self._exits.get(self._tp_id[i] or "")
            # a new stop goes behind a resting take-profit in the queue: re-queue the take-profit
            if current is None or replaced or not _same(current.order, side, qty, price):
                if current is not None:
                    self._cancel(current)
                self._tp_id[i] = self._submit(i, side, qty, OrderType.LIMIT, price, "take_profit", ts)
                placed = placed and self._tp_id[i] is not None
        self._synced[i] = target if placed else math.nan

    def _refused(self, i: int, target: float, qty: float, stop: float, tp: float) -> str:
        """Why the venue would refuse exits of ``qty`` for the position ``target`` (empty: it
        would not, or the rules are not known)."""
        rules = self._rules[i]
        if qty <= 0.0:
            step = f" at the lot {rules.qty_step:g}" if rules is not None else ""
            return f"it rounds down to 0{step}"
        if rules is None:
            return ""
        least = replace(rules, max_qty=0.0)  # a position above one order's maximum is still protected
        levels = [stop if self._stops else math.nan, tp if self.config.take_profit is not None else math.nan]
        for level in levels:
            if level > 0:
                problem = least.rejection(qty, rules.round_price(level, up=target > 0))
                if problem is not None:
                    return f"below the venue's minimum order ({problem.removeprefix(f'{self.symbols[i]}: ')})"
        return ""

    def _submit(
        self, i: int, side: Side, qty: float, kind: OrderType, price: float, rule: str, ts: int
    ) -> str | None:
        self._seq += 1
        symbol = self.symbols[i]
        tag = f"{'sl' if kind is OrderType.STOP else 'tp'}{self._seq}"
        order = Order(
            client_order_id("risk", symbol, ts, tag),
            ts,
            self.clock.now_ns(),
            symbol,
            side,
            qty,
            kind,
            price,
            reduce_only=True,
            strategy="risk",
            tag=rule,
        )
        self._exits[order.client_id] = _Exit(order, i, rule, qty)
        self.bus.publish(order)
        self.venue.submit(order)
        return order.client_id if order.client_id in self._exits else None

    def working_exits(self) -> list[Order]:
        """The protective orders (stops, take-profits) working at the venue, as last placed or
        amended: a live restart settles them against the venue like the order manager's orders
        on their way, so a resting stop is neither sent twice nor left untracked."""
        return [e.order for e in self._exits.values()]

    def _cancel(self, exit_: _Exit) -> None:
        self.venue.cancel(exit_.order.client_id)

    def _cancel_exits(self, i: int) -> None:
        for exit_ in [e for e in self._exits.values() if e.index == i]:
            self._cancel(exit_)
        self._stop_id[i] = self._tp_id[i] = None

    def _forget(self, exit_: _Exit) -> None:
        cid = exit_.order.client_id
        self._exits.pop(cid, None)
        i = exit_.index
        if self._stop_id[i] == cid:
            self._stop_id[i] = None
            self._synced[i] = math.nan
        if self._tp_id[i] == cid:
            self._tp_id[i] = None
            self._synced[i] = math.nan

    def on_fill(self, fill: Fill) -> None:
        """Track each position's side and best price; arm the exits from an entry's fill; report
        exit fills and cancel the sibling.

        Runs while the venue is still filling the bar: exits armed here work for the rest of it."""
        i = self._index.get(fill.symbol)
        if i is None:
            return
        pf = self.portfolio
        q = pf.qty[i]
        side = 1.0 if q > 0 else -1.0 if q < 0 else 0.0
        self._dirty[i] = True
        if side != self._side[i]:
            self._side[i] = side
            self._best[i] = pf.avg_price[i] if side else math.nan
        exit_ = self._exits.get(fill.client_id)
        if exit_ is None:
            if not self.halted:
                self._sync(i, fill.ts_event)  # arm (or re-price) the exits from the fill
            return
        exit_.remaining -= fill.quantity
        level = exit_.order.price
        self._emit(
            fill.ts_event,
            exit_.rule,
            f"{exit_.rule.replace('_', '-')} {fill.side.name.lower()} {fill.quantity:.8g} "
            f"at {fill.price:.8g} (level {level:.8g})",
            fill.symbol,
            {"price": fill.price, "level": level, "quantity": fill.quantity},
            level="info",
        )
        if exit_.remaining <= _REL * max(1.0, fill.quantity):
            self._forget(exit_)
            for other in [e for e in self._exits.values() if e.index == i]:
                self._cancel(other)

    def on_order_update(self, update: OrderUpdate) -> None:
        exit_ = self._exits.get(update.client_id)
        if exit_ is not None:
            if update.status in _DONE:
                self._forget(exit_)
                if update.status is OrderStatus.REJECTED:
                    self._emit(
                        update.ts_event,
                        "exit_rejected",
                        f"venue rejected the {exit_.rule.replace('_', '-')} order: {update.reason}",
                        update.symbol,
                        level="error",
                    )
            return
        if self.halted or update.status not in (
            OrderStatus.ACCEPTED,
            OrderStatus.CANCELLED,
            OrderStatus.REJECTED,
        ):
            return
        i = self._index.get(update.symbol)
        if i is not None:
            self._sync(i, update.ts_event)

    # halt -------------------------------------------------------------------------------------

    def _halt(self, ts: int, rule: str, message: str, details: dict[str, float | str]) -> None:
        self.halted = True
        self._refresh_state()
        self.halt_record = {
            "halted": True,
            "rule": rule,
            "reason": message,
            "ts_event": ts,
            "time": datetime.fromtimestamp(ts / 1e9, UTC).isoformat(),
            **details,
        }
        if self._state_path is not None:
            write_state(self._state_path, self.halt_record)
        self._emit(ts, rule, message, details=details, level="error")
        self._flatten(ts)

    def _flatten(self, ts: int) -> None:
        """Cancel every working order, then close every position at market.

        A venue that answers later (live) still counts the orders being cancelled as pending, so
        the flatten is sized from the position itself, and what fills before a cancel resolves is
        closed by a further flatten once nothing but flattens is pending (:meth:`_top_up`). The
        orders are reduce-only: one that turns out larger than the position cannot flip it."""
        for order in list(self.venue.open_orders()):
            self.venue.cancel(order.client_id)
        self._exits.clear()
        self._stop_id = [None] * len(self.symbols)
        self._tp_id = [None] * len(self.symbols)
        self._synced.fill(math.nan)
        qty = self.portfolio.qty
        for i in np.flatnonzero(qty):
            self._submit_flatten(int(i), float(qty[i]), ts)

    def _submit_flatten(self, i: int, q: float, ts: int) -> None:
        """A reduce-only market order closing ``q`` of symbol ``i``."""
        self._seq += 1
        symbol = self.symbols[i]
        order = Order(
            client_order_id("risk", symbol, ts, f"flatten{self._seq}"),
            ts,
            self.clock.now_ns(),
            symbol,
            Side.SELL if q > 0 else Side.BUY,
            abs(q),
            OrderType.MARKET,
            reduce_only=True,
            strategy="risk",
            tag="flatten",
        )
        self._flattening[order.client_id] = (i, -q)
        if not self.orders.submit(order):
            self._flattening.pop(order.client_id, None)

    def _flatten_pending(self, i: int, *, but: str = "") -> float:
        return sum(left for cid, (j, left) in self._flattening.items() if j == i and cid != but)

    def on_flatten_fill(self, fill: Fill) -> None:
        """Follow a halt's flatten orders as they fill; once halted, top up what they miss."""
        entry = self._flattening.get(fill.client_id)
        if entry is not None:
            i, left = entry
            self._flattening[fill.client_id] = (i, left - fill.quantity * fill.side)
        i = self._index.get(fill.symbol)
        if self.halted and i is not None:
            self._top_up(i, fill.ts_event)

    def on_flatten_update(self, update: OrderUpdate) -> None:
        """Settle a flatten order that ended (a rejection is a risk event, retried only when it
        asked for more than the position)."""
        if update.status not in _DONE:
            return
        entry = self._flattening.pop(update.client_id, None)
        if entry is not None and update.status is OrderStatus.REJECTED:
            self._emit(
                update.ts_event,
                "flatten_rejected",
                f"venue rejected the flatten order: {update.reason}",
                update.symbol,
                level="error",
            )
            q = float(self.portfolio.qty[entry[0]])
            if abs(entry[1]) <= abs(q) * (1.0 + 1e-9):
                return  # not retried: a venue that refuses it would refuse the same order again
            # larger than the position (a spot sell beyond the balance): retried at its size
        i = self._index.get(update.symbol)
        if self.halted and i is not None:
            self._top_up(i, update.ts_event)

    def _top_up(self, i: int, ts: int) -> None:
        """Once every order but the flattens has resolved, close what the flattens on their way
        leave open (fills that came before their cancels)."""
        flattening = self._flatten_pending(i)
        others = float(self.orders.pending[i]) - flattening
        q = float(self.portfolio.qty[i])
        tol = 1e-9 * max(1.0, abs(q))
        if abs(others) > tol:
            return  # cancels still in flight: their outcome decides the rest
        left = q + flattening
        if abs(left) > tol and left * q > 0:
            self._submit_flatten(i, left, ts)

    def reset_halt(self, *, by: str = "operator") -> None:
        """Leave HALTED in a running engine: the drawdown is measured afresh from current equity."""
        if not self.halted:
            return
        self.halted = False
        self.halt_record = None
        self.peak_equity = self.portfolio.equity
        if self._state_path is not None:
            clear_halt(self._state_path, by=by)
        self._refresh_state()
        self._emit(self.clock.now_ns(), "halt_reset", f"halt reset by {by}")

    def _restore(self, path: Path) -> None:
        saved = read_state(path)
        if not saved.get("halted"):
            return
        when = saved.get("time", "?")
        if self.config.clear_halt:
            clear_halt(path, by="config clear_halt")
            self._startup.append(("halt_reset", f"halt of {when} cleared by the config (clear_halt)"))
            return
        self.halted = True
        self.halt_record = saved
        self._startup.append(
            (
                "halted",
                f"halted since {when} ({saved.get('reason', 'no reason recorded')}); "
                f"reset with: quantnet risk reset --state {path}",
            )
        )
        log.error("trading halted by persisted risk state", path=str(path), since=when)

    # state and reporting ----------------------------------------------------------------------

    _STATE = (
        "state",
        "halted",
        "counts",
        "rejected",
        "resized",
        "bars_in_state",
        "peak_equity",
        "day_start_equity",
        "_last_equity",
        "_day",
        "_reducing",
        "_exits",
        "_stop_id",
        "_tp_id",
        "_synced",
        "_dirty",
        "_side",
        "_best",
        "_unprotected",
        "_seq",
        "_flattening",
        "_started",
    )

    def snapshot(self) -> dict[str, object]:
        """Limits' reference points, working exits and the halt: a restart carries on from them."""
        return capture(self, self._STATE)

    def restore(self, saved: dict[str, object]) -> None:
        restore_into(self, saved)
        self._startup = []

    def _refresh_state(self) -> None:
        new = (
            TradingState.HALTED
            if self.halted
            else TradingState.REDUCING
            if self._reducing
            else TradingState.ACTIVE
        )
        if new is not self.state:
            log.warning("trading state", previous=self.state.value, state=new.value)
            self.state = new

    def _emit(
        self,
        ts: int,
        rule: str,
        message: str,
        symbol: str = "",
        details: dict[str, float | str] | None = None,
        *,
        level: str = "warning",
    ) -> None:
        self.counts[rule] += 1
        getattr(log, level)(
            "risk event", rule=rule, state=self.state.value, symbol=symbol or None, message=message
        )
        self.bus.publish(RiskEvent(ts, self.clock.now_ns(), rule, message, symbol, self.state, details or {}))

    def metrics(self) -> dict[str, float]:
        """Counts for the backtest metrics; ``trading_state`` is the final state's STATE_CODES value."""
        c = self.counts
        return {
            "trading_state": float(STATE_CODES[self.state]),
            "risk_events": float(sum(c.values())),
            "risk_orders_rejected": float(self.rejected),
            "risk_orders_resized": float(self.resized),
            "risk_stop_exits": float(c["stop_loss"] + c["trailing_stop"]),
            "risk_take_profits": float(c["take_profit"]),
            "risk_daily_loss_breaches": float(c["daily_loss"]),
            "risk_halts": float(c["max_drawdown"]),
            "bars_reducing": float(self.bars_in_state[TradingState.REDUCING]),
            "bars_halted": float(self.bars_in_state[TradingState.HALTED]),
        }


def _same(order: Order, side: Side, qty: float, price: float) -> bool:
    return order.side is side and order.quantity == qty and order.price == price


def _daily_loss_breached(start: float, equity: float, limit: float) -> bool:
    """A fraction of a non-positive day-start equity means nothing (a loss from -2,000 to -1,000
    would read as 50%): from there any further fall counts as over the limit."""
    if start > 0:
        return 1.0 - equity / start > limit
    return equity < start
