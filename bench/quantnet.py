"""QuantNet speed on a paper-sized problem: training throughput against the paper's own training
loop, training steps/s per variant, and the per-bar cost of live inference.

Run by hand: ``python bench/quantnet.py`` (a few minutes on 2 cores; ``--only throughput`` or
``--only variants`` for one part).

Throughput: market-windows per second (one window = ``seq_len`` bars of one market, forward and
backward) of ``models.train`` (its CPU default ``batched=True``: all markets in one pass, and
``batched=False``: one ``nn.LSTM`` per market) against :func:`paper_loop`, this file's own
re-implementation of the training loop released with the paper: every market each step in fixed
order, one AMSGrad optimiser per market that also steps the shared layer, the released sizes
(encoder LSTM 5 wide, 2 layers, dropout 0.1; shared linear 5->5; decoder LSTM 10 wide, 2 layers; 32
windows of 252 bars per market), the same synthetic markets, float32, one thread, in the same run.
Target: at least 3x.

Variants: for each of the four transfer variants, training steps per second (batch of markets,
window k) and the latency of one incremental step for all markets together (median, p99) against
recomputing a 252-bar window per market from scratch, the stateless alternative. Targets:
incremental >= 50x cheaper than recompute and < 2 ms p99.

Synthetic returns; the load average is printed because other processes on the machine move these
figures (each throughput figure is the best of ``--repeats`` interleaved runs; the CPU-second
figures in brackets move less).
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

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
        steps=args.steps, batch_markets=args.batch, seq_len=args.seq_len, val_bars=0, patience=0,
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


# -- the paper's training loop (released code), for the throughput ratio ----------------------------


class _PaperMarketNet(nn.Module):
    """One market of the released model: LSTM encoder, the shared linear layer, LSTM decoder, tanh."""

    def __init__(self, n: int, shared: nn.Module) -> None:
        super().__init__()
        self.encoder = nn.LSTM(n, 5, 2, batch_first=True, dropout=0.1)
        self.shared = shared
        self.decoder = nn.LSTM(5, 10, 2, batch_first=True, dropout=0.1)
        self.head = nn.Linear(10, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)[0]
        h = self.shared(h)
        h = self.decoder(h)[0]
        return torch.tanh(self.head(h))


def paper_loop(
    markets: list[Market], steps: int, *, batch: int, seq_len: int, seed: int
) -> tuple[float, float]:
    """Wall and CPU seconds of ``steps`` steps of the released training loop (after one untimed
    warm-up step).

    Every market each step, in fixed order: a batch of random windows, forward, the released loss
    (minus the Sharpe of s*r pooled over windows, time and assets, annualised by sqrt(252); its cost
    term multiplied by zero), then that market's own optimiser steps its parameters and the shared
    layer's. Raw returns, missing ones as 0.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    shared = nn.Linear(5, 5)
    nets = [_PaperMarketNet(m.n_assets, shared) for m in markets]
    opts = [torch.optim.Adam(net.parameters(), lr=0.01, amsgrad=True) for net in nets]
    data = [torch.as_tensor(np.nan_to_num(m.returns), dtype=torch.float32) for m in markets]
    offsets = np.arange(seq_len)[None, :]

    def step() -> None:
        for r, net, opt in zip(data, nets, opts, strict=True):
            ends = rng.integers(seq_len + 1, len(r) + 1, size=batch)
            rows = torch.as_tensor(ends[:, None] - seq_len + offsets)
            x, y = r[rows - 1], r[rows]
            s = net(x)
            pnl = s * y
            cost = (s[:, 1:] - s[:, :-1]).abs().mean()
            loss = -(pnl.mean() / pnl.std()) * math.sqrt(252.0) + 0.0 * cost
            opt.zero_grad()
            loss.backward()
            opt.step()

    step()
    t0, c0 = time.perf_counter(), time.thread_time()
    for _ in range(steps):
        step()
    return time.perf_counter() - t0, time.thread_time() - c0


RELEASED = ModelConfig(
    variant="lstm-linear", transfer_dim=5, decoder_dim=10, encoder_layers=2, decoder_layers=2,
    transfer_layers=1, dropout=0.1, input_scaling="none",
)  # fmt: skip


def project_loop(
    markets: list[Market], steps: int, *, batch: int, seq_len: int, seed: int, batched: bool = True
) -> tuple[float, float]:
    """Wall and CPU seconds of one ``models.train`` call of ``steps`` steps doing the same work per step as
    :func:`paper_loop`: every market, ``batch`` windows each, the released model sizes; ``batched``:
    all markets in one pass (``models.batched``, the default on CPU) instead of ``nn.LSTM`` per market."""
    model = QuantNet(RELEASED, [(m.name, m.assets) for m in markets], seed=seed)
    tc = TrainConfig(
        steps=steps, batch_markets=len(markets), windows_per_market=batch, seq_len=seq_len,
        val_bars=0, patience=0, eval_every=max(1, steps), threads=1, seed=seed, lr=0.01,
    )  # fmt: skip
    train(model, markets, tc.model_copy(update={"steps": 1}), batched=batched)
    t0, c0 = time.perf_counter(), time.thread_time()
    train(model, markets, tc, batched=batched)
    return time.perf_counter() - t0, time.thread_time() - c0


def parse_case(text: str) -> tuple[int, int, int]:
    """``MxLO-HI``: M markets of LO..HI assets each (``6x20-100``); ``MxN``: all of N assets."""
    try:
        m, widths = text.lower().split("x")
        lo, _, hi = widths.partition("-")
        return int(m), int(lo), int(hi or lo)
    except ValueError:
        raise SystemExit(f"--cases: {text!r} is not MxLO-HI (e.g. 6x20-100) or MxN") from None


def throughput_table(args: argparse.Namespace, console: Console) -> None:
    table = Table(
        title=f"Training throughput, market-windows/s ({args.tp_batch} windows x {args.tp_seq_len} bars "
        "per market per step, released sizes, float32, 1 thread); wall clock and, in brackets, per "
        "CPU second of the thread (steadier on a busy machine)"
    )
    cols = ("markets", "assets", "paper loop", "batched=False", "ratio", "models.train", "ratio", "target 3x")
    for col in cols:
        table.add_column(col, justify="left" if col == "markets" else "right")
    with torch_threads(1):
        for case in args.cases:
            n_markets, lo, hi = parse_case(case)
            markets = synthetic(n_markets, lo, hi, args.tp_seq_len * 4, 1)
            work = n_markets * args.tp_batch * args.tp_steps
            kw = {"batch": args.tp_batch, "seq_len": args.tp_seq_len, "seed": 0}
            runs: dict[str, list[tuple[float, float]]] = {"paper": [], "ours": [], "batched": []}
            for _ in range(args.repeats):
                runs["paper"].append(paper_loop(markets, args.tp_steps, **kw))
                runs["ours"].append(project_loop(markets, args.tp_steps, batched=False, **kw))
                runs["batched"].append(project_loop(markets, args.tp_steps, batched=True, **kw))
            wall = {k: work / min(w for w, _ in v) for k, v in runs.items()}
            cpu = {k: work / min(c for _, c in v) for k, v in runs.items()}

            def cell(k: str, wall: dict[str, float] = wall, cpu: dict[str, float] = cpu) -> str:
                return f"{wall[k]:,.0f} ({cpu[k]:,.0f})"

            def ratio(k: str, wall: dict[str, float] = wall, cpu: dict[str, float] = cpu) -> str:
                return f"{wall[k] / wall['paper']:.2f}x ({cpu[k] / cpu['paper']:.2f}x)"

            best = max(cpu["ours"], cpu["batched"]) / cpu["paper"]
            table.add_row(
                f"{n_markets} x {lo}-{hi}", str(sum(m.n_assets for m in markets)), cell("paper"),
                cell("ours"), ratio("ours"), cell("batched"), ratio("batched"),
                "[green]met[/]" if best >= 3 else "[red]missed[/]",
            )  # fmt: skip
    console.print(table)


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
    p.add_argument("--only", choices=("all", "throughput", "variants"), default="all")
    p.add_argument(
        "--cases", nargs="*", default=["6x20-100", "20x20-100"],
        help="throughput cases, MxLO-HI: M markets of LO..HI assets",
    )  # fmt: skip
    p.add_argument("--tp-steps", type=int, default=3, help="timed steps per throughput run")
    p.add_argument("--tp-batch", type=int, default=32, help="windows per market per step (released: 32)")
    p.add_argument("--tp-seq-len", type=int, default=252, help="throughput window (released: 252)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved runs per figure (best kept)")
    args = p.parse_args()

    markets = synthetic(args.markets, args.min_assets, args.max_assets, args.window + args.bars + 10, 0)
    n_assets = sum(m.n_assets for m in markets)
    console = Console(width=max(Console().width, 120))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    console.print(
        f"{args.markets} markets, {n_assets} assets ({args.min_assets}-{args.max_assets} per market); "
        f"train: batch {args.batch} markets, k={args.seq_len}, N={args.dim}, other dims default; "
        f"torch {torch.__version__}, {args.threads or torch.get_num_threads()} thread(s), "
        f"load average {load:.2f}",
        highlight=False,
    )
    if args.only in ("all", "throughput"):
        throughput_table(args, console)
    if args.only == "throughput":
        return
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
