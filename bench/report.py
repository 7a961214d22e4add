"""Time report writing on long, wide runs: ``python bench/report.py [--bars N] [--assets K]``.

Builds a synthetic run (minute bars, random-walk prices, a position in every asset that flips now
and then, one fill per flip) and times :func:`engine.report.write_report`, which must stay under
3 s and 15 MB at 1M bars x 50 assets. Peers in the same run: writing the same equity curve to CSV
(what every backtest already pays) and Plotly's own ``write_html`` of one equity chart with every
point; the table prints the report's time as a ratio of each. Round trips are computed once per
run for round_trips.csv and handed to the report: their time is its own column.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from engine.report import write_report
from engine.roundtrips import Prices, round_trips

TARGET_S, TARGET_MB = 3.0, 15.0


def synthetic(n: int, k: int, flips_per_asset: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2020-01-01", periods=n, freq="min", tz="UTC")
    ns = ts.as_unit("ns").asi8
    close = 100 * np.exp(np.cumsum(rng.normal(0, 5e-4, (n, k)), axis=0))
    high, low = close * (1 + rng.uniform(0, 5e-4, (n, k))), close * (1 - rng.uniform(0, 5e-4, (n, k)))
    deltas = np.zeros((n, k))
    rows, syms, sides, q, px = [], [], [], [], []
    names = [f"A{j:02d}" for j in range(k)]
    for j in range(k):
        at = np.sort(rng.choice(np.arange(1, n), size=flips_per_asset, replace=False))
        sign = np.where(np.arange(len(at)) % 2 == 0, 1.0, 0.0)  # open, close, open, ...
        size = 20_000 / (close[at, j] * k)
        held = 0.0
        for t, s, z in zip(at, sign, size, strict=True):
            target = s * z
            delta = target - held
            if delta == 0:
                continue
            rows.append(t)
            syms.append(names[j])
            sides.append("buy" if delta > 0 else "sell")
            q.append(abs(delta))
            px.append(close[t, j])
            deltas[t, j] += delta
            held = target
    order = np.argsort(rows, kind="stable")
    trades = pd.DataFrame(
        {
            "timestamp": ts[np.asarray(rows)[order]],
            "symbol": np.asarray(syms)[order],
            "side": np.asarray(sides)[order],
            "quantity": np.asarray(q)[order],
            "price": np.asarray(px)[order],
            "fee": np.asarray(q)[order] * np.asarray(px)[order] * 5.5e-4,
        }
    )
    mv = np.cumsum(deltas, axis=0) * close
    del deltas
    cash = 100_000 - np.cumsum(
        np.bincount(
            np.asarray(rows), np.asarray(q) * np.where(np.asarray(sides) == "buy", 1, -1) * np.asarray(px), n
        )
    )
    equity = cash + mv.sum(axis=1)
    frame = pd.DataFrame(
        {"timestamp": ts, "equity": equity, "cash": cash, "gross_exposure": np.abs(mv).sum(axis=1)}
    )
    positions = pd.DataFrame(mv, index=ts, columns=names, copy=False)
    prices = Prices(ns, tuple(names), close, high, low)
    return {
        "equity": frame,
        "positions": positions,
        "trades": trades,
        "prices": prices,
        "bench": close.mean(axis=1),
    }


def time_report(run: dict, out: Path) -> float:
    t0 = time.perf_counter()
    write_report(
        out,
        title="bench",
        equity=run["equity"],
        positions=run["positions"],
        metrics={"periods_per_year": 525_600.0},
        trades=run["trades"],
        risk_events=[],
        settings={},
        prices=run["prices"],
        benchmark=run["bench"],
        benchmark_name="equal weight",
        trips=run["trips"],
    )
    return time.perf_counter() - t0


def time_csv(run: dict, out: Path) -> float:
    t0 = time.perf_counter()
    run["equity"].to_csv(out, index=False)
    return time.perf_counter() - t0


def time_plotly(run: dict, out: Path) -> float:
    import plotly.graph_objects as go

    t0 = time.perf_counter()
    fig = go.Figure(go.Scattergl(x=run["equity"]["timestamp"], y=run["equity"]["equity"]))
    fig.write_html(out, include_plotlyjs=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bars", type=int, default=1_000_000, help="bars per asset (minute bars)")
    ap.add_argument("--assets", type=int, default=50)
    ap.add_argument("--flips", type=int, default=1_000, help="position changes per asset")
    args = ap.parse_args()
    cases = [(args.bars, args.assets, args.flips), (args.bars // 10, args.assets, args.flips // 10)]
    print(
        f"{'case':<22}{'report s':>10}{'MB':>8}{'trips':>9}{'trips s':>9}{'csv s':>8}"
        f"{'plotly s':>10}{'plotly MB':>11}"
        f"{'x csv':>8}{'x plotly':>10}  target"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for n, k, flips in cases:
            run = synthetic(n, k, flips)
            t0 = time.perf_counter()
            run["trips"] = round_trips(run["trades"], run["prices"])
            trip_s = time.perf_counter() - t0
            d = Path(tmp)
            report = d / "report.html"
            secs = min(time_report(run, report) for _ in range(2))
            mb = report.stat().st_size / 1e6
            csv = time_csv(run, d / "equity.csv")
            peer = time_plotly(run, d / "plotly.html")
            peer_mb = (d / "plotly.html").stat().st_size / 1e6
            trips = int(run["trips"]["closed"].sum())
            ok = "ok" if secs < TARGET_S and mb < TARGET_MB else f"MISSED (<{TARGET_S} s, <{TARGET_MB} MB)"
            label = f"{n:,} x {k}"
            print(
                f"{label:<22}{secs:>10.2f}{mb:>8.1f}{trips:>9,}{trip_s:>9.2f}{csv:>8.2f}{peer:>10.2f}{peer_mb:>11.1f}"
                f"{secs / csv:>8.2f}{secs / peer:>10.2f}  {ok}"
            )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
    print(f"peak RSS {peak:,.0f} MB (inputs included)")


if __name__ == "__main__":
    main()
