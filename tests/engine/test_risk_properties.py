"""Random signals and prices through the risk manager: no limit is breached beyond one bar's move,
and cash and positions always reconcile with the fills.

Every check recomputes its quantity from the recorded path (equity, prices, fills) instead of asking
the risk manager, so a wrong rule cannot confirm itself:

* an order that adds risk leaves only in the ACTIVE state and within every exposure limit at the
  prices and equity it was decided on; after it fills on the next bar, the position measured at
  those prices still is;
* the day's loss and the drawdown are detected at the close of the bar that crosses them; a
  drawdown halt leaves the book flat from the next bar on, for good;
* a position held into a bar whose range reaches its stop (or take-profit) distance is closed in
  that bar, never flipped;
* cash, positions and equity equal what the fills and closes imply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from connectors.paper import PaperBroker
from engine.bus import EventBus
from engine.clock import ReplayClock
from engine.events import BarSet, Fill, Order, TradingState
from engine.strategy import Strategy, StrategyContext
from quantnet.backtest import assemble
from quantnet.config import load_config

CASH = 10_000.0
HOUR = 3_600 * 10**9
DAY = 24 * HOUR
REL = 1e-9


class Targets(Strategy):
    name = "random_targets"

    def __init__(self, targets: np.ndarray) -> None:
        super().__init__()
        self.targets = targets

    def on_bars(self, bars: BarSet, ctx: StrategyContext) -> np.ndarray | None:
        row = self.targets[bars.index]
        return None if np.isnan(row).all() else row


def optional(lo: float, hi: float) -> st.SearchStrategy[float | None]:
    return st.none() | st.floats(lo, hi)


risk_configs = st.fixed_dictionaries(
    {
        "max_order_notional": optional(0.05, 1.5),
        "max_position": optional(0.05, 1.0),
        "max_gross_exposure": optional(0.1, 2.0),
        "max_net_exposure": optional(0.05, 1.5),
        "stop_loss": optional(0.005, 0.2),
        "trailing_stop": optional(0.005, 0.2),
        "take_profit": optional(0.005, 0.3),
        "max_daily_loss": optional(0.005, 0.1),
        "max_drawdown": optional(0.02, 0.25),
        "day_start_hour": st.integers(0, 23),
    }
)


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    """Paths and signals come from a seeded generator (every example is a lively market: gaps,
    jumps, reversals); hypothesis draws and shrinks the seed, the sizes, rates and the config."""
    n_assets = draw(st.integers(1, 3))
    n_bars = draw(st.integers(3, 60))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    vol = draw(st.floats(0.002, 0.06))
    shocks = rng.standard_normal((n_bars, n_assets, 4))
    jumps = rng.random((n_bars, n_assets)) < draw(st.floats(0.0, 0.2))
    shocks[..., 0] += jumps * rng.choice([-1.0, 1.0], jumps.shape) * rng.uniform(2, 6, jumps.shape)
    signals = np.where(
        rng.random((n_bars, n_assets)) < draw(st.floats(0.05, 1.0)),
        rng.uniform(-1, 1, (n_bars, n_assets)).round(draw(st.integers(1, 3))),
        math.nan,
    )
    risk = {k: v for k, v in draw(risk_configs).items() if v is not None}
    lot = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    tick = draw(st.sampled_from([0.0, 0.01, 0.25]))
    if lot or tick:
        risk["instruments"] = {"*": {"qty_step": lot, "tick_size": tick}}
    return {
        "shocks": shocks,
        "vol": vol,
        "signals": signals,
        "risk": risk,
        "slippage_bps": draw(st.sampled_from([0.0, 2.0, 10.0])),
        "fee_bps": draw(st.sampled_from([0.0, 5.5])),
        "bar_hours": draw(st.sampled_from([6, 24])),
    }


def prices(shocks: np.ndarray, vol: float) -> tuple[np.ndarray, ...]:
    """OHLC paths with gaps: open = previous close · e^(gap), then a body and wicks."""
    gap, body, up, down = (shocks[..., j] for j in range(4))
    n_bars, n_assets = gap.shape
    close = np.empty((n_bars, n_assets))
    opn = np.empty_like(close)
    prev = np.full(n_assets, 100.0)
    for k in range(n_bars):
        opn[k] = prev * np.exp(vol * gap[k])
        close[k] = opn[k] * np.exp(vol * body[k])
        prev = close[k]
    high = np.maximum(opn, close) * np.exp(vol * np.abs(up))
    low = np.minimum(opn, close) * np.exp(-vol * np.abs(down))
    return opn, high, low, close


@dataclass
class Tape:
    """What the run left behind, bar by bar, for the checks to recompute from."""

    qty: list[np.ndarray] = field(default_factory=list)
    avg: list[np.ndarray] = field(default_factory=list)
    pending: list[np.ndarray] = field(default_factory=list)
    cash: list[float] = field(default_factory=list)
    equity: list[float] = field(default_factory=list)
    state: list[TradingState] = field(default_factory=list)
    n_fills: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def simulate(sc: dict[str, Any]) -> tuple[Tape, list[Fill], tuple[np.ndarray, ...], np.ndarray, Any]:
    cfg = load_config(
        None,
        {
            "portfolio": {"cash": CASH},
            "costs": {
                "taker_fee_bps": sc["fee_bps"],
                "maker_fee_bps": sc["fee_bps"],
                "slippage_bps": sc["slippage_bps"],
            },
            "risk": sc["risk"],
        },
    )
    opn, high, low, close = prices(sc["shocks"], sc["vol"])
    n_bars, n_assets = close.shape
    symbols = tuple(f"S{j}" for j in range(n_assets))
    times = pd.Timestamp("2024-03-01", tz="UTC").value + np.arange(1, n_bars + 1) * sc["bar_hours"] * HOUR
    bus, clock = EventBus(), ReplayClock()
    node = assemble(
        cfg,
        Targets(sc["signals"]),
        symbols,
        bus,
        clock,
        lambda b, c: PaperBroker(b, c, symbols, cfg.costs),
        capacity=n_bars,
    )
    tape = Tape()
    bus.subscribe(Order, lambda order: check_order(order, node, cfg.risk, tape))
    for k in range(n_bars):
        ts = int(times[k])
        clock.advance(ts)
        bus.publish(BarSet(ts, ts, symbols, opn[k], high[k], low[k], close[k], np.ones(n_assets), k))
        pf = node.portfolio
        tape.qty.append(pf.qty.copy())
        tape.avg.append(pf.avg_price.copy())
        tape.pending.append(node.orders.pending.copy())
        tape.cash.append(pf.cash)
        tape.equity.append(pf.equity)
        tape.state.append(node.risk.state if node.risk is not None else TradingState.ACTIVE)
        tape.n_fills.append(len(node.fills))
    return tape, node.fills, (opn, high, low, close), times, cfg


def check_order(order: Order, node: Any, risk: Any, tape: Tape) -> None:
    """At decision time: an order adding risk is allowed only when ACTIVE and within the limits.

    The order manager publishes an order once it has passed the gates and counts it as pending, so
    ``qty + pending`` is the book with this order and the same minus the order is the book before.
    """
    if order.strategy == "risk":  # the risk manager's own exits and flattens only reduce
        return
    pf = node.portfolio
    i = pf.index[order.symbol]
    signed = order.quantity * order.side
    after = pf.qty + node.orders.pending
    before = after.copy()
    before[i] -= signed
    crosses = before[i] != 0 and before[i] * after[i] <= 0
    adds = abs(after[i]) > abs(before[i]) * (1 + REL) or (crosses and after[i] != 0)
    if not adds:
        return
    p, equity = pf.last_price, pf.equity
    state = node.risk.state if node.risk is not None else TradingState.ACTIVE
    if state is not TradingState.ACTIVE:
        tape.problems.append(f"order adding risk in state {state}: {order}")
    slack = REL * equity
    if risk.max_position is not None and abs(after[i]) * p[i] > risk.max_position * equity + slack:
        tape.problems.append(f"position limit: {abs(after[i]) * p[i]} > {risk.max_position * equity}")
    if risk.max_gross_exposure is not None:
        gross_after, gross_before = np.abs(after) @ p, np.abs(before) @ p
        if gross_after > max(risk.max_gross_exposure * equity, gross_before) + slack:
            tape.problems.append(f"gross limit: {gross_after} > {risk.max_gross_exposure * equity}")
    if risk.max_net_exposure is not None:
        net_after, net_before = after @ p, before @ p
        net_closed = net_before - before[i] * p[i] if crosses else net_before  # the reducing part
        allowed = max(risk.max_net_exposure * equity, abs(net_before), abs(net_closed))
        if abs(net_after) > allowed + slack:
            tape.problems.append(f"net limit: {net_after} > {allowed}")
    if risk.max_order_notional is not None:
        added = (abs(after[i]) if crosses else abs(after[i]) - abs(before[i])) * p[i]
        if added > risk.max_order_notional * equity + slack:
            tape.problems.append(f"order notional: {added} > {risk.max_order_notional * equity}")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_limits_hold_and_books_reconcile(sc: dict[str, Any]) -> None:
    tape, fills, (opn, high, low, close), times, cfg = simulate(sc)
    risk = cfg.risk
    assert tape.problems == []
    for rule in sorted({f.tag or "strategy" for f in fills}):
        event(f"fill: {rule}")
    for state in sorted(set(tape.state) - {TradingState.ACTIVE}):
        event(f"state: {state.value}")
    n_bars = len(times)
    n_assets = close.shape[1]
    symbols = [f"S{j}" for j in range(n_assets)]
    slip = sc["slippage_bps"] / 1e4

    # reconciliation: positions, cash and equity from the fills alone
    signed = np.zeros((len(fills), n_assets))
    flows = np.zeros(len(fills))
    for n, f in enumerate(fills):
        signed[n, symbols.index(f.symbol)] = f.quantity * f.side
        flows[n] = -f.quantity * f.side * f.price - f.fee
    for k in range(n_bars):
        done = tape.n_fills[k]
        held = signed[:done].sum(axis=0)
        assert np.allclose(tape.qty[k], held, rtol=1e-9, atol=1e-9)
        cash = CASH + flows[:done].sum()
        assert math.isclose(tape.cash[k], cash, rel_tol=1e-9, abs_tol=1e-6)
        assert math.isclose(tape.equity[k], cash + held @ close[k], rel_tol=1e-9, abs_tol=1e-6)

    # pre-trade limits, seen after the fill: positions that grew did so within the limit at the
    # decision bar's prices and equity (the next bar's move is the only excess allowed)
    if risk.max_position is not None:
        for k in range(n_bars - 1):
            q0, q1 = tape.qty[k], tape.qty[k + 1]
            grew = (np.abs(q1) > np.abs(q0) * (1 + REL)) | ((q0 * q1 < 0) & (q1 != 0))
            value = np.abs(q1) * close[k]
            assert np.all(value[grew] <= risk.max_position * tape.equity[k] * (1 + REL))

    # daily loss: REDUCING from the close of the bar that crosses the limit, lifted next day
    states = tape.state
    halted_at = next((k for k, s in enumerate(states) if s is TradingState.HALTED), n_bars)
    if risk.max_daily_loss is not None:
        day = (times - 1 - risk.day_start_hour * HOUR) // DAY
        start = CASH
        breached = False
        for k in range(halted_at):
            if k == 0 or day[k] != day[k - 1]:
                start = CASH if k == 0 else tape.equity[k - 1]
                breached = False
            eq = tape.equity[k]
            # from a non-positive day start a ratio means nothing: any further fall breaches
            breached = breached or (1.0 - eq / start > risk.max_daily_loss if start > 0 else eq < start)
            assert (states[k] is TradingState.REDUCING) == breached, (k, states[k], start, tape.equity[k])
        for k in range(min(halted_at, n_bars - 1)):
            if states[k] is TradingState.REDUCING:
                q0, q1 = tape.qty[k], tape.qty[k + 1]
                assert np.all(np.abs(q1) <= np.abs(q0) * (1 + REL) + 1e-12)
                assert np.all(q0 * q1 >= 0)
    else:
        assert TradingState.REDUCING not in states

    # drawdown: HALTED from the close of the first bar below the limit, flat from the next bar on
    if risk.max_drawdown is not None:
        peak = np.maximum.accumulate(np.maximum(np.asarray(tape.equity), CASH))
        below = np.asarray(tape.equity) < peak * (1 - risk.max_drawdown)
        first = int(np.argmax(below)) if below.any() else n_bars
        assert halted_at == first
        assert all(s is TradingState.HALTED for s in states[first:])
        for k in range(first + 1, n_bars):
            assert np.all(tape.qty[k] == 0), (k, tape.qty[k])
    else:
        assert halted_at == n_bars

    # exits: a position held into a bar that reaches its stop or take-profit distance is closed in
    # that bar and never flipped (the trailing stop is at least as tight as its distance from entry;
    # slippage on entries can put the entry just above the bar's range, hence its allowance)
    distances = [d for d in (risk.stop_loss, risk.trailing_stop) if d is not None]
    tick = risk.instruments["*"].tick_size if "*" in risk.instruments else 0.0
    opened = np.zeros(n_assets, dtype=int)  # first bar of each position's current side
    bar_of = {int(t): k for k, t in enumerate(times)}
    exited = np.zeros((n_bars, n_assets), dtype=bool)  # an exit closed the position in this bar
    for f in fills:
        if f.tag in ("stop_loss", "trailing_stop", "take_profit"):
            exited[bar_of[f.ts_event], f_index(f)] = True
    for k in range(n_bars - 1):
        q, avg, pending = tape.qty[k], tape.avg[k], tape.pending[k]
        if k:
            # a new side, or a position opened again at the open its exit closed the old one at
            turned = (np.sign(q) != np.sign(tape.qty[k - 1])) | (exited[k] & (q != 0))
            opened[turned] = k
        for i in np.flatnonzero((q != 0) & (pending == 0)):
            long = q[i] > 0
            hit = False
            if risk.trailing_stop is not None:  # from the best price since the position opened
                if long:
                    hit = low[k + 1, i] <= high[opened[i] : k + 1, i].max() * (1 - risk.trailing_stop)
                else:
                    hit = high[k + 1, i] >= low[opened[i] : k + 1, i].min() * (1 + risk.trailing_stop)
            if distances:
                d = min(distances)
                if long:
                    hit = hit or low[k + 1, i] <= avg[i] * (1 - d) / (1 + slip)
                else:
                    hit = hit or high[k + 1, i] >= avg[i] * (1 + d) / (1 - slip)
            if risk.take_profit is not None:
                if long:
                    hit = hit or high[k + 1, i] >= avg[i] * (1 + risk.take_profit) + tick
                else:
                    hit = hit or low[k + 1, i] <= avg[i] * (1 - risk.take_profit) - tick
            if hit:
                assert tape.qty[k + 1][i] == 0, (k, i, q[i], avg[i], tape.qty[k + 1][i])

    # a stop fills at its level or better, or at the open when the bar gapped through it: the loss
    # beyond the stop distance is at most the gap (and the slippage)
    if distances:
        bar = {int(t): k for k, t in enumerate(times)}
        for f in fills:
            k = bar[f.ts_event]
            if f.tag not in ("stop_loss", "trailing_stop") or k == 0 or tape.pending[k - 1][f_index(f)] != 0:
                continue
            i = f_index(f)
            entry = tape.avg[k - 1][i]
            trigger = f.price / (1 + slip * f.side)
            if f.side < 0:  # a long's stop
                assert trigger >= min(opn[k, i], entry * (1 - min(distances)) / (1 + slip)) * (1 - REL)
            else:
                assert trigger <= max(opn[k, i], entry * (1 + min(distances)) / (1 - slip)) * (1 + REL)


def f_index(fill: Fill) -> int:
    return int(fill.symbol[1:])
