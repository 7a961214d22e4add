"""The HTML report is one self-contained, escaped file that stays small and fast on long runs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.report import MAX_POINTS, _downsample, write_report

EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.I)


def run_frames(n: int, symbols: tuple[str, ...] = ("AAPL", "MSFT"), freq: str = "D") -> dict:
    rng = np.random.default_rng(3)
    ts = pd.date_range("2020-01-01", periods=n, freq=freq, tz="UTC")
    equity = 1e5 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    positions = pd.DataFrame(
        {s: equity * 0.4 * np.sign(np.sin(np.arange(n) / (30 + 7 * k))) for k, s in enumerate(symbols)},
        index=ts,
    )
    frame = pd.DataFrame(
        {
            "timestamp": ts,
            "equity": equity,
            "cash": equity * 0.2,
            "gross_exposure": positions.abs().sum(axis=1).to_numpy(),
        }
    )
    fills = ts[1::5]
    trades = pd.DataFrame(
        {
            "timestamp": fills,
            "symbol": [symbols[i % len(symbols)] for i in range(len(fills))],
            "side": ["buy" if i % 2 == 0 else "sell" for i in range(len(fills))],
            "quantity": 12.5,
            "price": 101.25,
            "fee": 1.27,
        }
    )
    return {"equity": frame, "positions": positions, "trades": trades}


METRICS = {"sharpe": 1.2345, "max_drawdown": 0.1234, "total_return": 0.5, "profit_factor": float("nan")}


def test_report_is_self_contained_and_complete(tmp_path: Path) -> None:
    events = [
        {
            "timestamp": "2020-03-02 00:00:00+00:00",
            "rule": "max_drawdown",
            "state": "HALTED",
            "message": "dd 21%",
        },
    ]
    out = write_report(
        tmp_path / "sub" / "report.html",
        title="Backtest: sma_crossover",
        metrics=METRICS,
        risk_events=events,
        settings={"strategy": "sma_crossover", "params": {"fast": 10, "slow": 30}},
        **run_frames(300),
    )
    page = out.read_text(encoding="utf-8")
    assert out == tmp_path / "sub" / "report.html"
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not EXTERNAL.search(page)
    assert "http" not in page  # not even SVG namespace URLs
    assert "<script" not in page.lower() and "<link" not in page.lower() and "@import" not in page
    assert page.count("<svg") == 3  # equity, drawdown, positions
    for text in ("1.234", "12.34%", "50.00%", "n/a", "Sharpe ratio", "Max drawdown"):
        assert text in page, text
    assert "HALTED" in page and "max_drawdown" in page and "2020-03-02 00:00:00" in page
    assert "First 10 fills" in page and "Last 10 fills" in page and "101.25" in page
    assert "sma_crossover" in page and "&quot;fast&quot;: 10" in page


def test_everything_is_escaped(tmp_path: Path) -> None:
    nasty = "<script>alert('x')</script>"
    frames = run_frames(50, symbols=("$A$<b>", "B&B"))
    out = write_report(
        tmp_path / "r.html",
        title=f"run {nasty}",
        metrics={nasty: 1.0, "note": nasty},
        risk_events=[{"timestamp": 0, "rule": nasty, "message": nasty}],
        settings={nasty: nasty},
        **frames,
    )
    page = out.read_text(encoding="utf-8")
    assert "<script" not in page
    assert "&lt;script&gt;" in page
    assert "<b>" not in page and "&lt;b&gt;" in page  # in the fills table and the SVG legend
    assert "B&amp;B" in page


def test_empty_run(tmp_path: Path) -> None:
    empty_equity = pd.DataFrame(
        {
            "timestamp": pd.Series([], dtype="datetime64[ns, UTC]"),
            "equity": [],
            "cash": [],
            "gross_exposure": [],
        }
    )
    out = write_report(
        tmp_path / "r.html",
        title="nothing",
        equity=empty_equity,
        positions=pd.DataFrame(),
        metrics={},
        trades=pd.DataFrame(columns=["timestamp", "symbol", "side", "quantity", "price", "fee"]),
        risk_events=[],
        settings={},
    )
    page = out.read_text(encoding="utf-8")
    assert "no bars" in page and "no fills" in page and "no positions" in page
    assert '<p class="none">none</p>' in page


def test_no_risk_events_says_none(tmp_path: Path) -> None:
    page = write_report(
        tmp_path / "r.html", title="t", metrics=METRICS, risk_events=[], settings={}, **run_frames(30)
    ).read_text(encoding="utf-8")
    risk = page.split("Risk events")[1].split("<h2>")[0]
    assert '<p class="none">none</p>' in risk


def test_downsample_keeps_extremes_and_ends() -> None:
    y = np.sin(np.linspace(0, 60, 100_000))
    y[12_345] = -5.0
    y[77_777] = 7.0
    keep = _downsample(y)
    assert len(keep) <= MAX_POINTS
    assert {0, 12_345, 77_777, len(y) - 1} <= set(keep.tolist())
    assert np.all(np.diff(keep) > 0)
    assert len(_downsample(y[:500])) == 500


def test_long_run_stays_small(tmp_path: Path) -> None:
    frames = run_frames(100_000, symbols=tuple(f"S{k}" for k in range(12)), freq="min")
    out = write_report(
        tmp_path / "r.html", title="long", metrics=METRICS, risk_events=[], settings={}, **frames
    )
    assert out.stat().st_size < 1_000_000
    page = out.read_text(encoding="utf-8")
    assert "4 others (sum)" in page  # 12 symbols: 8 lines plus one for the rest


@pytest.mark.parametrize("index", ["plain", "datetime"])
def test_positions_with_plain_index(tmp_path: Path, index: str) -> None:
    frames = run_frames(40)
    if index == "plain":
        frames["positions"] = frames["positions"].reset_index(drop=True)
    page = write_report(
        tmp_path / "r.html", title="t", metrics={}, risk_events=[], settings={}, **frames
    ).read_text(encoding="utf-8")
    assert page.count("<svg") == 3
    assert "weight (market value / equity)" in page
