"""Replay throughput: bars per second and peak memory through bus + portfolio + paper broker.

    python bench/replay.py [--symbols 10] [--bars 100000] [--no-backtrader] [--no-quantnet]
                           [--staggered-symbols 10000] [--staggered-bars 500] [--no-staggered]
                           [--no-journal] [--single-bars 1000000] [--no-single] [--no-peers]
                           [--repeats 1] [--quantnet-data PATH] [--only single,quantnet,...]

Single symbol (the most common shape of user data): one symbol's minute bars, a no-op strategy and
the peers' SMA 10/30 crossover holding a fixed 5 units, 10 bps fee, fills at the next open. The
engine's fills and final equity are checked against an independent plain-Python loop in this file,
and (with the ``bench`` extra) backtesting.py and backtrader run the same work on the same bars in
the same run; their fills and final equity are checked too and their speeds printed as ratios.
Single-symbol figures are wall time of the whole call (engine: ``run_backtest`` with building the
bar matrix and the metrics; backtesting.py: ``Backtest(...).run()``; backtrader: ``cerebro.run()``).

The journal cases run the SMA crossover with no journal, with the JSON-lines writer the engine
used before (kept here only for the comparison) and with the SQLite journal, in the same run.

Cases run in fresh processes so each peak RSS is its own; it is measured while the backtest runs,
after the data was generated, and compared with the data frame's own size. The staggered case
replays a universe whose symbols list and delist over 25 years (mostly empty time x symbol cells).
The 10-symbol and staggered rows are wall time of the whole ``run_backtest`` call too, as the
single-symbol ones: the replay loop alone (printed below the table) can be nearly empty, since a
strategy that precomputes its decisions books the bars between them at once (a no-op strategy:
all of them, in milliseconds), leaving the work in building the bar matrix and the metrics. The
journal and QuantNet rows time the replay loop. With the ``bench`` extra installed, the same SMA
crossover also runs in backtrader on the same bars (``cerebro.run()``, which loads its feeds) and
the ratio is printed.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os
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


SINGLE_QTY = 5.0
SINGLE_FEE_BPS = 10.0
CASH = 100_000.0


def reference_sma(opn: np.ndarray, close: np.ndarray) -> tuple[list[tuple[int, int, float]], float]:
    """The single-symbol SMA work as a plain-Python loop, independent of the engine: decide at each
    close from running sums (fast SMA above slow: hold SINGLE_QTY units, else none; the first
    decision at the first bar with both averages), fill at the next bar's open with the fee.
    Returns the fills (bar, side, price) and the final equity marked at the last close."""
    opn_l, close_l = opn.tolist(), close.tolist()
    rate = SINGLE_FEE_BPS / 1e4
    ring = [0.0] * SLOW
    fast_sum = slow_sum = 0.0
    cash, pos = CASH, 0.0
    above = False
    order = 0.0
    fills: list[tuple[int, int, float]] = []
    for t, c in enumerate(close_l):
        if order:
            price = opn_l[t]
            qty = abs(order)
            cash -= order * price + qty * price * rate
            pos += order
            fills.append((t, 1 if order > 0 else -1, price))
            order = 0.0
        slow_sum += c - ring[t % SLOW]
        if t >= FAST:
            fast_sum += c - ring[(t - FAST) % SLOW]
        else:
            fast_sum += c
        ring[t % SLOW] = c
        if t + 1 < SLOW:
            continue
        now = fast_sum * SLOW > slow_sum * FAST
        if t + 1 == SLOW or now != above:
            above = now
            want = SINGLE_QTY if now else 0.0
            if want != pos:
                order = want - pos
    return fills, cash + pos * close_l[-1]


def run_single(case: str, n_bars: int, queue: mp.Queue) -> None:
    """The engine on one symbol: ``noop`` or ``sma`` (SMA 10/30, fixed quantity), checked against
    :func:`reference_sma`."""
    from quantnet.backtest import run_backtest
    from quantnet.config import load_config
    from strategies.registry import create

    data = minute_bars(1, n_bars)
    frame_mb = data.memory_usage(deep=True).sum() / 2**20
    reset_peak_rss()
    cfg = load_config(
        None,
        {
            "data": {"calendar": "24/7"},
            "portfolio": {"cash": CASH},
            "costs": {"taker_fee_bps": SINGLE_FEE_BPS, "slippage_bps": 0},
        },
    )
    params = {"fast": FAST, "slow": SLOW, "quantity": SINGLE_QTY} if case == "sma" else {}
    strategy = create("sma_crossover" if case == "sma" else "noop", params)
    started = time.perf_counter()
    result = run_backtest(cfg, strategy=strategy, data=data)
    seconds = time.perf_counter() - started
    rss = peak_rss_mb()
    check = ""
    if case == "sma":
        fills, final = reference_sma(data["open"].to_numpy(), data["close"].to_numpy())
        trades = result.trades
        got_sides = (trades["side"] == "buy").to_numpy() * 2 - 1
        ref_prices = np.array([p for _, _, p in fills])
        same = (
            len(trades) == len(fills)
            and (got_sides == np.array([s for _, s, _ in fills])).all()
            and np.array_equal(trades["price"].to_numpy(), ref_prices)
            and (trades["quantity"] == SINGLE_QTY).all()
        )
        got_final = float(result.equity["equity"].iloc[-1])
        check = (
            f"fills {'==' if same else '!='} loop ({len(trades):,} vs {len(fills):,}), "
            f"final equity {got_final:,.6f} vs loop {final:,.6f}"
        )
        if not same or abs(got_final - final) > 1e-6 * abs(final):
            check = "MISMATCH: " + check
    name = "engine noop, 1 symbol" if case == "noop" else "engine sma qty=5, 1 symbol"
    queue.put((name, n_bars, seconds, rss, len(result.trades), frame_mb, check, result.seconds))


def run_reference(n_bars: int, queue: mp.Queue) -> None:
    data = minute_bars(1, n_bars)
    opn, close = data["open"].to_numpy(), data["close"].to_numpy()
    started = time.perf_counter()
    fills, final = reference_sma(opn, close)
    seconds = time.perf_counter() - started
    row = ("plain-Python loop sma qty=5", n_bars, seconds, peak_rss_mb(), len(fills), float("nan"))
    queue.put((*row, f"final equity {final:,.6f}", seconds))


def _peer_check(fills: int, final: float, n_bars: int) -> str:
    data = minute_bars(1, n_bars)
    ref, ref_final = reference_sma(data["open"].to_numpy(), data["close"].to_numpy())
    same = fills == len(ref) and abs(final - ref_final) <= 1e-6 * abs(ref_final)
    text = f"fills {fills:,} vs loop {len(ref):,}, final equity {final:,.6f} vs loop {ref_final:,.6f}"
    return text if same else "MISMATCH: " + text


def run_backtesting_py(n_bars: int, queue: mp.Queue) -> None:
    """backtesting.py with its own rolling-mean indicators. It calls ``next`` one bar after its
    indicators' warm-up; a finite first value makes it start at bar 1, so that (like the engine and
    the loop) it decides on the first bar with both averages (NaN comparisons are False before)."""
    import warnings

    from backtesting import Backtest, Strategy

    data = minute_bars(1, n_bars)
    frame = pd.DataFrame(
        {
            "Open": data["open"].to_numpy(),
            "High": data["high"].to_numpy(),
            "Low": data["low"].to_numpy(),
            "Close": data["close"].to_numpy(),
            "Volume": data["volume"].to_numpy(),
        },
        index=pd.DatetimeIndex(data["timestamp"].dt.tz_localize(None)),
    )

    def sma(values: np.ndarray, n: int) -> np.ndarray:
        out = pd.Series(values).rolling(n).mean().to_numpy(copy=True)
        out[0] = 0.0
        return out

    class SmaCross(Strategy):
        def init(self) -> None:
            self.fast = self.I(sma, self.data.Close, FAST)
            self.slow = self.I(sma, self.data.Close, SLOW)

        def next(self) -> None:
            if self.fast[-1] > self.slow[-1]:
                if not self.position:
                    self.buy(size=int(SINGLE_QTY))
            elif self.position:
                self.position.close()

    reset_peak_rss()
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bt = Backtest(frame, SmaCross, cash=CASH, commission=SINGLE_FEE_BPS / 1e4, finalize_trades=False)
        stats = bt.run()
    seconds = time.perf_counter() - started
    rss = peak_rss_mb()
    fills = 2 * len(stats["_trades"]) + (1 if stats["_strategy"].position else 0)
    final = float(stats["Equity Final [$]"])
    check = _peer_check(fills, final, n_bars)
    queue.put(
        ("backtesting.py sma qty=5, 1 symbol", n_bars, seconds, rss, fills, float("nan"), check, seconds)
    )


def run_backtrader_single(n_bars: int, queue: mp.Queue) -> None:
    import backtrader as bt

    data = minute_bars(1, n_bars)
    count = [0]

    class SmaCross(bt.Strategy):
        def __init__(self) -> None:
            self.above = bt.ind.SMA(self.data.close, period=FAST) > bt.ind.SMA(self.data.close, period=SLOW)

        def notify_order(self, order) -> None:
            if order.status == order.Completed:
                count[0] += 1

        def next(self) -> None:
            if self.above[0]:
                if not self.position:
                    self.buy(size=SINGLE_QTY)
            elif self.position:
                self.close()

    feed = data.set_index(data["timestamp"].dt.tz_localize(None))[["open", "high", "low", "close", "volume"]]
    reset_peak_rss()
    started = time.perf_counter()
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.broker.setcash(CASH)
    cerebro.broker.setcommission(commission=SINGLE_FEE_BPS / 1e4)
    cerebro.adddata(bt.feeds.PandasData(dataname=feed, timeframe=bt.TimeFrame.Minutes), name="SYM00")
    cerebro.addstrategy(SmaCross)
    cerebro.run()
    seconds = time.perf_counter() - started
    rss = peak_rss_mb()
    check = _peer_check(count[0], float(cerebro.broker.getvalue()), n_bars)
    queue.put(
        ("backtrader sma qty=5, 1 symbol", n_bars, seconds, rss, count[0], float("nan"), check, seconds)
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
    strategy = create(case, params)
    started = time.perf_counter()
    result = run_backtest(cfg, strategy=strategy, data=data)
    seconds = time.perf_counter() - started
    name = f"engine {case}" + (f" staggered {n_symbols:,}x{n_bars}" if kind == "staggered" else "")
    # len(data): the bars replayed (the engine's own count included empty cells before)
    row = (name, len(data), seconds, peak_rss_mb(), result.metrics["n_fills"], frame_mb)
    queue.put((*row, "", result.seconds))


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


def run_quantnet(min_change: float, rebalance: str, data_path: str, queue: mp.Queue) -> None:
    """QuantNet through the full pipeline on the built-in 20-stock, 6-market dataset (or the
    file at ``data_path``, markets from its ``market`` column or one market), with a real
    checkpoint file (paper-default architecture; weights untrained: the cost is the same).
    ``every_bar`` re-targets every asset every bar (the order path's worst case)."""
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
    data = load_ohlcv(data_path or datasets.path("us_sectors"))
    if "market" in data:
        markets = {str(m): sorted(g["symbol"].unique()) for m, g in data.groupby("market")}
    else:
        markets = {"all": sorted(data["symbol"].unique())}
    path = Path(tempfile.mkdtemp()) / "bench.pt"
    save_checkpoint(path, QuantNet(ModelConfig(), markets, seed=0), periods_per_year=252.0)
    strategy = create("quantnet", {"model": str(path), "min_change": min_change})
    spent = [0.0]
    base = type(strategy)

    class Timed(base):  # type: ignore[misc, valid-type]
        """Times the strategy's own work, bar by bar or precomputed (both overridden here, so the
        replay still takes the precomputed decisions as it would for the plain strategy)."""

        def on_bars(self, bars, ctx):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            out = super().on_bars(bars, ctx)
            spent[0] += time.perf_counter() - t0
            return out

        def precompute(self, closes):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            out = super().precompute(closes)
            spent[0] += time.perf_counter() - t0
            return out

    strategy.__class__ = Timed
    cfg = load_config(None, {"portfolio": {"rebalance": rebalance}})
    result = run_backtest(cfg, strategy=strategy, data=data)
    share = spent[0] / result.seconds
    final = float(result.equity["equity"].iloc[-1])
    queue.put(
        (
            f"engine quantnet {rebalance} min_change={min_change:g} ({share:.0%} in strategy)",
            result.bars,
            result.seconds,
            peak_rss_mb(),
            result.metrics["n_fills"],
            data.memory_usage(deep=True).sum() / 2**20,
            f"final equity {final!r}",
            result.seconds,
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
    while True:
        try:
            row = queue.get(timeout=1.0)
            break
        except Exception:
            if not proc.is_alive():
                raise SystemExit(f"case {target.__name__}{args} failed (exit code {proc.exitcode})") from None
    proc.join()
    return row


GROUPS = ("dense", "staggered", "journal", "quantnet", "single", "peers", "backtrader")


def _load(avg: tuple[float, float, float]) -> str:
    return " ".join(f"{x:.2f}" for x in avg)


def median_rows(runs: list[list[tuple]]) -> list[tuple]:
    """Per case, the repeat with the median time (its RSS, fills and checks with it)."""
    out = []
    for reps in zip(*runs, strict=True):
        ranked = sorted(reps, key=lambda row: row[2])
        out.append(ranked[len(ranked) // 2])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--bars", type=int, default=100_000, help="bars per symbol")
    parser.add_argument("--no-backtrader", action="store_true", help="no backtrader case (any width)")
    parser.add_argument("--no-quantnet", action="store_true")
    parser.add_argument("--no-staggered", action="store_true")
    parser.add_argument("--staggered-symbols", type=int, default=10_000)
    parser.add_argument("--staggered-bars", type=int, default=500, help="bars per staggered symbol")
    parser.add_argument("--no-journal", action="store_true")
    parser.add_argument("--single-bars", type=int, default=1_000_000, help="bars of the 1-symbol cases")
    parser.add_argument("--no-single", action="store_true")
    parser.add_argument("--no-peers", action="store_true", help="no backtesting.py/backtrader 1-symbol runs")
    parser.add_argument("--quantnet-data", default="", help="OHLCV file for the quantnet cases")
    parser.add_argument("--repeats", type=int, default=1, help="runs per case; the median is shown")
    parser.add_argument("--only", default="", help=f"comma-separated groups of {', '.join(GROUPS)}")
    args = parser.parse_args()
    only = {g.strip() for g in args.only.split(",") if g.strip()}
    unknown = only - set(GROUPS)
    if unknown:
        parser.error(f"unknown group(s) {', '.join(sorted(unknown))}; choose from {', '.join(GROUPS)}")
    skip = {
        "quantnet": args.no_quantnet,
        "staggered": args.no_staggered,
        "journal": args.no_journal,
        "single": args.no_single,
        "peers": args.no_peers or args.no_single,
        "backtrader": args.no_backtrader,
    }

    def wanted(group: str) -> bool:
        return (group in only) if only else not skip.get(group, False)

    cases: list[tuple] = []
    dense = ("dense", args.symbols, args.bars)
    if wanted("dense"):
        cases += [(run_engine, case, dense) for case in ("noop", "sma_crossover")]
    if wanted("staggered"):
        cases.append((run_engine, "noop", ("staggered", args.staggered_symbols, args.staggered_bars)))
    if wanted("journal"):
        cases += [(run_journal, kind, args.symbols, args.bars) for kind in ("none", "jsonl", "sqlite")]
    if wanted("quantnet"):
        cases += [
            (run_quantnet, min_change, rebalance, args.quantnet_data)
            for min_change, rebalance in ((0.0, "on_change"), (0.01, "on_change"), (0.0, "every_bar"))
        ]
    if wanted("single"):
        cases += [(run_single, case, args.single_bars) for case in ("noop", "sma")]
        cases.append((run_reference, args.single_bars))
    have_bt = True
    try:
        import backtrader  # noqa: F401
    except ImportError:
        have_bt = False
        print("backtrader not installed (pip install -e '.[bench]'): skipping its cases")
    if wanted("peers"):
        try:
            import backtesting  # noqa: F401
        except ImportError:
            print("backtesting.py not installed (pip install -e '.[bench]'): skipping its case")
        else:
            cases.append((run_backtesting_py, args.single_bars))
        if have_bt and not args.no_backtrader:
            cases.append((run_backtrader_single, args.single_bars))
    if have_bt and wanted("backtrader") and (wanted("dense") or "backtrader" in only):
        cases.append((run_backtrader, args.symbols, args.bars))

    load_before = os.getloadavg()
    runs = [[in_process(*case) for case in cases] for _ in range(max(args.repeats, 1))]
    rows = median_rows(runs)
    load_after = os.getloadavg()

    print(
        f"\n{args.symbols} symbols x {args.bars:,} minute bars = {args.symbols * args.bars:,} bars; "
        f"1 symbol x {args.single_bars:,} minute bars; quantnet: "
        f"{args.quantnet_data or 'built-in us_sectors, 20 stocks x 8,313 days'}; one process per case, "
        f"median of {max(args.repeats, 1)}; load average (1/5/15 min) {_load(load_before)} before, "
        f"{_load(load_after)} after"
    )
    print(
        f"{'case':<58}{'bars':>12}{'seconds':>10}{'bars/s':>14}{'peak RSS MB':>14}{'frame MB':>10}"
        f"{'peak/frame':>12}{'fills':>10}"
    )
    for name, bars, seconds, rss, fills, frame, *_ in rows:
        print(
            f"{name:<58}{bars:>12,}{seconds:>10.2f}{bars / seconds:>14,.0f}{rss:>14,.0f}{frame:>10,.0f}"
            f"{rss / frame:>12.2f}{fills:>10.0f}"
        )
    print(
        "peak RSS: the whole process (interpreter and data frame included) while the backtest runs, "
        "after the data was generated"
    )
    for name, bars, _, _, _, _, *extra in rows:
        if name.startswith("engine") and len(extra) > 1:
            print(f"{name}: replay loop alone {bars / extra[1]:,.0f} bars/s")
        if extra and extra[0]:
            print(
                f"{name}: {extra[0]}"
                + (f" (replay loop {extra[1]:.2f} s)" if name.startswith("engine") else "")
            )
    speed = {name: bars / seconds for name, bars, seconds, *_ in rows}
    if "engine sma_crossover, journal: sqlite" in speed:
        base = speed["engine sma_crossover, journal: none"]
        for kind in ("jsonl", "sqlite"):
            ratio = speed[f"engine sma_crossover, journal: {kind}"] / base
            print(f"journal {kind}: {ratio:.3f}x the speed without a journal")
    if "backtrader sma_crossover" in speed and "engine sma_crossover" in speed:
        ratio = speed["engine sma_crossover"] / speed["backtrader sma_crossover"]
        print(f"\nSMA crossover, {args.symbols} symbols: engine is {ratio:,.1f}x backtrader on the same bars")
    engine = speed.get("engine sma qty=5, 1 symbol")
    for peer in (
        "backtesting.py sma qty=5, 1 symbol",
        "backtrader sma qty=5, 1 symbol",
        "plain-Python loop sma qty=5",
    ):
        if engine and peer in speed:
            print(f"SMA qty=5, 1 symbol: engine is {engine / speed[peer]:,.2f}x {peer.split(' sma')[0]}")


if __name__ == "__main__":
    main()
