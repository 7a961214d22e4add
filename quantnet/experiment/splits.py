"""One calendar for every split: test, validation and training are dated blocks of the union of all
markets' bar times, so no market trains on a date another market validates or tests on.

The test window is the last ``test_bars`` timestamps of the union calendar (one start date for all
markets), validation the ``val_bars`` timestamps just before it, training everything earlier.
``models.data.dated_splits`` is the shared implementation once it exists; this module keeps the
experiment's view of it (row numbers per market) in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from models.data import Market


@dataclass(frozen=True, slots=True)
class DatedSplit:
    """Boundaries as timestamps: train < ``val_start`` <= validation < ``test_start`` <= test."""

    val_start: pd.Timestamp
    test_start: pd.Timestamp
    last: pd.Timestamp

    def val_row(self, market: Market) -> int:
        """First row of ``market`` on or after the validation start."""
        return int(market.index.searchsorted(self.val_start))

    def test_row(self, market: Market) -> int:
        """First row of ``market`` on or after the test start."""
        return int(market.index.searchsorted(self.test_start))

    def as_dict(self) -> dict[str, str]:
        return {
            "train_end_before": self.val_start.isoformat(),
            "val_start": self.val_start.isoformat(),
            "test_start": self.test_start.isoformat(),
            "last": self.last.isoformat(),
        }


def union_calendar(markets: Sequence[Market]) -> pd.DatetimeIndex:
    stamps = np.unique(np.concatenate([m.index.as_unit("ns").asi8 for m in markets]))
    return pd.DatetimeIndex(pd.to_datetime(stamps, utc=True))


def dated_split(markets: Sequence[Market], *, test_bars: int, val_bars: int) -> DatedSplit:
    """The split of ``markets`` on their union calendar; refuses a split that leaves a market
    without training rows, validation rows or test rows (it could not be scored honestly)."""
    if test_bars < 2 or val_bars < 2:
        raise ValueError(f"test bars ({test_bars}) and validation bars ({val_bars}) must be at least 2")
    cal = union_calendar(markets)
    if len(cal) <= test_bars + val_bars:
        raise ValueError(
            f"the data has {len(cal)} timestamps; {test_bars} test and {val_bars} validation bars "
            "leave none for training"
        )
    split = DatedSplit(cal[-(test_bars + val_bars)], cal[-test_bars], cal[-1])
    for m in markets:
        v0, t0 = split.val_row(m), split.test_row(m)
        if v0 < 3:
            raise ValueError(
                f"market {m.name!r} starts {m.index[0].date()}, after the training window ends "
                f"({split.val_start.date()}): drop it or use fewer --test-bars/--val-bars"
            )
        if t0 - v0 < 2 or len(m) - t0 < 2:
            raise ValueError(
                f"market {m.name!r} has {t0 - v0} validation and {len(m) - t0} test rows; need 2 each"
            )
    return split
