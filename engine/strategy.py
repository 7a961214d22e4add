"""The strategy interface and the host that runs strategies on the bus.

A strategy sees a bar cross-section and, if it asked for one, a window of past closes that ends at
the current bar: the host appends each bar after it has happened, so no strategy can look ahead.
It answers with target weights (fraction of equity per asset; NaN = leave as is) or None. The host
contains user and model code (Freqtrade's strategy wrapper): a non-finite or out-of-range target
becomes "no change" for that asset, with a warning, and never an order.
"""

from __future__ import annotations

import pickle
from abc import ABC, abstractmethod
from array import array
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import structlog
from pydantic import BaseModel, ConfigDict

from engine.bus import BusMode, EventBus
from engine.clock import Clock
from engine.events import BarSet, Signal
from engine.numeric import count_nonzero

log = structlog.get_logger("engine.strategy")


class StrategyError(ValueError):
    """A strategy cannot be built or started: unknown name, bad parameters, unusable model."""


class Params(BaseModel):
    """Base for strategy parameters: typed, validated once at the boundary, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StrategyContext:
    """What a strategy may look at: the universe, the past, and its own current weights."""

    __slots__ = ("_buf", "_n", "_weights", "_window", "now_ns", "symbols")

    def __init__(
        self, symbols: tuple[str, ...], window: int, weights: Callable[[], np.ndarray] | None = None
    ) -> None:
        self.symbols = symbols
        self.now_ns = 0
        self._weights = weights
        self._window = window
        self._buf = np.full((2 * max(window, 1), len(symbols)), np.nan)
        self._n = 0

    def _append(self, close: np.ndarray) -> None:
        w = self._window
        if w == 0:
            return
        slot = self._n % w
        self._buf[slot] = close
        self._buf[slot + w] = close
        self._n += 1

    @property
    def closes(self) -> np.ndarray:
        """Past closes up to and including the current bar, oldest first, at most ``window`` rows.

        NaN where an asset had no bar. A read-only view: valid until the next bar.
        """
        w = self._window
        n = self._n
        if n < w:
            view = self._buf[w : w + n] if n else self._buf[:0]
        else:
            start = n % w
            view = self._buf[start : start + w]
        view = view.view()
        view.flags.writeable = False
        return view

    @property
    def weights(self) -> np.ndarray:
        """Current position per asset as a fraction of equity (zeros when no portfolio is attached)."""
        return self._weights() if self._weights is not None else np.zeros(len(self.symbols))

    @property
    def bars_seen(self) -> int:
        return self._n


@dataclass(frozen=True, slots=True)
class Decisions:
    """Every answer a strategy gives over a replay, computed at once: at bar ``index[k]`` (sorted)
    it returns ``targets[k]``; at every other bar None."""

    index: np.ndarray
    targets: np.ndarray


class Strategy(ABC):
    """Subclass, set ``name`` and ``Params``, implement ``on_bars``.

    ``window`` is how many past closes the host keeps for ``ctx.closes`` (0: none, cheapest).
    ``units``: targets are quantities of each instrument instead of fractions of equity (read
    after ``on_start``).
    """

    name: ClassVar[str]
    Params: ClassVar[type[Params]] = Params
    window: int = 0
    units: bool = False

    def __init__(self, params: Params | None = None) -> None:
        self.params = params if params is not None else self.Params()

    @property
    def warmup_bars(self) -> int:
        """Bars before the start that settle this strategy's state (replay feeds them when the data
        has them, without trading)."""
        return self.window

    @classmethod
    def from_params(cls, raw: dict[str, Any]) -> Strategy:
        return cls(cls.Params.model_validate(raw))

    def on_start(self, symbols: tuple[str, ...]) -> None:
        """Called once with the universe before the first bar."""

    def snapshot(self) -> bytes:
        """The strategy's state after the last bar, for crash recovery (default: its attributes
        other than the parameters, pickled; strategies holding models override this)."""
        return pickle.dumps({k: v for k, v in vars(self).items() if k != "params"})

    def restore(self, blob: bytes) -> None:
        """Load what :meth:`snapshot` wrote, on a strategy started with the same universe."""
        vars(self).update(pickle.loads(blob))

    def report_info(self) -> dict[str, Any] | None:
        """Plain data about this strategy for the backtest report, or None. Keys the report knows:
        ``model`` (path), ``variant``, ``markets`` ({name: [symbols]}: per-market P&L and Sharpe),
        ``windows`` ([{name: "training" | "validation", start, end}] ISO times, shaded on every
        time axis), ``validation_sharpe``, ``market_validation_sharpe`` ({market: Sharpe}),
        ``best_step``, ``steps_run`` and ``settings`` (a flat mapping shown as a table)."""
        return None

    def precompute(self, closes: np.ndarray) -> Decisions | None:
        """What ``on_bars`` would answer on each bar of a replay of ``closes`` (time × universe,
        NaN: no bar) from a fresh start, computed at once as backtesting.py precomputes its
        indicators; None (the default) when the strategy cannot say in advance. Each answer may
        use closes up to its own bar only, and must equal the bar-by-bar one exactly: a replay
        given Decisions publishes only the bars on which something can happen, and skips the
        others (the strategy's own state then does not advance)."""
        return None

    def replay_times(self, times: np.ndarray) -> None:
        """Called with the bar stamps (``ts_event``) of a replay before its precomputed decisions
        are served: what ``on_bars`` would check of the bars' times (and raise or warn about), a
        strategy that precomputes does here. Default: nothing."""

    @abstractmethod
    def on_bars(self, bars: BarSet, ctx: StrategyContext) -> np.ndarray | None:
        """Return target weights per symbol (NaN: no change) or None for no change at all."""


class StrategyHost:
    """Runs one strategy on the bus: BarSet in, Signal out."""

    def __init__(
        self,
        strategy: Strategy,
        bus: EventBus,
        clock: Clock,
        symbols: tuple[str, ...],
        *,
        max_weight: float = 1.0,
        weights: Callable[[], np.ndarray] | None = None,
    ) -> None:
        self.strategy = strategy
        self.bus = bus
        self.clock = clock
        self.max_weight = max_weight
        self._weight_cap = np.array(max_weight + 1e-12)  # 0-d: see engine.numeric
        self.ctx = StrategyContext(symbols, strategy.window, weights)
        self.invalid_targets = 0
        self.strict = bus.mode is BusMode.BACKTEST
        self.max_gross_target = 0.0
        self._targets = np.zeros(len(symbols))
        self._standing: np.ndarray | None = None
        self._plan: _Plan | None = None
        strategy.on_start(symbols)
        bus.subscribe(BarSet, self.on_bars)

    def use(self, decisions: Decisions, times: np.ndarray) -> None:
        """Answer from precomputed decisions (keyed by ``BarSet.index``; ``times[index]`` is the
        bar's ``ts_event``) instead of calling the strategy. The answers are checked as if given
        bar by bar: invalid ones here, at once (an error in a backtest, naming the first), the
        standing gross target as each is served."""
        self.strategy.replay_times(times)
        targets = np.array(decisions.targets, dtype=float, copy=True)
        index = np.asarray(decisions.index, dtype=np.int64)
        n = len(self.ctx.symbols)
        if targets.ndim != 2 or targets.shape[1:] != (n,) or len(targets) != len(index):
            raise ValueError(
                f"strategy {self.strategy.name} precomputed targets of shape {targets.shape} for "
                f"{len(index)} bars, expected ({len(index)}, {n})"
            )
        bad = self._invalid(targets)
        rows = np.flatnonzero(bad.any(axis=1))
        for r in rows:
            self._check(targets[r], int(times[index[r]]))
        if len(index) > 1 and not (index[1:] > index[:-1]).all():
            raise ValueError(f"strategy {self.strategy.name} precomputed decisions out of bar order")
        self._plan = _Plan(index, targets, gross=not self.strategy.units)

    @property
    def planned(self) -> bool:
        """Whether the answers come from precomputed decisions (:meth:`use`)."""
        return self._plan is not None

    @property
    def standing(self) -> np.ndarray | None:
        """Targets remembered from the warm-up, sent with the first live bar (None: none)."""
        return self._standing

    @property
    def quiet(self) -> bool:
        """Whether a bar without a precomputed decision would publish nothing."""
        return self._standing is None and self._plan is not None

    def warm(self, bars: BarSet) -> None:
        """Feed a bar from before the start: the strategy settles its state and its targets are
        remembered, not traded; the first live bar sends the targets standing by then."""
        targets = self._decide(bars)
        if self._standing is None:
            self._standing = np.full(len(self.ctx.symbols), np.nan)
        if targets is not None:
            np.copyto(self._standing, targets, where=~np.isnan(targets))

    def replay(self, bars: BarSet) -> None:
        """Step through a bar that was already traded (restoring state after a snapshot): the
        strategy's state advances, nothing is published."""
        self._decide(bars)

    def snapshot(self) -> bytes:
        ctx = self.ctx
        host = (ctx._buf, ctx._n, ctx.now_ns, self._standing, self.invalid_targets)
        return pickle.dumps((host, self.strategy.snapshot()))

    def restore(self, blob: bytes) -> None:
        host, strategy = pickle.loads(blob)
        ctx = self.ctx
        buf, ctx._n, ctx.now_ns, self._standing, self.invalid_targets = host
        ctx._buf[...] = buf
        self.strategy.restore(strategy)

    def on_bars(self, bars: BarSet) -> None:
        targets = self.decide(bars)
        if targets is not None:
            self.bus.publish(
                Signal(bars.ts_event, self.clock.now_ns(), self.strategy.name, targets, self.strategy.units)
            )

    def decide(self, bars: BarSet) -> np.ndarray | None:
        """The targets :meth:`on_bars` publishes for this bar (None: no signal), for a replay that
        hands them to the order manager itself."""
        targets = self._decide(bars)
        if self._standing is not None:
            standing, self._standing = self._standing, None
            targets = standing if targets is None else np.where(np.isnan(targets), standing, targets)
        elif self._plan is not None:  # a planned row: whether it sets any target is known
            return targets if targets is not None and self._plan.live[self._plan.at] else None
        if targets is None or count_nonzero(np.equal(targets, targets)) == 0:
            return None
        return targets

    def _decide(self, bars: BarSet) -> np.ndarray | None:
        """The strategy's answer for this bar, with invalid targets turned into "no change"."""
        ctx = self.ctx
        ctx.now_ns = bars.ts_event
        plan = self._plan
        if plan is not None:
            k = plan.find(bars.index)
            if k < 0:
                return None
            planned = plan.rows[k]
            if not self.strategy.units:
                gross = plan.gross[k]
                if gross == gross:  # every target given: the standing ones are this row's
                    self._targets[:] = planned
                    self._note_gross(gross)
                else:
                    self._check_gross(planned)
            return planned
        ctx._append(bars.close)
        targets = self.strategy.on_bars(bars, ctx)
        if targets is None:
            return None
        targets = np.array(targets, dtype=float, copy=True)
        if targets.shape != (len(ctx.symbols),):
            raise ValueError(
                f"strategy {self.strategy.name} returned targets of shape {targets.shape}, "
                f"expected ({len(ctx.symbols)},)"
            )
        targets = self._check(targets, bars.ts_event)
        if not self.strategy.units:  # a gross of units means nothing
            self._check_gross(targets)
        return targets

    def _invalid(self, targets: np.ndarray) -> np.ndarray:
        bad = np.isinf(targets)
        if not self.strategy.units:
            bad |= np.greater(np.abs(targets), self._weight_cap)
        return bad

    def _check(self, targets: np.ndarray, ts_event: int) -> np.ndarray:
        """Invalid targets: an error in a backtest; live, "no change" with a warning."""
        ctx = self.ctx
        bad = self._invalid(targets)
        if count_nonzero(bad):
            values = ", ".join(f"{ctx.symbols[i]}={targets[i]:g}" for i in np.flatnonzero(bad)[:5])
            if self.strict:  # a backtest with dropped decisions would look right and be wrong
                from datetime import UTC, datetime

                when = datetime.fromtimestamp(ts_event / 1e9, UTC).isoformat()
                raise StrategyError(
                    f"strategy {self.strategy.name} returned invalid targets at {when}: {values} "
                    f"(a target is a finite weight of equity with |w| <= max_weight {self.max_weight:g}; "
                    "NaN means no change)"
                )
            self.invalid_targets += int(bad.sum())
            log.warning(
                "invalid targets ignored",
                strategy=self.strategy.name,
                symbols=[ctx.symbols[i] for i in np.flatnonzero(bad)],
                values=[float(v) for v in targets[bad]],
                max_weight=self.max_weight,
            )
            targets[bad] = np.nan
        return targets

    def _check_gross(self, targets: np.ndarray) -> None:
        """Warn once when the standing targets add up to more than the equity (leverage: cash goes
        negative and is charged ``[costs] borrow_rate``); per-asset targets that look small sum
        past 1 quickly over a universe."""
        np.copyto(self._targets, targets, where=targets == targets)
        self._note_gross(float(np.add.reduce(np.abs(self._targets))))

    def _note_gross(self, gross: float) -> None:
        if gross > self.max_gross_target:
            if gross > 1.0 + 1e-9 and self.max_gross_target <= 1.0 + 1e-9:
                log.warning(
                    "targets sum above 1: the book is leveraged (negative cash)",
                    strategy=self.strategy.name,
                    gross_target=round(gross, 4),
                    assets=int(np.count_nonzero(self._targets)),
                )
            self.max_gross_target = gross


class _Plan:
    """Precomputed decisions as :meth:`StrategyHost._decide` serves them, bar after bar: the row
    for a bar found from where the last one was (a replay asks in bar order), and per row what
    the host would otherwise work out from it as it is served: whether it sets any target
    (``live``) and, for a row that sets every one, the gross of the standing targets it leaves
    (``gross``, the same sum of the same numbers; NaN: a row with gaps, summed when served)."""

    __slots__ = ("at", "gross", "index", "live", "rows", "stamps")

    def __init__(self, index: np.ndarray, rows: np.ndarray, *, gross: bool) -> None:
        self.index, self.rows = index, rows  # arrays, not a dict of rows: a bar's answer costs no memory
        self.stamps = array("q", index.tobytes())  # compact, and read as Python ints
        given = np.equal(rows, rows)
        self.live = array("b", given.any(axis=1).tobytes())
        full = np.full(len(rows), np.nan)
        if gross and len(rows):
            complete = given.all(axis=1)
            # a C-contiguous row at a time, as np.add.reduce sums one row on its own
            size = rows[complete]
            np.abs(size, size)
            full[complete] = np.add.reduce(size, axis=1)
        self.gross = array("d", full.tobytes())
        self.at = 0

    def find(self, bar: int) -> int:
        """The row for bar ``bar`` (-1: none); remembered as ``at``, where the next search starts."""
        stamps, at = self.stamps, self.at
        lo = at if at < len(stamps) and stamps[at] <= bar else 0
        k = bisect_left(stamps, bar, lo)
        if k < len(stamps) and stamps[k] == bar:
            self.at = k
            return k
        return -1
