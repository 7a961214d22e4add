"""The daemon under load: QuantNet on 3 markets x 20 symbols, one-minute bars from the fake exchange.

    python bench/daemon.py [--bars 2000] [--tick 0.01]
    python bench/daemon.py --soak 100000

The fake's market clock closes a bar every ``--tick`` seconds (fast-forwarded). Reported: latency
from the arrival of the frame that completes a cross-section to its committed signal (median,
p99), bars processed against the bars the server confirmed (none lost), and resident memory after
warm-up and at the end (growth in %). Paper mode, so orders, fills and the journal are all in the
measured path. The machine may be shared: read the figures as of this run.

``--soak N``: N one-minute bars of 3 symbols fast-forwarded through the same daemon (paper, SMA
crossover; warm-up from the fake's REST, then bars handed to the daemon as the stream would, each
followed by the next bar's opening update), as fast as it takes them: bars journaled against bars
fed (none lost), and resident memory after the first 10% of bars (warm-up) and at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


async def main(bars: int, tick: float) -> None:
    import torch

    from models.checkpoint import save_checkpoint
    from models.config import ModelConfig
    from models.network import QuantNet
    from quantnet.daemon import Daemon, DaemonOptions
    from strategies.registry import create
    from tests.daemon.helpers import app_config, bybit_config
    from tests.fake_bybit import FakeBybit
    from tests.fake_bybit.server import Instrument, real_ms

    torch.set_num_threads(1)
    markets = {f"M{m}": [f"S{m}X{k:02d}USDT" for k in range(20)] for m in range(3)}
    symbols = tuple(s for assets in markets.values() for s in assets)
    tmp = Path(tempfile.mkdtemp())
    model = tmp / "bench.pt"
    save_checkpoint(model, QuantNet(ModelConfig(), markets, seed=0), periods_per_year=525_600.0)
    instruments = [Instrument(s, "linear", 100.0 + i, 0.001, 0.01, 0.01, 5.0) for i, s in enumerate(symbols)]
    fake = FakeBybit(instruments=instruments)
    await fake.start()
    now = real_ms()
    fake.start_market(now - now % 60_000, step_ms=60_000 // 4, tick=tick / 4)
    strategy = create("quantnet", {"model": str(model)})
    opts = DaemonOptions(
        mode="paper", symbols=symbols, interval="1", category="linear", state_dir=tmp / "state", stdout=False
    )
    cfg = app_config(symbols=list(symbols), snapshot_every=100)
    daemon = Daemon(cfg, strategy, opts, bybit=bybit_config(fake))
    task = asyncio.ensure_future(daemon.run())
    while daemon.stats.bars < min(200, bars // 5):
        await asyncio.sleep(0.05)
    rss_warm = rss_mb()
    first, at_warm = daemon.last_ts, daemon.stats.bars
    started = time.perf_counter()
    while daemon.stats.bars < bars:
        await asyncio.sleep(0.05)
    seconds = time.perf_counter() - started
    last = daemon.last_ts
    rss_end = rss_mb()
    daemon.stop()
    await asyncio.wait_for(task, 30)
    await fake.stop()
    lat = np.array(daemon.stats.latencies) * 1e3
    confirmed = (last - first) // (60_000 * 1_000_000)
    print(f"QuantNet paper daemon, {len(symbols)} symbols in 3 markets, one-minute bars fast-forwarded")
    print(f"{'bars processed':<44}{daemon.stats.bars:>12,}")
    print(f"{'symbol-bars':<44}{daemon.stats.bars * len(symbols):>12,}")
    since = daemon.stats.bars - at_warm
    print(f"{'bars processed since warm-up':<44}{since:>12,}")
    print(f"{'server bars closed in that span (lost: diff)':<44}{confirmed:>12,}")
    print(f"{'bars/s (cross-sections)':<44}{since / seconds:>12,.1f}")
    print(f"{'latency median ms':<44}{np.median(lat):>12.3f}")
    print(f"{'latency p99 ms':<44}{np.percentile(lat, 99):>12.3f}")
    print(f"{'RSS after warm-up MB':<44}{rss_warm:>12.1f}")
    print(f"{'RSS at the end MB':<44}{rss_end:>12.1f}")
    print(f"{'RSS growth after warm-up %':<44}{100 * (rss_end / rss_warm - 1):>12.2f}")


async def soak(bars: int) -> None:
    import math

    from engine.events import Bar, BarOpen
    from quantnet.daemon import Daemon, DaemonOptions
    from strategies.registry import create
    from tests.daemon.helpers import PARAMS, SYMBOLS, app_config, bybit_config, rows
    from tests.fake_bybit import FakeBybit

    ms = 1_000_000
    fed = 0
    samples: list[tuple[int, float]] = []

    class Soak(Daemon):
        async def _run_stream(self) -> None:
            nonlocal fed
            self.ws_state = "connected"
            last = self.last_ts // ms
            for k in range(bars):
                if self._done():
                    break
                close = last + (k + 1) * 60_000
                for j, symbol in enumerate(SYMBOLS):
                    p = 100.0 * (1 + 0.05 * math.sin(close / 60_000 / (20 + 7 * j)))
                    bar = Bar(close * ms, time.time_ns(), symbol, "1", p, p * 1.001, p * 0.999, p, 1.0)
                    self._handle(bar)
                fed += 1
                for j, symbol in enumerate(SYMBOLS):
                    p = 100.0 * (1 + 0.05 * math.sin(close / 60_000 / (20 + 7 * j)))
                    self._handle(BarOpen(close * ms, time.time_ns(), symbol, p))
                if k % 1000 == 0:
                    samples.append((k, rss_mb()))
                    await asyncio.sleep(0)
            samples.append((bars, rss_mb()))

    tmp = Path(tempfile.mkdtemp())
    fake = FakeBybit()
    await fake.start()
    opts = DaemonOptions(
        mode="paper", symbols=SYMBOLS, interval="1", category="linear", state_dir=tmp / "state", stdout=False
    )
    strategy = create("sma_crossover", PARAMS)
    daemon = Soak(app_config(max_trade_lag=1e12), strategy, opts, bybit=bybit_config(fake))
    started = time.perf_counter()
    await daemon.run()
    seconds = time.perf_counter() - started
    await fake.stop()
    journaled = rows(tmp / "state", "SELECT COUNT(*) FROM bars")[0][0]
    fills = rows(tmp / "state", "SELECT COUNT(*) FROM events WHERE event = 'Fill'")[0][0]
    warm = next(r for k, r in samples if k >= bars // 10)
    end = samples[-1][1]
    print(f"Soak: paper daemon, SMA crossover on {len(SYMBOLS)} symbols, one-minute bars fast-forwarded")
    print(f"{'bars fed':<44}{fed:>12,}")
    print(f"{'bars journaled (lost: diff)':<44}{journaled:>12,}")
    print(f"{'fills journaled':<44}{fills:>12,}")
    print(f"{'bars/s':<44}{fed / seconds:>12,.0f}")
    print(f"{'RSS after warm-up (10% of bars) MB':<44}{warm:>12.1f}")
    print(f"{'RSS at the end MB':<44}{end:>12.1f}")
    print(f"{'RSS growth after warm-up %':<44}{100 * (end / warm - 1):>12.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bars", type=int, default=2000, help="cross-sections to process")
    parser.add_argument("--tick", type=float, default=0.01, help="real seconds per one-minute bar")
    parser.add_argument("--soak", type=int, default=0, help="fast-forward this many bars instead")
    args = parser.parse_args()
    asyncio.run(soak(args.soak) if args.soak else main(args.bars, args.tick))
