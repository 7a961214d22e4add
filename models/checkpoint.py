"""Checkpoints: one file with the weights and everything needed to use them safely.

The metadata (variant, dimensions, markets and asset names in order, feature settings, training
config, data date range, library versions) is plain Python so the file loads with
``torch.load(weights_only=True)``: no pickled code runs when a checkpoint is opened. Using a model
with data whose assets differ, even only in order, is refused, because signal j would otherwise
silently trade asset j of a different list.
"""

from __future__ import annotations

import datetime as _dt
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata as _md
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from models.config import ModelConfig, TrainConfig
from models.data import FEATURES, Market, Splits, union_calendar
from models.network import QuantNet

CHECKPOINT_FORMAT = "quantnet-engine/quantnet-model"
CHECKPOINT_VERSION = 1


class CheckpointMismatch(ValueError):
    """The checkpoint does not fit the data or code it is used with; the message says how."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    model: QuantNet
    meta: dict[str, Any]

    @property
    def markets(self) -> dict[str, tuple[str, ...]]:
        return {m["name"]: tuple(m["assets"]) for m in self.meta["markets"]}

    @property
    def periods_per_year(self) -> float:
        return float(self.meta.get("periods_per_year") or 252.0)

    @property
    def splits(self) -> Splits | None:
        """The dated train/validation/test blocks the model was trained with (None: older file)."""
        raw = self.meta.get("splits")
        return Splits.from_meta(raw) if isinstance(raw, dict) else None

    @property
    def bar_interval_s(self) -> float | None:
        """Median bar spacing of the training data in seconds (None: not recorded)."""
        v = self.meta.get("bar_interval_s")
        return float(v) if v else None


def _versions() -> dict[str, str]:
    def version(dist: str) -> str:
        try:
            return _md.version(dist)
        except _md.PackageNotFoundError:
            return "unknown"

    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "numpy": str(np.__version__),
        "pandas": str(pd.__version__),
        "quantnet-engine": version("quantnet-engine"),
    }


def _plain(obj: Any, where: str = "meta") -> Any:
    """Plain Python copy of ``obj`` (what ``weights_only`` loading accepts), or a clear error."""
    if obj is None:
        return None
    if isinstance(obj, np.generic):
        return obj.item()
    for base in (bool, int, float, str):  # subclasses such as TorchVersion become the base type
        if isinstance(obj, base):
            return base(obj)
    if isinstance(obj, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    raise TypeError(f"{where}: {type(obj).__name__} cannot be stored in checkpoint metadata")


def save_checkpoint(
    path: str | Path,
    model: QuantNet,
    *,
    train_config: TrainConfig | None = None,
    data: Sequence[Market] = (),
    periods_per_year: float | None = None,
    previous: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    splits: Splits | None = None,
) -> dict[str, Any]:
    """Write weights and metadata to ``path`` (atomically) and return the metadata.

    ``previous`` is the metadata of the checkpoint this model was fine-tuned from: date ranges of
    markets not in ``data`` are carried over. ``splits`` (what training used, ``TrainResult.splits``)
    records the train, validation and test boundaries, so a backtest can tell in-sample from
    held-out bars. ``extra`` must hold plain Python values only.
    """
    ranges: dict[str, dict[str, Any]] = dict((previous or {}).get("data", {}).get("markets", {}))
    for m in data:
        start, end = m.date_range()
        ranges[m.name] = {"start": start, "end": end, "rows": len(m)}
        if splits is not None:
            v0, t0 = splits.bounds(m)
            ranges[m.name].update({"train_rows": v0, "val_rows": t0 - v0, "test_rows": len(m) - t0})
    cal = union_calendar(data).as_unit("ns").asi8 if data else np.zeros(0, dtype=np.int64)
    interval = float(np.median(np.diff(cal))) / 1e9 if len(cal) > 1 else None
    if interval is None and previous is not None:
        interval = previous.get("bar_interval_s")
    fitted = model.config.input_scaling == "train_std"
    scaling = {
        "method": model.config.input_scaling,
        "fitted_on": "each asset's training rows (before the validation block)" if fitted else None,
        "std": {
            n: [float(v) for v in model.markets[i].input_scale.tolist()]
            for i, n in enumerate(model.market_names)
        }
        if fitted
        else None,
    }
    starts = [r["start"] for r in ranges.values() if r["start"]]
    ends = [r["end"] for r in ranges.values() if r["end"]]
    meta: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "variant": model.config.variant,
        "model": model.config.model_dump(),
        "markets": [{"name": n, "assets": list(model.assets[n])} for n in model.market_names],
        "features": {**FEATURES, "normalisation": _normalisation(model.config.input_scaling)},
        "train": train_config.model_dump() if train_config is not None else None,
        "periods_per_year": None if periods_per_year is None else float(periods_per_year),
        "data": {"start": min(starts, default=""), "end": max(ends, default=""), "markets": ranges},
        "splits": splits.to_meta() if splits is not None else (previous or {}).get("splits"),
        "bar_interval_s": interval,
        "input_scaling": scaling,
        "versions": _versions(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "extra": dict(extra or {}),
    }
    meta = _plain(meta)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    torch.save({"meta": meta, "state_dict": state}, tmp)
    tmp.replace(target)
    return meta


def _normalisation(input_scaling: str) -> str:
    if input_scaling == "train_std":
        return "inputs divided by each asset's return std over its training rows (input_scale buffers)"
    return "none"


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint with ``weights_only=True`` and rebuild the model (eval mode)."""
    try:
        blob = torch.load(Path(path), map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: checkpoint not found") from None
    except Exception as exc:
        raise CheckpointMismatch(f"{path}: not a loadable checkpoint: {exc}") from None
    meta = blob.get("meta") if isinstance(blob, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointMismatch(f"{path}: not a QuantNet checkpoint")
    if meta.get("version") != CHECKPOINT_VERSION:
        raise CheckpointMismatch(
            f"{path}: checkpoint version {meta.get('version')} unsupported "
            f"(this code reads {CHECKPOINT_VERSION})"
        )
    stored = meta.get("features")
    # the normalisation entry states the model's own input scaling (files before it said "none")
    if not isinstance(stored, dict) or {**stored, "normalisation": None} != {
        **FEATURES,
        "normalisation": None,
    }:
        raise CheckpointMismatch(
            f"{path}: trained with feature settings {meta.get('features')}, this code computes {FEATURES}"
        )
    config = ModelConfig.model_validate(meta["model"])
    model = QuantNet(config, [(m["name"], m["assets"]) for m in meta["markets"]])
    try:
        model.load_state_dict(blob["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointMismatch(f"{path}: weights do not match the recorded architecture: {exc}") from None
    model.to(map_location)
    model.eval()
    return Checkpoint(model, meta)


def check_assets(
    model: QuantNet,
    data: Mapping[str, Sequence[str]] | Sequence[Market],
    *,
    allow_new: bool = False,
) -> list[str]:
    """Refuse data whose markets' assets differ from the model's (names or order).

    Returns the markets of ``data`` the model lacks (allowed only with ``allow_new``, as when
    transferring to a new market).
    """
    pairs = (
        [(k, tuple(v)) for k, v in data.items()]
        if isinstance(data, Mapping)
        else [(m.name, m.assets) for m in data]
    )
    new = []
    for name, assets in pairs:
        if name not in model.assets:
            if not allow_new:
                raise CheckpointMismatch(
                    f"market {name!r} is not in the model (it has: {', '.join(model.market_names)})"
                )
            new.append(name)
            continue
        want = model.assets[name]
        if tuple(assets) == want:
            continue
        missing = [a for a in want if a not in assets]
        extra = [a for a in assets if a not in want]
        if missing or extra:
            detail = "; ".join(
                part
                for part in (
                    f"missing from data: {', '.join(missing)}" if missing else "",
                    f"not in model: {', '.join(extra)}" if extra else "",
                )
                if part
            )
        else:
            k = next(i for i, (a, b) in enumerate(zip(want, assets, strict=True)) if a != b)
            detail = f"same assets in a different order (position {k}: model {want[k]!r}, data {assets[k]!r})"
        raise CheckpointMismatch(f"market {name!r}: assets differ from the model's: {detail}")
    return new
