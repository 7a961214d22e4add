"""Markets from long-format frames: alignment, masking (no forward fill), annualisation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models import Market, infer_periods_per_year, markets_from_frame, returns_from_closes
from models.data import model_arrays


def _frame() -> pd.DataFrame:
    ts = pd.date_range("2020-01-01", periods=5, freq="D", tz="UTC")
    rows = []
    for i, t in enumerate(ts):
        rows.append({"timestamp": t, "symbol": "BBB", "close": 100.0 * 1.01**i})
        if i >= 2 and i != 3:  # AAA listed on day 2, holiday on day 3
            rows.append({"timestamp": t, "symbol": "AAA", "close": 50.0 + i})
    return pd.DataFrame(rows)


def test_returns_are_masked_not_forward_filled() -> None:
    (m,) = markets_from_frame(_frame(), name="x")
    assert m.assets == ("AAA", "BBB")  # sorted, reproducible from the data alone
    assert len(m) == 4  # first bar has no return
    np.testing.assert_allclose(m.returns[:, 1], 0.01, rtol=1e-12)
    a = m.returns[:, 0]
    # day 1: not listed; day 2: first close, no return; day 3: holiday (no zero return);
    # day 4: the return since the last close, which a held position earns
    assert np.isnan(a[:3]).all()
    assert a[3] == pytest.approx(54.0 / 52.0 - 1)


def test_returns_from_closes_handles_gaps_per_asset() -> None:
    c = np.array([[1.0, np.nan], [np.nan, 2.0], [np.nan, 2.2], [1.5, np.nan], [1.8, 1.1]])
    r = returns_from_closes(c)
    expected = np.array([[np.nan, np.nan], [np.nan, np.nan], [np.nan, 0.1], [0.5, np.nan], [0.2, -0.5]])
    np.testing.assert_allclose(r, expected, rtol=1e-12)


def test_market_column_groups_markets() -> None:
    df = _frame()
    other = _frame().assign(symbol=lambda d: d.symbol + "2")
    df = pd.concat([df.assign(market="us"), other.assign(market="eu")])
    markets = markets_from_frame(df)
    assert [m.name for m in markets] == ["eu", "us"]
    assert markets[0].assets == ("AAA2", "BBB2")
    with pytest.raises(ValueError, match="name="):
        markets_from_frame(_frame())


def test_model_inputs_are_lagged_returns() -> None:
    r = np.array([[0.01, np.nan], [0.02, 0.03], [np.nan, -0.01]])
    x, y, mask = model_arrays(r)
    np.testing.assert_array_equal(x[0], [0.0, 0.0])
    np.testing.assert_array_equal(x[1:], np.nan_to_num(r[:-1]))  # input at t = returns of t-1
    np.testing.assert_array_equal(mask, np.isfinite(r))
    assert (y[~mask] == 0).all()


def test_periods_per_year_follows_the_bar_calendar() -> None:
    def mk(index: pd.DatetimeIndex) -> Market:
        return Market("m", ("a",), index, np.zeros((len(index), 1)))

    assert infer_periods_per_year([mk(pd.bdate_range("2020-01-01", periods=300, tz="UTC"))]) == 252
    assert infer_periods_per_year([mk(pd.date_range("2020-01-01", periods=300, freq="D", tz="UTC"))]) == 365
    hourly = pd.date_range("2020-01-01", periods=24 * 30, freq="h", tz="UTC")
    assert infer_periods_per_year([mk(hourly)]) == pytest.approx(24 * 365)


def test_market_rejects_bad_shapes() -> None:
    idx = pd.bdate_range("2020-01-01", periods=3, tz="UTC")
    with pytest.raises(ValueError, match="shape"):
        Market("m", ("a", "b"), idx, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="duplicate"):
        Market("m", ("a", "a"), idx, np.zeros((3, 2)))


def test_an_odd_saturday_session_keeps_the_exchange_calendar():
    days = pd.bdate_range("2020-01-01", periods=300, tz="UTC").append(
        pd.DatetimeIndex(["2020-06-06"], tz="UTC")
    )
    days = days.sort_values()
    exchange = Market("x", ("a",), days, np.zeros((len(days), 1)))
    assert infer_periods_per_year([exchange]) == 252.0
    every_day = pd.date_range("2020-01-01", periods=300, freq="D", tz="UTC")
    assert infer_periods_per_year([Market("c", ("a",), every_day, np.zeros((300, 1)))]) == 365.0
