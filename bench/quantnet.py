"""QuantNet speed on a paper-sized problem: training steps/s and the per-bar cost of live inference.

Run by hand: ``python bench/quantnet.py`` (about a minute on 2 cores). For each of the four
transfer variants it prints training steps per second (batch of markets, window k) and the
latency of one incremental step for all markets together (median, p99) against recomputing a
252-bar window per market from scratch, the stateless alternative. Targets: incremental ≥ 50×
cheaper than recompute and < 2 ms p99. Synthetic returns; the load average is printed because
other processes on the machine move these figures.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from models import TRANSFER_VARIANTS, Market, ModelConfig, QuantNet, SignalStepper, TrainConfig, train
from models._threads import torch_threads


def synthetic(n_markets: int, lo: int, hi: int, rows: int, seed: int) -> list[Market]:
    rng = np.random.default_rng(seed)
    index = pd.bdate_range("2000-01-03", periods=rows, tz="UTC")
    out = []
    for i in range(n_markets):
        n = int(rng.integers(lo, hi + 1))
        r = rng.normal(0.0, 0.015, (rows, n))
        r[rng.random(r.shape) < 0.05] = np.nan
        out.append(Market(f"m{i:02d}", tuple(f"m{i:02d}_{j}" for j in range(n)), index, r))
    return out


def quantiles(samples: list[float]) -> tuple[float, float]:
    a = np.asarray(samples)
    return float(np.median(a)), float(np.percentile(a, 99))


def bench_variant(variant: str, markets: list[Market], args: argparse.Namespace) -> dict[str, float]:
    cfg = ModelConfig(variant=variant, transfer_dim=args.dim)  # type: ignore[arg-type]
    model = QuantNet(cfg, [(m.name, m.assets) for m in markets], seed=0)
    tc = TrainConfig(
        steps=args.steps, batch_markets=args.batch, seq_len=args.seq_len, val_fraction=0.0, patience=0,
        eval_every=args.steps, threads=args.threads,
    )  # fmt: skip
    train(model, markets, tc.model_copy(update={"steps": 3}))  # warm-up: allocations, first-call costs
    res = train(model, markets, tc)
    steps_per_s = res.steps / res.seconds

    stepper = SignalStepper(model, threads=args.threads)
    stepper.warm_up({m.name: m.returns[: args.window] for m in markets})
    lat = []
    for t in range(args.window, args.window + args.bars):
        row = {m.name: m.returns[t] for m in markets}
        t0 = time.perf_counter()
        stepper.step(row)
        lat.append(time.perf_counter() - t0)
    step_med, step_p99 = quantiles(lat[50:])

    windows = [
        torch.as_tensor(np.nan_to_num(m.returns[-args.window :]), dtype=torch.float32).unsqueeze(0)
        for m in markets
    ]
    rec = []
    with torch.no_grad(), torch_threads(args.threads):
        for _ in range(args.recompute_reps):
            t0 = time.perf_counter()
            for i, x in enumerate(windows):
                model(i, x)
            rec.append(time.perf_counter() - t0)
    rec_med, rec_p99 = quantiles(rec[3:])
    return {
        "steps_per_s": steps_per_s,
        "step_med": step_med,
        "step_p99": step_p99,
        "rec_med": rec_med,
        "rec_p99": rec_p99,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--markets", type=int, default=20)
    p.add_argument("--min-assets", type=int, default=20)
    p.add_argument("--max-assets", type=int, default=100)
    p.add_argument("--seq-len", type=int, default=63, help="training window k")
    p.add_argument("--batch", type=int, default=8, help="markets per training step")
    p.add_argument("--dim", type=int, default=25, help="transfer dimension N")
    p.add_argument("--steps", type=int, default=30, help="timed training steps")
    p.add_argument("--bars", type=int, default=2000, help="timed incremental steps")
    p.add_argument("--window", type=int, default=252, help="recomputed window length")
    p.add_argument("--recompute-reps", type=int, default=40)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch default)")
    p.add_argument("--variants", nargs="*", default=list(TRANSFER_VARIANTS))
    args = p.parse_args()

    markets = synthetic(args.markets, args.min_assets, args.max_assets, args.window + args.bars + 10, 0)
    n_assets = sum(m.n_assets for m in markets)
    console = Console()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    console.print(
        f"{args.markets} markets, {n_assets} assets ({args.min_assets}-{args.max_assets} per market); "
        f"train: batch {args.batch} markets, k={args.seq_len}, N={args.dim}, other dims default; "
        f"torch {torch.__version__}, {args.threads or torch.get_num_threads()} thread(s), "
        f"load average {load:.2f}",
        highlight=False,
    )
    table = Table(title="QuantNet: training and per-bar inference (all markets together)")
    for col in (
        "variant", "train steps/s", "step median", "step p99", f"recompute {args.window} median",
        "recompute p99", "speed-up (median)", "targets",
    ):  # fmt: skip
        table.add_column(col, justify="left" if col == "variant" else "right")
    for variant in args.variants:
        r = bench_variant(variant, markets, args)
        ratio = r["rec_med"] / r["step_med"]
        ok = ratio >= 50 and r["step_p99"] < 2e-3
        table.add_row(
            variant, f"{r['steps_per_s']:.1f}",
            f"{r['step_med'] * 1e6:.0f} µs", f"{r['step_p99'] * 1e6:.0f} µs",
            f"{r['rec_med'] * 1e3:.1f} ms", f"{r['rec_p99'] * 1e3:.1f} ms", f"{ratio:.0f}×",
            "[green]met[/]" if ok else "[red]missed[/]",
        )  # fmt: skip
    console.print(table)


if __name__ == "__main__":
    main()
