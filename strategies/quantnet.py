"""QuantNet on the event bus: bar cross-sections in, volatility-targeted weights out.

Each bar the strategy turns closes into one simple-return vector per market (NaN for an asset
without a bar: fed to the model as masked, and that asset is not traded), advances every market's
LSTM states by one step in a single batched call, and sizes the signals:

    w_j = s_j × vol_target / σ_j / N_assets, then |w_j| ≤ max_position, then Σ|w| ≤ max_gross

where σ_j is an exponentially weighted estimate of asset j's annualised volatility from past
returns only (the deep-momentum convention). The first ``warmup`` bars only settle the states and
volatility estimates. A signal s_t computed from returns up to bar t trades at bar t+1's open.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import structlog
from pydantic import Field

from engine.events import BarSet
from engine.strategy import Params, Strategy, StrategyContext, StrategyError
from models.checkpoint import load_checkpoint
from models.data import returns_from_closes
from models.stepper import SignalStepper

log = structlog.get_logger("strategies.quantnet")


class QuantNetParams(Params):
    model: str = Field(description="checkpoint written by `quantnet train`")
    vol_target: float | None = Field(
        0.15, gt=0, description="annualised volatility target per asset; None: weight = signal / N"
    )
    vol_span: int = Field(60, ge=2, description="span (bars) of the EWM volatility estimate")
    max_position: float = Field(1.0, gt=0, le=1, description="cap on |weight| per asset")
    max_gross: float = Field(1.0, gt=0, description="cap on the sum of |weights|")
    threshold: float = Field(0.0, ge=0, lt=1, description="|signal| below this: flat")
    min_change: float = Field(
        0.0, ge=0, description="only re-target an asset when its weight moves this much"
    )
    warmup: int = Field(63, ge=0, description="bars that only settle states before the first trade")


class ModelDataMismatch(StrategyError):
    """The data's instruments do not cover the checkpoint's markets."""


class QuantNetStrategy(Strategy):
    name = "quantnet"
    Params = QuantNetParams

    @property
    def warmup_bars(self) -> int:
        return self.params.warmup

    def on_start(self, symbols: tuple[str, ...]) -> None:
        p = self.params
        path = Path(p.model)
        if not path.is_file():
            raise StrategyError(f"QuantNet checkpoint {path} not found (train one with `quantnet train`)")
        try:
            ckpt = load_checkpoint(path, map_location="cpu")
        except (ValueError, RuntimeError, OSError) as exc:
            raise StrategyError(f"{path}: cannot load the QuantNet checkpoint: {exc}") from None
        position = {s: i for i, s in enumerate(symbols)}
        markets = ckpt.markets
        missing = {m: [a for a in assets if a not in position] for m, assets in markets.items()}
        missing = {m: a for m, a in missing.items() if a}
        if missing:
            detail = "; ".join(f"{m}: {', '.join(a)}" for m, a in missing.items())
            raise ModelDataMismatch(f"{path}: the data has no bars for the model's assets ({detail})")
        self.stepper = SignalStepper(ckpt.model)
        self.market_index = {m: np.array([position[a] for a in markets[m]]) for m in self.stepper.markets}
        covered = np.concatenate(list(self.market_index.values()))
        if len(np.unique(covered)) != len(covered):
            raise ModelDataMismatch(f"{path}: an asset belongs to more than one market")
        ignored = sorted(set(symbols) - {symbols[i] for i in covered})
        if ignored:
            log.warning("instruments outside the model's markets are not traded", symbols=ignored)
        n = len(symbols)
        self.covered = np.zeros(n, dtype=bool)
        self.covered[covered] = True
        self.n_assets = len(covered)
        self.ppy = ckpt.periods_per_year
        self._alpha = 2.0 / (p.vol_span + 1.0)
        self._var = np.full(n, np.nan)
        self._prev = np.full(n, np.nan)
        self._signal = np.zeros(n)
        self._held = np.zeros(n)
        self._bars = 0

    def on_bars(self, bars: BarSet, ctx: StrategyContext) -> np.ndarray | None:
        close = bars.close
        r = close / self._prev - 1.0  # prices are positive: NaN where either close is missing
        seen = close == close
        np.copyto(self._prev, close, where=seen)
        self._update_vol(r, r == r)
        # a market without a single bar (its exchange was closed) keeps its state: such a bar
        # never appears in its training data either
        if seen.all():
            live = {m: r[idx] for m, idx in self.market_index.items()}
        else:
            live = {m: r[idx] for m, idx in self.market_index.items() if seen[idx].any()}
        if live:
            signal = self._signal
            for m, s in self.stepper.step(live).items():
                signal[self.market_index[m]] = s
        self._bars += 1
        if self._bars <= self.params.warmup:
            return None
        return self._targets(seen)

    _STATE = ("_var", "_prev", "_signal", "_held", "_bars")

    def snapshot(self) -> bytes:
        """The LSTM states (the stepper's own snapshot, tied to this model) and the sizing state."""
        return pickle.dumps((self.stepper.snapshot(), {k: getattr(self, k) for k in self._STATE}))

    def restore(self, blob: bytes) -> None:
        stepper, rest = pickle.loads(blob)
        self.stepper.restore(stepper)
        for k, v in rest.items():
            setattr(self, k, v)

    def warm_up(self, closes: np.ndarray) -> None:
        """Settle states and volatility estimates from past closes (T × universe, NaN = no bar),
        e.g. the exchange's REST history before a live start; trading starts with the next bar.

        One full-sequence pass per market instead of T incremental steps.
        """
        closes = np.asarray(closes, dtype=float)
        r = returns_from_closes(np.vstack([self._prev, closes]))[1:]
        seen = ~np.isnan(closes)
        histories = {m: r[:, idx][seen[:, idx].any(axis=1)] for m, idx in self.market_index.items()}
        for m, signal in self.stepper.warm_up(histories).items():
            self._signal[self.market_index[m]] = signal
        for row in r:
            self._update_vol(row, np.isfinite(row))
        for row in closes:
            np.copyto(self._prev, row, where=row == row)
        self._bars = max(self._bars + len(closes), self.params.warmup)

    def _update_vol(self, r: np.ndarray, fresh: np.ndarray) -> None:
        """EWM of squared returns, seeded by an asset's first return; untouched where none is new."""
        var = self._var
        sq = r * r
        first = fresh & (var != var)
        np.copyto(var, sq, where=first)
        np.copyto(var, var + self._alpha * (sq - var), where=fresh & ~first)

    def _targets(self, seen: np.ndarray) -> np.ndarray | None:
        p = self.params
        s = self._signal
        if p.threshold > 0:
            s = np.where(np.abs(s) < p.threshold, 0.0, s)
        if p.vol_target is None:
            w = s / self.n_assets
        else:
            vol = np.sqrt(self._var * self.ppy)
            w = np.divide(s * (p.vol_target / self.n_assets), vol, out=np.full_like(s, np.nan), where=vol > 0)
        tradable = self.covered & seen & (w == w)
        w = np.where(tradable, w, 0.0)
        np.clip(w, -p.max_position, p.max_position, out=w)
        gross = np.abs(w).sum()
        if gross > p.max_gross:
            w *= p.max_gross / gross
        change = tradable & (np.abs(w - self._held) > p.min_change)
        if not change.any():
            return None
        np.copyto(self._held, w, where=change)
        return np.where(change, w, np.nan)
