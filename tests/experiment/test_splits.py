"""Dated splits: one start date for all markets, whatever their own calendars."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.data import Market
from quantnet.experiment.splits import dated_split


def _m(name: str, index: pd.DatetimeIndex) -> Market:
    return Market(name, ("x",), index, np.zeros((len(index), 1)))


def test_one_calendar_for_markets_with_different_days():
    days = pd.bdate_range("2020-01-01", periods=100, tz="UTC")
    a = _m("a", days[::2])  # every other day
    b = _m("b", days[10:])  # starts later
    split = dated_split([a, b], test_bars=20, val_bars=10)
    assert split.test_start == days[80] and split.val_start == days[70]
    assert a.index[split.test_row(a)] == days[80] and b.index[split.test_row(b)] == days[80]
    assert a.index[split.val_row(a) - 1] < days[70] <= a.index[split.val_row(a)]


def test_refuses_a_market_without_training_rows():
    days = pd.bdate_range("2020-01-01", periods=100, tz="UTC")
    with pytest.raises(ValueError, match=r"market 'late' starts .* after the training window ends"):
        dated_split([_m("a", days), _m("late", days[75:])], test_bars=20, val_bars=10)
    with pytest.raises(ValueError, match="leave none for training"):
        dated_split([_m("a", days)], test_bars=90, val_bars=10)
