"""Performance metrics: the QuantNet paper's per-series set plus trading statistics of a backtest.

Everything here is a pure function of arrays, so the same code scores a backtest's equity curve,
one asset's strategy returns in the QuantNet experiment, or a live account's marks. Degenerate
input (empty, constant, all NaN) yields NaN for the affected metrics rather than an exception or
an infinity: one flat asset among hundreds must not abort an aggregate, and NaN is what
``nanmedian`` and JSON export (as null) already know how to skip.

Returns are simple per-period returns (``p_t / p_{t-1} - 1``) and are taken as excess returns:
no risk-free rate is subtracted, as in the paper.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "backtest_metrics",
    "benchmark_curve",
    "benchmark_stats",
    "buy_and_hold",
    "calendar_returns",
    "drawdown_periods",
    "equity_returns",
    "performance",
    "periods_per_year",
    "rolling_stats",
    "versus_benchmark",
]

_NS_PER_HOUR = 3_600 * 1_000_000_000
_NS_PER_DAY = 24 * _NS_PER_HOUR
_EXCHANGE_DAYS = 252.0
_CALENDAR_DAYS = 365.0
_SESSION_HOURS = 6.5
# A per-period standard deviation below this is rounding noise of a constant series, not risk.
_ZERO_STD = 1e-12

_CALENDARS = {"auto": "auto", "exchange": "exchange", "24/7": "24/7", "crypto": "24/7", "24/6": "24/6"}
# Days with bars per year: an exchange's trading days, every day, or six days a week (FX, Sun..Fri).
_DAYS_PER_YEAR = {"exchange": _EXCHANGE_DAYS, "24/7": _CALENDAR_DAYS, "24/6": _CALENDAR_DAYS * 6 / 7}


def _as_ns(timestamps: np.ndarray | Sequence[object] | pd.Index | pd.Series) -> np.ndarray:
    """Integer nanoseconds since the epoch from int64 ns, datetime64 or (tz-aware) pandas input."""
    if isinstance(timestamps, pd.Series | pd.Index):
        if pd.api.types.is_datetime64_any_dtype(timestamps.dtype):
            return pd.DatetimeIndex(timestamps).as_unit("ns").asi8
        timestamps = timestamps.to_numpy()
    arr = np.asarray(timestamps)
    if arr.dtype.kind == "M":
        return arr.astype("datetime64[ns]").view(np.int64)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    return pd.DatetimeIndex(pd.to_datetime(arr, utc=True)).as_unit("ns").asi8


def _week_kind(ts: np.ndarray) -> str:
    """The calendar the bars follow: ``"24/7"``, ``"24/6"`` or ``"exchange"``.

    Weekend bars are the sign, but timestamps may label a bar's open or its close: an exchange's
    Monday..Friday daily bars stamped at the close fall on Tuesday..Saturday. So the test counts
    weekdays that carry a real share of the bars (at least a quarter of the busiest weekday's): an
    exchange fills five, FX daily bars six (Sunday to Friday), a 24/7 market seven, and the odd
    Saturday session does not tip it. Samples shorter than a week cannot show a weekend; intraday
    bars then count as 24/7 when they cover at least 20 distinct hours of the day, which no exchange
    session does.
    """
    days = ts // _NS_PER_DAY
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
    counts = np.bincount(weekday, minlength=7)
    busy = np.count_nonzero(counts >= 0.25 * counts.max())
    if busy >= 6:
        return "24/7" if busy == 7 else "24/6"
    if ts[-1] - ts[0] >= 7 * _NS_PER_DAY:
        return "exchange"
    hours = np.unique((ts % _NS_PER_DAY) // _NS_PER_HOUR)
    return "24/7" if len(hours) >= 20 else "exchange"


def periods_per_year(
    timestamps_ns: np.ndarray, calendar: str = "auto", override: float | None = None
) -> float:
    """The annualisation factor for bars at these timestamps.

    The bar interval is the median spacing of the distinct sorted timestamps (robust to weekends,
    holidays and gaps). By interval:

    - yearly (>= 300 days): 1; quarterly (>= 80 days): 4; monthly (>= 20 days): 12;
      weekly (>= 4 days): 52;
    - daily (>= 18 hours): 252 on an exchange calendar, 365 on a 24/7 one, 365 * 6/7 (about 313)
      on a six-day week like FX's Sunday..Friday daily bars;
    - intraday: 24/7 bars fill the whole year, ``365 * 1 day / interval`` (8760 for hourly), 24/6
      bars six sevenths of it;
      exchange bars fill a 6.5-hour session on 252 days, ``252 * 6.5 h / interval``
      (98,280 for minute bars). Sessions of other lengths need ``override``.

    ``calendar`` is ``"exchange"``, ``"24/7"`` (alias ``"crypto"``), ``"24/6"`` or ``"auto"``, which
    infers it from the data (see :func:`_week_kind`). ``override``, when given, wins: it is how a
    user states a calendar the data cannot reveal. With fewer than two distinct timestamps there is
    no spacing to measure, and the calendar's daily figure is returned.
    """
    if override is not None:
        value = float(override)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"periods_per_year override must be a positive number, got {override!r}")
        return value
    if calendar not in _CALENDARS:
        raise ValueError(f"unknown calendar {calendar!r}; expected one of {', '.join(_CALENDARS)}")
    ts = _as_ns(timestamps_ns)
    if len(ts) > 1 and not (ts[1:] > ts[:-1]).all():  # a backtest's times are: skip the unique's hash
        ts = np.unique(ts)
    kind = _CALENDARS[calendar]
    if kind == "auto":
        kind = _week_kind(ts) if len(ts) >= 2 else "exchange"
    days_per_year = _DAYS_PER_YEAR[kind]
    if len(ts) < 2:
        return days_per_year
    interval = float(np.median(np.diff(ts)))
    day = float(_NS_PER_DAY)
    for min_days, per_year in ((300, 1.0), (80, 4.0), (20, 12.0), (4, 52.0)):
        if interval >= min_days * day:
            return per_year
    if interval >= 0.75 * day:
        return days_per_year
    if kind != "exchange":
        return days_per_year * day / interval
    return _EXCHANGE_DAYS * _SESSION_HOURS * _NS_PER_HOUR / interval


_PERFORMANCE_KEYS = (
    "annual_return",
    "cagr",
    "annual_volatility",
    "sharpe",
    "sortino",
    "calmar",
    "downside_risk",
    "max_drawdown",
    "skewness",
    "kurtosis",
)


def _max_drawdown(returns: np.ndarray) -> float:
    """Largest fall of compounded equity from its running peak, the start (1.0) included."""
    equity = np.cumprod(1.0 + returns)
    peak = np.maximum.accumulate(np.maximum(equity, 1.0))
    return float(np.max(1.0 - equity / peak))


def performance(returns: np.ndarray, periods_per_year: float) -> dict[str, float]:
    """The QuantNet paper's per-series metrics of simple returns ``r_1..r_n``, annualised by ``P``.

    Non-finite entries (NaN, ±inf) are dropped first as missing observations, so a series may be
    padded with NaN before an asset lists. With ``n`` the remaining count, ``mean`` and ``std``
    (sample, ``ddof=1``) per period:

    - ``annual_return = mean · P`` (arithmetic, the paper's definition);
    - ``cagr = (Π(1 + r))^(P / n) − 1``, the compounded growth rate (−1 once equity reaches 0);
    - ``annual_volatility = std · √P``;
    - ``sharpe = mean / std · √P``;
    - ``downside_risk = √(mean(min(r, 0)²)) · √P``, the downside deviation below a zero target
      over all ``n`` periods (empyrical's ``downside_risk``);
    - ``sortino = annual_return / downside_risk``;
    - ``max_drawdown = max_t (1 − E_t / max(1, E_1..E_t))`` with ``E_t = Π_{s≤t}(1 + r_s)``, a
      positive fraction (0.25 = 25% below the peak; above 1 only if equity turned negative);
    - ``calmar = annual_return / max_drawdown``;
    - ``skewness = m3 / m2^1.5`` and ``kurtosis = m4 / m2² − 3`` (excess), from the biased central
      moments ``m_k = mean((r − mean)^k)``, as ``scipy.stats.skew``/``kurtosis`` by default.

    NaN, never inf, where a metric is undefined: ``n == 0`` (all); ``n < 2`` (volatility, Sharpe);
    zero variance, ``std < 1e-12`` (Sharpe, skewness, kurtosis); no negative period (Sortino);
    no drawdown (Calmar); ``n < 3`` (skewness) and ``n < 4`` (kurtosis).
    """
    ppy = float(periods_per_year)
    out = dict.fromkeys(_PERFORMANCE_KEYS, math.nan)
    r = np.asarray(returns, dtype=np.float64).ravel()
    r = r[np.isfinite(r)]
    n = len(r)
    if n == 0 or not (math.isfinite(ppy) and ppy > 0):
        return out
    mean = float(np.mean(r))
    out["annual_return"] = mean * ppy
    growth = float(np.prod(1.0 + r))
    out["cagr"] = growth ** (ppy / n) - 1.0 if growth > 0 else -1.0
    downside = math.sqrt(float(np.mean(np.minimum(r, 0.0) ** 2))) * math.sqrt(ppy)
    out["downside_risk"] = downside
    if downside > 0:
        out["sortino"] = out["annual_return"] / downside
    mdd = _max_drawdown(r)
    out["max_drawdown"] = mdd
    if mdd > 0:
        out["calmar"] = out["annual_return"] / mdd
    if n < 2:
        return out
    std = float(np.std(r, ddof=1))
    if std < _ZERO_STD:
        out["annual_volatility"] = 0.0
        return out
    out["annual_volatility"] = std * math.sqrt(ppy)
    out["sharpe"] = mean / std * math.sqrt(ppy)
    dev = r - mean
    m2 = float(np.mean(dev**2))
    if n >= 3:
        out["skewness"] = float(np.mean(dev**3)) / m2**1.5
    if n >= 4:
        out["kurtosis"] = float(np.mean(dev**4)) / m2**2 - 3.0
    return out


def backtest_metrics(
    timestamps_ns: np.ndarray,
    equity: np.ndarray,
    gross_exposure: np.ndarray,
    *,
    trade_pnls: np.ndarray | Sequence[float],
    turnover_notional: float,
    n_fills: int,
    periods_per_year: float,
) -> dict[str, float]:
    """Metrics of a backtest from its per-bar equity and gross exposure, one row per bar.

    The return metrics are :func:`performance` of the equity curve's simple returns
    ``equity_t / equity_{t−1} − 1`` (``n_periods = bars − 1`` of them; a return after equity
    reached zero is undefined and dropped). Added:

    - ``total_return = equity_last / equity_first − 1``; ``final_equity``;
    - ``n_trades``: closed round trips, one PnL each in ``trade_pnls`` (net of fees);
      ``win_rate``: the share with PnL > 0 (a break-even trade is not a win);
      ``profit_factor``: gross profit / gross loss of those trades;
    - ``n_fills``, as given;
    - ``turnover = turnover_notional / mean(equity) · P / n_periods``: the equity traded per year
      (2.0 = twice the book bought or sold per year);
    - ``exposure = mean_t(gross_exposure_t / equity_t)``, the average leverage, and
      ``time_in_market``, the share of bars holding any position;
    - ``years``, the calendar span of the timestamps (365.25-day years), and ``n_periods``.

    NaN where undefined: no trades (win rate, profit factor), no losing trade (profit factor: it
    would be infinite), fewer than two bars (turnover), no bars at all (everything equity-based).
    """
    eq = np.asarray(equity, dtype=np.float64).ravel()
    gross = np.asarray(gross_exposure, dtype=np.float64).ravel()
    ts = _as_ns(timestamps_ns)
    if not (len(ts) == len(eq) == len(gross)):
        raise ValueError(
            f"timestamps ({len(ts)}), equity ({len(eq)}) and gross_exposure ({len(gross)}) "
            "must have one entry per bar"
        )
    ppy = float(periods_per_year)
    with np.errstate(divide="ignore", invalid="ignore"):
        returns = eq[1:] / eq[:-1] - 1.0
        returns[~(eq[:-1] > 0)] = math.nan
        leverage = gross / eq
    leverage[~(eq > 0)] = math.nan
    out = performance(returns, ppy)
    n_periods = max(len(eq) - 1, 0)
    out["n_periods"] = float(n_periods)
    out["years"] = float(ts.max() - ts.min()) / (365.25 * _NS_PER_DAY) if len(ts) else math.nan
    out["final_equity"] = float(eq[-1]) if len(eq) else math.nan
    out["total_return"] = float(eq[-1] / eq[0] - 1.0) if len(eq) and eq[0] > 0 else math.nan

    pnl = np.asarray(trade_pnls, dtype=np.float64).ravel()
    pnl = pnl[np.isfinite(pnl)]
    wins, losses = pnl[pnl > 0], pnl[pnl < 0]
    out["n_trades"] = float(len(pnl))
    out["win_rate"] = len(wins) / len(pnl) if len(pnl) else math.nan
    out["profit_factor"] = float(wins.sum() / -losses.sum()) if len(losses) else math.nan
    out["n_fills"] = float(n_fills)

    finite = eq[np.isfinite(eq)]
    mean_equity = float(np.mean(finite)) if len(finite) else math.nan
    out["turnover"] = (
        float(turnover_notional) / mean_equity * ppy / n_periods
        if n_periods and mean_equity > 0
        else math.nan
    )
    valid = np.isfinite(leverage)
    out["exposure"] = float(np.mean(leverage[valid])) if valid.any() else math.nan
    out["time_in_market"] = float(np.mean(leverage[valid] > 1e-9)) if valid.any() else math.nan
    return out


def equity_returns(equity: np.ndarray) -> np.ndarray:
    """Simple returns ``e_t / e_{t-1} - 1`` of an equity curve; NaN after equity reached zero."""
    eq = np.asarray(equity, dtype=np.float64).ravel()
    if len(eq) < 2:
        return np.zeros(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = eq[1:] / eq[:-1] - 1.0
    r[~(eq[:-1] > 0)] = math.nan
    return r


def buy_and_hold(closes: np.ndarray) -> np.ndarray:
    """Value (starting at 1) of an equal-weight buy-and-hold of the columns of a time × asset
    close matrix, NaN where an asset has no bar.

    Each of the N assets gets 1/N of the capital, held as cash until the asset's first close and
    then bought there and never rebalanced; an asset without a bar keeps its last close. This is
    what a user could have done instead of running the strategy on the same universe, including
    assets that list late. A single column is that asset's price relative to its first close.
    """
    c = np.asarray(closes, dtype=np.float64)
    if c.ndim == 1:
        c = c[:, None]
    n_t, n = c.shape
    if n_t == 0 or n == 0:
        return np.ones(n_t)
    filled = pd.DataFrame(c).ffill().to_numpy()
    valid = np.isfinite(filled) & (filled > 0)
    first_row = np.where(valid.any(axis=0), valid.argmax(axis=0), n_t)
    base = np.array([filled[r, j] if r < n_t else 1.0 for j, r in enumerate(first_row)])
    rel = filled / base
    rel[~valid] = 1.0
    return rel.mean(axis=1)


def benchmark_curve(closes: np.ndarray, symbols: Sequence[str], symbol: str = "") -> tuple[str, np.ndarray]:
    """The benchmark's name and value per row: ``symbol``'s price relative to its first close, or
    with no symbol the equal-weight buy-and-hold of every column (:func:`buy_and_hold`)."""
    if not symbol:
        return f"equal-weight buy-and-hold of {len(symbols)} symbols", buy_and_hold(closes)
    if symbol not in symbols:
        raise ValueError(f"benchmark {symbol} is not in the data (symbols: {', '.join(symbols[:20])})")
    return symbol, buy_and_hold(np.asarray(closes)[:, list(symbols).index(symbol)])


_BENCHMARK_KEYS = ("alpha", "beta", "correlation", "tracking_error", "information_ratio")


def benchmark_stats(
    returns: np.ndarray, benchmark_returns: np.ndarray, periods_per_year: float
) -> dict[str, float]:
    """The strategy against a benchmark, from per-period simple returns of both (same periods).

    Periods where either return is not finite are dropped. With means and sample (``ddof=1``)
    moments over the rest and ``P`` periods per year:

    - ``beta = cov(r, b) / var(b)``, the OLS slope of ``r`` on ``b``;
    - ``alpha = (mean(r) − beta · mean(b)) · P``, the OLS intercept annualised (no risk-free rate,
      arithmetic, like ``annual_return``);
    - ``correlation`` of ``r`` and ``b``;
    - ``tracking_error = std(r − b) · √P``;
    - ``information_ratio = mean(r − b) · P / tracking_error``.

    NaN where undefined: fewer than two periods, a constant benchmark (beta, alpha, correlation),
    a constant strategy (correlation), ``r − b`` constant (information ratio).
    """
    out = dict.fromkeys(_BENCHMARK_KEYS, math.nan)
    r = np.asarray(returns, dtype=np.float64).ravel()
    b = np.asarray(benchmark_returns, dtype=np.float64).ravel()
    if len(r) != len(b):
        raise ValueError(f"returns ({len(r)}) and benchmark returns ({len(b)}) must have equal length")
    ok = np.isfinite(r) & np.isfinite(b)
    r, b = r[ok], b[ok]
    ppy = float(periods_per_year)
    if len(r) < 2:
        return out
    active = r - b
    te = float(np.std(active, ddof=1))
    out["tracking_error"] = te * math.sqrt(ppy)
    if te >= _ZERO_STD:
        out["information_ratio"] = float(np.mean(active)) * ppy / out["tracking_error"]
    sb, sr = float(np.std(b, ddof=1)), float(np.std(r, ddof=1))
    if sb >= _ZERO_STD:
        cov = float(np.mean((r - r.mean()) * (b - b.mean()))) * len(r) / (len(r) - 1)
        beta = cov / sb**2
        out["beta"] = beta
        out["alpha"] = (float(r.mean()) - beta * float(b.mean())) * ppy
        if sr >= _ZERO_STD:
            out["correlation"] = cov / (sb * sr)
    return out


def versus_benchmark(equity: np.ndarray, benchmark: np.ndarray, periods_per_year: float) -> dict[str, float]:
    """The summary's benchmark figures: :func:`benchmark_stats` of the two curves' returns, and the
    benchmark's own ``benchmark_return`` (total), ``benchmark_cagr``, ``benchmark_sharpe`` and
    ``benchmark_max_drawdown``. ``benchmark`` is its value on the equity curve's rows, any scale."""
    b = np.asarray(benchmark, dtype=np.float64).ravel()
    br = equity_returns(b)
    out = benchmark_stats(equity_returns(equity), br, periods_per_year)
    perf = performance(br, periods_per_year)
    valid = b[np.isfinite(b)]
    out["benchmark_return"] = float(valid[-1] / valid[0] - 1.0) if len(valid) and valid[0] > 0 else math.nan
    out["benchmark_cagr"] = perf["cagr"]
    out["benchmark_sharpe"] = perf["sharpe"]
    out["benchmark_max_drawdown"] = perf["max_drawdown"]
    return out


def rolling_stats(returns: np.ndarray, window: int, periods_per_year: float) -> tuple[np.ndarray, np.ndarray]:
    """Rolling annualised Sharpe ratio and volatility over the last ``window`` returns.

    Entry ``t`` uses returns ``t − window + 1 .. t`` (sample std, as :func:`performance`); NaN for
    the first ``window − 1`` entries, over a window with a missing return, and (Sharpe) where the
    window is flat.
    """
    if window < 2:
        raise ValueError(f"rolling window must be at least 2 periods, got {window}")
    r = pd.Series(np.asarray(returns, dtype=np.float64).ravel())
    roll = r.rolling(window, min_periods=window)
    mean = roll.mean().to_numpy()
    std = roll.std(ddof=1).to_numpy()
    ppy = float(periods_per_year)
    vol = std * math.sqrt(ppy)
    with np.errstate(divide="ignore", invalid="ignore"):
        sharpe = np.where(std >= _ZERO_STD, mean / std * math.sqrt(ppy), math.nan)
    vol = np.where(np.isfinite(std) & (std < _ZERO_STD), 0.0, vol)
    return sharpe, vol


def _equity_series(timestamps_ns: np.ndarray, equity: np.ndarray) -> pd.Series:
    ts = _as_ns(timestamps_ns)
    eq = np.asarray(equity, dtype=np.float64).ravel()
    if len(ts) != len(eq):
        raise ValueError(f"timestamps ({len(ts)}) and equity ({len(eq)}) must have one entry per bar")
    return pd.Series(eq, index=pd.DatetimeIndex(ts.view("datetime64[ns]")).tz_localize("UTC"))


def _period_returns(series: pd.Series, freq: str) -> pd.Series:
    """Compounded return per calendar period: its last equity over the previous period's last (the
    first period's over the first equity)."""
    last = series.resample(freq).last().dropna()
    prev = last.shift(1)
    if len(prev):
        prev.iloc[0] = series.iloc[0]
    return last / prev - 1.0


def calendar_returns(timestamps_ns: np.ndarray, equity: np.ndarray) -> dict[str, Any]:
    """Daily, monthly and yearly compounded returns of an equity curve (UTC calendar), and the best
    and worst of each.

    A period's return is its last equity over the previous period's last (the first period's over
    the curve's first value), so the returns of a period's sub-periods compound to it. Periods
    without a bar are left out. Returns ``{"daily", "monthly", "yearly"}`` (pandas Series indexed
    by each period's start) and ``"best"``/``"worst"``: ``{"day", "month", "year"}`` → ``(label,
    return)`` or None.
    """
    series = _equity_series(timestamps_ns, equity)
    out: dict[str, Any] = {"best": {}, "worst": {}}
    for name, freq, fmt in (("daily", "D", "%Y-%m-%d"), ("monthly", "MS", "%Y-%m"), ("yearly", "YS", "%Y")):
        ret = _period_returns(series, freq) if len(series) else pd.Series(dtype=float)
        ret = ret[np.isfinite(ret.to_numpy())]
        out[name] = ret
        unit = name[:-2] if name != "daily" else "day"
        if len(ret):
            hi, lo = int(np.argmax(ret.to_numpy())), int(np.argmin(ret.to_numpy()))
            out["best"][unit] = (ret.index[hi].strftime(fmt), float(ret.iloc[hi]))
            out["worst"][unit] = (ret.index[lo].strftime(fmt), float(ret.iloc[lo]))
        else:
            out["best"][unit] = out["worst"][unit] = None
    return out


def drawdown_periods(timestamps_ns: np.ndarray, equity: np.ndarray, top: int = 10) -> list[dict[str, Any]]:
    """The ``top`` deepest drawdowns of an equity curve, deepest first.

    A drawdown starts at the last bar at a running peak (``start``), reaches its lowest equity at
    ``trough`` and ends at ``recovery``, the first later bar back at or above the peak (None while
    it has not recovered). ``depth = 1 − trough equity / peak`` (0.2 = 20% below the peak);
    ``bars`` counts the bars from start to recovery (or to the last bar), ``days`` the calendar
    time between them; ``trough_bars`` and ``recovery_bars`` split it. Timestamps are pandas UTC
    Timestamps.
    """
    series = _equity_series(timestamps_ns, equity)
    eq = series.to_numpy()
    n = len(eq)
    if n == 0:
        return []
    peak = np.fmax.accumulate(eq)
    under = eq < peak
    if not under.any():
        return []
    edges = np.diff(np.r_[0, under.astype(np.int8), 0])
    starts = np.flatnonzero(edges == 1)  # first bar under water; the peak is the bar before
    ends = np.flatnonzero(edges == -1)  # first bar back at the peak (n: not recovered)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(peak > 0, eq / peak, np.nan)
    filled = np.where(np.isfinite(ratio), ratio, np.inf)
    troughs = np.array([s + int(np.argmin(filled[s:e])) for s, e in zip(starts, ends, strict=True)])
    depth = 1.0 - ratio[troughs]
    order = np.argsort(-depth, kind="stable")[: max(top, 0)]
    stamps = series.index
    out = []
    for k in order:
        s, e, t = int(starts[k]) - 1, int(ends[k]), int(troughs[k])
        s = max(s, 0)
        recovered = e < n
        last = e if recovered else n - 1
        out.append(
            {
                "start": stamps[s],
                "trough": stamps[t],
                "recovery": stamps[e] if recovered else None,
                "depth": float(depth[k]),
                "bars": last - s,
                "trough_bars": t - s,
                "recovery_bars": (e - t) if recovered else None,
                "days": (stamps[last] - stamps[s]) / pd.Timedelta(days=1),
            }
        )
    return out
