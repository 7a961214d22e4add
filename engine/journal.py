"""Append-only journal: every order, order update, fill, funding payment, position change and risk
event, one JSON
line each, written before anything else can forget it. A restart rebuilds state from it."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import IO, Any

from engine.bus import EventBus
from engine.events import Fill, Funding, Order, OrderUpdate, PositionUpdate, RiskEvent

JOURNALED = (Order, OrderUpdate, Fill, Funding, PositionUpdate, RiskEvent)


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, float) and value != value:
        return None
    return value


def event_record(event: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"event": type(event).__name__}
    for name in event.__slots__:
        record[name] = _plain(getattr(event, name))
    return record


class Journal:
    """Writes journaled events as they are published. ``fsync`` makes each line durable (live)."""

    def __init__(self, path: str | Path, bus: EventBus, *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] = self.path.open("a", encoding="utf-8")
        self._fsync = fsync
        self.count = 0
        for event_type in JOURNALED:
            bus.subscribe(event_type, self.record)

    def record(self, event: Any) -> None:
        self._fh.write(json.dumps(event_record(event), separators=(",", ":")) + "\n")
        self._fh.flush()
        if self._fsync:
            os.fsync(self._fh.fileno())
        self.count += 1

    def close(self) -> None:
        self._fh.close()


def read_journal(path: str | Path) -> Iterator[dict[str, Any]]:
    with Path(path).open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"{path}: line {n} is not valid JSON ({exc.msg}); journal is damaged"
                ) from None
