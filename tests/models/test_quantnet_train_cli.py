"""`quantnet train`: option names, markets per file, config sections, transfer with --init-from."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import typer
from typer.testing import CliRunner

from models import Market, load_checkpoint
from quantnet.commands import train as train_cmd


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        pass

    train_cmd.register(app)
    return app


def _write(market: Market, path: Path) -> None:
    """Long-format close-only file whose closes reproduce the market's returns."""
    close = 100 * np.cumprod(1 + np.nan_to_num(market.returns), axis=0)
    close[np.isnan(market.returns)] = np.nan
    rows = [
        {"timestamp": ts, "symbol": sym, "close": close[t, j]}
        for t, ts in enumerate(market.index)
        for j, sym in enumerate(market.assets)
        if np.isfinite(close[t, j])
    ]
    pd.DataFrame(rows).to_parquet(path)


SMALL = """
[model]
variant = "lstm-linear"
transfer_dim = 4
decoder_dim = 4
encoder_layers = 1
decoder_layers = 1

[train]
batch_markets = 2
seq_len = 16
eval_every = 5
val_bars = 30
"""


def test_train_then_transfer(tmp_path: Path, make_markets: Callable[..., list[Market]]) -> None:
    a, b, c = make_markets(rows=150)
    base = tmp_path / "base"
    base.mkdir()
    _write(a, base / "alpha.parquet")
    _write(b, base / "beta.parquet")
    cfg = tmp_path / "config.toml"
    cfg.write_text(SMALL)
    out = tmp_path / "m.pt"
    runner = CliRunner()
    args = ["train", "--data", str(base), "--out", str(out), "--config", str(cfg), "--steps", "10"]
    res = runner.invoke(_app(), [*args, "--seed", "1", "--variant", "linear-lstm"])
    assert res.exit_code == 0, res.output
    ckpt = load_checkpoint(out)
    assert ckpt.markets == {"alpha": a.assets, "beta": b.assets}
    assert ckpt.meta["variant"] == "linear-lstm" and ckpt.meta["model"]["transfer_dim"] == 4
    assert ckpt.meta["train"]["steps"] == 10 and ckpt.meta["train"]["seed"] == 1
    by_market = ckpt.meta["extra"]["val_sharpe_by_market"]  # the report's per-market validation Sharpe
    assert set(by_market) == {"alpha", "beta"}
    printed = next(line for line in res.output.splitlines() if line.strip("│ ").startswith("mean"))
    shown = printed.split("│")[-2].strip().rstrip("…")  # the val column (rich may cut it short)
    assert len(shown) >= 3 and f"{sum(by_market.values()) / 2:+.3f}".startswith(shown)
    log = [json.loads(x) for x in (tmp_path / "m.log.jsonl").read_text().splitlines()]
    assert len(log) == 10

    new = tmp_path / "gamma.parquet"
    _write(c, new)
    tuned = tmp_path / "tuned.pt"
    res = runner.invoke(
        _app(),
        ["train", "--data", str(new), "--out", str(tuned), "--config", str(cfg), "--steps", "5",
         "--init-from", str(out), "--shared", "frozen"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    t = load_checkpoint(tuned)
    assert list(t.markets) == ["alpha", "beta", "gamma"]
    for k, v in ckpt.model.shared.state_dict().items():  # type: ignore[union-attr]
        assert np.array_equal(v.numpy(), t.model.shared.state_dict()[k].numpy())  # type: ignore[union-attr]
    assert t.meta["extra"]["init_from"] == str(out)


def test_bad_inputs_fail_cleanly(tmp_path: Path, make_markets: Callable[..., list[Market]]) -> None:
    (a,) = make_markets(rows=80, sizes=(3,))
    f = tmp_path / "alpha.parquet"
    _write(a, f)
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[train]\nstepz = 3\n[engine]\nmode = "backtest"\n')
    runner = CliRunner()
    res = runner.invoke(
        _app(), ["train", "--data", str(f), "--config", str(cfg), "--out", str(tmp_path / "x")]
    )
    assert res.exit_code == 2 and "stepz" in res.output
    res = runner.invoke(_app(), ["train", "--data", str(tmp_path / "none.parquet")])
    assert res.exit_code == 2 and "no such file" in res.output
