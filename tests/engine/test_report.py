"""The HTML report: one self-contained file whose figures hold the run's own numbers, escaped, and
small on long runs. (tests/e2e/test_report_browser.py renders it in Chromium.)"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.metrics import drawdown_periods
from engine.report import MAX_POINTS, _downsample, write_report
from engine.roundtrips import Prices

EXTERNAL = re.compile(r"""<(?:script|link|img|iframe)[^>]+(?:src|href)\s*=""", re.I)


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
            "cash": equity - positions.sum(axis=1).to_numpy(),
            "gross_exposure": positions.abs().sum(axis=1).to_numpy(),
        }
    )
    fills = ts[1::5]
    trades = pd.DataFrame(
        {
            "timestamp": fills,
            "symbol": [symbols[(i // 2) % len(symbols)] for i in range(len(fills))],
            "side": ["buy" if i % 2 == 0 else "sell" for i in range(len(fills))],
            "quantity": 12.5,
            "price": 101.25 + np.arange(len(fills)) % 3,
            "fee": 1.27,
        }
    )
    close = np.exp(np.cumsum(rng.normal(0, 0.01, (n, len(symbols))), axis=0)) * 100
    prices = Prices(ts.as_unit("ns").asi8, symbols, close, close * 1.01, close * 0.99)
    return {"equity": frame, "positions": positions, "trades": trades, "prices": prices}


METRICS = {
    "sharpe": 1.2345,
    "max_drawdown": 0.1234,
    "total_return": 0.5,
    "profit_factor": float("nan"),
    "trading_state": 2.0,
    "fees": 12.7,
    "funding": 3.5,
}


def figures(page: str) -> dict:
    blob = re.search(r'<script type="application/json" id="qn-figures">(.*?)</script>', page, re.S)
    assert blob, "no figure data in the page"
    return json.loads(blob.group(1))


def values(spec: dict) -> np.ndarray:
    assert spec["dtype"] == "f8"
    return np.frombuffer(base64.b64decode(spec["bdata"]), dtype=np.float64)


def test_report_is_self_contained_and_complete(tmp_path: Path) -> None:
    events = [
        {
            "timestamp": "2020-03-02 00:00:00+00:00",
            "rule": "max_drawdown",
            "state": "halted",
            "message": "dd 21%",
        }
    ]
    frames = run_frames(400)
    bench = np.linspace(1.0, 1.3, 400)
    out = write_report(
        tmp_path / "sub" / "report.html",
        title="Backtest: sma_crossover",
        metrics=METRICS,
        risk_events=events,
        settings={"strategy": "sma_crossover", "params": {"fast": 10, "slow": 30}},
        benchmark=bench,
        benchmark_name="SPY",
        rolling_window=20,
        **frames,
    )
    page = out.read_text(encoding="utf-8")
    assert out == tmp_path / "sub" / "report.html"
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not EXTERNAL.search(page)  # no script, stylesheet or image fetched from anywhere
    assert "plotly.js v" in page  # the library itself is in the file
    figs = figures(page)
    assert {"fig-equity", "fig-monthly", "fig-hist", "fig-rolling", "fig-exposure", "fig-positions"} <= set(
        figs
    )
    assert {"fig-contrib"} <= set(figs) and 'id="qn-prices"' in page and 'id="qn-symbol"' in page
    for text in ("1.234", "12.34%", "50.00%", "n/a", "Sharpe ratio", "Max drawdown", "HALTED"):
        assert text in page, text
    assert "closed round trips" in page and "Funding paid" in page and "3.50" in page
    assert "max_drawdown" in page and "2020-03-02" in page and "&quot;fast&quot;: 10" in page
    assert "against SPY" in page and "Tracking error (annual)" in page and "window: 20 bars" in page

    # the equity line is the run's equity (fewer than MAX_POINTS rows: every one), the benchmark
    # rebased to the starting equity
    eq = figs["fig-equity"]["data"]
    assert np.allclose(values(eq[0]["y"]), frames["equity"]["equity"].to_numpy())
    assert np.allclose(values(eq[1]["y"]), bench / bench[0] * frames["equity"]["equity"].iloc[0])
    stamps_ms = frames["equity"]["timestamp"].dt.as_unit("ns").astype("int64") / 1e6
    assert np.allclose(values(eq[0]["x"]), stamps_ms)
    # drawdown: the deepest point equals the deepest drawdown period's depth
    worst = drawdown_periods(frames["equity"]["timestamp"], frames["equity"]["equity"].to_numpy())[0]
    assert values(eq[2]["y"]).min() == pytest.approx(-worst["depth"])
    # the monthly heatmap: month-end over previous month-end, computed here by pandas directly
    month_end = frames["equity"].set_index("timestamp")["equity"].resample("MS").last()
    want = month_end.iloc[1] / month_end.iloc[0] - 1
    assert figs["fig-monthly"]["data"][0]["z"][0][1] == pytest.approx(want)


def test_everything_is_escaped(tmp_path: Path) -> None:
    nasty = "<script>alert('x')</script>"
    frames = run_frames(50, symbols=("$A$<b>", "B&B"))
    frames["prices"] = Prices(frames["prices"].times, ("$A$<b>", "B&B"), frames["prices"].close)
    out = write_report(
        tmp_path / "r.html",
        title=f"run {nasty}",
        metrics={nasty: 1.0, "note": nasty},
        risk_events=[{"timestamp": 0, "rule": nasty, "message": nasty}],
        settings={nasty: nasty},
        **frames,
    )
    page = out.read_text(encoding="utf-8")
    assert "<script>alert" not in page and "</script>alert" not in page
    assert "&lt;script&gt;" in page
    assert "<b>" not in page and "&lt;b&gt;" in page
    assert "B&amp;B" in page
    # JSON blocks cannot close their script element early
    for block in re.findall(r'<script type="application/json"[^>]*>(.*?)</script>', page, re.S):
        assert "<" not in block and json.loads(block) is not None


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
    assert figures(page) == {}


def test_no_risk_events_says_none(tmp_path: Path) -> None:
    page = write_report(
        tmp_path / "r.html", title="t", metrics=METRICS, risk_events=[], settings={}, **run_frames(30)
    ).read_text(encoding="utf-8")
    risk = page.split("Risk events")[1].split("<h2")[0]
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


def test_long_run_with_many_assets_is_a_heatmap_and_stays_small(tmp_path: Path) -> None:
    frames = run_frames(100_000, symbols=tuple(f"S{k}" for k in range(12)), freq="min")
    out = write_report(
        tmp_path / "r.html", title="long", metrics=METRICS, risk_events=[], settings={}, **frames
    )
    page = out.read_text(encoding="utf-8")
    script = len(page) - len(page.replace(page[page.index("<script>") : page.index("</script>")], ""))
    assert len(page) - script < 1_500_000  # everything but plotly.js
    figs = figures(page)
    heat = figs["fig-positions"]["data"][0]
    assert heat["type"] == "heatmap" and len(heat["y"]) == 12 and len(heat["z"][0]) <= 400
    for trace in figs["fig-equity"]["data"]:
        assert len(values(trace["y"])) <= MAX_POINTS


@pytest.mark.parametrize("index", ["plain", "datetime"])
def test_positions_with_plain_index(tmp_path: Path, index: str) -> None:
    frames = run_frames(40)
    if index == "plain":
        frames["positions"] = frames["positions"].reset_index(drop=True)
    page = write_report(
        tmp_path / "r.html", title="t", metrics={}, risk_events=[], settings={}, **frames
    ).read_text(encoding="utf-8")
    lines = figures(page)["fig-positions"]["data"]
    weights = frames["positions"].to_numpy() / frames["equity"]["equity"].to_numpy()[:, None]
    assert np.allclose(values(lines[0]["y"]), weights[:, 0])


def test_strategy_info_shades_windows_and_lists_markets(tmp_path: Path) -> None:
    frames = run_frames(200)
    info = {
        "model": "model.pt",
        "variant": "lstm-linear",
        "markets": {"tech": ["AAPL", "MSFT"]},
        "windows": [
            {"name": "training", "start": "2019-01-01", "end": "2020-02-01"},
            {"name": "validation", "start": "2020-02-01", "end": "2020-03-01"},
        ],
        "validation_sharpe": 0.8,
        "market_validation_sharpe": {"tech": 0.8},
        "settings": {"transfer_dim": 10},
    }
    page = write_report(
        tmp_path / "r.html", title="q", metrics={}, risk_events=[], settings={}, strategy_info=info, **frames
    ).read_text(encoding="utf-8")
    figs = figures(page)
    shapes = figs["fig-equity"]["layout"]["shapes"]
    assert len(shapes) == 2  # both windows overlap the run; each clipped to its start
    start = frames["equity"]["timestamp"].iloc[0].value / 1e6
    assert shapes[0]["x0"] == start and shapes[0]["x1"] == pd.Timestamp("2020-02-01", tz="UTC").value / 1e6
    assert all(len(figs[k]["layout"]["shapes"]) == 2 for k in ("fig-rolling", "fig-exposure"))
    model = page.split('id="model"')[1]
    assert "lstm-linear" in model and "0.800" in model and "tech" in model and "transfer_dim" in model
