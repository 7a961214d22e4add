"""`quantnet experiment` end to end on small synthetic markets with their own calendars: tables
checked against values computed here from the files, resume, bad input, and no leakage."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import typer
from typer.testing import CliRunner

from models import load_checkpoint
from models.data import markets_from_frame
from quantnet.commands import experiment as experiment_cmd
from quantnet.experiment import runner
from quantnet.experiment.evaluate import BASELINES

SMALL = """
[model]
transfer_dim = 3
decoder_dim = 3
encoder_layers = 1
decoder_layers = 1

[train]
seq_len = 40
eval_every = 10
batch_markets = 3
"""
TEST, VAL = 120, 60


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        pass

    experiment_cmd.register(app)
    return app


def _frames(seed: int = 0) -> dict[str, pd.DataFrame]:
    """Three markets of AR(1) returns: one trades every weekday, one skips random days (never the
    last one before the test window), one lists late."""
    rng = np.random.default_rng(seed)
    days = pd.bdate_range("2016-01-04", periods=620, tz="UTC")
    out = {}
    for k, n in enumerate((4, 3, 5)):
        r = np.zeros((len(days), n))
        eps = rng.normal(0.0003, 0.01, r.shape)
        for t in range(1, len(days)):
            r[t] = 0.2 * r[t - 1] + eps[t]
        close = 50 * np.exp(np.cumsum(r, axis=0))
        keep = np.ones(len(days), bool)
        if k == 1:
            keep[rng.random(len(days)) < 0.05] = False
            keep[-TEST - 1 :] = True
        first = 200 if k == 2 else 0
        rows = [
            (days[t], f"m{k}s{j}", close[t, j]) for t in range(first, len(days)) if keep[t] for j in range(n)
        ]
        out[f"mk{k}"] = pd.DataFrame(rows, columns=["timestamp", "symbol", "close"])
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("markets")
    for name, df in _frames().items():
        df.to_parquet(d / f"{name}.parquet")
    (d.parent / "small.toml").write_text(SMALL)
    return d


@pytest.fixture(scope="module")
def finished(data_dir: Path) -> tuple[Path, dict, str]:
    out = data_dir.parent / "out"
    args = [
        "experiment", "--data", str(data_dir), "--out", str(out), "--test-bars", str(TEST),
        "--val-bars", str(VAL), "--variants", "lstm-linear,notransfer-linear", "--seeds", "2",
        "--steps", "30", "--cost-bps", "10", "--config", str(data_dir.parent / "small.toml"),
    ]  # fmt: skip
    res = CliRunner().invoke(_app(), args)
    assert res.exit_code == 0, res.output
    return out, json.loads((out / "results.json").read_text()), res.output


def _sharpe(x: np.ndarray) -> float:
    return float(np.mean(x) / np.std(x, ddof=1) * math.sqrt(252))


def _per_asset_test_returns(test_start: pd.Timestamp) -> dict[str, pd.Series]:
    out = {}
    for df in _frames().values():
        for sym, g in df.groupby("symbol"):
            r = g.set_index("timestamp")["close"].sort_index().pct_change()
            out[sym] = r[r.index >= test_start]
    return out


def test_tables_match_values_computed_from_the_files(finished):
    out, results, text = finished
    days = pd.bdate_range("2016-01-04", periods=620, tz="UTC")
    assert pd.Timestamp(results["split"]["test_start"]) == days[-TEST]
    assert pd.Timestamp(results["split"]["val_start"]) == days[-TEST - VAL]
    rets = _per_asset_test_returns(days[-TEST])
    order = [a["asset"] for a in results["assets"]]
    assert sorted(order) == sorted(rets)
    # buy and hold: the asset's own returns; net pays 10 bps once, on the first test return
    gross = [_sharpe(rets[a].to_numpy()) for a in order]
    net = [_sharpe(rets[a].to_numpy() - np.r_[10e-4, np.zeros(len(rets[a]) - 1)]) for a in order]
    bh = results["table1"]
    assert bh["gross"]["buy_and_hold"]["sharpe"]["median"] == pytest.approx(np.median(gross), rel=1e-9)
    assert bh["net"]["buy_and_hold"]["sharpe"]["median"] == pytest.approx(np.median(net), rel=1e-9)
    x = np.array(gross)
    assert bh["gross"]["buy_and_hold"]["sharpe"]["mad"] == pytest.approx(np.mean(np.abs(x - x.mean())))
    # the traded sizing of buy and hold: 0.15/σ_t (EWM span 60 of past squared returns), bought at
    # the close before the window and re-sized every bar at 10 bps per unit of change
    runs = results["strategies"]["buy_and_hold"]["runs"][0]["sized_net"]["sharpe"]
    got = dict(zip(order, runs, strict=True))
    for name in ("mk0", "mk2"):  # no gaps of their own
        (m,) = markets_from_frame(_frames()[name].assign(market=name))
        t0 = int(m.index.searchsorted(days[-TEST]))
        for j, a in enumerate(m.assets):
            r = pd.Series(m.returns[:, j]).dropna()
            sigma = np.sqrt((r**2).ewm(span=60, adjust=False).mean().shift(1) * 252)
            v = (0.15 / sigma).reindex(range(len(m))).to_numpy()[t0:]
            dv = np.abs(np.diff(np.r_[0.0, v]))
            assert got[a] == pytest.approx(_sharpe(v * m.returns[t0:, j] - 10e-4 * dv), rel=1e-9)
    # a learned model and its gross-trained twin: checkpoint signals, replayed over the test window
    for strategy, seed in [(n, s) for n in ("lstm-linear", "lstm-linear-gross") for s in (0, 1)]:
        ckpt = load_checkpoint(out / "models" / f"{strategy}-s{seed}.pt")
        per_asset = []
        for name, df in _frames().items():
            (m,) = markets_from_frame(df.assign(market=name))
            t0 = int(m.index.searchsorted(days[-TEST]))
            lo = t0 - 1 - 40
            s = ckpt.model.signals(name, m.returns[lo:])[t0 - lo :]
            r = m.returns[t0:]
            for j in range(m.n_assets):
                ok = np.isfinite(r[:, j])
                per_asset.append(_sharpe(s[ok, j] * r[ok, j]))
        unit = json.loads((out / "units" / f"{strategy}-s{seed}.json").read_text())
        np.testing.assert_allclose(unit["gross"]["sharpe"], per_asset, rtol=1e-6)
        assert (
            ckpt.meta["train"]["cost_bps"]
            == unit["train_config"]["cost_bps"]
            == (0 if "gross" in strategy else 10)
        )
    med = [np.median(json.loads((out / "units" / f"lstm-linear-s{s}.json").read_text())["gross"]["sharpe"])
           for s in (0, 1)]  # fmt: skip
    cell = results["table1"]["gross"]["lstm-linear"]["sharpe"]
    assert cell["median"] == pytest.approx(np.mean(med)) and cell["median_sd"] == pytest.approx(
        np.std(med, ddof=1)
    )
    assert set(results["tests"]["net"]["lstm-linear vs notransfer-linear"]) == {"sharpe", "calmar"}
    assert "Table 1, net of 10 bps" in text and "QuantNet lstm-linear" in text
    assert "unit 3/6 lstm-linear-gross seed 0: training" in text
    assert "| QuantNet lstm-linear, trained gross |" in text and "trained gross as well: lstm-linear" in text
    assert set(results["strategies"]) == {*BASELINES, "lstm-linear", "lstm-linear-gross", "notransfer-linear"}
    html = (out / "report.html").read_text()
    assert "Plotly.newPlot" in html and 'src="http' not in html
    assert all(f'id="fig{i}"' in html for i in range(5)), "histogram, returns, gains, dendrogram, curves"
    assert "Hierarchical clustering" in html


def test_resume_skips_finished_units(data_dir, finished):
    out, results, _ = finished
    units = sorted((out / "units").glob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in units]
    args = [
        "experiment", "--data", str(data_dir), "--out", str(out), "--test-bars", str(TEST),
        "--val-bars", str(VAL), "--variants", "lstm-linear,notransfer-linear", "--seeds", "2",
        "--steps", "30", "--config", str(data_dir.parent / "small.toml"), "--resume",
    ]  # fmt: skip
    res = CliRunner().invoke(_app(), args)
    assert res.exit_code == 0, res.output
    assert [p.stat().st_mtime_ns for p in units] == stamps
    # no terminal here: a plain line per unit instead of the live display
    assert "unit 6/6 notransfer-linear seed 1: done before" in res.output
    again = json.loads((out / "results.json").read_text())
    assert again["table1"] == results["table1"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--variants", "lstm,notransfer-linear"], "--variants: unknown lstm"),
        (["--test-bars", "700"], "leave none for training"),
        (["--seeds", "0"], "--seeds must be at least 1"),
        (["--gross-trained", "lstm-lstm"], "--gross-trained: lstm-lstm not in --variants"),
        (["--train-cost-bps", "0", "--gross-trained", "lstm-linear"], "training is already gross"),
        (["--baseline-lookback", "1"], "--baseline-lookback must be at least 2"),
    ],
)
def test_bad_input_is_one_line(data_dir, tmp_path, extra, message):
    res = CliRunner().invoke(_app(), ["experiment", "--data", str(data_dir), "--out", str(tmp_path), *extra])
    assert res.exit_code == 2 and message in res.output


def test_test_window_prices_do_not_reach_training(tmp_path):
    """Perturb every price in the test window: the trained weights are identical."""
    frames = _frames()
    days = pd.bdate_range("2016-01-04", periods=620, tz="UTC")
    settings = runner.Settings(
        test_bars=TEST, val_bars=VAL, seeds=1, train={"steps": 20, "seq_len": 40, "eval_every": 10},
        model={"transfer_dim": 3, "decoder_dim": 3},
    )  # fmt: skip

    def weights(scale: float) -> dict[str, torch.Tensor]:
        markets = []
        for name, df in frames.items():
            df = df.copy()
            test = df["timestamp"] >= days[-TEST]
            df.loc[test, "close"] *= np.random.default_rng(1).uniform(1 - scale, 1 + scale, test.sum())
            markets += markets_from_frame(df.assign(market=name))
        split = runner.dated_split(markets, test_bars=TEST, val_bars=VAL)
        path = tmp_path / f"m{scale}.pt"
        runner.run_unit("lstm-linear", 0, markets, split, 252.0, settings, checkpoint=path)
        return load_checkpoint(path).model.state_dict()

    a, b = weights(0.0), weights(0.2)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_source_market_trains_the_shared_layer_without_being_scored(data_dir, finished, tmp_path):
    """A market whose history ends before the validation window is refused as a scored market;
    named in --sources it trains with the others (it is in the checkpoint) and the scored tables of
    the baselines equal the run without it (same test window, same assets)."""
    d = tmp_path / "with_old"
    d.mkdir()
    for p in data_dir.glob("*.parquet"):
        (d / p.name).symlink_to(p)
    rng = np.random.default_rng(5)
    days = pd.bdate_range("2016-01-04", periods=620, tz="UTC")[:400]
    close = 20 * np.exp(np.cumsum(rng.normal(0, 0.01, (len(days), 2)), axis=0))
    rows = [(t, f"old{j}", close[i, j]) for i, t in enumerate(days) for j in range(2)]
    pd.DataFrame(rows, columns=["timestamp", "symbol", "close"]).to_parquet(d / "old.parquet")
    base = [
        "experiment", "--data", str(d), "--test-bars", str(TEST), "--val-bars", str(VAL),
        "--variants", "lstm-linear,notransfer-linear", "--seeds", "1", "--steps", "30", "--cost-bps", "10",
        "--config", str(data_dir.parent / "small.toml"),
    ]  # fmt: skip
    refused = CliRunner().invoke(_app(), [*base, "--out", str(tmp_path / "a")])
    assert refused.exit_code == 2 and "--sources old" in refused.output
    res = CliRunner().invoke(_app(), [*base, "--out", str(tmp_path / "b"), "--sources", "old"])
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    assert [m["name"] for m in results["sources"]] == ["old"]
    assert not any(a["market"] == "old" for a in results["assets"])
    assert results["assets"] == finished[1]["assets"]
    for kind in ("gross", "net"):
        for name in ("buy_and_hold", "risk_parity", "ts_momentum", "cs_momentum"):
            assert results["table1"][kind][name] == finished[1]["table1"][kind][name]
    ck = load_checkpoint(tmp_path / "b" / "models" / "lstm-linear-s0.pt")
    assert "old" in ck.model.market_names
    assert "old" in (tmp_path / "b" / "table1.md").read_text()
    bad = CliRunner().invoke(_app(), [*base, "--out", str(tmp_path / "c"), "--sources", "nope"])
    assert bad.exit_code == 2 and "--sources: no market named nope" in bad.output
