"""Bybit kline interval codes and bar arithmetic (start times, closes, alignment)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

INTERVALS = ("1", "3", "5", "15", "30", "60", "120", "240", "360", "720", "D", "W", "M")
_MINUTE_MS = 60_000
_DAY_MS = 86_400_000
_MONDAY_1970_01_05_MS = 4 * _DAY_MS


def check_interval(interval: str) -> str:
    """Return the canonical code or raise ValueError listing the valid ones."""
    code = str(interval).strip().upper()
    if code not in INTERVALS:
        raise ValueError(f"bad interval {interval!r}: Bybit accepts {', '.join(INTERVALS)}")
    return code


def interval_ms(interval: str) -> int:
    """Fixed length in ms; for ``M`` a 31-day upper bound (use :func:`next_start` to step)."""
    if interval == "D":
        return _DAY_MS
    if interval == "W":
        return 7 * _DAY_MS
    if interval == "M":
        return 31 * _DAY_MS
    return int(interval) * _MINUTE_MS


def floor_start(ts_ms: int, interval: str) -> int:
    """Start of the bar containing ``ts_ms`` (D at 00:00 UTC, W on Monday, M on the 1st)."""
    if interval == "M":
        d = datetime.fromtimestamp(ts_ms / 1000, UTC)
        return int(datetime(d.year, d.month, 1, tzinfo=UTC).timestamp() * 1000)
    if interval == "W":
        return ts_ms - (ts_ms - _MONDAY_1970_01_05_MS) % (7 * _DAY_MS)
    step = interval_ms(interval)
    return ts_ms - ts_ms % step


def ceil_start(ts_ms: int, interval: str) -> int:
    """First bar start at or after ``ts_ms``: a mid-bar start would fetch the bar containing it."""
    s = floor_start(ts_ms, interval)
    return s if s == ts_ms else next_start(s, interval)


def next_start(start_ms: int, interval: str) -> int:
    """Start of the bar after the one starting at ``start_ms`` (which must be aligned)."""
    if interval == "M":
        d = datetime.fromtimestamp(start_ms / 1000, UTC)
        y, m = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
        return int(datetime(y, m, 1, tzinfo=UTC).timestamp() * 1000)
    return start_ms + interval_ms(interval)


def prev_start(start_ms: int, interval: str) -> int:
    if interval == "M":
        d = datetime.fromtimestamp(start_ms / 1000, UTC) - timedelta(days=1)
        return int(datetime(d.year, d.month, 1, tzinfo=UTC).timestamp() * 1000)
    return start_ms - interval_ms(interval)


def bar_end(start_ms: int, interval: str) -> int:
    """Close time (exclusive end) of the bar: the engine stamps bars with it."""
    return next_start(start_ms, interval)
