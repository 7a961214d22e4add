"""The event bus: typed publish/subscribe with one dispatch path for replay and live.

``publish`` dispatches synchronously and depth-first: when the paper broker publishes a fill while
handling a bar, the portfolio books it before the next bar handler runs, so every handler sees
consistent state. Replay drives ``publish`` directly from its time-ordered sources; live connectors
``post`` into an asyncio queue that ``run`` drains into the very same ``publish``. Only the clock
and the connectors differ between the two.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from enum import StrEnum
from typing import Any, TypeVar

import structlog

from engine.clock import Clock

E = TypeVar("E")
Handler = Callable[[Any], None]

log = structlog.get_logger("engine.bus")


class BusMode(StrEnum):
    BACKTEST = "backtest"
    LIVE = "live"


class HandlerError(RuntimeError):
    """A handler raised during a backtest; the run stops here rather than produce wrong numbers."""

    def __init__(self, handler: Handler, event: object, cause: BaseException) -> None:
        self.handler_name = handler_name(handler)
        self.event = event
        super().__init__(
            f"handler {self.handler_name} failed on {type(event).__name__} "
            f"at ts_event={getattr(event, 'ts_event', '?')}: {type(cause).__name__}: {cause}"
        )


def call_handler(handler: Handler, event: object, *, name: Handler | None = None) -> Any:
    """Call ``handler`` as :meth:`EventBus.publish` does in a backtest, for a replay that does a
    handler's work without publishing: a failure stops the run as a :class:`HandlerError` naming
    ``handler`` (or ``name``, the subscriber whose work it is)."""
    try:
        return handler(event)
    except HandlerError:
        raise
    except Exception as exc:
        raise HandlerError(name or handler, event, exc) from exc


def handler_name(handler: Handler) -> str:
    owner = getattr(handler, "__self__", None)
    name = getattr(handler, "__qualname__", None) or repr(handler)
    if owner is not None and "." not in name:
        return f"{type(owner).__name__}.{name}"
    return name


class EventBus:
    """Routes events to the handlers subscribed to their exact type, in subscription order.

    In backtest mode a failing handler raises :class:`HandlerError` (a wrong backtest must not look
    like a right one); in live mode the failure is logged and counted in ``errors`` and the other
    handlers still run, so one bad component cannot take the daemon down.
    """

    __slots__ = ("_handlers", "_queue", "errors", "mode", "published")

    def __init__(self, mode: BusMode | str = BusMode.BACKTEST) -> None:
        self.mode = BusMode(mode)
        self._handlers: dict[type, tuple[Handler, ...]] = {}
        self._queue: asyncio.Queue[object] | None = None
        self.errors: Counter[str] = Counter()
        self.published = 0

    def subscribe(self, event_type: type[E], handler: Callable[[E], None]) -> None:
        current = self._handlers.get(event_type, ())
        if handler in current:
            raise ValueError(f"{handler_name(handler)} is already subscribed to {event_type.__name__}")
        self._handlers[event_type] = (*current, handler)

    def unsubscribe(self, event_type: type[E], handler: Callable[[E], None]) -> None:
        current = self._handlers.get(event_type, ())
        self._handlers[event_type] = tuple(h for h in current if h != handler)

    def wants(self, event_type: type) -> bool:
        """Whether anything listens to ``event_type`` (a publisher may then skip building one)."""
        return bool(self._handlers.get(event_type))

    def subscribers(self, event_type: type) -> tuple[Handler, ...]:
        return self._handlers.get(event_type, ())

    def publish(self, event: object) -> None:
        self.published += 1
        handlers = self._handlers.get(event.__class__)
        if not handlers:
            return
        if self.mode is BusMode.BACKTEST:
            for handler in handlers:
                try:
                    handler(event)
                except HandlerError:
                    raise
                except Exception as exc:
                    raise HandlerError(handler, event, exc) from exc
        else:
            for handler in handlers:
                try:
                    handler(event)
                except Exception as exc:
                    name = handler_name(handler)
                    self.errors[name] += 1
                    log.error(
                        "handler failed",
                        handler=name,
                        event_type=type(event).__name__,
                        ts_event=getattr(event, "ts_event", None),
                        error=f"{type(exc).__name__}: {exc}",
                        failures=self.errors[name],
                    )

    # live path -----------------------------------------------------------------------------

    def _live_queue(self) -> asyncio.Queue[object]:
        if self._queue is None:
            self._queue = asyncio.Queue()
        return self._queue

    def post(self, event: object) -> None:
        """Hand an event from a connector coroutine to the dispatch loop (same event loop)."""
        self._live_queue().put_nowait(event)

    async def run(self, clock: Clock | None = None, stop: asyncio.Event | None = None) -> None:
        """Dispatch posted events until ``stop`` is set; drains what is queued in one go."""
        queue = self._live_queue()
        stop = stop or asyncio.Event()
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                event = getter.result()
                while True:
                    if clock is not None:
                        clock.advance(getattr(event, "ts_event", 0))
                    self.publish(event)
                    try:
                        event = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        break
        finally:
            stopper.cancel()


def merge_by_time(*sources: Iterable[E]) -> Iterator[E]:
    """Merge time-ordered event streams by (ts_event, source order, position): deterministic for
    equal timestamps, so two runs over the same data dispatch identically."""

    def keyed(rank: int, src: Iterable[E]) -> Iterator[tuple[int, int, int, E]]:
        for seq, ev in enumerate(src):
            yield ev.ts_event, rank, seq, ev  # type: ignore[attr-defined]

    for _, _, _, ev in heapq.merge(*(keyed(r, s) for r, s in enumerate(sources))):
        yield ev


def replay(bus: EventBus, events: Iterable[object], clock: Clock | None = None) -> int:
    """Publish a time-ordered stream synchronously: no task or queue per event. Returns the count."""
    n = 0
    publish = bus.publish
    if clock is None:
        for event in events:
            publish(event)
            n += 1
    else:
        advance = clock.advance
        for event in events:
            advance(event.ts_event)  # type: ignore[attr-defined]
            publish(event)
            n += 1
    return n
