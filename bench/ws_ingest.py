"""Websocket kline ingest benchmark: run by hand, ``python bench/ws_ingest.py [--frames N]``.

The fake Bybit runs in a child process (its own core) and, once the client subscribes, sends
pre-encoded linear kline frames: per symbol, ``--updates`` in-progress updates, then the two-bar
boundary frame whose first element is the confirmed bar. The client is the production
:class:`~connectors.bybit.kline_stream.KlineStream` publishing to an :class:`~engine.bus.EventBus`
(``bus.post`` and ``bus.run`` dispatch) on one core.

Two measurements:

* throughput: the server sends as fast as it can; frames parsed per second by the client, from
  the first frame's arrival to the last bar's dispatch on the bus;
* latency: the server paces frames (``--rate`` per second) so nothing queues; for each bar, the
  time from the frame's arrival at the client (``Bar.ts_init``, taken when the websocket hands
  the frame over) to the bar handler on the bus.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console
from rich.table import Table

from connectors.bybit.config import BybitConfig
from connectors.bybit.kline_stream import KlineStream
from engine.bus import EventBus
from engine.events import Bar
from tests.fake_bybit.server import FakeBybit, Instrument, PublicConn

MIN = 60_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % MIN


def symbols(n: int) -> list[str]:
    return [f"S{k:03d}USDT" for k in range(n)]


def build_frames(server: FakeBybit, names: list[str], n_frames: int, updates: int) -> list[tuple[str, bool]]:
    """Realistic linear kline frames, round-robin over symbols: (json, carries a confirmed bar)."""
    frames: list[tuple[str, bool]] = []
    bar = 0
    while len(frames) < n_frames:
        start = T0 + bar * MIN
        for step in range(updates + 1):
            for name in names:
                topic = f"kline.1.{name}"
                inst = server.instruments[("linear", name)]
                now = start + (step + 1) * MIN // (updates + 2)
                if step < updates:
                    data = [server._partial(inst, "1", start, now)]
                else:
                    closed = server._element(server.bar("linear", name, "1", start), "1", True, now)
                    new = server._partial(inst, "1", start + MIN, start + MIN)
                    data = [closed, new]
                frames.append((server._frame("linear", topic, data), step == updates))
        bar += 1
    return frames[:n_frames]


def serve(port_q: mp.Queue, n_symbols: int, n_frames: int, updates: int, rate: float, go: mp.Event) -> None:
    async def main() -> None:
        names = symbols(n_symbols)
        server = FakeBybit(
            instruments=[Instrument(n, "linear", 100.0 + k, 0.01, 0.1, 0.1, 5.0) for k, n in enumerate(names)]
        )
        frames = build_frames(server, names, n_frames, updates)

        async def firehose(conn: PublicConn) -> None:
            await asyncio.sleep(0.2)  # let the last subscribe acks through
            ws = conn.ws
            if rate <= 0:
                for text, _ in frames:
                    await ws.send_str(text)
            else:
                gap = 1.0 / rate
                began = time.perf_counter()
                for k, (text, _) in enumerate(frames):
                    delay = began + k * gap - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await ws.send_str(text)
            await asyncio.sleep(3600)

        server.on_subscribed = firehose
        await server.start()
        port_q.put(server.port)
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        await server.stop()

    asyncio.run(main())


async def client(port: int, n_symbols: int, expect_bars: int, paced: bool) -> dict[str, float]:
    names = symbols(n_symbols)
    cfg = BybitConfig(
        rest_url=f"http://127.0.0.1:{port}", ws_public_url=f"ws://127.0.0.1:{port}/v5/public/{{category}}"
    )
    bus = EventBus("live")
    stop = asyncio.Event()
    lat_arrival: list[int] = []
    first_frame = [0]
    done_at = [0.0]
    stream = KlineStream(names, "1", bus=bus, config=cfg, validate_symbols=False)
    received = 0

    def on_bar(bar: Bar) -> None:
        nonlocal received
        now = time.time_ns()
        lat_arrival.append(now - bar.ts_init)
        received += 1
        if received >= expect_bars:
            done_at[0] = time.perf_counter()
            stop.set()
            stream.stop()

    bus.subscribe(Bar, on_bar)
    original = stream.handle_frame

    def timed(raw: str | bytes, ts_init: int) -> None:
        if not first_frame[0]:
            first_frame[0] = time.perf_counter_ns()
        original(raw, ts_init)

    stream.handle_frame = timed  # type: ignore[method-assign]
    dispatcher = asyncio.ensure_future(bus.run(None, stop))
    cpu0 = time.process_time()
    await asyncio.wait_for(stream.run(stop), 600)
    await dispatcher
    cpu = time.process_time() - cpu0
    elapsed = done_at[0] - first_frame[0] / 1e9
    frames = stream.stats.frames - stream.stats.control
    out = {
        "frames": frames,
        "bars": stream.stats.bars,
        "seconds": elapsed,
        "frames_per_s": frames / elapsed,
        "cpu_s": cpu,
        "median_us": statistics.median(lat_arrival) / 1e3,
        "p99_us": sorted(lat_arrival)[int(0.99 * (len(lat_arrival) - 1))] / 1e3,
        "malformed": stream.stats.malformed,
    }
    return out


def run(n_symbols: int, n_frames: int, updates: int, rate: float) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    port_q: mp.Queue = ctx.Queue()
    go = ctx.Event()
    proc = ctx.Process(target=serve, args=(port_q, n_symbols, n_frames, updates, rate, go), daemon=True)
    proc.start()
    try:
        port = port_q.get(timeout=120)
        expect = (n_frames // (n_symbols * (updates + 1))) * n_symbols
        return asyncio.run(client(port, n_symbols, expect, rate > 0))
    finally:
        go.set()
        proc.join(10)
        if proc.is_alive():
            proc.terminate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300_000, help="frames in the throughput run")
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--updates", type=int, default=9, help="in-progress updates per bar and symbol")
    parser.add_argument("--rate", type=float, default=5_000.0, help="frames/s in the latency run")
    parser.add_argument("--latency-frames", type=int, default=50_000)
    args = parser.parse_args()
    fast = run(args.symbols, args.frames, args.updates, 0.0)
    paced = run(args.symbols, args.latency_frames, args.updates, args.rate)
    table = Table(title="Bybit kline websocket ingest (fake Bybit on loopback, client on one core)")
    table.add_column("run")
    table.add_column("frames", justify="right")
    table.add_column("bars", justify="right")
    table.add_column("frames/s", justify="right")
    table.add_column("client CPU s", justify="right")
    table.add_column("arrival→bus median µs", justify="right")
    table.add_column("arrival→bus p99 µs", justify="right")
    for name, r in (("throughput (unpaced)", fast), (f"latency (paced {args.rate:,.0f}/s)", paced)):
        table.add_row(
            name,
            f"{r['frames']:,.0f}",
            f"{r['bars']:,.0f}",
            f"{r['frames_per_s']:,.0f}",
            f"{r['cpu_s']:.2f}",
            f"{r['median_us']:.1f}",
            f"{r['p99_us']:.1f}",
        )
    Console(width=140).print(table)
    print(json.dumps({"throughput": fast, "latency": paced}))


if __name__ == "__main__":
    main()
