"""``report.html``: the experiment's figures in one self-contained file (Plotly, its script inlined,
so it opens offline and sends no request).

Figures: per-asset Sharpe histogram per strategy; volatility-scaled cumulative returns per market;
Sharpe gain of QuantNet over No-Transfer against each market's history length and number of assets
(the paper's figures 4-5); the dendrogram of a hierarchical clustering of the markets' encoder
representations; learning curves (validation Sharpe by step, per seed).
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np

from quantnet.experiment.results import SHORT, gross_note, label, sources_note
from quantnet.experiment.tables import TABLE_METRICS, per_asset_mean

VOL_TARGET = 0.10


def _figures(results: dict[str, Any], units: list[dict[str, Any]], baselines: dict[str, Any]) -> list:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figs: list[tuple[str, Any]] = []
    strategies = results["strategies"]
    ppy = results["periods_per_year"]

    fig = go.Figure()
    for name, s in strategies.items():
        x = per_asset_mean([r["net"] for r in s["runs"]], "sharpe")
        fig.add_trace(go.Histogram(x=x[np.isfinite(x)], name=label(name), opacity=0.55, nbinsx=30))
    fig.update_layout(barmode="overlay", xaxis_title="per-asset Sharpe (net)", yaxis_title="assets")
    figs.append(("Per-asset Sharpe ratio by strategy, net of costs (models: mean over seeds)", fig))

    markets = [m["name"] for m in results["markets"]]
    series: dict[str, dict[str, list[np.ndarray]]] = {}
    for name, b in baselines.items():
        for m in markets:
            series.setdefault(name, {}).setdefault(m, []).append(_arr(b["series"][m]["net"]))
    for u in units:
        for m in markets:
            series.setdefault(u.get("name", u["variant"]), {}).setdefault(m, []).append(
                _arr(u["series"][m]["net"])
            )
    dates = {m["name"]: m.get("test_dates") for m in results["markets"]}
    rows = len(markets)
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=False, subplot_titles=markets, vertical_spacing=0.06)
    import plotly.express as px

    palette = px.colors.qualitative.Dark24  # one colour per strategy: up to 24 before any repeats
    for k, (name, by_market) in enumerate(series.items()):
        for i, m in enumerate(markets):
            y = np.nanmean(np.vstack(by_market[m]), axis=0) if by_market[m] else np.array([])
            y = np.nan_to_num(y)
            sd = float(np.std(y, ddof=1)) * math.sqrt(ppy) if len(y) > 1 else 0.0
            scaled = np.cumsum(y * (VOL_TARGET / sd if sd > 0 else 0.0))
            fig.add_trace(
                go.Scatter(
                    x=dates.get(m),
                    y=scaled,
                    name=label(name),
                    legendgroup=name,
                    showlegend=i == 0,
                    line={"color": palette[k % len(palette)], "width": 1.4},
                ),
                row=i + 1,
                col=1,
            )
    fig.update_layout(height=260 * rows + 80, yaxis_title="cumulative return")
    figs.append(
        (
            f"Cumulative returns per market, each scaled to {VOL_TARGET:.0%} annual volatility "
            "(net of costs)",
            fig,
        )
    )

    gains = _gains(results)
    if gains:
        fig = make_subplots(rows=1, cols=2, subplot_titles=("history length", "number of assets"))
        for pair, pts in gains.items():
            for col, key in ((1, "history"), (2, "assets")):
                fig.add_trace(
                    go.Scatter(
                        x=[p[key] for p in pts],
                        y=[p["gain"] for p in pts],
                        text=[p["market"] for p in pts],
                        mode="markers+text",
                        textposition="top center",
                        name=pair,
                        legendgroup=pair,
                        showlegend=col == 1,
                    ),
                    row=1,
                    col=col,
                )
        fig.update_xaxes(title_text="training bars", row=1, col=1)
        fig.update_xaxes(title_text="assets", row=1, col=2)
        fig.update_yaxes(title_text="Sharpe gain (net)")
        figs.append(("Sharpe gain of QuantNet over No-Transfer by market (paper figs. 4-5)", fig))

    enc = next((u["encodings"] for u in units if u.get("encodings")), None)
    enc = {k: v for k, v in (enc or {}).items() if all(math.isfinite(x) for x in v)}
    if len(enc) >= 2:
        import plotly.figure_factory as ff

        names = list(enc)
        x = np.array([enc[n] for n in names], dtype=np.float64)
        x = (x - x.mean(axis=0)) / np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
        sources = {m["name"] for m in results.get("sources") or []}
        labels = [f"{n} (source)" if n in sources else n for n in names]
        fig = ff.create_dendrogram(x, labels=labels, linkagefun=lambda d: _ward(d))
        fig.update_layout(yaxis_title="Ward distance")
        fig.update_xaxes(range=[0, 10 * len(names)])  # leaves sit at 5, 15, ...: show every one
        variant = next(u["variant"] for u in units if u.get("encodings"))
        figs.append(
            (f"Hierarchical clustering of the markets' encoder representations ({variant}, seed 0)", fig)
        )

    curves = [u for u in units if u.get("learning_curve")]
    groups = list(dict.fromkeys(u.get("name", u["variant"]) for u in curves))
    if groups:
        fig = make_subplots(
            rows=len(groups),
            cols=1,
            subplot_titles=[label(g) for g in groups],
            vertical_spacing=0.25 / len(groups),
        )
        colours = px.colors.qualitative.Dark24
        for u in curves:
            row = groups.index(u.get("name", u["variant"])) + 1
            name = f"{label(u.get('name', u['variant']))} s{u['seed']} (kept {u.get('best_step')})"
            for key, dash, what in (
                ("val_sharpe", "solid", "validation"),
                ("train_sharpe", "dot", "training"),
            ):
                pts = [c for c in u["learning_curve"] if c.get(key) is not None and math.isfinite(c[key])]
                fig.add_trace(
                    go.Scatter(
                        x=[c["step"] for c in pts],
                        y=[c[key] for c in pts],
                        name=f"{name}, {what}",
                        legendgroup=name,
                        mode="lines",
                        line={"color": colours[u["seed"] % len(colours)], "dash": dash},
                    ),
                    row=row,
                    col=1,
                )
            fig.add_vline(x=u.get("best_step") or 0, line={"color": "#bbb", "width": 1}, row=row, col=1)
        fig.update_layout(height=300 * len(groups) + 80, showlegend=False)
        fig.update_yaxes(title_text="Sharpe")
        fig.update_xaxes(title_text="step", row=len(groups), col=1)
        figs.append(
            (
                "Learning curves per seed (colour): Sharpe on the validation block (solid) and on the "
                "training batches (dotted); grey lines at the kept steps",
                fig,
            )
        )
    return figs


def _ward(d: np.ndarray) -> np.ndarray:
    from scipy.cluster.hierarchy import linkage

    return linkage(d, method="ward")


def _arr(values: list[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _gains(results: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    pm = results["per_market_sharpe"]["net"]
    info = {m["name"]: m for m in results["markets"]}
    out = {}
    for q, b in results["comparisons"]:
        if q in pm and b in pm:
            pts = []
            for m, meta in info.items():
                gain = pm[q][m] - pm[b][m]
                if math.isfinite(gain):
                    pts.append(
                        {
                            "market": m,
                            "gain": gain,
                            "history": meta["history_bars"],
                            "assets": len(meta["assets"]),
                        }
                    )
            out[f"{label(q)} − {label(b)}"] = pts
    return out


def _table(results: dict[str, Any], kind: str) -> str:
    cols = [*TABLE_METRICS, "turnover", "avg_position", "timing_sharpe"]
    head = "".join(f"<th>{html.escape(SHORT[c])}</th>" for c in cols)
    rows = []
    for name, row in results["table1"][kind].items():
        model = results["strategies"][name]["kind"] == "model"
        cells = []
        for c in cols:
            v = row[c]
            if not math.isfinite(v["median"]):
                cells.append("<td>-</td>")
                continue
            sd = f" ± {v['median_sd']:.3f}" if model and v["seeds"] > 1 else ""
            cells.append(f"<td>{v['median']:.3f}{sd} <small>({v['mad']:.3f})</small></td>")
        rows.append(f"<tr><th>{html.escape(label(name))}</th>{''.join(cells)}</tr>")
    return f"<table><tr><th>strategy</th>{head}</tr>{''.join(rows)}</table>"


def write_report(
    path: Path, results: dict[str, Any], units: list[dict[str, Any]], baselines: dict[str, Any]
) -> None:
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    s = results["settings"]
    split = results["split"]
    parts = [
        f"<p>Test window {split['test_start'][:10]} .. {split['last'][:10]} ({s['test_bars']} bars of "
        f"the union calendar, one start date for every market); validation from {split['val_start'][:10]}; "
        f"{len(results['assets'])} assets in {len(results['markets'])} markets; {s['seeds']} seeds; cost "
        f"{s['cost_bps']:g} bps per unit of position change; training cost {s['train_cost_bps']:g} bps"
        f"{gross_note(s)}."
        f"{html.escape(sources_note(results))}</p>",
        "<p>Cells: median across assets <small>(mean absolute deviation)</small>; learned models: mean ± sd "
        "over seeds of the per-seed median. Timing Sharpe: the position demeaned per asset, so a model "
        "that is merely long scores about 0 (compare buy and hold).</p>",
        "<h2>Table 1, gross of costs</h2>",
        _table(results, "gross"),
        f"<h2>Table 1, net of {s['cost_bps']:g} bps</h2>",
        _table(results, "net"),
        f"<h2>Table 1, traded sizing (position s·0.15/σ_t, the quantnet strategy's volatility target), "
        f"net of {s['cost_bps']:g} bps</h2>",
        _table(results, "sized_net"),
    ]
    for i, (title, fig) in enumerate(_figures(results, units, baselines)):
        fig.update_layout(template="plotly_white", margin={"l": 60, "r": 20, "t": 40, "b": 50})
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=f"fig{i}"))
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>QuantNet experiment</title>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script>"
        "<style>body{font-family:system-ui,sans-serif;margin:24px;max-width:1400px}"
        "table{border-collapse:collapse;font-size:12px;margin-bottom:16px}"
        "td,th{border:1px solid #ddd;padding:3px 6px;text-align:right}th:first-child{text-align:left}"
        "small{color:#777}</style></head><body><h1>QuantNet experiment</h1>"
        + "\n".join(parts)
        + "</body></html>"
    )
    path.write_text(page, encoding="utf-8")
