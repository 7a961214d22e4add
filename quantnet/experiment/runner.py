"""The experiment: baselines and learned models (variants × seeds) trained on the dated training
block, selected on the validation block, scored once on the test window.

Every (variant, seed) unit writes ``units/<variant>-s<seed>.json`` (per-asset metrics gross and net,
per-market return series, learning curve, kept step, encodings) and its checkpoint; ``resume``
skips units whose file exists with the same settings. Nothing from the test window reaches
training, validation, input scaling or model selection: models train on markets cut at the test
start.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.config import BASELINE_VARIANTS, ModelConfig, TrainConfig
from models.data import Market, infer_periods_per_year
from quantnet.experiment.evaluate import (
    BASELINES,
    AssetReturns,
    baseline_signals,
    model_signals,
    strategy_returns,
)
from quantnet.experiment.splits import DatedSplit, dated_split
from quantnet.experiment.tables import asset_metrics

DEFAULT_VARIANTS: tuple[str, ...] = ("lstm-linear", "linear-linear", "notransfer-linear", "notransfer-lstm")
Progress = Callable[[str, dict[str, Any]], None]
SIZED_VOL_TARGET, SIZED_SPAN = 0.15, 60  # the quantnet strategy's defaults
UNIT_FORMAT = 2  # bumped when a unit file gains fields: --resume re-runs older units
GROSS_SUFFIX = "-gross"  # a learned variant trained with no cost term, reported beside the default


@dataclass(frozen=True)
class Settings:
    test_bars: int = 752
    val_bars: int = 252
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    seeds: int = 5
    cost_bps: float = 10.0
    train_cost_bps: float | None = None  # None: the evaluated cost (gross training reported beside)
    model: dict[str, Any] = field(default_factory=dict)  # [model] overrides (variant set per unit)
    train: dict[str, Any] = field(default_factory=dict)  # [train] overrides (seed set per unit)
    lookback: int = 252  # baselines' window
    sources: tuple[str, ...] = ()  # markets that train but are not scored (see splits.py)
    gross_trained: tuple[str, ...] = ()  # learned variants also trained with no cost term

    def strategies(self) -> list[tuple[str, str, bool]]:
        """(name, variant, trained gross) of every learned strategy, in table order: each variant,
        then its gross-trained twin ``<variant>-gross``."""
        out = []
        for v in self.variants:
            out.append((v, v, False))
            if v in self.gross_trained:
                out.append((v + GROSS_SUFFIX, v, True))
        unknown = set(self.gross_trained) - set(self.variants)
        if unknown:
            raise ValueError(f"gross-trained variants not among the variants: {', '.join(sorted(unknown))}")
        return out

    def train_config(
        self, seed: int, extra: dict[str, Any] | None = None, *, test_bars: int = 0, gross: bool = False
    ) -> TrainConfig:
        """``test_bars``: the experiment's own on full markets, 0 on markets cut at the test start."""
        raw = {**self.train, **(extra or {}), "seed": seed, "val_bars": self.val_bars, "test_bars": test_bars}
        raw["cost_bps"] = self.cost_bps if self.train_cost_bps is None else self.train_cost_bps
        if gross:
            raw["cost_bps"] = 0.0
        return TrainConfig.model_validate(raw)

    def model_config(self, variant: str, extra: dict[str, Any] | None = None) -> ModelConfig:
        return ModelConfig.model_validate({**self.model, **(extra or {}), "variant": variant})

    def key(self) -> str:
        """What a unit's result depends on besides data, variant and seed (for --resume)."""
        raw = json.dumps(
            [
                UNIT_FORMAT,
                self.test_bars,
                self.val_bars,
                self.cost_bps,
                self.train_cost_bps,
                self.model,
                self.train,
                *([list(self.sources)] if self.sources else []),
            ],
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(raw.encode()).hexdigest()[:16]


def training_markets(markets: Sequence[Market], split: DatedSplit) -> list[Market]:
    """The markets cut at the test start: what a search trial receives (the test window never
    reaches it); their union calendar before the test start is the full one, so the same dated
    validation block results with ``test_bars = 0``."""
    return [m.rows(0, split.test_row(m)) for m in markets]


def _series(ar: AssetReturns) -> dict[str, list[float | None]]:
    """Equal-weight average over a market's assets of their returns, per row (None: no asset)."""
    out = {}
    for kind in ("gross", "net"):
        x = getattr(ar, kind)
        with np.errstate(all="ignore"):
            count = np.isfinite(x).sum(axis=1)
            mean = np.where(count > 0, np.nansum(x, axis=1) / np.maximum(count, 1), np.nan)
        out[kind] = [None if not math.isfinite(v) else float(v) for v in mean]
    return out


def score(
    signals_by_market: dict[str, np.ndarray],
    markets: Sequence[Market],
    split: DatedSplit,
    ppy: float,
    cost_bps: float,
) -> dict[str, Any]:
    """Per-asset metrics (assets in market order) and per-market return series, of the raw
    positions s (``gross``, ``net``) and of the traded sizing s·vol_target/σ_t (``sized_gross``,
    ``sized_net``: the ``quantnet`` strategy's per-asset volatility target, 0.15 over an EWM σ of
    span 60 from past returns, before the 1/N budget; flat until σ has an estimate)."""
    from models.data import vol_scale

    out: dict[str, Any] = {k: {} for k in ("gross", "net", "sized_gross", "sized_net")}
    series = {}
    for m in markets:
        sig = signals_by_market[m.name]
        v = np.nan_to_num(
            vol_scale(m.returns, vol_target=SIZED_VOL_TARGET, span=SIZED_SPAN, periods_per_year=ppy)
        )
        for prefix, pos in (("", sig), ("sized_", sig * v)):
            ar = strategy_returns(pos, m, start=split.test_row(m), cost_bps=cost_bps)
            for kind, is_net in (("gross", False), ("net", True)):
                target = out[prefix + kind]
                for k, vals in asset_metrics(ar, ppy, net=is_net).items():
                    target.setdefault(k, []).extend(vals)
            if not prefix:
                series[m.name] = _series(ar)
    out["series"] = series
    return out


def baselines(
    markets: Sequence[Market], split: DatedSplit, ppy: float, settings: Settings
) -> dict[str, dict[str, Any]]:
    out = {}
    for name in BASELINES:
        sig = {
            m.name: baseline_signals(name, m.returns, lookback=settings.lookback, start=split.test_row(m))
            for m in markets
        }
        out[name] = score(sig, markets, split, ppy, settings.cost_bps)
    return out


def encodings(model: Any, markets: Sequence[Market], split: DatedSplit) -> dict[str, list[float]]:
    """Each market's representation in the shared space: the mean and standard deviation over its
    training rows of its encoder's output e_t (the transfer layer's input), for the dendrogram.
    Empty for models without a transfer layer."""
    if model.shared is None:
        return {}
    out: dict[str, list[float]] = {}
    for m in markets:
        e = model.encodings(m.name, m.returns[: split.val_row(m)], part="encoder")
        e = e[np.isfinite(e).all(axis=1)]
        if len(e) >= 2:
            out[m.name] = [*e.mean(axis=0).tolist(), *e.std(axis=0).tolist()]
    return out


def run_unit(
    variant: str,
    seed: int,
    markets: Sequence[Market],
    split: DatedSplit,
    ppy: float,
    settings: Settings,
    *,
    model_extra: dict[str, Any] | None = None,
    train_extra: dict[str, Any] | None = None,
    checkpoint: Path | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    gross: bool = False,
) -> dict[str, Any]:
    """Train one (variant, seed) on the training block, keep the best validation weights, score
    the test window. ``gross``: with no cost term in the loss, whatever the settings say."""
    from models import QuantNet, save_checkpoint, train

    mcfg = settings.model_config(variant, model_extra)
    tcfg = settings.train_config(seed, train_extra, test_bars=settings.test_bars, gross=gross)
    model = QuantNet(mcfg, [(m.name, m.assets) for m in markets], seed=seed)
    t0 = time.perf_counter()
    result = train(model, markets, tcfg, callback=on_step)
    seconds = time.perf_counter() - t0
    if checkpoint is not None:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(
            checkpoint,
            model,
            train_config=tcfg,
            data=markets,
            periods_per_year=result.periods_per_year,
            splits=result.splits,
            extra={"best_step": result.best_step, "steps_run": result.steps},
        )
    scored = [m for m in markets if m.name not in settings.sources]
    sig = {
        m.name: model_signals(model.signals, m, start=split.test_row(m), warmup=tcfg.seq_len) for m in scored
    }
    out = score(sig, scored, split, ppy, settings.cost_bps)
    curve = [
        {"step": r["step"], "train_sharpe": r["train_sharpe"], "val_sharpe": r.get("val_sharpe")}
        for r in result.history
        if "val_sharpe" in r
    ]
    out.update(
        name=variant + GROSS_SUFFIX if gross else variant,
        variant=variant,
        trained_gross=gross,
        seed=seed,
        steps_run=result.steps,
        best_step=result.best_step,
        best_val_sharpe=result.best_val_sharpe,
        stopped_early=result.stopped_early,
        seconds=seconds,
        learning_curve=curve,
        encodings=encodings(model, markets, split) if variant not in BASELINE_VARIANTS else {},
        model_config=mcfg.model_dump(),
        train_config=tcfg.model_dump(),
    )
    return out


def _json_safe(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.generic):
        return _json_safe(x.item())
    return x


def _unjson(x: Any) -> Any:
    if x is None:
        return math.nan
    if isinstance(x, dict):
        return {k: _unjson(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_unjson(v) for v in x]
    return x


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_json_safe(obj), indent=1))
    tmp.replace(path)  # a unit is either finished on disk or absent (resume trusts the file)


@dataclass
class Outcome:
    split: DatedSplit
    periods_per_year: float
    markets: list[dict[str, Any]]  # the scored markets
    baselines: dict[str, dict[str, Any]]
    units: list[dict[str, Any]]
    search: dict[str, Any] | None = None
    sources: list[dict[str, Any]] = field(default_factory=list)  # trained on, not scored


def run(
    markets: Sequence[Market],
    out: Path,
    settings: Settings,
    *,
    resume: bool = False,
    progress: Progress | None = None,
    tuned: dict[str, dict[str, dict[str, Any]]] | None = None,
) -> Outcome:
    """Baselines, then every (variant, seed) unit (skipping finished ones under ``resume``).

    ``tuned``: per variant, the ``{"model": ..., "train": ...}`` overrides a search selected.
    """
    notify = progress or (lambda stage, info: None)
    settings.strategies()  # refuses a gross-trained baseline before anything runs
    split = dated_split(
        markets, test_bars=settings.test_bars, val_bars=settings.val_bars, sources=settings.sources
    )
    ppy = infer_periods_per_year(markets)
    scored = [m for m in markets if m.name not in settings.sources]
    notify("baselines", {})
    base = baselines(scored, split, ppy, settings)
    key = settings.key()
    units = []
    for name, variant, gross in settings.strategies():
        extra = (tuned or {}).get(variant, {})
        for seed in range(settings.seeds):
            path = out / "units" / f"{name}-s{seed}.json"
            if resume and path.is_file():
                saved = _unjson(json.loads(path.read_text()))
                if saved.get("key") == key and saved.get("tuned") == _unjson(_json_safe(extra)):
                    notify("skip", {"variant": name, "seed": seed})
                    units.append(saved)
                    continue
            notify("train", {"variant": name, "seed": seed})
            unit = run_unit(
                variant,
                seed,
                markets,
                split,
                ppy,
                settings,
                model_extra=extra.get("model"),
                train_extra=extra.get("train"),
                checkpoint=out / "models" / f"{name}-s{seed}.pt",
                on_step=lambda rec, v=name, s=seed: notify("step", {"variant": v, "seed": s, **rec}),
                gross=gross,
            )
            unit["key"] = key
            unit["tuned"] = extra
            write_json(path, unit)
            units.append(unit)
    info = [
        {
            "name": m.name,
            "assets": list(m.assets),
            "first": m.index[0].isoformat(),
            "history_bars": split.val_row(m),
            "test_rows": len(m) - split.test_row(m),
            "test_dates": [t.isoformat() for t in m.index[split.test_row(m) :]],
        }
        for m in scored
    ]
    sources = [
        {
            "name": m.name,
            "assets": list(m.assets),
            "first": m.index[0].isoformat(),
            "last": m.index[-1].isoformat(),
            "history_bars": split.val_row(m),
        }
        for m in markets
        if m.name in settings.sources
    ]
    return Outcome(split, ppy, info, base, units, sources=sources)
