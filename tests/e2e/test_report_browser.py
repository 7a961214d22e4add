"""The report in a real browser (headless Chromium over the DevTools protocol): it renders every
chart, logs no error, fetches nothing, and its controls work (linked zoom, log scale, symbol
selector). Skips, saying why, where no Chromium is installed; `.ci/run` installs Debian's."""

from __future__ import annotations

import pytest

from quantnet.backtest import run_backtest
from quantnet.config import AppConfig
from tests.conftest import make_bars
from tests.e2e.browser import find_chromium, open_page

BROWSER, WHY = find_chromium()
pytestmark = pytest.mark.skipif(BROWSER is None, reason=WHY)

SYMBOLS = tuple(f"S{k:02d}" for k in range(10))  # more than 8: positions as a heatmap

CHECKS = {
    "rendered": "Number(document.body.getAttribute('data-rendered'))",
    "plots": "document.querySelectorAll('.js-plotly-plot').length",
    "drawn": "Array.from(document.querySelectorAll('.js-plotly-plot')).filter("
    "el => el.querySelector('.main-svg') && el.getBoundingClientRect().height > 150).length",
    "equity_traces": "document.getElementById('fig-equity').data.map(t => t.name)",
    "heatmap": "document.getElementById('fig-positions').data[0].type",
    "linked": """(async () => {
        const lo = '2020-03-01', hi = '2020-05-01';
        await Plotly.relayout('fig-equity', {'xaxis.range': [lo, hi]});
        await new Promise(r => setTimeout(r, 300));
        const r = document.getElementById('fig-rolling').layout.xaxis.range;
        const p = document.getElementById('fig-price').layout.xaxis.range;
        return [String(r[0]).slice(0, 10), String(r[1]).slice(0, 10), String(p[0]).slice(0, 10)];
    })()""",
    "log": """(async () => {
        const box = document.getElementById('qn-log');
        box.checked = true; box.dispatchEvent(new Event('change'));
        await new Promise(r => setTimeout(r, 300));
        return document.getElementById('fig-equity').layout.yaxis.type;
    })()""",
    "symbol": """(async () => {
        const pick = document.getElementById('qn-symbol');
        const first = document.getElementById('fig-price').layout.title.text;
        pick.value = pick.options[1].value; pick.dispatchEvent(new Event('change'));
        await new Promise(r => setTimeout(r, 300));
        return [pick.options.length, first, document.getElementById('fig-price').layout.title.text,
                pick.options[1].value];
    })()""",
}


def test_report_renders_offline_without_errors(tmp_path):
    data = make_bars(SYMBOLS, n=260, seed=11)
    cfg = AppConfig.model_validate(
        {
            "engine": {"journal": False},
            "strategy": {"name": "sma_crossover", "params": {"fast": 5, "slow": 20, "target": 0.1}},
            "report": {"rolling_window": 20},
        }
    )
    out = tmp_path / "run"
    run_backtest(cfg, data=data, output=out)
    page = out / "report.html"
    shot = tmp_path / "report.png"
    res = open_page(page, CHECKS, screenshot=shot, browser=BROWSER)

    assert res.errors == [], res.errors
    assert not [c for c in res.console if c[0] in ("error", "warning")], res.console
    leaving = [
        u for u in res.requests if u != page.resolve().as_uri() and not u.startswith(("data:", "blob:"))
    ]
    assert leaving == [], leaving

    v = res.values
    # equity, monthly, histogram, rolling, exposure, positions, contribution, price
    assert v["plots"] == 8 and v["drawn"] == 8, v
    assert v["rendered"] == 5  # charts on the linked time axis: equity, rolling, exposure, positions, price
    assert v["equity_traces"][0] == "strategy" and v["equity_traces"][1].startswith("benchmark")
    assert v["heatmap"] == "heatmap"
    assert v["linked"] == ["2020-03-01", "2020-05-01", "2020-03-01"]
    assert v["log"] == "log"
    n_options, first_title, second_title, second = v["symbol"]
    assert n_options == len(SYMBOLS) and second in second_title and first_title != second_title
    assert shot.stat().st_size > 50_000
