"""Replay throughput: bars per second and peak memory through bus + portfolio + paper broker.

    python bench/replay.py [--symbols 10] [--bars 100000] [--no-backtrader] [--no-quantnet]
                           [--staggered-symbols 10000] [--staggered-bars 500] [--no-staggered]
                           [--no-journal]

The journal cases run the SMA crossover with no journal, with the JSON-lines writer the engine
used before (kept here only for the comparison) and with the SQLite journal, in the same run.

Cases run in fresh processes so each peak RSS is its own; it is measured while the backtest runs,
after the data was generated, and compared with the data frame's own size. The staggered case
replays a universe whose symbols list and delist over 25 years (mostly empty time x symbol cells).
The timed span is the replay loop only. With the ``bench`` extra installed, the same SMA crossover
also runs in backtrader on the same bars and the ratio is printed.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FAST, SLOW = 10, 30
STAGGERED_DAYS = 6_499  # 25 years of business days


def minute_bars(n_symbols: int, n_bars: int, seed: int = 42) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    times = pd.date_range("2024-01-01", periods=n_bars, freq="min", tz="UTC")
    frames = []
    for k in range(n_symbols):
        close = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.001, n_bars)))
        opn = np.r_[close[0], close[:-1]]
        spread = np.abs(rng.normal(0, 0.0005, n_bars))
        frames.append(
            pd.DataFrame(
                {
                    "timestamp": times,
                    "symbol": f"SYM{k:02d}",
                    "open": opn,
                    "high": np.maximum(opn, close) * (1 + spread),
                    "low": np.minimum(opn, close) * (1 - spread),
                    "close": close,
                    "volume": rng.uniform(1, 100, n_bars),
                }
            )
        )
    return pd.concat(frames, ignore_index=True).sort_values(["timestamp", "symbol"], ignore_index=True)


def staggered_bars(n_symbols: int, n_bars: int, n_days: int, seed: int = 7) -> pd.DataFrame:
    """A universe that turns over: each symbol lists for ``n_bars`` business days, the listings
    staggered evenly over ``n_days`` (10,000 x 500 over 6,499 days: 5M bars, about 770 listed at a
    time), so most cells of a time x symbol grid hold no bar."""
    rng = np.random.default_rng(seed)
    days = pd.bdate_range("2000-01-03", periods=n_days, tz="UTC").as_unit("ns").asi8
    first = np.round(np.arange(n_symbols) * (n_days - n_bars) / max(n_symbols - 1, 1)).astype(np.int64)
    day = (first[:, None] + np.arange(n_bars)).ravel()
    sym = np.repeat(np.arange(n_symbols), n_bars)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.01, (n_symbols, n_bars)), axis=1)).ravel()
    opn = close * np.exp(rng.normal(0, 0.002, close.size))
    order = np.lexsort((sym, day))
    names = np.array([f"S{k:05d}" for k in range(n_symbols)], dtype=object)
    return pd.DataFrame(
        {
            "timestamp": pd.to_datetime(days[day[order]], utc=True),
            "symbol": pd.array(names[sym[order]], dtype="str"),
            "open": opn[order],
            "high": np.maximum(opn, close)[order] * 1.001,
            "low": np.minimum(opn, close)[order] * 0.999,
            "close": close[order],
            "volume": np.ones(close.size),
        }
    )


def peak_rss_mb() -> float:
    """The process's peak RSS since :func:`reset_peak_rss` (since start where Linux cannot reset)."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Forget the peak of generating the data, so the peak measured is the replay's."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def run_engine(case: str, shape: tuple[str, int, int], queue: mp.Queue) -> None:
    from quantnet.backtest import run_backtest
    from quantnet.config import load_config
    from strategies.registry import create

    kind, n_symbols, n_bars = shape
    if kind == "staggered":
        data = staggered_bars(n_symbols, n_bars, STAGGERED_DAYS)
        calendar = "exchange"
    else:
        data = minute_bars(n_symbols, n_bars)
        calendar = "24/7"
    frame_mb = data.memory_usage(deep=True).sum() / 2**20
    reset_peak_rss()
    cfg = load_config(
        None, {"data": {"calendar": calendar}, "costs": {"taker_fee_bps": 5, "slippage_bps": 1}}
    )
    params = {"fast": FAST, "slow": SLOW} if case == "sma_crossover" else {}
    result = run_backtest(cfg, strategy=create(case, params), data=data)
    name = f"engine {case}" + (f" staggered {n_symbols:,}x{n_bars}" if kind == "staggered" else "")
    # len(data): the bars replayed (the engine's own count included empty cells before)
    queue.put((name, len(data), result.seconds, peak_rss_mb(), result.metrics["n_fills"], frame_mb))


class JsonlJournal:
    """The engine's previous journal (one flushed JSON line per event), for comparison only."""

    def __init__(self, path, bus) -> None:
        import json

        from engine.journal import JOURNALED, event_record

        self._dumps = json.dumps
        self._record = event_record
        self._fh = Path(path).with_suffix(".jsonl").open("a", encoding="utf-8")
        for event_type in JOURNALED:
            bus.subscribe(event_type, self.record)

    def record(self, event) -> None:
        self._fh.write(self._dumps(self._record(event), separators=(",", ":")) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def run_journal(kind: str, n_symbols: int, n_bars: int, queue: mp.Queue) -> None:
    import tempfile

    import quantnet.backtest as backtest
    from quantnet.config import load_config
    from strategies.registry import create

    if kind == "jsonl":
        backtest.Journal = JsonlJournal  # type: ignore[misc, assignment]
    data = minute_bars(n_symbols, n_bars)
    cfg = load_config(None, {"data": {"calendar": "24/7"}, "costs": {"taker_fee_bps": 5, "slippage_bps": 1}})
    path = None if kind == "none" else Path(tempfile.mkdtemp()) / "journal.db"
    result = backtest.run_backtest(
        cfg, strategy=create("sma_crossover", {"fast": FAST, "slow": SLOW}), data=data, journal_path=path
    )
    name = f"engine sma_crossover, journal: {kind}"
    queue.put((name, result.bars, result.seconds, peak_rss_mb(), result.metrics["n_fills"], float("nan")))


def run_quantnet(min_change: float, queue: mp.Queue) -> None:
    """QuantNet through the full pipeline on the built-in 20-stock, 6-market dataset, with a real
    checkpoint file (paper-default architecture; weights untrained: the cost is the same)."""
    import tempfile

    import torch

    from connectors import datasets
    from connectors.replay import load_ohlcv
    from models.checkpoint import save_checkpoint
    from models.config import ModelConfig
    from models.network import QuantNet
    from quantnet.backtest import run_backtest
    from quantnet.config import load_config
    from strategies.registry import create

    torch.set_num_threads(1)
    data = load_ohlcv(datasets.path("us_sectors"))
    markets = {str(m): sorted(g["symbol"].unique()) for m, g in data.groupby("market")}
    path = Path(tempfile.mkdtemp()) / "bench.pt"
    save_checkpoint(path, QuantNet(ModelConfig(), markets, seed=0), periods_per_year=252.0)
    strategy = create("quantnet", {"model": str(path), "min_change": min_change})
    inner = strategy.on_bars
    spent = [0.0]

    def timed(bars, ctx):
        t0 = time.perf_counter()
        out = inner(bars, ctx)
        spent[0] += time.perf_counter() - t0
        return out

    strategy.on_bars = timed  # type: ignore[method-assign]
    result = run_backtest(load_config(None, {}), strategy=strategy, data=data)
    share = spent[0] / result.seconds
    queue.put(
        (
            f"engine quantnet min_change={min_change:g} ({share:.0%} in strategy)",
            result.bars,
            result.seconds,
            peak_rss_mb(),
            result.metrics["n_fills"],
            data.memory_usage(deep=True).sum() / 2**20,
        )
    )


def run_backtrader(n_symbols: int, n_bars: int, queue: mp.Queue) -> None:
    import backtrader as bt

    data = minute_bars(n_symbols, n_bars)

    class SmaCross(bt.Strategy):
        def __init__(self) -> None:
            self.cross = {
                d: bt.ind.SMA(d.close, period=FAST) > bt.ind.SMA(d.close, period=SLOW) for d in self.datas
            }

        def next(self) -> None:
            for d in self.datas:
                want = 1.0 / len(self.datas) if self.cross[d][0] else 0.0
                if (self.getposition(d).size != 0) != (want > 0):
                    self.order_target_percent(d, target=want)

    cerebro = bt.Cerebro(stdstats=False)
    cerebro.broker.setcash(100_000)
    cerebro.broker.setcommission(commission=0.0005)
    for sym, frame in data.groupby("symbol", sort=True):
        feed = frame.set_index(frame["timestamp"].dt.tz_localize(None))[
            ["open", "high", "low", "close", "volume"]
        ]
        cerebro.adddata(bt.feeds.PandasData(dataname=feed, timeframe=bt.TimeFrame.Minutes), name=str(sym))
    cerebro.addstrategy(SmaCross)
    started = time.perf_counter()
    cerebro.run(runonce=False, preload=True)
    seconds = time.perf_counter() - started
    queue.put(
        ("backtrader sma_crossover", n_symbols * n_bars, seconds, peak_rss_mb(), float("nan"), float("nan"))
    )


def in_process(target, *args) -> tuple:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    row = queue.get()
    proc.join()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--bars", type=int, default=100_000, help="bars per symbol")
    parser.add_argument("--no-backtrader", action="store_true")
    parser.add_argument("--no-quantnet", action="store_true")
    parser.add_argument("--no-staggered", action="store_true")
    parser.add_argument("--staggered-symbols", type=int, default=10_000)
    parser.add_argument("--staggered-bars", type=int, default=500, help="bars per staggered symbol")
    parser.add_argument("--no-journal", action="store_true")
    args = parser.parse_args()

    dense = ("dense", args.symbols, args.bars)
    rows = [in_process(run_engine, case, dense) for case in ("noop", "sma_crossover")]
    if not args.no_staggered:
        rows.append(
            in_process(run_engine, "noop", ("staggered", args.staggered_symbols, args.staggered_bars))
        )
    if not args.no_journal:
        kinds = ("none", "jsonl", "sqlite")
        rows += [in_process(run_journal, kind, args.symbols, args.bars) for kind in kinds]
    if not args.no_quantnet:
        rows += [in_process(run_quantnet, min_change) for min_change in (0.0, 0.01)]
    if not args.no_backtrader:
        try:
            import backtrader  # noqa: F401
        except ImportError:
            print("backtrader not installed (pip install -e '.[bench]'): skipping the comparison")
        else:
            rows.append(in_process(run_backtrader, args.symbols, args.bars))

    print(
        f"\n{args.symbols} symbols x {args.bars:,} minute bars = {args.symbols * args.bars:,} bars "
        "(quantnet: built-in us_sectors, 20 stocks x 8,313 days), one process each"
    )
    print(
        f"{'case':<50}{'bars':>12}{'seconds':>10}{'bars/s':>14}{'peak RSS MB':>14}{'frame MB':>10}"
        f"{'peak/frame':>12}{'fills':>10}"
    )
    for name, bars, seconds, rss, fills, frame in rows:
        print(
            f"{name:<50}{bars:>12,}{seconds:>10.2f}{bars / seconds:>14,.0f}{rss:>14,.0f}{frame:>10,.0f}"
            f"{rss / frame:>12.2f}{fills:>10.0f}"
        )
    print(
        "peak RSS: the whole process (interpreter and data frame included) while the backtest runs, "
        "after the data was generated"
    )
    speed = {name: bars / seconds for name, bars, seconds, *_ in rows}
    if "engine sma_crossover, journal: sqlite" in speed:
        base = speed["engine sma_crossover, journal: none"]
        for kind in ("jsonl", "sqlite"):
            ratio = speed[f"engine sma_crossover, journal: {kind}"] / base
            print(f"journal {kind}: {ratio:.3f}x the speed without a journal")
    if "backtrader sma_crossover" in speed:
        ratio = speed["engine sma_crossover"] / speed["backtrader sma_crossover"]
        print(f"\nSMA crossover: engine is {ratio:,.1f}x backtrader on the same bars")


if __name__ == "__main__":
    main()
