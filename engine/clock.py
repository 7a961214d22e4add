"""Injected clocks: the same components run on replay time or wall time."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ns(self) -> int: ...

    def advance(self, ts_ns: int) -> None: ...


class ReplayClock:
    """Time is whatever the last replayed event says; it never runs backwards."""

    __slots__ = ("_now",)

    def __init__(self, start_ns: int = 0) -> None:
        self._now = start_ns

    def now_ns(self) -> int:
        return self._now

    def advance(self, ts_ns: int) -> None:
        if ts_ns > self._now:
            self._now = ts_ns


class LiveClock:
    """Wall-clock UTC, optionally corrected by an offset to the venue's clock (venue - local)."""

    __slots__ = ("offset_ns",)

    def __init__(self, offset_ns: int = 0) -> None:
        self.offset_ns = offset_ns

    def now_ns(self) -> int:
        return time.time_ns() + self.offset_ns

    def advance(self, ts_ns: int) -> None:
        """Wall time advances by itself; events cannot move it."""
