"""The small interfaces connectors implement; the engine talks only to these.

One execution port serves the paper broker and the Bybit adapter alike (NautilusTrader's
ports-and-adapters venues): submission never blocks, and every outcome comes back on the bus as
:class:`~engine.events.OrderUpdate` and :class:`~engine.events.Fill` events.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from engine.events import Order


@runtime_checkable
class ExecutionVenue(Protocol):
    name: str

    def submit(self, order: Order) -> None:
        """Accept an order for execution; the result arrives later as bus events."""
        ...

    def cancel(self, client_id: str) -> None:
        """Request cancellation; a cancelled order is reported as an OrderUpdate."""
        ...

    def amend(self, client_id: str, *, quantity: float | None = None, price: float | None = None) -> None:
        """Change a working order in place (keeping its queue position: a trailing stop moves
        without a moment unprotected); the order's new terms come back as an OrderUpdate."""
        ...

    def open_orders(self) -> Iterable[Order]:
        """Orders the venue still works, for reconciliation after a restart."""
        ...
