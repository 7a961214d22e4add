"""``quantnet paper`` as a process against the fake exchange, killed with SIGKILL at six points and
restarted each time, then stopped with SIGTERM: every bar the server confirmed is journaled once,
positions and equity equal an uninterrupted run on the same bars, no seq or order id repeats."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.daemon.helpers import MS, STEP_MS, SYMBOLS, events, reference_backtest, rows, start_market
from tests.fake_bybit import FakeBybit

ROOT = Path(__file__).resolve().parents[2]
CONFIG = """
[strategy]
name = "sma_crossover"
[strategy.params]
fast = 3
slow = 8
[data]
calendar = "24/7"
[live]
interval = "1"
category = "linear"
max_trade_lag = 1e9
snapshot_every = 7
"""


async def start(fake: FakeBybit, tmp: Path, crash: str = "", max_bars: int = 0) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("QUANTNET_CRASH_AT", None)
    if crash:
        env["QUANTNET_CRASH_AT"] = crash
    (tmp / "config.toml").write_text(CONFIG)
    args = [
        "-c",
        "from quantnet.cli import app; app()",
        "paper",
        "--symbols",
        ",".join(SYMBOLS),
        "--rest-url",
        fake.rest_url,
        "--ws-url",
        fake.ws_public_url,
        "--state-dir",
        str(tmp / "state"),
        "--signals",
        str(tmp / "signals.jsonl"),
        "--config",
        str(tmp / "config.toml"),
        "--max-bars",
        str(max_bars),
    ]
    return await asyncio.create_subprocess_exec(
        sys.executable, *args, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )


async def test_sigkill_anywhere_then_restart_loses_and_repeats_nothing(tmp_path):
    fake = FakeBybit()
    await fake.start()
    start_market(fake, step_ms=6_000, tick=0.01)  # a bar every 0.1 s
    try:
        # self-inflicted kill -9 at named points, then one from outside at a random moment
        for crash in ("signal:4", "order:2", "commit:5", "backfill:3", "bar:6", "order:7"):
            proc = await start(fake, tmp_path, crash)
            _, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
        proc = await start(fake, tmp_path)
        await asyncio.sleep(2.5)
        proc.kill()
        await proc.wait()
        fake.stop_market()
        last_closed = fake.market_now_ms - fake.market_now_ms % STEP_MS - STEP_MS
        proc = await start(fake, tmp_path)
        state = tmp_path / "state"
        lock = state / "daemon.lock"
        for _ in range(600):
            await asyncio.sleep(0.05)
            if lock.read_text().strip() != f"pid {proc.pid}":
                continue  # not started yet: SIGTERM is handled once the state dir is locked
            got = rows(state, "SELECT MAX(ts) FROM bars")[0][0] if (state / "journal.db").exists() else None
            if got == (last_closed + STEP_MS) * MS:
                break
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()[-2000:]
    finally:
        await fake.stop()

    closes = [r[0] for r in rows(state, "SELECT ts FROM bars ORDER BY ts")]
    assert closes[-1] == (last_closed + STEP_MS) * MS
    assert np.all(np.diff(closes) == STEP_MS * MS)  # every confirmed bar, once each
    late = rows(state, "SELECT COUNT(*) FROM bars WHERE late = 1")[0][0]
    assert late > 0  # restarts did backfill

    records = [json.loads(line) for line in (tmp_path / "signals.jsonl").read_text().splitlines()]
    assert [r["seq"] for r in records] == list(range(1, len(closes) * len(SYMBOLS) + 1))
    ids = [o["client_id"] for o in events(state, "Order")]
    assert ids and len(ids) == len(set(ids))

    result = reference_backtest(fake, state, tmp_path, max_trade_lag=1e9)
    equity = [r[0] for r in rows(state, "SELECT equity FROM equity ORDER BY ts")]
    assert equity == pytest.approx(result.equity["equity"].tolist(), rel=1e-9)
    final = result.positions.iloc[-1].to_numpy()
    book = rows(state, "SELECT e.record FROM events e WHERE e.event = 'PositionUpdate' ORDER BY e.id")
    held = {s: 0.0 for s in SYMBOLS}
    for (record,) in book:
        r = json.loads(record)
        held[r["symbol"]] = r["quantity"]
    last = np.frombuffer(rows(state, "SELECT prices FROM bars ORDER BY ts DESC LIMIT 1")[0][0]).reshape(5, -1)
    assert [held[s] * last[3][i] for i, s in enumerate(SYMBOLS)] == pytest.approx(final.tolist(), rel=1e-9)
