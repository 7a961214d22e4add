"""Bybit v5 connectors: REST market data, the live kline stream and the execution venue.

* :class:`BybitRest`: signed/unsigned REST with throttling, retries and clock offset; klines
  (paged, oldest first, closed bars only), instrument rules, server time.
* :class:`KlineStream`: public websocket → closed :class:`engine.events.Bar` events on a bus,
  exactly once and in order per (symbol, interval), gaps filled through REST.
* :class:`BybitExecution`: :class:`engine.ports.ExecutionVenue` over private REST and the private
  websocket; OrderUpdate and Fill events on the bus, executions the stream missed caught up from
  the trade history; STOP orders as conditional market orders.

Every part takes a :class:`BybitConfig` (the ``[bybit]`` config section); API keys come only from
the environment variables it names.
"""

from connectors.bybit.config import BybitConfig
from connectors.bybit.errors import (
    AuthError,
    BybitError,
    InvalidRequest,
    OrderRejected,
    RateLimited,
    ServerError,
)
from connectors.bybit.execution import BybitExecution, order_link_id
from connectors.bybit.kline_stream import KlineStream, SubscriptionError
from connectors.bybit.rest import BybitRest, Kline
from connectors.bybit.signing import Credentials

__all__ = [
    "AuthError",
    "BybitConfig",
    "BybitError",
    "BybitExecution",
    "BybitRest",
    "Credentials",
    "InvalidRequest",
    "Kline",
    "KlineStream",
    "OrderRejected",
    "RateLimited",
    "ServerError",
    "SubscriptionError",
    "order_link_id",
]
