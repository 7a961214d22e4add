"""The daemon in process against the fake exchange (market clock: a one-minute bar every 20 ms):
paper trading equals a backtest on the same bars, signals are emitted once per (ts, symbol)
across restarts, bad setups are refused in one line, and the ops endpoint answers over HTTP/ws."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from quantnet.daemon import Daemon, DaemonError, DaemonOptions
from strategies.baselines import SmaCrossover
from strategies.registry import create
from tests.daemon.helpers import (
    MS,
    PARAMS,
    STEP_MS,
    SYMBOLS,
    app_config,
    bybit_config,
    events,
    reference_backtest,
    rows,
    running_fake,
    server_frame,
)
from tests.fake_bybit import FakeBybit


@pytest.fixture
async def fake() -> AsyncIterator[FakeBybit]:
    async with running_fake() as server:
        yield server


def daemon(fake: FakeBybit, state: Path, mode: str = "paper", **opts: object) -> Daemon:
    live = opts.pop("live", {})
    strategy = opts.pop("strategy", None) or create("sma_crossover", PARAMS)
    options = DaemonOptions(
        mode=mode, symbols=SYMBOLS, interval="1", category="linear", state_dir=state, stdout=False, **opts
    )
    return Daemon(app_config(**live), strategy, options, bybit=bybit_config(fake))  # type: ignore[arg-type]


class Recording(SmaCrossover):
    """The SMA crossover, keeping every answer it gives (warm-up included)."""

    def __init__(self) -> None:
        super().__init__(SmaCrossover.Params(**PARAMS))
        self.answers: list[tuple[int, np.ndarray | None]] = []

    @property
    def strategy(self) -> Recording:
        return self

    def on_bars(self, bars, ctx):  # type: ignore[no-untyped-def]
        out = super().on_bars(bars, ctx)
        self.answers.append((bars.ts_event, None if out is None else np.array(out)))
        return out


async def test_paper_daemon_equals_backtest_on_the_same_bars(fake, tmp_path):
    """Same bars through the daemon (paper) and through ``run_backtest``: identical strategy
    answers, orders, fills and equity; the journal's bars are the server's, once each."""
    rec = Recording()
    d = daemon(fake, tmp_path / "state", max_bars=40, strategy=rec.strategy)
    assert await asyncio.wait_for(d.run(), 60) == 0
    state = tmp_path / "state"
    closes = [r[0] for r in rows(state, "SELECT ts FROM bars ORDER BY ts")]
    assert len(closes) == 40 and np.all(np.diff(closes) == STEP_MS * MS)
    served = server_frame(fake, closes[0] // MS - STEP_MS, closes[-1] // MS - STEP_MS)
    journal_closes = rows(state, "SELECT prices FROM bars ORDER BY ts")
    assert (
        np.frombuffer(journal_closes[-1][0]).reshape(5, 3)[3].tolist() == served["close"].iloc[-3:].tolist()
    )

    ref = Recording()
    result = reference_backtest(fake, state, tmp_path, ref.strategy)
    bt = ref.answers
    assert [t for t, _ in rec.answers] == [t for t, _ in bt]
    for (_, a), (_, b) in zip(rec.answers, bt, strict=True):
        assert (a is None and b is None) or np.array_equal(a, b, equal_nan=True)

    def orders(path: Path) -> list[tuple]:
        return [(o["ts_event"], o["symbol"], o["side"], o["quantity"]) for o in events(path, "Order")]

    def fills(path: Path) -> list[tuple]:
        # in decision order; within a bar, paper fills come in the order the symbols open
        got = events(path, "Fill")
        got.sort(key=lambda f: (f["client_id"].rsplit("-", 1)[-1], f["symbol"]))
        return [(f["symbol"], f["side"], f["quantity"], f["price"], f["fee"]) for f in got]

    # paper fills each symbol as its bar opens, the backtest all at once: cash is summed in another
    # order, so quantities sized from equity may differ in the last bit (1e-12 relative)
    daemon_orders, backtest_orders = orders(state), orders(tmp_path / "backtest.db")
    assert daemon_orders and [o[:3] for o in daemon_orders] == [o[:3] for o in backtest_orders]
    assert [o[3] for o in daemon_orders] == pytest.approx([o[3] for o in backtest_orders], rel=1e-12)
    daemon_fills, backtest_fills = fills(state), fills(tmp_path / "backtest.db")
    assert [f[:2] for f in daemon_fills] == [f[:2] for f in backtest_fills]
    for a, b in zip(daemon_fills, backtest_fills, strict=True):
        assert a[2:] == pytest.approx(b[2:], rel=1e-12)
    equity = [r[0] for r in rows(state, "SELECT equity FROM equity ORDER BY ts")]
    assert equity == pytest.approx(result.equity["equity"].tolist(), rel=1e-12)
    # paper fills come at the next bar's first update: stamped at that bar's start, which is the
    # decision's close (a fill at the next bar's close would be one interval later)
    decided = {o["client_id"]: o["ts_event"] for o in events(state, "Order")}
    assert all(f["ts_event"] == decided[f["client_id"]] for f in events(state, "Fill"))


async def test_signal_mode_emits_each_bar_once_across_restarts(fake, tmp_path):
    state, signals = tmp_path / "state", tmp_path / "signals.jsonl"
    assert (
        await asyncio.wait_for(daemon(fake, state, "signal", max_bars=6, signals_path=signals).run(), 60) == 0
    )
    await asyncio.sleep(0.3)  # bars close while the daemon is down
    assert (
        await asyncio.wait_for(daemon(fake, state, "signal", max_bars=8, signals_path=signals).run(), 60) == 0
    )
    records = [json.loads(line) for line in signals.read_text().splitlines()]
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1)) and len(records) == 14 * 3
    keys = [(r["ts"], r["symbol"]) for r in records]
    assert len(set(keys)) == len(keys)
    times = sorted({r["ts"] for r in records})
    assert len(times) == 14
    assert {r["late"] for r in records[:18]} == {False} and records[18]["late"] is True
    first = records[0]
    assert set(first) == {"ts", "bar_open", "symbol", "target", "strategy", "model", "seq", "late"}
    assert first["strategy"] == "sma_crossover" and first["model"] is None and -1 <= first["target"] <= 1
    assert events(state, "Order") == []  # signal mode places nothing


async def test_refuses_another_setup_and_a_state_dir_in_use(fake, tmp_path):
    state = tmp_path / "state"
    assert await asyncio.wait_for(daemon(fake, state, "signal", max_bars=1).run(), 60) == 0
    other = daemon(
        fake, state, "signal", max_bars=1, strategy=create("sma_crossover", {"fast": 2, "slow": 5})
    )
    with pytest.raises(DaemonError, match=r"belongs to another setup.*params"):
        await other.run()
    with pytest.raises(DaemonError, match=r"belongs to another setup.*mode"):
        await daemon(fake, state, "paper", max_bars=1).run()
    holder = daemon(fake, state, "signal")
    task = asyncio.ensure_future(holder.run())
    while holder.stats.bars < 1:
        await asyncio.sleep(0.01)
    with pytest.raises(DaemonError, match="in use"):
        await daemon(fake, state, "signal", max_bars=1).run()
    holder.stop()
    assert await asyncio.wait_for(task, 10) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_healthz_metrics_and_signals_websocket(fake, tmp_path):
    port = free_port()
    d = daemon(fake, tmp_path / "state", "paper", http_port=port)
    task = asyncio.ensure_future(d.run())
    try:
        while d.stats.bars < 3:
            await asyncio.sleep(0.01)
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/healthz") as reply:
                health = await reply.json()
                assert reply.status == 200 and health["status"] == "ok"
            assert set(health["symbols"]) == set(SYMBOLS) and health["websocket"] == "connected"
            assert health["trading_state"] == "active" and health["journal"]["last_bar"]
            async with http.get(f"{base}/metrics") as reply:
                text = await reply.text()
            processed = next(
                float(x.split()[1]) for x in text.splitlines() if x.startswith("quantnet_bars_processed ")
            )
            assert processed >= 3 and "quantnet_signal_latency_seconds_bucket" in text
            assert "quantnet_equity " in text and "quantnet_risk_state 0.0" in text
            async with http.ws_connect(f"ws://127.0.0.1:{port}/signals") as ws:
                first = [json.loads((await ws.receive(timeout=5)).data) for _ in SYMBOLS]
                assert {r["symbol"] for r in first} == set(SYMBOLS)  # the latest record per symbol
                assert len({r["ts"] for r in first}) == 1
                nxt = json.loads((await ws.receive(timeout=5)).data)
                assert nxt["seq"] == first[-1]["seq"] + 1
            d.stats.last_bar[SYMBOLS[0]] -= 3_600 * 10**9  # an hour without a bar: degraded
            async with http.get(f"{base}/healthz") as reply:
                assert reply.status == 503 and (await reply.json())["status"] == "degraded"
    finally:
        d.stop()
        assert await asyncio.wait_for(task, 10) == 0


async def test_webhook_gets_every_bar_in_order_despite_failures(fake, tmp_path):
    from aiohttp import web

    got: list[list[dict]] = []
    calls = [0]

    async def hook(request: web.Request) -> web.Response:
        calls[0] += 1
        if calls[0] <= 2:
            return web.Response(status=500)
        got.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        d = daemon(
            fake,
            tmp_path / "state",
            "signal",
            http_port=free_port(),
            live={"webhook_url": f"http://127.0.0.1:{port}/hook"},
        )
        task = asyncio.ensure_future(d.run())
        while sum(len(g) for g in got) < 5 * 3:
            await asyncio.sleep(0.02)
        d.stop()
        await asyncio.wait_for(task, 10)
    finally:
        await runner.cleanup()
    seqs = [r["seq"] for batch in got for r in batch]
    assert seqs == list(range(1, len(seqs) + 1))
