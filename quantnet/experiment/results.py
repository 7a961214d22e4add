"""``results.json`` and the Table-1 text from an experiment's outcome.

Strategies are the four baselines (one evaluation each) and every learned variant (one per seed).
Per-asset values line up across strategies: assets in market order, markets in data order, so the
significance tests pair them by asset.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from models.config import BASELINE_VARIANTS
from quantnet.experiment.evaluate import BASELINES
from quantnet.experiment.runner import GROSS_SUFFIX, Outcome, Settings
from quantnet.experiment.tables import ALL_METRICS, TABLE_METRICS, per_asset_mean, significance, table1

LABELS = {
    "buy_and_hold": "Buy and hold",
    "risk_parity": "Risk parity",
    "ts_momentum": "TS momentum",
    "cs_momentum": "CS momentum",
    "notransfer-linear": "No-Transfer Linear",
    "notransfer-lstm": "No-Transfer LSTM",
}
SHORT = {
    "annual_return": "ann. return",
    "annual_volatility": "ann. vol",
    "sharpe": "Sharpe",
    "sortino": "Sortino",
    "calmar": "Calmar",
    "downside_risk": "downside risk",
    "max_drawdown": "max DD",
    "skewness": "skew",
    "kurtosis": "kurtosis",
    "turnover": "turnover/yr",
    "avg_position": "avg position",
    "timing_sharpe": "timing Sharpe",
    "timing_alpha": "timing alpha",
}


KINDS = ("gross", "net", "sized_gross", "sized_net")


def label(name: str) -> str:
    if name.endswith(GROSS_SUFFIX):
        return label(name.removesuffix(GROSS_SUFFIX)) + ", trained gross"
    return LABELS.get(name, f"QuantNet {name}")


def summarise(outcome: Outcome, settings: Settings, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    strategies: dict[str, dict[str, Any]] = {}
    for name in BASELINES:
        b = outcome.baselines[name]
        strategies[name] = {"kind": "baseline", "runs": [{k: b[k] for k in KINDS}]}
    for u in outcome.units:
        entry = strategies.setdefault(u.get("name", u["variant"]), {"kind": "model", "runs": []})
        entry["runs"].append(
            {
                k: u[k]
                for k in (
                    "seed",
                    *KINDS,
                    "steps_run",
                    "best_step",
                    "best_val_sharpe",
                    "stopped_early",
                    "seconds",
                    "learning_curve",
                    "train_config",
                    "model_config",
                )
            }
        )
    assets = [(m["name"], a) for m in outcome.markets for a in m["assets"]]
    out: dict[str, Any] = {
        "settings": {
            "test_bars": settings.test_bars,
            "val_bars": settings.val_bars,
            "variants": list(settings.variants),
            "gross_trained": list(settings.gross_trained),
            "seeds": settings.seeds,
            "cost_bps": settings.cost_bps,
            "train_cost_bps": settings.cost_bps
            if settings.train_cost_bps is None
            else settings.train_cost_bps,
            "model": settings.model,
            "train": settings.train,
            "baseline_lookback": settings.lookback,
            "sources": list(settings.sources),
            **(extra or {}),
        },
        "split": outcome.split.as_dict(),
        "periods_per_year": outcome.periods_per_year,
        "markets": outcome.markets,
        "sources": outcome.sources,
        "assets": [{"market": m, "asset": a} for m, a in assets],
        "strategies": strategies,
        "comparisons": [list(pair) for pair in comparisons(settings.strategies())],
        "search": outcome.search,
    }
    for kind in KINDS:
        runs = {n: [r[kind] for r in s["runs"]] for n, s in strategies.items()}
        out.setdefault("table1", {})[kind] = table1(runs, ALL_METRICS)
        out.setdefault("per_market_sharpe", {})[kind] = _per_market(runs, assets)
        out.setdefault("tests", {})[kind] = _tests(runs, settings)
    return out


def _per_market(runs: dict[str, list[dict[str, list[float]]]], assets: list[tuple[str, str]]) -> dict:
    markets = list(dict.fromkeys(m for m, _ in assets))
    where = np.array([m for m, _ in assets])
    out: dict[str, dict[str, float]] = {}
    for name, seeds in runs.items():
        sharpe = per_asset_mean(seeds, "sharpe")
        out[name] = {m: _nanmean(sharpe[where == m]) for m in markets}
    return out


def _nanmean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else math.nan


def comparisons(strategies: list[tuple[str, str, bool]]) -> list[tuple[str, str]]:
    """(QuantNet, No-Transfer) pairs of strategy names, each trained the same way (with the cost
    term, or both gross)."""
    return [
        (q, b)
        for q, qv, qg in strategies
        if qv not in BASELINE_VARIANTS
        for b, bv, bg in strategies
        if bv in BASELINE_VARIANTS and bg == qg
    ]


def _tests(runs: dict[str, list[dict[str, list[float]]]], settings: Settings) -> dict:
    out = {}
    for q, b in comparisons(settings.strategies()):
        if q in runs and b in runs:
            out[f"{q} vs {b}"] = {
                metric: significance(per_asset_mean(runs[q], metric), per_asset_mean(runs[b], metric))
                for metric in ("sharpe", "calmar")
            }
    return out


def _cell(c: dict[str, float], kind: str) -> str:
    if not math.isfinite(c["median"]):
        return "-"
    if kind == "model" and c["seeds"] > 1:
        return f"{c['median']:.3f} ± {c['median_sd']:.3f} ({c['mad']:.3f})"
    return f"{c['median']:.3f} ({c['mad']:.3f})"


def gross_note(settings: dict[str, Any]) -> str:
    names = settings.get("gross_trained") or []
    return f"; trained gross as well: {', '.join(names)}" if names else ""


def sources_note(results: dict[str, Any]) -> str:
    src = results.get("sources") or []
    if not src:
        return ""
    named = ", ".join(f"{m['name']} ({len(m['assets'])} assets, to {m['last'][:10]})" for m in src)
    return f" Trained on but not scored (sources): {named}."


def markdown(results: dict[str, Any]) -> str:
    """Table 1 gross and net, per-market Sharpe, the tests and the timing check, as Markdown."""
    s = results["settings"]
    lines = [
        "# QuantNet experiment",
        "",
        f"Test window {results['split']['test_start'][:10]} .. {results['split']['last'][:10]} "
        f"({s['test_bars']} bars of the union calendar), validation from "
        f"{results['split']['val_start'][:10]}; {len(results['assets'])} assets in "
        f"{len(results['markets'])} markets; {s['seeds']} seeds; cost {s['cost_bps']:g} bps per unit "
        f"of position change (training at {s['train_cost_bps']:g} bps"
        f"{gross_note(s)}).{sources_note(results)}",
        "",
        "Cells: median across assets (mean absolute deviation); learned models: mean ± sd over seeds "
        "of the per-seed median (mean MAD).",
    ]
    cols = [*TABLE_METRICS, "turnover", "avg_position", "timing_sharpe"]
    for kind, title in (
        ("gross", "gross of costs"),
        ("net", f"net of {s['cost_bps']:g} bps"),
        ("sized_net", f"traded sizing s·0.15/σ, net of {s['cost_bps']:g} bps"),
    ):
        t = results["table1"][kind]
        lines += ["", f"## Table 1, {title}", ""]
        lines.append("| strategy | " + " | ".join(SHORT[c] for c in cols) + " |")
        lines.append("|---" * (len(cols) + 1) + "|")
        for name, row in t.items():
            k = results["strategies"][name]["kind"]
            lines.append(f"| {label(name)} | " + " | ".join(_cell(row[c], k) for c in cols) + " |")
    for kind in ("gross", "net"):
        pm = results["per_market_sharpe"][kind]
        markets = [m["name"] for m in results["markets"]]
        lines += ["", f"## Average Sharpe per market ({kind})", ""]
        lines.append("| strategy | " + " | ".join(markets) + " |")
        lines.append("|---" * (len(markets) + 1) + "|")
        for name, row in pm.items():
            lines.append(f"| {label(name)} | " + " | ".join(_num(row[m]) for m in markets) + " |")
    for kind in ("gross", "net"):
        tests = results["tests"][kind]
        if not tests:
            continue
        lines += ["", f"## QuantNet against No-Transfer, per-asset ({kind})", ""]
        lines.append("| comparison | metric | n | median diff | Wilcoxon p | KS stat | KS p |")
        lines.append("|---|---|---|---|---|---|---|")
        for pair, by_metric in tests.items():
            for metric, r in by_metric.items():
                lines.append(
                    f"| {pair} | {metric} | {r['n']:.0f} | {_num(r['median_diff'])} | "
                    f"{_p(r['wilcoxon_p'])} | {_num(r['ks_stat'])} | {_p(r['ks_p'])} |"
                )
    return "\n".join(lines) + "\n"


def _num(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:+.3f}"


def _p(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.3g}"
