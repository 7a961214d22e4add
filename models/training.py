"""Training (paper algorithm 1) with a validation window and early stopping.

Each step samples ``batch_markets`` markets and, per market, ``windows_per_market`` random windows
of ``seq_len`` bars that end inside the market's training rows; every window starts from a zero
state, so backpropagation through time is truncated at ``seq_len``. The loss is eqs. 7-8, the
optimiser AMSGrad. The splits are dated on one calendar for all markets (:func:`models.data.dated_splits`):
windows are drawn from the training block only, the validation block scores the model every
``eval_every`` steps and the best-scoring weights are kept, and the test block is never read.

Selection uses a smoothed criterion (the mean of the last ``val_smoothing`` validation Sharpes:
one validation score is noisy, and a model whose first check happens to beat later ones is
mostly luck) and ignores checks before ``min_steps``; early stopping cannot fire before it either.
"""

from __future__ import annotations

import copy
import csv
import gc
import json
import os
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import torch
from torch import Tensor

from models._threads import torch_threads
from models.batched import forward_many_batched, gather_windows, held_sums_batched
from models.checkpoint import check_assets
from models.config import TrainConfig
from models.data import Market, Splits, dated_splits, infer_periods_per_year, model_arrays, vol_scale
from models.loss import (
    CarriedWindows,
    carried_windows,
    carry_arrays,
    loss_from_sums,
    market_sharpe,
    quantnet_loss,
    window_counts,
)
from models.network import QuantNet

Callback = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    steps: int
    best_step: int | None
    best_val_sharpe: float | None
    stopped_early: bool
    periods_per_year: float
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    splits: Splits | None = None


@dataclass(frozen=True, slots=True)
class _Series:
    model_index: int
    x: Tensor  # (T, n) inputs: row t holds returns of t-1, missing as 0
    r: Tensor  # (T, n) targets, missing as 0
    m: Tensor  # (T, n) bool, True where the target exists
    val_start: int
    test_start: int
    k: int
    v: Tensor | None = None  # (T, n) position scale vol_target/σ_t of the vol_scaled objective
    last: Tensor | None = None  # (T, n) int64: the last row <= t where the target exists, -1: none
    # models.loss.carried_windows' series arrays (n, T), for the batched step; carry times v.T
    carry: Tensor | None = None
    next_return: Tensor | None = None
    next_row: Tensor | None = None
    cum: Tensor | None = None

    def previous_rows(self, rows: Tensor) -> Tensor:
        """:func:`models.loss.previous_rows` of ``m[rows]`` for windows of consecutive ``rows``
        (B, k), read off the series' ``last`` instead of a cummax over every window."""
        assert self.last is not None
        start = rows[:, :1, None]
        prev = self.last[rows - 1] - start  # rows start at 1 or later: row - 1 exists
        return prev.clamp_(min=-1)


LOG_FIELDS = (
    "step", "loss", "train_sharpe", "val_sharpe", "val_criterion", "best_val_sharpe", "best_step", "elapsed"
)  # fmt: skip


class _Log:
    """Training log: JSON lines, or CSV when the file name ends in .csv."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] = path.open("w", newline="")
        self._csv = (
            csv.DictWriter(self._fh, LOG_FIELDS, extrasaction="ignore") if path.suffix == ".csv" else None
        )
        if self._csv is not None:
            self._csv.writeheader()

    def write(self, record: dict[str, Any]) -> None:
        if self._csv is not None:
            self._csv.writerow(record)
        else:
            self._fh.write(json.dumps(record) + "\n")
        if "val_sharpe" in record:
            self._fh.flush()

    def __enter__(self) -> _Log:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


def resolve_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def _series(
    model: QuantNet,
    markets: Sequence[Market],
    splits: Splits,
    seq_len: int,
    *,
    need_train: bool = True,
    scale: tuple[float, int, float] | None = None,
) -> list[_Series]:
    """Device tensors per market, cut at the test start: nothing of the test block is copied unless
    it is to be scored (``need_train=False`` is evaluation, which may score any block). ``scale``
    (vol_target, span, periods per year) adds the vol_scaled objective's position scale; rows
    without a volatility estimate yet are masked."""
    p = next(model.parameters())
    out = []
    for mk in markets:
        v0, t0 = splits.bounds(mk)
        x, r, m = model_arrays(mk.returns if not need_train else mk.returns[:t0])
        k = min(seq_len, v0 - 1)
        if k < 2 and need_train:
            before = "" if splits.train_end is None else f" (training ends {splits.train_end.date()})"
            raise ValueError(
                f"market {mk.name!r}: {max(v0, 0)} training rows{before}; need at least 3 "
                f"(seq_len {seq_len} wanted): drop the market or hold out fewer bars"
            )

        def t(a: np.ndarray, dtype: torch.dtype = p.dtype) -> Tensor:
            return torch.as_tensor(a, dtype=dtype, device=p.device)

        v = None
        if scale is not None:
            vs = vol_scale(
                mk.returns[: len(x)], vol_target=scale[0], span=scale[1], periods_per_year=scale[2]
            )
            m = m & np.isfinite(vs)
            vs = np.nan_to_num(vs, nan=0.0)
            v = t(vs)
        carry, nxt_r, nxt, last, cum = carry_arrays(r, m)
        if v is not None:
            carry = carry * vs.T
        out.append(
            _Series(
                model.index(mk.name), t(x), t(r), t(m, torch.bool), v0, t0, max(k, 1), v,
                t(np.ascontiguousarray(last.T), torch.int64), t(carry), t(nxt_r), t(nxt, torch.int64),
                t(cum, torch.int64),
            )
        )  # fmt: skip
    return out


@torch.no_grad()
def evaluate(
    model: QuantNet,
    markets: Sequence[Market],
    *,
    rows: Literal["train", "val", "test", "all"] = "val",
    splits: Splits | None = None,
    seq_len: int = 252,
    periods_per_year: float = 252.0,
    cost_bps: float = 0.0,
    threads: int | None = 1,
    vol_scaled: tuple[float, int] | None = None,
) -> dict[str, float]:
    """Eq. 7 Sharpe per market over its training, validation, test or all rows, and their mean
    (of positions s·vol_target/σ_t with ``vol_scaled=(vol_target, span)``).

    ``splits`` defaults to everything being training rows. Signals run from a zero state: over the
    training rows from their start, over a validation or test block from ``seq_len`` bars before it
    (the warm-up a deployed model would get; only earlier returns are inputs). Markets with nothing
    to score are left out.
    """
    if splits is None:
        splits = dated_splits(markets, 0, 0)
    was = model.training
    model.eval()
    try:
        with torch_threads(threads):
            scale = None if vol_scaled is None else (*vol_scaled, periods_per_year)
            return _evaluate(model, markets, rows, splits, seq_len, periods_per_year, cost_bps, scale)
    finally:
        model.train(was)


def _evaluate(
    model: QuantNet,
    markets: Sequence[Market],
    rows: str,
    splits: Splits,
    seq_len: int,
    periods_per_year: float,
    cost_bps: float,
    scale: tuple[float, int, float] | None,
) -> dict[str, float]:
    out: dict[str, float] = {}
    series = _series(model, markets, splits, seq_len, need_train=False, scale=scale)
    for mk, s in zip(markets, series, strict=True):
        n = len(mk)
        if rows == "val":
            lo, hi, warm = s.val_start, s.test_start, max(1, s.val_start - seq_len)
        elif rows == "test":
            lo, hi, warm = s.test_start, n, max(1, s.test_start - seq_len)
        elif rows == "train":
            lo, hi, warm = 1, s.val_start, 1
        else:
            lo, hi, warm = 1, n, 1
        if hi - lo < 2:
            continue
        sig, _ = model(s.model_index, s.x[warm:hi].unsqueeze(0))
        if s.v is not None:
            sig = sig * s.v[warm:hi]
        v = market_sharpe(
            sig[:, lo - warm :],
            s.r[lo:hi].unsqueeze(0),
            s.m[lo:hi].unsqueeze(0),
            periods_per_year=periods_per_year,
            cost_bps=cost_bps,
        )
        if v is not None:
            out[mk.name] = float(v)
    if out:
        out["mean"] = float(np.mean(list(out.values())))
    return out


def _loss(
    model: QuantNet,
    picked: list[_Series],
    rng: np.random.Generator,
    config: TrainConfig,
    ppy: float,
    min_bars: int,
    batched: bool,
) -> Tensor:
    """One step's loss, per market: its windows, signals and eq. 7 Sharpe, then eq. 8."""
    items, targets, scales = [], [], []
    for s in picked:
        ends = rng.integers(s.k + 1, s.val_start + 1, size=config.windows_per_market)
        rows = torch.as_tensor(ends[:, None] - s.k + np.arange(s.k)[None, :], device=s.x.device)
        items.append((s.model_index, s.x[rows]))
        targets.append((s.r[rows], s.m[rows], s.previous_rows(rows)))
        scales.append(None if s.v is None else s.v[rows])
    signals = forward_many_batched(model, items) if batched else model.forward_many(items)
    signals = [sg if v is None else sg * v for sg, v in zip(signals, scales, strict=True)]
    return quantnet_loss(
        [(sg, *target) for sg, target in zip(signals, targets, strict=True)],
        periods_per_year=ppy,
        cost_bps=config.cost_bps,
        min_bars=min_bars,
    )


# markets per batched pass: more share the per-iteration overhead, but past about this many the
# pass's buffers outgrow the cache and each market costs more (measured on 6 and 20 markets)
_CHAIN_MARKETS = 10


def _batched_loss(
    model: QuantNet,
    picked: list[_Series],
    rng: np.random.Generator,
    config: TrainConfig,
    ppy: float,
    min_bars: int,
) -> Tensor:
    """:func:`_loss` (the same windows, drawn in the same order) without turnover cost, with the
    markets of equal window length in one :func:`models.batched.held_sums_batched` pass and the loss
    in one pass over all of them: the Sharpe sums come from each window's carried returns
    (:func:`models.loss.carried_windows`) instead of gathering held positions per market. (One
    backward for all markets: run per market while its activations were in the cache, the loss's
    and autograd's fixed costs per call outweighed the cache, 195-205 vs 181-185 ms a 20-market
    step.)"""
    groups: dict[int, list[tuple[int, Tensor, CarriedWindows, Tensor]]] = {}
    for s in picked:
        assert s.carry is not None and s.next_return is not None and s.next_row is not None
        assert s.last is not None and s.cum is not None
        ends = rng.integers(s.k + 1, s.val_start + 1, size=config.windows_per_market)
        starts = torch.as_tensor(ends - s.k, device=s.x.device)
        scale = None if s.v is None else s.v.t()
        ret = carried_windows(s.carry, s.next_return, s.next_row, s.last.t(), starts, s.k, scale)
        count = window_counts(s.cum, starts, s.k)
        x = gather_windows(s.x, starts, s.k)  # s.x[rows] for rows[t, b] = starts[b] + t
        groups.setdefault(s.k, []).append((s.model_index, x, ret, count))
    a, s2, counts, markets = [], [], [], []
    chunks = []
    for grp in groups.values():
        size = -(-len(grp) // -(-len(grp) // _CHAIN_MARKETS))  # equal parts of at most _CHAIN_MARKETS
        chunks += [grp[c : c + size] for c in range(0, len(grp), size)]
    for grp in chunks:
        for sums, (_, _, _, count) in zip(held_sums_batched(model, [g[:3] for g in grp]), grp, strict=True):
            a.append(sums[0])
            s2.append(sums[1])
            counts.append(count)
            g = len(markets)
            markets.append(torch.full((count.shape[0],), g, dtype=torch.int64, device=count.device))
    return loss_from_sums(
        torch.cat(a), torch.cat(s2), torch.cat(counts), torch.cat(markets), len(picked),
        periods_per_year=ppy, min_bars=min_bars,
    )  # fmt: skip


def train(
    model: QuantNet,
    markets: Sequence[Market],
    config: TrainConfig,
    *,
    callback: Callback | None = None,
    log_path: str | Path | None = None,
    splits: Splits | None = None,
    batched: bool | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``markets`` (all must be in the model with the same assets).

    Only the given markets' own parameters and the shared layer (per ``config.shared``) are updated;
    other markets of the model are untouched. ``splits`` defaults to
    ``dated_splits(markets, config.test_bars, config.val_bars)``. On return the model holds the
    weights with the best validation Sharpe (the final ones without a validation block) and is in
    eval mode; nothing of the test block has been read.
    Each step's record (step, loss, train_sharpe, val_sharpe on evaluation steps, ...) goes to
    ``callback`` and, as one JSON line, to ``log_path``. ``batched`` (default: on CPU) runs every
    step's markets in one pass (:mod:`models.batched`) and, without a turnover cost, the loss in one
    pass over all of them; the same losses and gradients as one ``nn.LSTM`` per market
    (``batched=False``), faster on CPU (README, Training speed).
    """
    if not markets:
        raise ValueError("no markets to train on")
    check_assets(model, markets)
    device = resolve_device(config.device)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if any(t.device != device for t in (*model.parameters(), *model.buffers())):
        model.to(device)  # only when needed: nn.LSTM re-flattens its weights on every .to()
    if batched is None:
        batched = device.type == "cpu"
    if splits is None:
        splits = dated_splits(markets, config.test_bars, config.val_bars)
    ppy = config.periods_per_year or infer_periods_per_year(markets)
    for mk in markets:
        if not bool(model.markets[model.index(mk.name)].scale_fitted):
            model.fit_input_scale(mk.name, mk.returns[: splits.bounds(mk)[0]])
    vol = (config.vol_target, config.vol_span) if config.objective == "vol_scaled" else None
    series = _series(model, markets, splits, config.seq_len, scale=None if vol is None else (*vol, ppy))
    has_val = any(s.test_start - s.val_start >= 2 for s in series)
    # validation scores never see the test block: hand evaluate() the markets cut at its start
    until_test = [mk.rows(0, s.test_start) for mk, s in zip(markets, series, strict=True)]

    def score() -> float | None:
        if not has_val:
            return None
        res = evaluate(
            model,
            until_test,
            rows="val",
            splits=splits,
            seq_len=config.seq_len,
            periods_per_year=ppy,
            cost_bps=config.cost_bps,
            vol_scaled=vol,
        )
        return res.get("mean")

    lr = config.learning_rate(model.config.variant)
    min_bars = config.window_min_bars(min(s.k for s in series))
    own = [p for s in series for p in model.markets[s.model_index].parameters()]
    groups: list[dict[str, Any]] = [{"params": own, "lr": lr}]
    shared = list(model.shared_parameters())
    if shared and config.shared != "frozen":
        scale = config.shared_lr_scale if config.shared == "partial" else 1.0
        groups.append({"params": shared, "lr": lr * scale})
    # fused: one kernel over all tensors (1.7-3.0 ms a 20-market step here, 5.6-7.9 with foreach
    # passes, 11 one tensor at a time)
    opt = torch.optim.Adam(groups, lr=lr, amsgrad=True, weight_decay=config.weight_decay, fused=True)
    rng = np.random.default_rng(config.seed)
    fast = batched and not config.cost_bps
    frozen = [(p, p.requires_grad) for p in shared] if config.shared == "frozen" else []

    history: list[dict[str, Any]] = []
    best_val: float | None = None  # validation Sharpe of the kept weights
    best_crit: float | None = None  # their smoothed criterion
    best_step: int | None = None
    recent: list[float] = []
    best_state: dict[str, Tensor] | None = None
    bad = 0
    stopped = False
    step = 0
    t0 = time.perf_counter()
    det_before = torch.are_deterministic_algorithms_enabled()
    with ExitStack() as stack:
        log = stack.enter_context(_Log(Path(log_path))) if log_path is not None else None
        devices = [device.index or 0] if device.type == "cuda" else []
        stack.enter_context(torch.random.fork_rng(devices=devices))
        torch.manual_seed(config.seed)
        stack.enter_context(torch_threads(config.threads if device.type == "cpu" else None))
        torch.use_deterministic_algorithms(True, warn_only=True)
        stack.callback(torch.use_deterministic_algorithms, det_before)
        # deterministic mode would also NaN-fill every new tensor; nothing here reads memory it
        # has not written, and the fills cost a sixth of a step
        fill_before = torch.utils.deterministic.fill_uninitialized_memory  # type: ignore[attr-defined]
        torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
        stack.callback(setattr, torch.utils.deterministic, "fill_uninitialized_memory", fill_before)
        if gc.isenabled() and not gc.get_freeze_count():
            # the heap (torch's, the caller's; 330k objects in the bench) out of the collector's
            # passes while training: the loop makes no reference cycles, and full collections over
            # that heap took a tenth of a 20-market run
            gc.freeze()
            stack.callback(gc.unfreeze)
        for p, _ in frozen:
            p.requires_grad_(False)
        stack.callback(lambda: [p.requires_grad_(flag) for p, flag in frozen])
        model.train()
        for step in range(1, config.steps + 1):
            pick = rng.choice(len(series), size=min(config.batch_markets, len(series)), replace=False)
            picked = [series[j] for j in sorted(pick.tolist())]
            if fast:
                loss = _batched_loss(model, picked, rng, config, ppy, min_bars)
            else:
                loss = _loss(model, picked, rng, config, ppy, min_bars, batched)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], config.grad_clip)
            opt.step()
            record: dict[str, Any] = {
                "step": step,
                "loss": float(loss.detach()),
                "train_sharpe": -float(loss.detach()),
                "elapsed": round(time.perf_counter() - t0, 4),
            }
            if step % config.eval_every == 0 or step == config.steps:
                val = score()
                record["val_sharpe"] = val
                if val is not None:
                    recent = [*recent, val][-config.val_smoothing :]
                    crit = float(np.mean(recent))
                    record["val_criterion"] = crit
                    counts = step >= config.min_steps or step == config.steps
                    if counts and (best_crit is None or crit > best_crit):
                        best_val, best_crit, best_step, bad = val, crit, step, 0
                        best_state = copy.deepcopy(model.state_dict())
                    elif counts:
                        bad += 1
                        stopped = config.patience > 0 and bad >= config.patience
                record["best_val_sharpe"] = best_val
                record["best_step"] = best_step
                model.train()
            history.append(record)
            if log is not None:
                log.write(record)
            if callback is not None:
                callback(record)
            if stopped:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(
        steps=step,
        best_step=best_step,
        best_val_sharpe=best_val,
        stopped_early=stopped,
        periods_per_year=ppy,
        seconds=time.perf_counter() - t0,
        history=history,
        splits=splits,
    )
