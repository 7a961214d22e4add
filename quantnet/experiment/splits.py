"""The experiment's view of the dated split (:func:`models.data.dated_splits`): one calendar for
every block, so no market trains on a date another market validates or tests on.

The test window is the last ``test_bars`` timestamps of the union calendar (one start date for all
markets), validation the ``val_bars`` timestamps just before it, training everything earlier. The
experiment additionally refuses a split that leaves a market without training, validation or test
rows: such a market could not be scored honestly. A *source* market (``sources``) only trains: it
needs training rows, and its rows may end before the validation or test window (a market whose
history stops years earlier can still teach the shared layer; none of its rows is in the test
window's dates, and it is not scored).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from models.data import Market, Splits, dated_splits


@dataclass(frozen=True, slots=True)
class DatedSplit:
    splits: Splits

    @property
    def val_start(self) -> pd.Timestamp:
        assert self.splits.val_start is not None
        return self.splits.val_start

    @property
    def test_start(self) -> pd.Timestamp:
        assert self.splits.test_start is not None
        return self.splits.test_start

    def val_row(self, market: Market) -> int:
        """First row of ``market`` on or after the validation start."""
        return self.splits.bounds(market)[0]

    def test_row(self, market: Market) -> int:
        """First row of ``market`` on or after the test start."""
        return self.splits.bounds(market)[1]

    def as_dict(self) -> dict[str, object]:
        return self.splits.to_meta()


def dated_split(
    markets: Sequence[Market], *, test_bars: int, val_bars: int, sources: Sequence[str] = ()
) -> DatedSplit:
    if test_bars < 2 or val_bars < 2:
        raise ValueError(f"test bars ({test_bars}) and validation bars ({val_bars}) must be at least 2")
    names = [m.name for m in markets]
    unknown = [s for s in sources if s not in names]
    if unknown:
        raise ValueError(f"--sources: no market named {', '.join(unknown)} (markets: {', '.join(names)})")
    if len(set(sources)) == len(set(names)):
        raise ValueError("--sources names every market: at least one market must be scored")
    split = DatedSplit(dated_splits(markets, test_bars, val_bars))
    for m in markets:
        v0, t0 = split.val_row(m), split.test_row(m)
        if v0 < 3:
            raise ValueError(
                f"market {m.name!r} starts {m.index[0].date()}, after the training window ends "
                f"({split.val_start.date()}): drop it or use fewer --test-bars/--val-bars"
            )
        if m.name in sources:
            continue
        if t0 - v0 < 2 or len(m) - t0 < 2:
            raise ValueError(
                f"market {m.name!r} has {t0 - v0} validation and {len(m) - t0} test rows; need 2 each "
                f"to be scored (its rows end {m.index[-1].date()}; --sources {m.name} trains on it "
                "without scoring it)"
            )
    return split
