"""Random hyperparameter search on Ray Tune over the paper's Table 3 ranges, scored on the
validation block only.

Trials receive the markets already cut at the test start (the test window never reaches a trial),
train with early stopping and report their validation Sharpe at every evaluation, so ASHA can stop
poor trials early. Local by default; with an address the same search runs on an existing Ray
cluster. Results live under ``<out>/search/<variant>``; an interrupted search resumes from there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models.config import BASELINE_VARIANTS
from models.data import Market

INSTALL_HINT = "the search needs Ray Tune: pip install 'quantnet-engine[search]' (or pip install 'ray[tune]')"


class SearchUnavailable(RuntimeError):
    """Ray Tune is not installed."""


class SearchInterrupted(RuntimeError):
    """The search stopped before every trial finished; its state is saved for ``resume``."""


def space(variant: str) -> dict[str, Any]:
    """Table 3: batch 16-128 (QuantNet 16-96) windows, sequence length 21-504 (QuantNet 21-252),
    learning rate 1e-4..0.1 (QuantNet ..0.5), 1-2 layers, dropout 0.1-0.9, transfer dimension
    10/25/50/100 (QuantNet only)."""
    from ray import tune

    transfer = variant not in BASELINE_VARIANTS
    out = {
        "batch": tune.randint(16, 97 if transfer else 129),
        "seq_len": tune.randint(21, 253 if transfer else 505),
        "lr": tune.loguniform(1e-4, 0.5 if transfer else 0.1),
        "layers": tune.choice([1, 2]),
        "dropout": tune.uniform(0.1, 0.9),
    }
    if transfer:
        out["transfer_dim"] = tune.choice([10, 25, 50, 100])
    return out


def overrides(variant: str, trial: dict[str, Any], n_markets: int) -> dict[str, dict[str, Any]]:
    """A trial's sample as [model]/[train] overrides. The batch is spread over all markets each
    step (``batch_markets`` = all, ``windows_per_market`` = batch / markets, at least 1)."""
    model: dict[str, Any] = {
        "dropout": float(trial["dropout"]),
        "encoder_layers": int(trial["layers"]),
        "decoder_layers": int(trial["layers"]),
    }
    if "transfer_dim" in trial:
        model["transfer_dim"] = int(trial["transfer_dim"])
    train = {
        "seq_len": int(trial["seq_len"]),
        "lr": float(trial["lr"]),
        "batch_markets": n_markets,
        "windows_per_market": max(1, round(int(trial["batch"]) / n_markets)),
    }
    return {"model": model, "train": train}


def _trial(
    config: dict[str, Any], *, markets: Sequence[Market], settings: Any, variant: str, seed: int
) -> None:
    from ray import tune

    from models import QuantNet, train

    extra = overrides(variant, config, len(markets))
    mcfg = settings.model_config(variant, extra["model"])
    tcfg = settings.train_config(seed, extra["train"])
    model = QuantNet(mcfg, [(m.name, m.assets) for m in markets], seed=seed)

    def report(rec: dict[str, Any]) -> None:
        if rec.get("val_sharpe") is not None:
            tune.report({"val_sharpe": float(rec["val_sharpe"]), "step": rec["step"]})

    result = train(model, markets, tcfg, callback=report)
    best = result.best_val_sharpe
    tune.report({"val_sharpe": -math.inf if best is None else float(best), "step": result.steps, "final": 1})


def run_search(
    variant: str,
    markets: Sequence[Market],
    settings: Any,
    *,
    trials: int,
    out: Path,
    address: str | None = None,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float = 0.0,
    asha: bool = False,
    resume: bool = False,
    seed: int = 0,
    grace_steps: int | None = None,
    points: Sequence[dict[str, Any]] = (),
    callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Run ``trials`` random samples for ``variant`` on ``markets`` (training rows only: pass
    :func:`quantnet.experiment.runner.training_markets`). Returns the best sample, its overrides
    and every trial's validation Sharpe, curve (step, validation Sharpe) and whether ASHA stopped it.

    ASHA (``asha``) compares trials at rungs of ``grace_steps`` × 3^k training steps (default: a
    quarter of the steps, at most 100, at least one evaluation) up to the configured steps.
    ``points``: samples tried first (e.g. the defaults), the rest drawn at random. ``callbacks``:
    Ray Tune callbacks. An interrupted search (Ctrl+C) raises :class:`SearchInterrupted`; the same
    call with ``resume`` runs only the trials that did not finish."""
    try:
        import ray
        from ray import tune
        from ray.tune.search.basic_variant import BasicVariantGenerator
    except ImportError:
        raise SearchUnavailable(INSTALL_HINT) from None

    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(include_dashboard=False, log_to_driver=False, num_cpus=None)
    root = (out / "search").resolve()
    trainable = tune.with_resources(
        tune.with_parameters(_trial, markets=list(markets), settings=settings, variant=variant, seed=seed),
        {"cpu": cpus_per_trial, "gpu": gpus_per_trial},
    )
    path = root / variant
    if resume and tune.Tuner.can_restore(str(path)):
        tuner = tune.Tuner.restore(str(path), trainable, resume_errored=True)
    else:
        scheduler = None
        if asha:
            from ray.tune.schedulers import ASHAScheduler

            tcfg = settings.train_config(seed)
            grace = grace_steps or max(tcfg.eval_every, min(100, tcfg.steps // 4))
            # max_t one past the last step: a trial that trains to the end is never "stopped"
            scheduler = ASHAScheduler(
                time_attr="step", grace_period=grace, max_t=tcfg.steps + 1, reduction_factor=3
            )
        tuner = tune.Tuner(
            trainable,
            param_space=space(variant),
            tune_config=tune.TuneConfig(
                num_samples=trials,
                metric="val_sharpe",
                mode="max",
                scheduler=scheduler,
                reuse_actors=True,  # a new actor per trial re-imports torch: seconds per trial
                search_alg=BasicVariantGenerator(
                    random_state=seed, points_to_evaluate=[dict(p) for p in points] or None
                ),
            ),
            run_config=tune.RunConfig(
                name=variant, storage_path=str(root), verbose=0, callbacks=list(callbacks) or None
            ),
        )
    grid = tuner.fit()
    # Ctrl+C ends the running trials as "terminated" in memory; the saved state keeps them unfinished
    saved = tune.Tuner.restore(str(path), trainable).get_results()
    finished = saved.num_terminated + saved.num_errors
    if finished < trials:
        raise SearchInterrupted(
            f"search for {variant} interrupted: {finished} of {trials} trials finished; "
            "run again with --resume to run only the rest"
        )
    rows = []
    for r in grid:
        if r.metrics is None or r.config is None:
            continue
        frame = r.metrics_dataframe
        curve = []
        if frame is not None and "val_sharpe" in frame:
            if "final" in frame:  # the last report repeats the best validation Sharpe
                frame = frame[frame["final"].fillna(0) != 1]
            curve = [[int(a), float(b)] for a, b in zip(frame["step"], frame["val_sharpe"], strict=True)]
        rows.append(
            {
                "trial": r.metrics.get("trial_id"),
                "config": dict(r.config),
                "val_sharpe": r.metrics.get("val_sharpe"),
                "steps": r.metrics.get("step"),
                "stopped_by_asha": not r.metrics.get("final") and not r.error,
                "finished_at": r.metrics.get("timestamp"),
                "curve": curve,
                "error": bool(r.error),
            }
        )
    best = grid.get_best_result(metric="val_sharpe", mode="max", scope="last")
    if best is None or best.config is None:
        raise RuntimeError(f"search for {variant}: no trial finished")
    return {
        "variant": variant,
        "best": dict(best.config),
        "best_val_sharpe": (best.metrics or {}).get("val_sharpe"),
        "overrides": overrides(variant, best.config, len(markets)),
        "trials": rows,
    }
