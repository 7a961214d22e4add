"""Typed events: the vocabulary every component speaks on the bus.

Events are slotted dataclasses without validation so that the per-bar path stays cheap; boundaries
(connectors, config) validate before they build them. Every event carries two timestamps in integer
nanoseconds since the epoch, UTC: ``ts_event`` (when it happened; bars are stamped at their close)
and ``ts_init`` (when the engine saw it). An order can never fill before the engine saw the bar
that caused it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

import numpy as np


class Side(IntEnum):
    """Order side; its value is the sign it gives a quantity."""

    BUY = 1
    SELL = -1


class OrderType(StrEnum):
    MARKET = "market"
    LIMIT = "limit"
    STOP = "stop"


class OrderStatus(StrEnum):
    SUBMITTED = "submitted"
    ACCEPTED = "accepted"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    UNKNOWN = "unknown"
    """The venue's answer was lost: the order may or may not exist. Not final, and no new order
    for its symbol is sent until reconciliation finds the order or proves it absent."""


class TradingState(StrEnum):
    """Risk's verdict on what the engine may do: trade, only reduce, or nothing at all."""

    ACTIVE = "active"
    REDUCING = "reducing"
    HALTED = "halted"


@dataclass(slots=True)
class Bar:
    """One closed candle of one instrument, as a live connector sees it."""

    ts_event: int
    ts_init: int
    symbol: str
    interval: str
    open: float
    high: float
    low: float
    close: float
    volume: float
    ts_open: int = 0


@dataclass(slots=True)
class BarSet:
    """The cross-section of bars that closed at ``ts_event``, aligned to the engine's universe.

    Arrays are indexed like ``symbols``; NaN marks an instrument without a bar at this time.
    Replay publishes row views of its price matrices, so handlers must treat the arrays as
    read-only.
    """

    ts_event: int
    ts_init: int
    symbols: tuple[str, ...]
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    index: int = -1


@dataclass(slots=True)
class BarOpen:
    """A bar's first price, as a live stream reports the first update of a new bar: a market order
    decided at the previous close fills at it, seconds after the decision. ``ts_event`` is the
    bar's start."""

    ts_event: int
    ts_init: int
    symbol: str
    open: float


@dataclass(slots=True)
class Signal:
    """A strategy's desired exposure: target weights (fraction of equity) per universe symbol, or
    with ``units`` target quantities (signed units of each instrument, as ``size=5`` in
    backtesting.py), which do not resize as equity moves.

    NaN leaves a symbol's position as it is.
    """

    ts_event: int
    ts_init: int
    strategy: str
    targets: np.ndarray
    units: bool = False


@dataclass(slots=True)
class Order:
    """An instruction to trade. ``client_id`` is deterministic (strategy, symbol, decision time)
    so that a retried request can be recognised by the venue and never opens a second position."""

    client_id: str
    ts_event: int
    ts_init: int
    symbol: str
    side: Side
    quantity: float
    type: OrderType = OrderType.MARKET
    price: float = float("nan")
    reduce_only: bool = False
    strategy: str = ""
    tag: str = ""


@dataclass(slots=True)
class OrderUpdate:
    """A change in an order's life: accepted, cancelled, rejected (with the reason)."""

    ts_event: int
    ts_init: int
    client_id: str
    symbol: str
    status: OrderStatus
    reason: str = ""
    venue_order_id: str = ""


@dataclass(slots=True)
class Fill:
    """An execution. ``quantity`` is positive; ``side`` gives the direction. ``fee`` is in quote
    currency and already includes the venue's fee rate; ``liquidity`` is "maker" or "taker".
    ``ts_price`` is when its price traded, in the data's own labels (a fill at the open of the
    daily bar labelled D: D; at an intraday bar's open: its start; at its close: its end), where
    ``ts_event`` is the engine's stamp, the close of the bar it filled in; 0: as ``ts_event``."""

    ts_event: int
    ts_init: int
    client_id: str
    symbol: str
    side: Side
    quantity: float
    price: float
    fee: float
    liquidity: str = "taker"
    exec_id: str = ""
    tag: str = ""
    ts_price: int = 0


@dataclass(slots=True)
class PositionUpdate:
    """A position after a fill: signed quantity, average entry price and realised PnL so far."""

    ts_event: int
    ts_init: int
    symbol: str
    quantity: float
    avg_price: float
    realized_pnl: float


@dataclass(slots=True)
class Funding:
    """A perpetual's funding payment on a position: ``amount`` is cash paid (negative: received).
    With a positive rate longs pay shorts."""

    ts_event: int
    ts_init: int
    symbol: str
    quantity: float
    price: float
    rate: float
    amount: float


@dataclass(slots=True)
class RiskEvent:
    """A risk rule fired: an order was rejected or resized, a stop triggered, a limit breached, or
    the trading state changed."""

    ts_event: int
    ts_init: int
    rule: str
    message: str
    symbol: str = ""
    state: TradingState = TradingState.ACTIVE
    details: dict[str, float | str] = field(default_factory=dict)


@dataclass(slots=True)
class ForeignExecution:
    """A fill on the account of an order this engine never placed (a manual trade, another bot):
    not booked, but reported, because the account no longer matches the engine's book."""

    ts_event: int
    ts_init: int
    symbol: str
    side: Side
    quantity: float
    price: float
    fee: float
    exec_id: str = ""
    order_link_id: str = ""
    venue_order_id: str = ""


@dataclass(slots=True)
class Heartbeat:
    """Liveness of a component, so a live daemon can tell silence from death."""

    ts_event: int
    ts_init: int
    source: str


Event = (
    Bar
    | BarSet
    | BarOpen
    | Signal
    | Order
    | OrderUpdate
    | Fill
    | Funding
    | PositionUpdate
    | RiskEvent
    | Heartbeat
)
