"""``quantnet check lookahead`` through the real entry point: a strategy that reads the next bar's
close is caught at the first cut, an honest one passes, and bad input gets one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

PEEK = '''
import numpy as np
from engine.strategy import Decisions, Strategy


class Peek(Strategy):
    """Sizes each asset by tomorrow's return: reads closes[t + 1] in precompute."""

    name = "peek"

    def precompute(self, closes):
        nxt = np.vstack([closes[1:], closes[-1:]])
        return Decisions(np.arange(len(closes)), np.clip((nxt / closes - 1.0) * 10.0, -0.3, 0.3))

    def on_bars(self, bars, ctx):
        return None
'''


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lookahead")
    rng = np.random.default_rng(7)
    days = pd.bdate_range("2020-01-01", periods=120, tz="UTC")
    rows = []
    for sym in ("AAA", "BBB", "CCC"):
        close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, len(days))))
        rows.append(pd.DataFrame({"timestamp": days, "symbol": sym, "open": close, "high": close * 1.01,
                                  "low": close * 0.99, "close": close, "volume": 1.0}))  # fmt: skip
    pd.concat(rows).to_csv(root / "bars.csv", index=False)
    (root / "peek.py").write_text(PEEK)
    return root


def _check(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "quantnet.cli", "check", "lookahead", "--data", "bars.csv", *args]
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=120)


def test_a_strategy_reading_the_next_bar_is_caught_at_the_first_cut(workdir: Path) -> None:
    days = pd.bdate_range("2020-01-01", periods=120)
    first_cut = days[int(0.1 * 119)]
    res = _check(workdir, "--strategy", "peek.py:Peek")
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"LOOK-AHEAD: the decision at {first_cut.date()}" in res.stdout
    assert f"bars after {first_cut.date()} were scrambled" in res.stdout


def test_an_honest_strategy_passes(workdir: Path) -> None:
    res = _check(workdir, "--strategy", "sma_crossover", "--param", "fast=3", "--param", "slow=8")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "no look-ahead" in res.stdout
    assert "5 cuts" in res.stdout


def test_bad_input_is_one_line(workdir: Path) -> None:
    res = _check(workdir, "--strategy", "sma_crossover", "--param", "fats=3")
    assert res.returncode == 2
    assert "valid parameters" in res.stderr and "Traceback" not in res.stderr
    res = _check(workdir, "--strategy", "nope.py:Nope")
    assert res.returncode == 2 and "Traceback" not in res.stderr
