"""Classical baselines from the QuantNet paper's appendix B, plus an SMA crossover.

The paper defines its baselines per asset (a signal s_j whose scale cannot change a per-asset
Sharpe ratio). A portfolio needs a scale, so each baseline here states how its signals become
weights of equity; ``weight`` defaults to 1/N so that gross exposure stays at or below one.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np
from pydantic import Field, model_validator

from engine.events import BarSet
from engine.strategy import Decisions, Params, Strategy, StrategyContext


def _per_asset(weight: float | None, n: int) -> float:
    return weight if weight is not None else 1.0 / n


class NoOp(Strategy):
    """Never trades: measures the engine itself."""

    name = "noop"

    def precompute(self, closes: np.ndarray) -> Decisions:
        return Decisions(np.zeros(0, dtype=np.int64), np.zeros((0, closes.shape[1])))

    def on_bars(self, bars: BarSet, ctx: StrategyContext) -> np.ndarray | None:
        return None


class BuyAndHoldParams(Params):
    weight: float | None = Field(None, gt=0, le=1, description="weight per asset; default 1/N")


class BuyAndHold(Strategy):
    """Paper: s = 1 for every asset. Here: buy each asset once at ``weight`` and hold it."""

    name = "buy_and_hold"
    Params = BuyAndHoldParams

    def on_start(self, symbols: tuple[str, ...]) -> None:
        self.weight = _per_asset(self.params.weight, len(symbols))
        self._bought = np.zeros(len(symbols), dtype=bool)

    def on_bars(self, bars: BarSet, ctx: StrategyContext) -> np.ndarray | None:
        new = ~self._bought & ~np.isnan(bars.close)
        if not new.any():
            return None
        self._bought |= new
        return np.where(new, self.weight, np.nan)


class SmaCrossoverParams(Params):
    fast: int = Field(10, ge=1)
    slow: int = Field(30, ge=2)
    target: float | None = Field(None, gt=0, le=1, description="weight held while fast > slow; default 1/N")
    short: bool = Field(False, description="hold -target while fast < slow instead of staying flat")
    quantity: float | None = Field(
        None, gt=0, description="hold this many units (not a weight) while fast > slow; excludes target"
    )

    @model_validator(mode="after")
    def _fast_below_slow(self) -> SmaCrossoverParams:
        if self.fast >= self.slow:
            raise ValueError(f"fast ({self.fast}) must be shorter than slow ({self.slow})")
        if self.quantity is not None and self.target is not None:
            raise ValueError("give target (a weight) or quantity (units), not both")
        return self


class SmaCrossover(Strategy):
    """Long ``target`` (or ``quantity`` units) while the fast simple moving average of closes is
    above the slow one.

    Moving sums are updated incrementally, so a bar costs O(assets) whatever the windows.
    """

    name = "sma_crossover"
    Params = SmaCrossoverParams

    @property
    def warmup_bars(self) -> int:
        return self.params.slow

    def on_start(self, symbols: tuple[str, ...]) -> None:
        p = self.params
        n = len(symbols)
        self.units = p.quantity is not None
        self.target = p.quantity if p.quantity is not None else _per_asset(p.target, n)
        self._ring = np.zeros((p.slow, n))
        self._count = np.zeros(n, dtype=np.int64)
        self._steps = 0
        self._lockstep = True
        self._fast_sum = np.zeros(n)
        self._slow_sum = np.zeros(n)
        self._diff = np.zeros(n)
        self._above = np.zeros(n, dtype=bool)
        self._ready = np.zeros(n, dtype=bool)

    def precompute(self, closes: np.ndarray) -> Decisions | None:
        """The lockstep path of :meth:`on_bars` for all bars at once, with the same arithmetic:
        each running sum is the sequential cumulative sum of the same differences (close minus
        the close leaving the window, or minus the ring's initial 0.0). Only for data where every
        symbol has every bar (otherwise None: the per-bar path keeps a count per series)."""
        p = self.params
        n_bars, n = closes.shape
        if n_bars < p.slow or np.isnan(closes).any():
            return None if n_bars >= p.slow else Decisions(np.zeros(0, np.int64), np.zeros((0, n)))
        start = p.slow - 1
        above = np.empty((n_bars - start, n), dtype=bool)
        for j in range(n):  # one column at a time: temporaries of one series, not of the matrix
            c = closes[:, j]
            d = c.copy()
            d[p.slow :] -= c[: -p.slow]
            slow_sum = np.cumsum(d)
            d[:] = c
            d[p.fast :] -= c[: -p.fast]
            fast_sum = np.cumsum(d)
            np.greater(fast_sum[start:] * p.slow, slow_sum[start:] * p.fast, out=above[:, j])
        changed = np.empty_like(above)
        changed[0] = True
        np.not_equal(above[1:], above[:-1], out=changed[1:])
        rows = np.flatnonzero(changed.any(axis=1))
        low = -self.target if p.short else 0.0
        picked = above[rows]
        targets = np.where(changed[rows], np.where(picked, self.target, low), np.nan)
        return Decisions(rows + start, targets)

    def on_bars(self, bars: BarSet, ctx: StrategyContext) -> np.ndarray | None:
        close = bars.close
        total = close.sum()
        if not (self._lockstep and total == total):
            return self._step_each(close)
        p = self.params
        k = self._steps
        ring = self._ring
        diff = self._diff
        np.subtract(close, ring[k % p.slow], out=diff)
        self._slow_sum += diff
        if k >= p.fast:
            np.subtract(close, ring[(k - p.fast) % p.slow], out=diff)
            self._fast_sum += diff
        else:
            self._fast_sum += close
        ring[k % p.slow] = close
        self._steps = k + 1
        if k + 1 < p.slow:
            return None
        if k + 1 == p.slow:
            self._ready[:] = True
            self._count[:] = p.slow
            return self._decide(self._ready, force=True)
        return self._decide(self._ready)

    def _step_each(self, close: np.ndarray) -> np.ndarray | None:
        """Slow path for bars with missing instruments: each series keeps its own count."""
        p = self.params
        if self._lockstep:
            self._lockstep = False
            self._count[:] = self._steps
        seen = close == close
        for j in np.flatnonzero(seen):
            c = self._count[j]
            out_slow = self._ring[c % p.slow, j]
            out_fast = self._ring[(c - p.fast) % p.slow, j] if c >= p.fast else 0.0
            self._slow_sum[j] += close[j] - out_slow
            self._fast_sum[j] += close[j] - out_fast
            self._ring[c % p.slow, j] = close[j]
            self._count[j] = c + 1
        newly = seen & ~self._ready & (self._count >= p.slow)
        self._ready |= newly
        return self._decide(self._ready & seen, force_mask=newly)

    def _decide(
        self, ready: np.ndarray, *, force: bool = False, force_mask: np.ndarray | None = None
    ) -> np.ndarray | None:
        p = self.params
        above = self._fast_sum * p.slow > self._slow_sum * p.fast
        changed = above != self._above
        if force_mask is not None:
            changed |= force_mask
        elif force:
            changed[:] = True
        changed &= ready
        if not changed.any():
            return None
        np.copyto(self._above, above, where=changed)
        low = -self.target if p.short else 0.0
        return np.where(changed, np.where(above, self.target, low), np.nan)


class WindowParams(Params):
    lookback: int = Field(252, ge=2, description="bars of history behind each decision")
    rebalance_every: int = Field(21, ge=1, description="bars between rebalances")
    weight: float | None = Field(None, gt=0, le=1, description="gross weight per asset; default 1/N")


class _WindowStrategy(Strategy):
    """Decides every ``rebalance_every`` bars from the last ``lookback`` closes."""

    Params = WindowParams

    def __init__(self, params: Params | None = None) -> None:
        super().__init__(params)
        self.window = self.params.lookback + 1

    def on_start(self, symbols: tuple[str, ...]) -> None:
        self.weight = _per_asset(self.params.weight, len(symbols))

    def on_bars(self, bars: BarSet, ctx: StrategyContext) -> np.ndarray | None:
        p = self.params
        n = ctx.bars_seen
        if n < self.window or (n - self.window) % p.rebalance_every:
            return None
        closes = ctx.closes
        with np.errstate(invalid="ignore", divide="ignore"):
            returns = closes[1:] / closes[:-1] - 1.0
        enough = (~np.isnan(returns)).sum(axis=0) >= max(2, p.lookback // 2)
        live = enough & ~np.isnan(bars.close)
        if not live.any():
            return None
        targets = self.weights(returns, live)
        return np.where(live, targets, np.where(np.isnan(bars.close), np.nan, 0.0))

    @abstractmethod
    def weights(self, returns: np.ndarray, live: np.ndarray) -> np.ndarray:
        """Target weights from the window's returns, for the ``live`` assets."""


class TimeSeriesMomentum(_WindowStrategy):
    """Paper: s_j = mean return over the lookback. Here: ``weight`` × sign of that mean."""

    name = "ts_momentum"

    def weights(self, returns: np.ndarray, live: np.ndarray) -> np.ndarray:
        mean = np.nanmean(np.where(live, returns, 0.0), axis=0)
        return self.weight * np.sign(mean)


class CrossSectionalMomentumParams(WindowParams):
    quantile: float = Field(
        0.33, gt=0, le=0.5, description="fraction of assets long (top) and short (bottom)"
    )


class CrossSectionalMomentum(_WindowStrategy):
    """Paper: long the top third by mean lookback return, short the bottom third (q = 0.33).

    Here: equal weights, ``weight`` × N / (2k) on each of the k longs and k shorts, so the book is
    dollar-neutral with gross exposure N × ``weight``."""

    name = "cs_momentum"
    Params = CrossSectionalMomentumParams

    def weights(self, returns: np.ndarray, live: np.ndarray) -> np.ndarray:
        mean = np.nanmean(np.where(live, returns, 0.0), axis=0)
        idx = np.flatnonzero(live)
        k = int(np.floor(len(idx) * self.params.quantile + 1e-9))
        out = np.zeros(len(live))
        if k == 0:
            return out
        ranked = idx[np.argsort(mean[idx], kind="stable")]
        each = min(1.0, self.weight * len(live) / (2 * k))
        out[ranked[-k:]] = each
        out[ranked[:k]] = -each
        return out


class RiskParity(_WindowStrategy):
    """Paper: s_j ∝ 1/σ_j over the lookback, normalised over the market's assets (sum of weights
    = N × ``weight``, i.e. fully invested by default)."""

    name = "risk_parity"

    def weights(self, returns: np.ndarray, live: np.ndarray) -> np.ndarray:
        vol = np.nanstd(np.where(live, returns, np.nan), axis=0, ddof=1)
        inv = np.where(live & (vol > 0), 1.0 / np.where(vol > 0, vol, 1.0), 0.0)
        total = inv.sum()
        if total <= 0:
            return np.zeros(len(live))
        return np.minimum(inv / total * self.weight * len(live), 1.0)


BASELINES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (NoOp, BuyAndHold, SmaCrossover, TimeSeriesMomentum, CrossSectionalMomentum, RiskParity)
}
