"""The backtest report: one self-contained interactive HTML tearsheet (Plotly).

Self-contained because a report gets mailed, archived and opened years later, offline: plotly.js
is inlined and nothing is fetched from anywhere. Charts zoom, pan and hover; every time axis is
linked (zooming one zooms all). Figures are plain Plotly JSON with numbers as base64 typed arrays,
so a long run stays small: series above ``MAX_POINTS`` are cut to each bucket's first, minimum,
maximum and last points (drawdown troughs and position flips survive), positions become a time ×
asset heatmap of bucket means, and tables beyond a few hundred rows point to the CSV files.

Every number comes from :mod:`engine.metrics` and :mod:`engine.roundtrips`, labelled through
:mod:`engine.summary`, so the report, ``metrics.json`` and the CLI summary say the same thing.
Caller-supplied text (title, symbols, settings, risk messages) is HTML-escaped, and JSON inside
the page escapes ``<``, ``>`` and ``&``.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.metrics import (
    calendar_returns,
    drawdown_periods,
    equity_returns,
    performance,
    rolling_stats,
    versus_benchmark,
)
from engine.roundtrips import Prices, round_trips
from engine.summary import LABELS, format_metric, summary_rows

__all__ = ["MAX_POINTS", "write_report"]

MAX_POINTS = 2000
HEATMAP_BUCKETS = 400
MAX_LINES = 8
MAX_HEATMAP_ASSETS = 60
MAX_PRICE_SYMBOLS = 50
MAX_MARKERS = 400
PRICE_POINTS = 4000
PRICE_BUCKETS = 500
TRIP_ROWS = 300
TRADE_ROWS = 10
RISK_ROWS = 200
_NS_DAY = 86_400 * 10**9

_COLORS = ["#1f5fa8", "#d1495b", "#edae49", "#00798c", "#66a182", "#8d6a9f", "#e07a5f", "#3d405b"]

_CSS = """
:root { --ink:#1d2733; --muted:#5d6b79; --line:#e3e6ea; --bg:#f7f8fa; --accent:#1f5fa8; }
* { box-sizing:border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
  font:14px/1.45 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif; }
main { max-width:1200px; margin:0 auto; padding:24px 20px 48px; }
h1 { font-size:22px; margin:0 0 4px; }
h2 { font-size:16px; margin:28px 0 10px; padding-bottom:4px; border-bottom:1px solid var(--line); }
h3 { font-size:14px; margin:16px 0 6px; color:var(--muted); }
.sub { color:var(--muted); margin:0 0 16px; }
.cards { display:grid; grid-template-columns:repeat(auto-fit,minmax(150px,1fr)); gap:12px;
  margin-bottom:8px; }
.card { background:#fff; border:1px solid var(--line); border-radius:8px; padding:12px 14px; }
.card .k { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.card .v { font-size:22px; font-weight:600; margin-top:2px; }
.chart { background:#fff; border:1px solid var(--line); border-radius:8px; margin:0 0 12px;
  min-height:120px; }
.note { color:var(--muted); font-size:12px; margin:-6px 0 12px 4px; }
table { border-collapse:collapse; background:#fff; border:1px solid var(--line); font-size:13px; }
th, td { padding:4px 9px; border-bottom:1px solid var(--line); text-align:left; vertical-align:top; }
th { background:#eef1f4; font-weight:600; }
.scroll th { position:sticky; top:0; }
tr:nth-child(even) td { background:#fbfcfd; }
td.n { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
td.pos { color:#1a7f37; } td.neg { color:#c0392b; }
.cols { display:flex; flex-wrap:wrap; gap:20px; align-items:flex-start; }
.scroll { max-height:420px; overflow:auto; display:inline-block; border:1px solid var(--line); }
.scroll table { border:0; }
.none { color:var(--muted); font-style:italic; }
.controls { margin:0 0 8px; display:flex; gap:14px; align-items:center; flex-wrap:wrap; }
.controls label { color:var(--muted); font-size:13px; }
select, button { font:inherit; font-size:13px; padding:2px 6px; }
code { font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; white-space:pre-wrap;
  word-break:break-word; }
nav { font-size:13px; margin:10px 0 0; }
nav a { color:var(--accent); margin-right:12px; text-decoration:none; }
footer { color:var(--muted); font-size:12px; margin-top:32px; }
"""

# Renders every figure from its JSON block, links the time axes of all figures with class "ts",
# switches the equity axis between linear and log, and redraws the price chart for the symbol
# chosen in the selector.
_JS = r"""
(function () {
  var config = {displaylogo: false, responsive: true, scrollZoom: false,
                modeBarButtonsToRemove: ["select2d", "lasso2d"]};
  function data(id) { return JSON.parse(document.getElementById(id).textContent); }
  var figs = data("qn-figures"), charts = [];
  Object.keys(figs).forEach(function (id) {
    var el = document.getElementById(id), f = figs[id];
    if (!el) return;
    Plotly.newPlot(el, f.data, f.layout, config);
    if (f.time) charts.push(el);
  });
  var syncing = false;
  charts.forEach(function (src) {
    src.on("plotly_relayout", function (ev) {
      if (syncing) return;
      var upd = null;
      Object.keys(ev).forEach(function (k) {
        var m = k.match(/^xaxis\d*\.(range\[0\]|range\[1\]|autorange|range)$/);
        if (!m) return;
        upd = upd || {};
        if (m[1] === "autorange") upd.auto = true;
        else if (m[1] === "range") upd.range = ev[k];
        else if (m[1] === "range[0]") { upd.r0 = ev[k]; } else { upd.r1 = ev[k]; }
      });
      if (!upd) return;
      var range = upd.range || (upd.r0 !== undefined ? [upd.r0, upd.r1] : null);
      syncing = true;
      var pending = charts.filter(function (c) { return c !== src; }).map(function (dst) {
        var axes = Object.keys(dst.layout).filter(function (k) { return /^xaxis\d*$/.test(k); });
        var rel = {};
        axes.forEach(function (a) {
          if (upd.auto || !range) rel[a + ".autorange"] = true; else rel[a + ".range"] = range.slice();
        });
        return Plotly.relayout(dst, rel);
      });
      Promise.all(pending).then(function () { syncing = false; }, function () { syncing = false; });
    });
  });
  var scale = document.getElementById("qn-log");
  if (scale) scale.addEventListener("change", function () {
    Plotly.relayout("fig-equity", {"yaxis.type": scale.checked ? "log" : "linear", "yaxis.autorange": true});
  });
  var pick = document.getElementById("qn-symbol");
  if (pick) {
    var prices = data("qn-prices");
    var draw = function () {
      var f = prices.figures[pick.value];
      var el = document.getElementById("fig-price");
      Plotly.react(el, f.data, Object.assign({}, prices.layout, {title: {text: f.title, x: 0.01}}), config);
    };
    pick.addEventListener("change", draw);
    draw();
    charts.push(document.getElementById("fig-price"));
  }
  document.body.setAttribute("data-rendered", String(charts.length));
})();
"""


# text ------------------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float, sig: int = 6, min_decimals: int = 0) -> str:
    """About ``sig`` significant digits (at least ``min_decimals``), thousands separators, no
    exponent: crypto quantities and prices span 1e-8..1e5."""
    if not math.isfinite(value):
        return "n/a"
    if value == 0:
        return f"{0:.{min_decimals}f}"
    decimals = min(max(min_decimals, sig - 1 - math.floor(math.log10(abs(value)))), 10)
    text = f"{value:,.{decimals}f}"
    if decimals > min_decimals:
        text = text.rstrip("0")
        text = text + "0" * max(0, min_decimals - len(text.partition(".")[2]))
        text = text.rstrip(".")
    return text


def _pct(value: float | None, digits: int = 2) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}%}"


def _signed_cell(value: float | None, text: str) -> str:
    cls = (
        "n"
        if value is None or not math.isfinite(value) or value == 0
        else ("n pos" if value > 0 else "n neg")
    )
    return f'<td class="{cls}">{text}</td>'


def _stamp(value: object, daily: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return ""
    try:
        if isinstance(value, int | np.integer) and not isinstance(value, bool):
            t = pd.Timestamp(int(value), unit="ns", tz="UTC")
        else:
            t = pd.Timestamp(value)
            t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    except (TypeError, ValueError):
        return _e(value)
    if t is pd.NaT:
        return ""
    if daily and t == t.normalize():
        return t.strftime("%Y-%m-%d")
    return t.strftime("%Y-%m-%d %H:%M" if t.second == 0 else "%Y-%m-%d %H:%M:%S")


def _plot_text(value: object) -> str:
    """Plotly renders a subset of HTML in names and labels; show the text as typed instead."""
    return html.escape(str(value), quote=False)


# data ------------------------------------------------------------------------------------------


def _arr(values: np.ndarray) -> dict[str, str]:
    """A numeric array as Plotly's base64 typed-array spec (NaN stays a gap)."""
    a = np.ascontiguousarray(values, dtype=np.float64)
    return {"dtype": "f8", "bdata": base64.b64encode(a.tobytes()).decode("ascii")}


def _ms(ns: np.ndarray) -> dict[str, str]:
    """Epoch milliseconds, which Plotly date axes take as numbers."""
    return _arr(np.asarray(ns, dtype=np.int64) / 1e6)


def _json(obj: Any) -> str:
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False, default=_default)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, pd.Timestamp):
        return obj.isoformat()
    raise TypeError(f"{type(obj).__name__} in report JSON")


def _finite(values: Iterable[float]) -> list[float | None]:
    return [float(v) if v is not None and math.isfinite(v) else None for v in values]


def _downsample(y: np.ndarray, cap: int = MAX_POINTS) -> np.ndarray:
    """Indices of at most ``cap`` points: the first, the last and each bucket's min and max."""
    n = len(y)
    if n <= cap:
        return np.arange(n)
    buckets = (cap - 2) // 2
    size = -(-n // buckets)
    padded = np.full(buckets * size, np.nan)
    padded[:n] = y
    grid = padded.reshape(buckets, size)
    missing = np.isnan(grid)
    lo = np.where(missing, np.inf, grid).argmin(axis=1)
    hi = np.where(missing, -np.inf, grid).argmax(axis=1)
    base = np.arange(buckets) * size
    idx = np.unique(np.concatenate([base + lo, base + hi, [0, n - 1]]))
    return idx[idx < n]


def _line(ns: np.ndarray, y: np.ndarray, name: str, **style: Any) -> dict[str, Any]:
    keep = _downsample(y)
    trace = {"type": "scattergl" if len(keep) > 5000 else "scatter", "mode": "lines"}
    trace.update({"x": _ms(ns[keep]), "y": _arr(y[keep]), "name": _plot_text(name)})
    trace.setdefault("line", {"width": 1.3})
    trace.update(style)
    return trace


def _price_line(times: np.ndarray, close: np.ndarray) -> dict[str, Any]:
    ok = np.isfinite(close)
    keep = slice(None) if ok.all() else ok
    return {
        "type": "scatter",
        "mode": "lines",
        "name": "close",
        "x": _ms(times[keep]),
        "y": _arr(close[keep]),
        "line": {"width": 1.1, "color": "#3d405b"},
    }


def _ns(values: Any) -> np.ndarray:
    if isinstance(values, pd.Series | pd.Index):
        if pd.api.types.is_datetime64_any_dtype(values.dtype):
            return pd.DatetimeIndex(values).as_unit("ns").asi8
        if pd.api.types.is_integer_dtype(values.dtype):
            return values.to_numpy(dtype=np.int64)
        values = values.to_numpy()
    arr = np.asarray(values)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "M":
        return arr.astype("datetime64[ns]").view(np.int64)
    return pd.DatetimeIndex(pd.to_datetime(arr, utc=True)).as_unit("ns").asi8


# figures ---------------------------------------------------------------------------------------


def _chart(figures: dict[str, Any], key: str, fig: dict[str, Any]) -> str:
    """The figure's container, sized in CSS (Plotly fills it, and refills it when the page resizes)."""
    height = int(fig["layout"].pop("height", 320))
    figures[key] = fig
    return f'<div class="chart" id="{key}" style="height:{height}px"></div>'


def _layout(height: int, **extra: Any) -> dict[str, Any]:
    layout: dict[str, Any] = {
        "height": height,
        "margin": {"l": 64, "r": 24, "t": 30, "b": 36},
        "hovermode": "x unified",
        "legend": {"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0, "font": {"size": 11}},
        "paper_bgcolor": "#ffffff",
        "plot_bgcolor": "#ffffff",
        "font": {"size": 11, "color": "#1d2733"},
        "colorway": _COLORS,
    }
    layout.update(extra)
    return layout


def _time_axis(**extra: Any) -> dict[str, Any]:
    axis = {
        "type": "date",
        "gridcolor": "#eef0f3",
        "showspikes": True,
        "spikemode": "across",
        "spikethickness": 1,
    }
    axis.update(extra)
    return axis


def _value_axis(**extra: Any) -> dict[str, Any]:
    axis = {"gridcolor": "#eef0f3", "zerolinecolor": "#c9ced4"}
    axis.update(extra)
    return axis


def _shade(windows: Sequence[Mapping[str, Any]], span: tuple[int, int], axes: Sequence[str]) -> list[dict]:
    """Rectangles over the parts of the model's training and validation windows inside the run."""
    shapes = []
    colors = {"training": "rgba(31,95,168,0.10)", "validation": "rgba(237,174,73,0.18)"}
    for w in windows:
        lo = max(_ns([w["start"]])[0], span[0])
        hi = min(_ns([w["end"]])[0], span[1])
        if hi <= lo:
            continue
        for axis in axes:
            shapes.append(
                {
                    "type": "rect",
                    "xref": axis,
                    "yref": "paper",
                    "x0": lo / 1e6,
                    "x1": hi / 1e6,
                    "y0": 0,
                    "y1": 1,
                    "fillcolor": colors.get(w["name"], "rgba(120,120,120,0.12)"),
                    "line": {"width": 0},
                    "layer": "below",
                }
            )
    return shapes


class _Run:
    """The inputs reduced to arrays once, and the figures and tables built from them."""

    def __init__(
        self,
        equity: pd.DataFrame,
        positions: pd.DataFrame | None,
        metrics: Mapping[str, Any],
        trades: pd.DataFrame | None,
        prices: Prices | None,
        benchmark: pd.Series | np.ndarray | None,
        benchmark_name: str,
        rolling_window: int,
        info: Mapping[str, Any] | None,
        trips: pd.DataFrame | None,
    ) -> None:
        n = len(equity)
        self.ns = _ns(equity["timestamp"]) if n else np.zeros(0, dtype=np.int64)
        col = lambda name: (  # noqa: E731
            pd.to_numeric(equity[name], errors="coerce").to_numpy(dtype=np.float64)
            if name in equity and n
            else np.full(n, np.nan)
        )
        self.equity, self.cash, self.gross = col("equity"), col("cash"), col("gross_exposure")
        self.metrics = metrics
        self.ppy = float(metrics.get("periods_per_year") or 252.0)
        self.trades = trades if trades is not None else pd.DataFrame()
        self.prices = prices
        self.positions = positions
        self.info = dict(info or {})
        self.returns = equity_returns(self.equity)
        self.bench = None
        self.bench_name = benchmark_name
        if benchmark is not None and len(benchmark) == n and n:
            b = np.asarray(benchmark, dtype=np.float64)
            if np.isfinite(b).any():
                self.bench = b / b[np.flatnonzero(np.isfinite(b))[0]] * self.equity[0]
        self.window = rolling_window if rolling_window >= 2 else max(2, round(self.ppy / 2))
        self.trips = trips if trips is not None else round_trips(self.trades, prices)
        self.windows = list(self.info.get("windows") or [])
        self.span = (int(self.ns[0]), int(self.ns[-1])) if n else (0, 0)
        self.daily = n == 0 or bool((self.ns % _NS_DAY == 0).all())
        self._weights: tuple | None = None

    # numbers -----------------------------------------------------------------------------------

    def benchmark_metrics(self) -> dict[str, float]:
        if self.bench is None:
            return {}
        return versus_benchmark(self.equity, self.bench, self.ppy)

    # figures -----------------------------------------------------------------------------------

    def equity_figure(self) -> dict[str, Any]:
        ns, eq = self.ns, self.equity
        data = [_line(ns, eq, "strategy", line={"width": 1.6, "color": _COLORS[0]})]
        if self.bench is not None:
            data.append(
                _line(
                    ns, self.bench, f"benchmark: {self.bench_name}", line={"width": 1.2, "color": "#8a939c"}
                )
            )
        with np.errstate(divide="ignore", invalid="ignore"):
            dd = eq / np.fmax.accumulate(eq) - 1.0
        dd = np.nan_to_num(dd, nan=0.0, posinf=0.0, neginf=-1.0)
        trace = _line(ns, dd, "drawdown", line={"width": 0.8, "color": "#d1495b"})
        trace.update({"fill": "tozeroy", "fillcolor": "rgba(209,73,91,0.25)", "xaxis": "x", "yaxis": "y2"})
        data.append(trace)
        layout = _layout(
            520,
            xaxis=_time_axis(anchor="y2"),
            yaxis=_value_axis(domain=[0.34, 1.0], title={"text": "equity"}, tickformat=",.0f"),
            yaxis2=_value_axis(domain=[0.0, 0.27], title={"text": "drawdown"}, tickformat=".0%"),
            shapes=_shade(self.windows, self.span, ["x"]),
        )
        return {"data": data, "layout": layout, "time": True}

    def rolling_figure(self) -> dict[str, Any]:
        sharpe, vol = rolling_stats(self.returns, self.window, self.ppy)
        ns = self.ns[1:]
        data = [
            _line(ns, sharpe, "rolling Sharpe", line={"width": 1.2, "color": _COLORS[0]}),
            {**_line(ns, vol, "rolling volatility", line={"width": 1.2, "color": _COLORS[3]}), "yaxis": "y2"},
        ]
        if self.bench is not None:
            bs, bv = rolling_stats(equity_returns(self.bench), self.window, self.ppy)
            data.insert(1, _line(ns, bs, "benchmark Sharpe", line={"width": 1, "color": "#a9b0b7"}))
            data.append(
                {
                    **_line(ns, bv, "benchmark volatility", line={"width": 1, "color": "#a9b0b7"}),
                    "yaxis": "y2",
                }
            )
        layout = _layout(
            420,
            xaxis=_time_axis(anchor="y2"),
            yaxis=_value_axis(domain=[0.55, 1.0], title={"text": "Sharpe"}),
            yaxis2=_value_axis(domain=[0.0, 0.45], title={"text": "volatility"}, tickformat=".0%"),
            shapes=_shade(self.windows, self.span, ["x"]),
        )
        return {"data": data, "layout": layout, "time": True}

    def exposure_figure(self) -> dict[str, Any]:
        with np.errstate(divide="ignore", invalid="ignore"):
            eq = np.where(self.equity > 0, self.equity, np.nan)
            gross = self.gross / eq
            net = (self.equity - self.cash) / eq
            cash = self.cash / eq
        data = [
            _line(self.ns, gross, "gross exposure / equity", line={"width": 1.2, "color": _COLORS[0]}),
            _line(self.ns, net, "net exposure / equity", line={"width": 1.2, "color": _COLORS[2]}),
            _line(self.ns, cash, "cash / equity", line={"width": 1.0, "color": "#8a939c", "dash": "dot"}),
        ]
        layout = _layout(
            300,
            xaxis=_time_axis(),
            yaxis=_value_axis(tickformat=".0%"),
            shapes=_shade(self.windows, self.span, ["x"]),
        )
        return {"data": data, "layout": layout, "time": True}

    def weights(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]] | None:
        """Times, market values, 1 / equity on those rows (0 where equity is not positive) and
        symbols of the positions; computed once. Weights are values × inverse; a million rows of
        50 assets are never divided out in full."""
        if self._weights is not None:
            return self._weights or None
        self._weights = ()
        pos = self.positions
        if pos is None or pos.empty or pos.shape[1] == 0:
            return None
        values = self.position_values()
        if not np.any(values):
            return None
        if isinstance(pos.index, pd.DatetimeIndex):
            when = _ns(pos.index)
        elif len(pos) == len(self.ns):
            when = self.ns
        else:
            return None
        if len(when) == len(self.ns) and np.array_equal(when, self.ns):
            denom = self.equity
        else:
            by_time = pd.Series(self.equity, index=self.ns)
            denom = by_time[~by_time.index.duplicated(keep="last")].reindex(when).to_numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            inverse = np.where(denom > 0, 1.0 / denom, 0.0)
        self._weights = (when, values, inverse, [str(c) for c in pos.columns])
        return self._weights

    def position_values(self) -> np.ndarray:
        """Market values as floats (0 where missing), without a copy when they already are."""
        pos = self.positions
        assert pos is not None
        try:
            values = pos.to_numpy(dtype=np.float64, copy=False)
        except (TypeError, ValueError):
            values = pos.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        if np.isnan(values).any():
            values = np.nan_to_num(values)
        return values

    def positions_figure(self) -> tuple[dict[str, Any] | None, str]:
        got = self.weights()
        if got is None:
            return None, "no positions were held"
        when, values, inverse, names = got
        if len(names) <= MAX_LINES:
            w = values * inverse[:, None]
            order = np.argsort(-np.abs(w).max(axis=0), kind="stable")
            data = [_line(when, w[:, i], names[i], line={"width": 1.1}) for i in order]
            layout = _layout(320, xaxis=_time_axis(), yaxis=_value_axis(tickformat=".0%"))
            layout["shapes"] = _shade(self.windows, self.span, ["x"])
            return {"data": data, "layout": layout, "time": True}, "weight: market value / equity"
        n = len(when)
        buckets = min(HEATMAP_BUCKETS, n)
        size = n // buckets
        edges = np.r_[np.arange(buckets) * size, n]  # the last bucket takes the remainder
        body = buckets * size
        sums = np.einsum(
            "bsk,bs->bk", values[:body].reshape(buckets, size, -1), inverse[:body].reshape(buckets, size)
        )
        if n > body:
            sums[-1] += inverse[body:] @ values[body:]
        all_means = sums / np.diff(edges)[:, None]
        order = np.argsort(-np.abs(all_means).max(axis=0), kind="stable")
        shown = order[:MAX_HEATMAP_ASSETS]
        means = all_means[:, shown]
        mid = when[np.minimum((edges[:-1] + edges[1:]) // 2, n - 1)]
        z = means.T
        lim = float(np.nanmax(np.abs(z))) or 1.0
        labels = [_plot_text(names[i]) for i in shown]
        trace = {
            "type": "heatmap",
            "x": _ms(mid),
            "y": labels,
            "z": [_finite(row) for row in z],
            "colorscale": [[0, "#c0392b"], [0.5, "#f4f4f4"], [1, "#1f5fa8"]],
            "zmid": 0,
            "zmin": -lim,
            "zmax": lim,
            "colorbar": {"tickformat": ".0%", "title": {"text": "weight"}},
            "hovertemplate": "%{y}<br>%{x}<br>%{z:.1%}<extra></extra>",
        }
        height = max(260, min(900, 40 + 14 * len(shown)))
        layout = _layout(height, xaxis=_time_axis(), yaxis={"autorange": "reversed", "tickfont": {"size": 9}})
        layout["hovermode"] = "closest"
        layout["shapes"] = _shade(self.windows, self.span, ["x"])
        note = f"mean weight (market value / equity) over {buckets} time buckets"
        if len(names) > len(shown):
            note += f"; the {len(shown)} of {len(names)} assets held with the largest bucket weights"
        return {"data": [trace], "layout": layout, "time": True}, note

    def calendar(self) -> dict[str, Any]:
        cal = calendar_returns(self.ns, self.equity)
        bench = calendar_returns(self.ns, self.bench) if self.bench is not None else None
        return {"own": cal, "bench": bench}

    def monthly_figure(self, cal: Mapping[str, Any]) -> dict[str, Any] | None:
        monthly: pd.Series = cal["own"]["monthly"]
        if len(monthly) == 0:
            return None
        years = sorted({t.year for t in monthly.index})
        z = np.full((len(years), 12), np.nan)
        for t, v in monthly.items():
            z[years.index(t.year), t.month - 1] = v
        lim = float(np.nanmax(np.abs(z))) or 0.01
        trace = {
            "type": "heatmap",
            "x": ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"],
            "y": [str(y) for y in years],
            "z": [_finite(row) for row in z],
            "colorscale": [[0, "#c0392b"], [0.5, "#f7f7f7"], [1, "#1a7f37"]],
            "zmin": -lim,
            "zmax": lim,
            "texttemplate": "%{z:.1%}",
            "textfont": {"size": 10},
            "hovertemplate": "%{y} %{x}: %{z:.2%}<extra></extra>",
            "colorbar": {"tickformat": ".0%"},
            "xgap": 1,
            "ygap": 1,
        }
        layout = _layout(max(200, 60 + 22 * len(years)), yaxis={"autorange": "reversed", "type": "category"})
        layout["hovermode"] = "closest"
        return {"data": [trace], "layout": layout}

    def histogram_figure(self, cal: Mapping[str, Any]) -> dict[str, Any] | None:
        """Counts in 80 common bins (computed here: a million returns stay a few numbers)."""
        daily: pd.Series = cal["own"]["daily"]
        per_bar = not self.daily or len(daily) < 20
        values = self.returns[np.isfinite(self.returns)] if per_bar else daily.to_numpy()
        if len(values) == 0:
            return None
        label = "per-bar returns" if per_bar else "daily returns"
        series = [(f"strategy ({label})", values, _COLORS[0], 0.75)]
        if cal["bench"] is not None and not per_bar:
            series.append(("benchmark", cal["bench"]["daily"].to_numpy(), "#a9b0b7", 0.55))
        finite = np.concatenate([v[np.isfinite(v)] for _, v, _, _ in series])
        lo, hi = np.quantile(finite, [0.0005, 0.9995]) if len(finite) > 2000 else (finite.min(), finite.max())
        if not hi > lo:
            lo, hi = lo - 1e-4, hi + 1e-4
        edges = np.linspace(lo, hi, 81)
        mid = (edges[:-1] + edges[1:]) / 2
        data = []
        for name, v, color, opacity in series:
            counts, _ = np.histogram(np.clip(v, lo, hi), bins=edges)
            data.append(
                {
                    "type": "bar",
                    "x": _arr(mid),
                    "y": _arr(counts.astype(np.float64)),
                    "width": float(edges[1] - edges[0]),
                    "name": name,
                    "marker": {"color": color},
                    "opacity": opacity,
                    "hovertemplate": "%{x:.2%}: %{y:,.0f}<extra></extra>",
                }
            )
        layout = _layout(
            300, barmode="overlay", xaxis={"tickformat": ".1%"}, yaxis=_value_axis(title={"text": "count"})
        )
        layout["hovermode"] = "closest"
        return {"data": data, "layout": layout}

    def asset_table(self) -> pd.DataFrame:
        """Per symbol traded: P&L contribution (final market value plus the cash its fills moved,
        fees included), fills, notional, closed round trips, hit rate, mean holding time."""
        t = self.trades
        if t.empty:
            return pd.DataFrame()
        side = np.where(t["side"].astype(str).str.lower() == "buy", 1.0, -1.0)
        qty = pd.to_numeric(t["quantity"], errors="coerce").to_numpy()
        px = pd.to_numeric(t["price"], errors="coerce").to_numpy()
        fee = pd.to_numeric(t["fee"], errors="coerce").to_numpy() if "fee" in t else np.zeros(len(t))
        frame = pd.DataFrame(
            {
                "symbol": t["symbol"].astype(str),
                "flow": -(side * qty * px) - fee,
                "notional": qty * px,
                "fee": fee,
            }
        )
        per = frame.groupby("symbol", sort=False).agg(
            fills=("fee", "size"), notional=("notional", "sum"), fees=("fee", "sum"), flow=("flow", "sum")
        )
        last = pd.Series(0.0, index=per.index)
        pos = self.positions
        if pos is not None and len(pos) and pos.shape[1]:
            final = pd.to_numeric(pos.iloc[-1], errors="coerce").fillna(0.0)
            final.index = final.index.astype(str)
            last = final.reindex(per.index).fillna(0.0)
        per["pnl"] = per["flow"] + last
        trips = self.trips
        closed = trips[trips["closed"].astype(bool)] if len(trips) else trips
        if len(closed):
            g = closed.groupby("symbol")
            per["round_trips"] = g.size().reindex(per.index).fillna(0).astype(int)
            per["hit_rate"] = g["pnl"].apply(lambda p: float((p > 0).mean())).reindex(per.index)
            per["holding_days"] = g["duration_days"].mean().reindex(per.index)
            per["holding_bars"] = g["bars"].mean().reindex(per.index)
        else:
            per["round_trips"] = 0
            per["hit_rate"] = per["holding_days"] = per["holding_bars"] = np.nan
        return per.sort_values("pnl", ascending=False)

    def contribution_figure(self, assets: pd.DataFrame) -> dict[str, Any] | None:
        if assets.empty:
            return None
        shown = assets if len(assets) <= 40 else pd.concat([assets.head(20), assets.tail(20)])
        colors = ["#1a7f37" if v >= 0 else "#c0392b" for v in shown["pnl"]]
        trace = {
            "type": "bar",
            "x": [_plot_text(s) for s in shown.index],
            "y": _arr(shown["pnl"].to_numpy()),
            "marker": {"color": colors},
            "hovertemplate": "%{x}: %{y:,.2f}<extra></extra>",
        }
        layout = _layout(
            320, yaxis=_value_axis(title={"text": "P&L"}, tickformat=",.0f"), xaxis={"type": "category"}
        )
        layout["hovermode"] = "closest"
        return {"data": [trace], "layout": layout}

    def market_sharpe(self) -> list[tuple[str, int, float, float]]:
        """(market, assets, Sharpe, total P&L) per market of the strategy's info, from each
        market's own per-bar P&L over the previous bar's equity."""
        markets = self.info.get("markets") or {}
        got = self.weights()
        if not markets or got is None or len(self.ns) < 3 or self.trades.empty:
            return []
        when, values = got[0], got[1]
        if len(when) != len(self.ns):
            return []
        column = {str(c): j for j, c in enumerate(self.positions.columns)}
        t = self.trades
        side = np.where(t["side"].astype(str).str.lower() == "buy", 1.0, -1.0)
        flow = -(side * t["quantity"].to_numpy(dtype=float) * t["price"].to_numpy(dtype=float))
        flow = flow - (t["fee"].to_numpy(dtype=float) if "fee" in t else 0.0)
        row = np.clip(np.searchsorted(self.ns, _ns(t["timestamp"]), side="left"), 0, len(self.ns) - 1)
        syms = t["symbol"].astype(str).to_numpy()
        prev = self.equity[:-1]
        out = []
        for name, assets in markets.items():
            cols = [column[a] for a in assets if a in column]
            mv = values[:, cols].sum(axis=1) if cols else np.zeros(len(self.ns))
            cash = np.bincount(
                row[np.isin(syms, list(assets))], flow[np.isin(syms, list(assets))], len(self.ns)
            )
            pnl = np.diff(mv) + cash[1:]
            with np.errstate(divide="ignore", invalid="ignore"):
                r = np.where(prev > 0, pnl / prev, np.nan)
            out.append(
                (str(name), len(assets), performance(r, self.ppy)["sharpe"], float(mv[-1] + cash.sum()))
            )
        return out

    @staticmethod
    def _price_bands(
        prices: Prices, cols: list[int | None]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """Beyond ``PRICE_POINTS`` bars: per bucket of bars its time (last bar), lowest low,
        highest high and last close, for every chosen symbol in one pass over the matrices."""
        n = len(prices.times)
        buckets = PRICE_BUCKETS
        if n <= PRICE_POINTS:
            return None
        size = n // buckets
        body = buckets * size
        idx = [c for c in cols if c is not None]
        out = []
        for src, fn in ((prices.low, np.fmin), (prices.high, np.fmax)):
            src = prices.close if src is None else src
            part = src[:, idx] if len(idx) * 2 < src.shape[1] else src
            red = fn.reduce(part[:body].reshape(buckets, size, part.shape[1]), axis=1)
            if n > body:
                red[-1] = fn(red[-1], fn.reduce(part[body:], axis=0))
            out.append(red if part is not src else red[:, idx])
        ends = np.r_[np.arange(1, buckets) * size, n] - 1
        times = np.asarray(prices.times, dtype=np.int64)[ends]
        return times, out[0], out[1], prices.close[ends][:, idx]

    def price_payload(self) -> dict[str, Any] | None:
        """Per symbol traded (the most traded first): closes with entry and exit markers."""
        prices = self.prices
        if prices is None or self.trades.empty:
            return None
        notional = (
            (pd.to_numeric(self.trades["quantity"]) * pd.to_numeric(self.trades["price"]))
            .groupby(self.trades["symbol"].astype(str))
            .sum()
            .sort_values(ascending=False)
        )
        symbols = [s for s in notional.index if prices.column(s) is not None][:MAX_PRICE_SYMBOLS]
        if not symbols:
            return None
        times = np.asarray(prices.times, dtype=np.int64)
        t = self.trips
        trip_symbol = t["symbol"].astype(str).to_numpy(dtype=object)
        long_ = (t["direction"].astype(str) == "long").to_numpy(dtype=bool)
        closed = t["closed"].to_numpy(dtype=bool)
        entry_ns = _ns(t["entry_time"]) if len(t) else np.zeros(0, np.int64)
        entry_ms = entry_ns / 1e6
        exit_ns = pd.DatetimeIndex(t["exit_time"]).as_unit("ns").asi8 if len(t) else np.zeros(0, np.int64)
        exit_ms = np.where(closed, exit_ns, 0) / 1e6
        ret = t["return"].to_numpy(dtype=float)
        order = np.argsort(trip_symbol, kind="stable") if len(t) else np.zeros(0, np.int64)
        sorted_symbols = trip_symbol[order]
        bands = self._price_bands(prices, [prices.column(x) for x in symbols])
        figures = {}
        for j, sym in enumerate(symbols):
            if bands is None:
                close = np.asarray(prices.close[:, prices.column(sym)], dtype=np.float64)
                data = [_price_line(times, close)]
            else:
                at, low, high, last = bands
                data = [
                    {**_price_line(at, low[:, j]), "name": "low", "showlegend": False, "line": {"width": 0}},
                    {
                        **_price_line(at, high[:, j]),
                        "name": f"range per {len(times) // len(at):,} bars",
                        "fill": "tonexty",
                        "fillcolor": "rgba(61,64,91,0.18)",
                        "line": {"width": 0},
                    },
                    _price_line(at, last[:, j]),
                ]
            lo, hi = (
                np.searchsorted(sorted_symbols, sym, "left"),
                np.searchsorted(sorted_symbols, sym, "right"),
            )
            mine = np.sort(order[lo:hi])
            sampled = False
            # markers sit on the close of the bar the fill was stamped with: a round trip's
            # average entry and exit prices lie off the line when it was built up or wound down
            close = np.asarray(prices.close[:, prices.column(sym)], dtype=np.float64)
            on_line = np.clip(np.searchsorted(times, entry_ns), 0, len(times) - 1)
            off_line = np.clip(np.searchsorted(times, exit_ns), 0, len(times) - 1)
            entry_y, exit_y = close[on_line], close[off_line]
            kinds = (
                ("long entry", mine[long_[mine]], entry_ms, entry_y, "triangle-up", "#1a7f37"),
                ("short entry", mine[~long_[mine]], entry_ms, entry_y, "triangle-down", "#c0392b"),
                ("exit", mine[closed[mine]], exit_ms, exit_y, "x", "#1d2733"),
            )
            for label, rows, when, price, marker, color in kinds:
                if len(rows) == 0:
                    continue
                if len(rows) > MAX_MARKERS:
                    rows = rows[np.linspace(0, len(rows) - 1, MAX_MARKERS).astype(np.int64)]
                    sampled = True
                data.append(
                    {
                        "type": "scatter",
                        "mode": "markers",
                        "name": label,
                        "x": _arr(when[rows]),
                        "y": _arr(price[rows]),
                        "customdata": _arr(ret[rows]),
                        "marker": {
                            "symbol": marker,
                            "size": 8,
                            "color": color,
                            "line": {"width": 0.5, "color": "#fff"},
                        },
                        "hovertemplate": "close %{y:,.4f}<br>round trip %{customdata:.2%}<extra>"
                        + label
                        + "</extra>",
                    }
                )
            n_trips = int(closed[mine].sum())
            title = f"{_plot_text(sym)}: {n_trips:,} closed round trips"
            if sampled:
                title += f" (markers: {MAX_MARKERS} evenly spaced per kind)"
            figures[sym] = {"data": data, "title": title}
        layout = _layout(380, xaxis=_time_axis(), yaxis=_value_axis(title={"text": "price"}))
        layout["shapes"] = _shade(self.windows, self.span, ["x"])
        layout["margin"] = {"l": 64, "r": 24, "t": 56, "b": 36}
        layout["legend"] = {**layout["legend"], "x": 1, "xanchor": "right"}
        return {
            "symbols": symbols,
            "figures": figures,
            "layout": layout,
            "more": max(0, len(notional) - len(symbols)),
        }


# tables ----------------------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: set[int] | None = None) -> str:
    """``rows`` hold already-escaped HTML cells (a cell starting with ``<td`` is used as is);
    ``numeric`` column indices are right-aligned."""
    numeric = numeric or set()
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for r in rows:
        cells = []
        for i, c in enumerate(r):
            if c.startswith("<td"):
                cells.append(c)
            else:
                cells.append(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _kv_table(rows: Sequence[tuple[str, str]], title: str = "") -> str:
    headers = [title or "metric", "value"]
    return _table(headers, [(_e(k), _e(v)) for k, v in rows], {1})


def _metrics_table(metrics: Mapping[str, Any]) -> str:
    if not metrics:
        return '<p class="none">none</p>'
    known = [k for k in LABELS if k in metrics]
    extra = sorted(k for k in metrics if k not in LABELS and not isinstance(metrics[k], list | dict))
    rows = [(LABELS.get(k, k), format_metric(k, metrics[k])) for k in (*known, *extra)]
    half = -(-len(rows) // 2)
    return (
        '<div class="cols">'
        + _kv_table(rows[:half])
        + (_kv_table(rows[half:]) if rows[half:] else "")
        + "</div>"
    )


def _cards(metrics: Mapping[str, Any]) -> str:
    keys = ("total_return", "cagr", "sharpe", "max_drawdown", "benchmark_return", "alpha")
    cards = [
        f'<div class="card"><div class="k">{_e(LABELS[k])}</div>'
        f'<div class="v">{_e(format_metric(k, metrics[k]))}</div></div>'
        for k in keys
        if k in metrics
    ]
    return f'<div class="cards">{"".join(cards)}</div>' if cards else ""


def _calendar_tables(cal: Mapping[str, Any]) -> str:
    own, bench = cal["own"], cal["bench"]
    yearly: pd.Series = own["yearly"]
    if len(yearly) == 0:
        return '<p class="none">no returns</p>'
    headers = ["year", "return"] + (["benchmark", "difference"] if bench is not None else [])
    rows = []
    for t, v in yearly.items():
        row = [_e(t.year), _signed_cell(v, _pct(v))]
        if bench is not None:
            b = bench["yearly"].get(t, math.nan)
            row += [_signed_cell(b, _pct(b)), _signed_cell(v - b, _pct(v - b))]
        rows.append(row)
    years = _table(headers, rows, set(range(1, len(headers))))
    best_rows = []
    for unit in ("day", "month", "year"):
        for which in ("best", "worst"):
            got = own[which][unit]
            if got is None:
                continue
            best_rows.append([_e(f"{which} {unit}"), _e(got[0]), _signed_cell(got[1], _pct(got[1]))])
    best = _table(["", "when", "return"], best_rows, {2})
    return f'<div class="cols">{years}{best}</div>'


def _drawdown_table(ns: np.ndarray, equity: np.ndarray, daily: bool) -> str:
    periods = drawdown_periods(ns, equity, top=10) if len(ns) else []
    if not periods:
        return '<p class="none">no drawdown</p>'
    rows = [
        [
            _e(k + 1),
            _e(_stamp(d["start"], daily)),
            _e(_stamp(d["trough"], daily)),
            _e(_stamp(d["recovery"], daily)) if d["recovery"] is not None else "<em>not recovered</em>",
            _signed_cell(-d["depth"], _pct(-d["depth"])),
            _e(f"{d['days']:,.1f}"),
            _e(f"{d['bars']:,}"),
        ]
        for k, d in enumerate(periods)
    ]
    return _table(["#", "start (peak)", "trough", "recovery", "depth", "days", "bars"], rows, {0, 4, 5, 6})


def _asset_section(assets: pd.DataFrame, funding: float | None) -> str:
    if assets.empty:
        return '<p class="none">no fills</p>'
    rows = []
    for sym, r in assets.iterrows():
        rows.append(
            [
                _e(sym),
                _signed_cell(r.pnl, f"{r.pnl:,.2f}"),
                _e(f"{int(r.fills):,}"),
                _e(f"{int(r.round_trips):,}"),
                _e(_pct(r.hit_rate, 1)),
                _e(f"{r.holding_days:,.1f}" if math.isfinite(r.holding_days) else "n/a"),
                _e(f"{r.notional:,.0f}"),
                _e(f"{r.fees:,.2f}"),
            ]
        )
    table = _table(
        [
            "symbol",
            "P&L (net of fees)",
            "fills",
            "round trips",
            "hit rate",
            "mean holding (days)",
            "notional",
            "fees",
        ],
        rows,
        {1, 2, 3, 4, 5, 6, 7},
    )
    note = (
        "P&L: the final market value plus the cash the symbol's fills moved (fees included); the "
        "symbols' P&Ls add up to the run's P&L"
        + (f" before {funding:,.2f} funding paid, which is not attributed to symbols" if funding else "")
        + "."
    )
    return f'<div class="scroll">{table}</div><p class="note">{_e(note)}</p>'


def _trips_section(trips: pd.DataFrame, daily: bool) -> str:
    if len(trips) == 0:
        return '<p class="none">no round trips</p>'
    shown = trips if len(trips) <= TRIP_ROWS else trips.iloc[-TRIP_ROWS:]
    rows = []
    for r in shown.itertuples(index=False):
        rows.append(
            [
                _e(r.symbol),
                _e(r.direction),
                _e(_stamp(r.entry_time, daily)),
                _e(_stamp(r.exit_time, daily)) if r.closed else "<em>open</em>",
                _e(_num(r.entry_price)),
                _e(_num(r.exit_price)) if r.closed else "",
                _e(_num(r.quantity)),
                _signed_cell(r.pnl, f"{r.pnl:,.2f}"),
                _signed_cell(r[8], _pct(r[8])),
                _e(f"{r.bars:,}" if r.bars >= 0 else ""),
                _e(f"{r.duration_days:,.1f}" if r.closed else ""),
                _e(_pct(r.mae)),
                _e(_pct(r.mfe)),
            ]
        )
    closed = trips["closed"].astype(bool)
    head = (
        f"{int(closed.sum()):,} closed round trips"
        + (f" and {int((~closed).sum()):,} still open" if (~closed).any() else "")
        + (f"; the last {TRIP_ROWS} shown" if len(trips) > TRIP_ROWS else "")
        + "; every one in round_trips.csv."
    )
    table = _table(
        [
            "symbol",
            "side",
            "entry",
            "exit",
            "entry price",
            "exit price",
            "quantity",
            "P&L",
            "return",
            "bars",
            "days",
            "MAE",
            "MFE",
        ],
        rows,
        {4, 5, 6, 7, 8, 9, 10, 11, 12},
    )
    return f'<p class="note">{_e(head)}</p><div class="scroll">{table}</div>'


def _fills_section(trades: pd.DataFrame, daily: bool) -> str:
    if trades is None or trades.empty:
        return '<p class="none">no fills</p>'
    qty = pd.to_numeric(trades["quantity"], errors="coerce")
    price = pd.to_numeric(trades["price"], errors="coerce")
    fee = (
        pd.to_numeric(trades["fee"], errors="coerce")
        if "fee" in trades
        else pd.Series(0.0, index=trades.index)
    )
    side = trades["side"].astype(str).str.lower()
    parts = [
        ("fills", f"{len(trades):,}"),
        ("buys", f"{int((side == 'buy').sum()):,}"),
        ("sells", f"{int((side == 'sell').sum()):,}"),
        ("symbols traded", f"{trades['symbol'].nunique():,}"),
        ("notional traded", f"{(qty.abs() * price).sum():,.2f}"),
        ("fees", f"{fee.sum():,.2f}"),
    ]
    summary = _kv_table(parts, "fills")

    def rows(frame: pd.DataFrame) -> list[list[str]]:
        return [
            [
                _e(_stamp(r.timestamp, daily)),
                _e(r.symbol),
                _e(r.side),
                _e(_num(float(r.quantity))),
                _e(_num(float(r.price), min_decimals=2)),
                _e(_num(float(r.fee), min_decimals=2)),
            ]
            for r in frame.itertuples(index=False)
        ]

    headers = ["time", "symbol", "side", "quantity", "price", "fee"]
    if len(trades) <= 2 * TRADE_ROWS:
        listing = "<h3>All fills</h3>" + _table(headers, rows(trades), {3, 4, 5})
    else:
        listing = (
            f"<h3>First {TRADE_ROWS} fills</h3>"
            + _table(headers, rows(trades.head(TRADE_ROWS)), {3, 4, 5})
            + f"<h3>Last {TRADE_ROWS} fills</h3>"
            + _table(headers, rows(trades.tail(TRADE_ROWS)), {3, 4, 5})
            + '<p class="note">every fill in trades.csv</p>'
        )
    return f'<div class="cols">{summary}<div>{listing}</div></div>'


def _risk_table(events: Sequence[Mapping[str, Any]]) -> str:
    if not events:
        return '<p class="none">none</p>'
    optional = [c for c in ("state", "symbol") if any(e.get(c) not in (None, "") for e in events)]
    rows = []
    for event in events[:RISK_ROWS]:
        when = next((event[k] for k in ("timestamp", "time", "ts_event", "ts") if k in event), "")
        state = [
            _e(str(event.get(c) or "").upper() if c == "state" else event.get(c) or "") for c in optional
        ]
        rows.append([_e(_stamp(when)), _e(event.get("rule", "")), *state, _e(event.get("message", ""))])
    more = len(events) - RISK_ROWS
    note = f'<p class="none">… and {more:,} more (see the journal)</p>' if more > 0 else ""
    return _table(["time", "rule", *optional, "message"], rows) + note


def _setting(value: object) -> str:
    if isinstance(value, Mapping | list | tuple):
        return f"<code>{_e(json.dumps(value, sort_keys=True, default=str))}</code>"
    return _e(value)


def _settings_table(settings: Mapping[str, Any]) -> str:
    if not settings:
        return '<p class="none">none</p>'
    return _table(["setting", "value"], [(_e(k), _setting(v)) for k, v in settings.items()])


def _model_section(
    info: Mapping[str, Any], markets: list[tuple[str, int, float, float]], span: tuple[int, int]
) -> str:
    rows = []
    for key, label in (
        ("model", "checkpoint"),
        ("variant", "variant"),
        ("validation_sharpe", "validation Sharpe (mean over markets)"),
        ("best_step", "best step"),
        ("steps_run", "steps run"),
    ):
        if info.get(key) is not None:
            v = info[key]
            rows.append((label, f"{v:.3f}" if isinstance(v, float) else str(v)))
    for w in info.get("windows") or []:
        inside = _ns([w["end"]])[0] >= span[0] and _ns([w["start"]])[0] <= span[1]
        where = "shaded on the time axes" if inside else "before this backtest: out of sample"
        rows.append(
            (f"{w['name']} window", f"{_stamp(w['start'], True)} → {_stamp(w['end'], True)} ({where})")
        )
    parts = [_kv_table(rows, "model")] if rows else []
    val = info.get("market_validation_sharpe") or {}
    if markets or val:
        names = [m[0] for m in markets] or list(val)
        by = {m[0]: m for m in markets}
        mrows = []
        for name in names:
            m = by.get(name)
            v = val.get(name)
            mrows.append(
                [
                    _e(name),
                    _e(m[1] if m else ""),
                    *([_e(f"{v:.3f}" if isinstance(v, float) else "n/a")] if val else []),
                    _signed_cell(m[2] if m else None, f"{m[2]:.3f}" if m and math.isfinite(m[2]) else "n/a"),
                    _signed_cell(m[3] if m else None, f"{m[3]:,.2f}" if m else ""),
                ]
            )
        parts.append(
            _table(
                [
                    "market",
                    "assets",
                    *(["validation Sharpe"] if val else []),
                    "backtest Sharpe",
                    "backtest P&L",
                ],
                mrows,
                {1, 2, 3, 4},
            )
        )
    settings = info.get("settings")
    if settings:
        parts.append(_settings_table(settings))
    return f'<div class="cols">{"".join(parts)}</div>'


@cache
def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


# page ------------------------------------------------------------------------------------------


def write_report(
    path: str | Path,
    *,
    title: str,
    equity: pd.DataFrame,
    positions: pd.DataFrame | None,
    metrics: Mapping[str, Any],
    trades: pd.DataFrame | None,
    risk_events: list[dict[str, Any]],
    settings: Mapping[str, Any],
    prices: Prices | None = None,
    benchmark: pd.Series | np.ndarray | None = None,
    benchmark_name: str = "",
    rolling_window: int = 0,
    strategy_info: Mapping[str, Any] | None = None,
    trips: pd.DataFrame | None = None,
) -> Path:
    """Write the report to ``path`` (parent directories created) and return the path.

    ``equity``: columns timestamp (UTC), equity, cash, gross_exposure, one row per bar.
    ``positions``: indexed by timestamp, one column of market value per symbol held. ``trades``:
    one row per fill with timestamp, symbol, side, quantity, price, fee. ``prices``: the bars, for
    the per-symbol price charts and round trips' MAE/MFE. ``benchmark``: the benchmark's value on
    the equity curve's rows (any scale; shown rebased to the starting equity), named
    ``benchmark_name``. ``rolling_window``: bars of the rolling Sharpe and volatility (0: half a
    year of bars). ``strategy_info``: :meth:`engine.strategy.Strategy.report_info`'s plain data
    (model, markets, training and validation windows, validation Sharpe, settings). ``trips``: the
    run's :func:`engine.roundtrips.round_trips`, when the caller has them already.
    ``risk_events``: dicts with a time, ``rule``, ``message``, optionally ``state`` and ``symbol``.
    Metrics and settings are shown as tables, with the labels of :mod:`engine.summary`.
    """
    out = Path(path)
    run = _Run(
        equity,
        positions,
        metrics,
        trades,
        prices,
        benchmark,
        benchmark_name,
        rolling_window,
        strategy_info,
        trips,
    )
    shown_metrics = {**metrics} if "benchmark_return" in metrics else {**run.benchmark_metrics(), **metrics}
    figures: dict[str, Any] = {}
    body: list[str] = []
    n = len(run.ns)
    if n:
        span = f"{_stamp(run.ns[0], run.daily)} → {_stamp(run.ns[-1], run.daily)} UTC · {n:,} equity rows"
        bars = settings.get("bars")
        if isinstance(bars, int | float):
            span += f" · {int(bars):,} bars"
    else:
        span = "no bars"
    nav = " ".join(
        f'<a href="#{a}">{t}</a>'
        for a, t in (
            ("summary", "Summary"),
            ("equity", "Equity"),
            ("returns", "Returns"),
            ("risk", "Rolling risk"),
            ("exposure", "Exposure"),
            ("assets", "Assets"),
            ("prices", "Prices"),
            ("trips", "Round trips"),
            ("fills", "Fills"),
            ("model", "Model") if run.info else ("settings", "Settings"),
        )
    )
    body += [
        f"<h1>{_e(title)}</h1>",
        f'<p class="sub">{_e(span)}</p>',
        _cards(shown_metrics),
        f"<nav>{nav}</nav>",
    ]

    summary = [(label, text) for _, label, text in summary_rows(shown_metrics)]
    state = settings.get("trading_state")
    if "trading_state" not in shown_metrics and state:
        word, _, rest = str(state).partition(" ")
        summary.append((LABELS["trading_state"], f"{word.upper()} {rest}".strip()))
    body += ['<h2 id="summary">Summary</h2>', '<div class="cols">', _kv_table(summary, "summary")]
    if run.bench is not None:
        brows = [
            (LABELS[k], format_metric(k, shown_metrics[k]))
            for k in (
                "benchmark_return",
                "benchmark_cagr",
                "benchmark_sharpe",
                "benchmark_max_drawdown",
                "alpha",
                "beta",
                "correlation",
                "information_ratio",
                "tracking_error",
            )
            if k in shown_metrics
        ]
        body.append(_kv_table(brows, f"against {benchmark_name}"))
    body.append("</div>")

    body.append('<h2 id="equity">Equity and drawdown</h2>')
    if n:
        legend = ""
        if run.windows:
            legend = " Shaded: the model's training (blue) and validation (amber) windows."
        body += [
            '<div class="controls"><label><input type="checkbox" id="qn-log"> log scale</label>'
            f'<span class="note" style="margin:0">benchmark: {_e(benchmark_name or "none")}; drag to zoom '
            f"(every time axis follows), double-click to reset.{_e(legend)}</span></div>",
            _chart(figures, "fig-equity", run.equity_figure()),
        ]
    else:
        body.append('<p class="none">no equity data</p>')

    cal = run.calendar() if n else None
    body.append('<h2 id="returns">Returns by calendar period</h2>')
    if cal is not None:
        monthly = run.monthly_figure(cal)
        if monthly is not None:
            body += ["<h3>Monthly returns</h3>", _chart(figures, "fig-monthly", monthly)]
        body += ["<h3>Yearly returns, best and worst periods</h3>", _calendar_tables(cal)]
        hist = run.histogram_figure(cal)
        if hist is not None:
            body += ["<h3>Distribution of returns</h3>", _chart(figures, "fig-hist", hist)]
        body += ["<h3>Top 10 drawdowns</h3>", _drawdown_table(run.ns, run.equity, run.daily)]
    else:
        body.append('<p class="none">no returns</p>')

    body.append('<h2 id="risk">Rolling Sharpe and volatility</h2>')
    if n > run.window + 1:
        body += [
            _chart(figures, "fig-rolling", run.rolling_figure()),
            f'<p class="note">window: {run.window:,} bars ([report] rolling_window), annualised</p>',
        ]
    else:
        body.append(f'<p class="none">fewer bars than the rolling window ({run.window:,})</p>')

    body.append('<h2 id="exposure">Exposure, positions and cash</h2>')
    if n:
        body.append(_chart(figures, "fig-exposure", run.exposure_figure()))
    pos_fig, pos_note = run.positions_figure()
    if pos_fig is not None:
        body += [_chart(figures, "fig-positions", pos_fig), f'<p class="note">{_e(pos_note)}</p>']
    else:
        body.append(f'<p class="none">{_e(pos_note)}</p>')

    assets = run.asset_table()
    body.append('<h2 id="assets">Per asset: P&amp;L contribution, hit rate, holding time</h2>')
    contrib = run.contribution_figure(assets)
    if contrib is not None:
        body.append(_chart(figures, "fig-contrib", contrib))
    body.append(_asset_section(assets, metrics.get("funding")))

    body.append('<h2 id="prices">Prices with entries and exits</h2>')
    payload = run.price_payload()
    price_json = ""
    if payload is not None:
        options = "".join(f'<option value="{_e(s)}">{_e(s)}</option>' for s in payload["symbols"])
        more = f" ({payload['more']:,} more symbols traded, not shown)" if payload["more"] else ""
        body += [
            '<div class="controls"><label for="qn-symbol">symbol</label>'
            f'<select id="qn-symbol">{options}</select>'
            f'<span class="note" style="margin:0">most traded first{_e(more)}; ▲ long entry, ▼ short entry, '
            "× exit</span></div>",
            f'<div class="chart" id="fig-price" style="height:{payload["layout"].pop("height")}px"></div>',
        ]
        price_json = f'<script type="application/json" id="qn-prices">{_json(payload)}</script>'
    else:
        body.append('<p class="none">no fills (or no price data)</p>')

    body += ['<h2 id="trips">Round trips</h2>', _trips_section(run.trips, run.daily)]
    body += ['<h2 id="fills">Fills</h2>', _fills_section(run.trades, run.daily)]
    body += ["<h2>Risk events and trading state</h2>", _risk_table(risk_events)]
    if run.info:
        body += ['<h2 id="model">Model</h2>', _model_section(run.info, run.market_sharpe(), run.span)]
    body += ["<h2>All metrics</h2>", _metrics_table(shown_metrics)]
    body += ['<h2 id="settings">Settings</h2>', _settings_table(settings)]
    body.append(
        "<footer>quantnet-engine backtest report · self-contained (plotly.js inlined), works offline</footer>"
    )

    page = "".join(
        [
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
            f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n",
            f"<script>{_plotly_js()}</script>\n</head>\n<body>\n<main>\n",
            "\n".join(body),
            "\n</main>\n",
            f'<script type="application/json" id="qn-figures">{_json(figures)}</script>\n',
            price_json,
            f"<script>{_JS}</script>\n</body>\n</html>\n",
        ]
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
