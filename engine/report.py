"""The backtest report: one self-contained HTML page with inline SVG charts and plain tables.

Self-contained because a report gets mailed, archived and opened years later, offline: no script,
stylesheet, font or image is fetched from anywhere. Charts are matplotlib SVG made through the
``Figure`` API (no pyplot, so no GUI backend and no global state touched); long series are cut to
about 2000 points per line by keeping each bucket's minimum and maximum, which keeps drawdown
troughs and position flips visible while the file stays small and rendering stays fast.
Every piece of caller-supplied text (title, symbols, settings, risk messages) is HTML-escaped.
"""

from __future__ import annotations

import html
import io
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

__all__ = ["write_report"]

MAX_POINTS = 2000
MAX_LINES = 8
TRADE_ROWS = 10
RISK_ROWS = 200

_PERCENT = {
    "total_return",
    "annual_return",
    "cagr",
    "annual_volatility",
    "downside_risk",
    "max_drawdown",
    "win_rate",
    "time_in_market",
}
_COUNTS = {
    "n_trades",
    "n_fills",
    "n_periods",
    "bars",
    "trading_state",
    "risk_events",
    "risk_orders_rejected",
    "risk_orders_resized",
    "risk_stop_exits",
    "risk_take_profits",
    "risk_daily_loss_breaches",
    "risk_halts",
    "bars_reducing",
    "bars_halted",
}
_MONEY = {"final_equity", "fees", "funding"}
_LABELS = {
    "total_return": "Total return",
    "annual_return": "Annual return",
    "cagr": "CAGR",
    "annual_volatility": "Annual volatility",
    "sharpe": "Sharpe ratio",
    "sortino": "Sortino ratio",
    "calmar": "Calmar ratio",
    "downside_risk": "Downside risk (annual)",
    "max_drawdown": "Max drawdown",
    "skewness": "Skewness",
    "kurtosis": "Excess kurtosis",
    "n_trades": "Round trips",
    "win_rate": "Win rate",
    "profit_factor": "Profit factor",
    "n_fills": "Fills",
    "turnover": "Turnover (annual, × equity)",
    "exposure": "Exposure (mean gross / equity)",
    "time_in_market": "Time in market",
    "fees": "Fees paid",
    "funding": "Funding paid",
    "final_equity": "Final equity",
    "years": "Years",
    "n_periods": "Periods",
    "periods_per_year": "Periods per year",
}
_CARDS = ("total_return", "cagr", "sharpe", "max_drawdown")

_RC = {
    "svg.fonttype": "none",  # text stays text: far smaller than glyph paths, and selectable
    "text.parse_math": False,  # a "$" in a symbol name must not start mathtext
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e3e6ea",
    "grid.linewidth": 0.6,
    "axes.edgecolor": "#9aa3ad",
    "axes.prop_cycle": mpl.cycler(
        color=["#1f5fa8", "#d1495b", "#edae49", "#00798c", "#66a182", "#8d6a9f", "#e07a5f", "#3d405b"]
    ),
}

_CSS = """
:root { --ink:#1d2733; --muted:#5d6b79; --line:#e3e6ea; --bg:#f7f8fa; --accent:#1f5fa8; }
* { box-sizing:border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
  font:14px/1.45 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif; }
main { max-width:1100px; margin:0 auto; padding:24px 20px 48px; }
h1 { font-size:22px; margin:0 0 4px; }
h2 { font-size:16px; margin:28px 0 10px; padding-bottom:4px; border-bottom:1px solid var(--line); }
h3 { font-size:14px; margin:16px 0 6px; color:var(--muted); }
.sub { color:var(--muted); margin:0 0 16px; }
.cards { display:grid; grid-template-columns:repeat(auto-fit,minmax(150px,1fr)); gap:12px; }
.card { background:#fff; border:1px solid var(--line); border-radius:8px; padding:12px 14px; }
.card .k { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.card .v { font-size:22px; font-weight:600; margin-top:2px; }
figure { margin:0 0 12px; background:#fff; border:1px solid var(--line); border-radius:8px; padding:8px; }
figure svg { width:100%; height:auto; display:block; }
figcaption { color:var(--muted); font-size:12px; padding:2px 6px; }
table { border-collapse:collapse; background:#fff; border:1px solid var(--line); font-size:13px; }
th, td { padding:5px 10px; border-bottom:1px solid var(--line); text-align:left; vertical-align:top; }
th { background:#eef1f4; font-weight:600; }
tr:nth-child(even) td { background:#fbfcfd; }
td.n { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
.cols { display:flex; flex-wrap:wrap; gap:20px; align-items:flex-start; }
.none { color:var(--muted); font-style:italic; }
code { font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; white-space:pre-wrap;
  word-break:break-word; }
footer { color:var(--muted); font-size:12px; margin-top:32px; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _is_nan(value: object) -> bool:
    return value is None or (isinstance(value, float | np.floating) and math.isnan(value))


def _num(value: float, sig: int = 6, min_decimals: int = 0) -> str:
    """About ``sig`` significant digits (at least ``min_decimals``), thousands separators, no
    exponent and no trailing zeros beyond ``min_decimals``: crypto quantities and prices span
    1e-8..1e5."""
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


def _metric(key: str, value: object) -> str:
    if _is_nan(value):
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return _e(value)
    v = float(value)
    if math.isinf(v):
        return "∞" if v > 0 else "-∞"
    if key in _PERCENT:
        return f"{v:.2%}"
    if key in _COUNTS:
        return f"{v:,.0f}"
    if key in _MONEY:
        return f"{v:,.2f}"
    return f"{v:,.3f}" if abs(v) < 1e6 else _num(v)


def _times(values: Iterable[Any]) -> np.ndarray:
    """UTC datetime64[ns] (tz-naive, for matplotlib) from datetimes, strings or int64 ns."""
    arr = values if isinstance(values, pd.Series | pd.Index) else np.asarray(values)
    if getattr(arr, "dtype", None) is not None and arr.dtype.kind in "iu":
        return np.asarray(arr, dtype=np.int64).view("datetime64[ns]")
    idx = pd.DatetimeIndex(pd.to_datetime(arr, utc=True))
    return idx.tz_convert(None).as_unit("ns").to_numpy()


def _time_labels(times: np.ndarray) -> list[str]:
    stamps = pd.DatetimeIndex(times)
    daily = len(stamps) == 0 or bool((stamps == stamps.normalize()).all())
    return list(stamps.strftime("%Y-%m-%d" if daily else "%Y-%m-%d %H:%M:%S"))


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


def _svg(fig: Figure, salt: str) -> str:
    """The figure as an inline ``<svg>`` element: no XML prolog, DOCTYPE or RDF metadata."""
    buf = io.StringIO()
    with mpl.rc_context({"svg.hashsalt": salt}):  # stable ids, distinct between the charts
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    # HTML parses inline SVG without namespace declarations; dropping them (and the RDF block)
    # leaves no URL of any kind in the page.
    text = re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", text[: text.index(">")]) + text[text.index(">") :]
    return re.sub(r"<metadata>.*?</metadata>", "", text, count=1, flags=re.S)


def _figure(height: float = 2.8) -> tuple[Figure, Any]:
    fig = Figure(figsize=(10.5, height), layout="constrained")
    return fig, fig.add_subplot()


def _empty_chart(message: str) -> str:
    return f'<p class="none">{_e(message)}</p>'


def _equity_charts(times: np.ndarray, equity: np.ndarray) -> tuple[str, str]:
    if len(equity) == 0:
        return _empty_chart("no equity data"), _empty_chart("no equity data")
    keep = _downsample(equity)
    fig, ax = _figure()
    ax.plot(times[keep], equity[keep], lw=1.2)
    ax.set_ylabel("equity")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.margins(x=0)
    equity_svg = _svg(fig, "equity")

    with np.errstate(divide="ignore", invalid="ignore"):
        drawdown = equity / np.fmax.accumulate(equity) - 1.0
    drawdown = np.nan_to_num(drawdown, nan=0.0, posinf=0.0, neginf=-1.0)
    keep = _downsample(drawdown)
    fig, ax = _figure(2.2)
    ax.fill_between(times[keep], drawdown[keep], 0.0, color="#d1495b", alpha=0.35, lw=0)
    ax.plot(times[keep], drawdown[keep], color="#d1495b", lw=0.8)
    ax.set_ylabel("drawdown")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0%}"))
    ax.margins(x=0)
    return equity_svg, _svg(fig, "drawdown")


def _positions_chart(positions: pd.DataFrame | None, times: np.ndarray, equity: np.ndarray) -> str:
    """Per-symbol weight (market value / equity) when equity lines up, else market value."""
    if positions is None or positions.empty or positions.shape[1] == 0:
        return _empty_chart("no positions")
    values = positions.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    values = np.nan_to_num(values)
    if not values.any():
        return _empty_chart("no positions were held")
    if isinstance(positions.index, pd.DatetimeIndex):
        when = _times(positions.index)
    elif len(positions) == len(times):
        when = times  # a plain index: rows are taken to be the equity curve's bars
    else:
        return _empty_chart("positions are not indexed by timestamp")
    label = "market value"
    if len(times):
        by_time = pd.Series(equity, index=times)
        by_time = by_time[~by_time.index.duplicated(keep="last")]
        denom = by_time.reindex(when).to_numpy()
        if np.isfinite(denom).all() and (denom > 0).all():
            values = values / denom[:, None]
            label = "weight (market value / equity)"
    names = [str(c) for c in positions.columns]
    order = np.argsort(-np.abs(values).max(axis=0), kind="stable")
    shown = [i for i in order[:MAX_LINES] if np.abs(values[:, i]).max() > 0]
    rest = [i for i in order[MAX_LINES:]]
    fig, ax = _figure(3.0)
    for i in shown:
        keep = _downsample(values[:, i])
        ax.plot(when[keep], values[keep, i], lw=1.0, label=names[i])
    if rest:
        other = values[:, rest].sum(axis=1)
        keep = _downsample(other)
        ax.plot(when[keep], other[keep], lw=1.0, color="#8a939c", label=f"{len(rest)} others (sum)")
    ax.axhline(0.0, color="#9aa3ad", lw=0.6)
    ax.set_ylabel(label)
    if label.startswith("weight"):
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0%}"))
    ax.margins(x=0)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
    return _svg(fig, "positions")


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: set[int] | None = None) -> str:
    """``rows`` hold already-escaped HTML cells; ``numeric`` column indices are right-aligned."""
    numeric = numeric or set()
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _metrics_table(metrics: Mapping[str, Any]) -> str:
    if not metrics:
        return '<p class="none">none</p>'
    known = [k for k in _LABELS if k in metrics]
    extra = sorted(k for k in metrics if k not in _LABELS)
    rows = [(_e(_LABELS.get(k, k)), _metric(k, metrics[k])) for k in (*known, *extra)]
    half = -(-len(rows) // 2)
    return (
        '<div class="cols">'
        + _table(["Metric", "Value"], rows[:half], {1})
        + (_table(["Metric", "Value"], rows[half:], {1}) if rows[half:] else "")
        + "</div>"
    )


def _cards(metrics: Mapping[str, Any]) -> str:
    cards = [
        f'<div class="card"><div class="k">{_e(_LABELS[k])}</div>'
        f'<div class="v">{_metric(k, metrics[k])}</div></div>'
        for k in _CARDS
        if k in metrics
    ]
    return f'<div class="cards">{"".join(cards)}</div>' if cards else ""


def _event_time(value: object) -> str:
    """Event times as UTC text; int64 nanoseconds, datetimes and ISO strings alike."""
    if value is None or value == "":
        return ""
    try:
        if isinstance(value, int | np.integer) and not isinstance(value, bool):
            stamp = pd.Timestamp(int(value), unit="ns", tz="UTC")
        else:
            stamp = pd.Timestamp(value)
            stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    except (TypeError, ValueError):
        return _e(value)
    return _e(stamp.strftime("%Y-%m-%d %H:%M:%S"))


def _risk_table(events: Sequence[Mapping[str, Any]]) -> str:
    if not events:
        return '<p class="none">none</p>'
    optional = [c for c in ("state", "symbol") if any(e.get(c) not in (None, "") for e in events)]
    headers = ["time", "rule", *optional, "message"]
    rows = []
    for event in events[:RISK_ROWS]:
        when = next((event[k] for k in ("timestamp", "time", "ts_event", "ts") if k in event), "")
        rows.append(
            [
                _event_time(when),
                _e(event.get("rule", "")),
                *(_e(event.get(c) if event.get(c) is not None else "") for c in optional),
                _e(event.get("message", "")),
            ]
        )
    more = len(events) - RISK_ROWS
    note = f'<p class="none">… and {more:,} more (see the journal)</p>' if more > 0 else ""
    return _table(headers, rows) + note


def _fills_table(trades: pd.DataFrame) -> str:
    cols = [c for c in ("timestamp", "symbol", "side", "quantity", "price", "fee") if c in trades.columns]
    cells: dict[str, list[str]] = {}
    for c in cols:
        col = trades[c]
        if c == "timestamp":
            cells[c] = [_e(s) for s in _time_labels(_times(col))]
        elif c in ("quantity", "price", "fee"):
            least = 0 if c == "quantity" else 2
            cells[c] = [_num(float(v), min_decimals=least) for v in pd.to_numeric(col, errors="coerce")]
        else:
            cells[c] = [_e(v) for v in col]
    numeric = {i for i, c in enumerate(cols) if c in ("quantity", "price", "fee")}
    rows = [[cells[c][r] for c in cols] for r in range(len(trades))]
    return _table(cols, rows, numeric)


def _trades_section(trades: pd.DataFrame | None) -> str:
    if trades is None or trades.empty:
        return '<p class="none">no fills</p>'
    qty = pd.to_numeric(trades.get("quantity"), errors="coerce") if "quantity" in trades else None
    price = pd.to_numeric(trades.get("price"), errors="coerce") if "price" in trades else None
    fee = (
        pd.to_numeric(trades["fee"], errors="coerce")
        if "fee" in trades
        else pd.Series(0.0, index=trades.index)
    )
    notional = (qty.abs() * price) if qty is not None and price is not None else None
    side = trades["side"].astype(str).str.lower() if "side" in trades else pd.Series("", index=trades.index)
    parts = [
        ("fills", f"{len(trades):,}"),
        ("buys", f"{int((side == 'buy').sum()):,}"),
        ("sells", f"{int((side == 'sell').sum()):,}"),
    ]
    if "symbol" in trades:
        parts.append(("symbols traded", f"{trades['symbol'].nunique():,}"))
    if notional is not None:
        parts.append(("notional traded", f"{notional.sum():,.2f}"))
    parts.append(("fees", f"{fee.sum():,.2f}"))
    summary = _table(["summary", ""], [(_e(k), v) for k, v in parts], {1})
    blocks = [summary]
    if "symbol" in trades and notional is not None:
        per = (
            pd.DataFrame({"symbol": trades["symbol"].astype(str), "notional": notional, "fee": fee})
            .groupby("symbol", sort=False)
            .agg(fills=("fee", "size"), notional=("notional", "sum"), fees=("fee", "sum"))
            .sort_values("notional", ascending=False)
        )
        rows = [
            (_e(s), f"{int(r.fills):,}", f"{r.notional:,.2f}", f"{r.fees:,.2f}")
            for s, r in per.head(20).iterrows()
        ]
        more = f'<p class="none">… and {len(per) - 20} more symbols</p>' if len(per) > 20 else ""
        blocks.append(_table(["symbol", "fills", "notional", "fees"], rows, {1, 2, 3}) + more)
    out = f'<div class="cols">{"".join(blocks)}</div>'
    if len(trades) <= 2 * TRADE_ROWS:
        return out + "<h3>All fills</h3>" + _fills_table(trades)
    return (
        out
        + f"<h3>First {TRADE_ROWS} fills</h3>"
        + _fills_table(trades.head(TRADE_ROWS))
        + f"<h3>Last {TRADE_ROWS} fills</h3>"
        + _fills_table(trades.tail(TRADE_ROWS))
    )


def _setting(value: object) -> str:
    if isinstance(value, Mapping | list | tuple):
        return f"<code>{_e(json.dumps(value, sort_keys=True, default=str))}</code>"
    return _e(value)


def _settings_table(settings: Mapping[str, Any]) -> str:
    if not settings:
        return '<p class="none">none</p>'
    return _table(["setting", "value"], [(_e(k), _setting(v)) for k, v in settings.items()])


def write_report(
    path: str | Path,
    *,
    title: str,
    equity: pd.DataFrame,
    positions: pd.DataFrame,
    metrics: dict[str, Any],
    trades: pd.DataFrame,
    risk_events: list[dict[str, Any]],
    settings: dict[str, Any],
) -> Path:
    """Write the report to ``path`` (parent directories created) and return the path.

    ``equity``: columns timestamp (UTC), equity, cash, gross_exposure, one row per bar.
    ``positions``: indexed by timestamp, one column of market value per symbol (plotted as weights
    of equity when the timestamps match the equity curve's). ``trades``: one row per fill with
    timestamp, symbol, side, quantity, price, fee. ``risk_events``: dicts with a time
    (``timestamp``, ``time``, ``ts_event`` or ``ts``), ``rule``, ``message`` and optionally
    ``state`` (ACTIVE/REDUCING/HALTED) and ``symbol``. ``metrics`` and ``settings`` are shown as
    key/value tables; unknown metric keys are listed after the known ones.
    """
    out = Path(path)
    times = _times(equity["timestamp"]) if len(equity) else np.array([], dtype="datetime64[ns]")
    values = (
        pd.to_numeric(equity["equity"], errors="coerce").to_numpy(dtype=np.float64)
        if len(equity)
        else np.array([])
    )
    with mpl.rc_context(_RC):
        equity_svg, drawdown_svg = _equity_charts(times, values)
        positions_svg = _positions_chart(positions, times, values)

    labels = _time_labels(times[[0, -1]]) if len(times) else []
    span = f"{labels[0]} → {labels[1]} UTC · {len(times):,} bars" if labels else "no bars"
    sections = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="sub">{_e(span)}</p>',
        _cards(metrics),
        "<h2>Equity</h2>",
        f"<figure>{equity_svg}</figure>",
        "<h2>Drawdown</h2>",
        f"<figure>{drawdown_svg}</figure>",
        "<h2>Positions</h2>",
        f"<figure>{positions_svg}<figcaption>largest {MAX_LINES} by peak size; "
        f"series above {MAX_POINTS} points are cut to each interval's min and max</figcaption></figure>",
        "<h2>Metrics</h2>",
        _metrics_table(metrics),
        "<h2>Risk events and trading state</h2>",
        _risk_table(risk_events),
        "<h2>Trades</h2>",
        _trades_section(trades),
        "<h2>Settings</h2>",
        _settings_table(settings),
        "<footer>quantnet-engine backtest report · self-contained, works offline</footer>",
    ]
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(s for s in sections if s)
        + "\n</main>\n</body>\n</html>\n"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
