"""A 2-trial random search through Ray Tune in local mode, on training rows only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.data import Market
from quantnet.experiment import runner

ray = pytest.importorskip("ray", reason="Ray Tune is not installed (pip install 'quantnet-engine[search]')")
pytest.importorskip("ray.tune", reason="Ray Tune is not installed (pip install 'quantnet-engine[search]')")


def _markets() -> list[Market]:
    rng = np.random.default_rng(0)
    index = pd.bdate_range("2018-01-01", periods=300, tz="UTC")
    return [Market(f"m{k}", (f"m{k}a", f"m{k}b"), index, rng.normal(0, 0.01, (300, 2))) for k in range(2)]


def test_two_trials_in_local_mode(tmp_path):
    from quantnet.experiment.search import run_search, space

    markets = _markets()
    split = runner.dated_split(markets, test_bars=60, val_bars=60)
    train_set = runner.training_markets(markets, split)
    assert all(len(m) == 240 for m in train_set)  # the test window never reaches a trial
    settings = runner.Settings(
        test_bars=60, val_bars=60, train={"steps": 4, "eval_every": 2}, model={"decoder_dim": 3}
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        found = run_search("linear-linear", train_set, settings, trials=2, out=tmp_path)
    finally:
        ray.shutdown()
    assert len(found["trials"]) == 2
    scores = [t["val_sharpe"] for t in found["trials"]]
    assert found["best_val_sharpe"] == max(scores)
    best = found["best"]
    assert 16 <= best["batch"] <= 96 and 21 <= best["seq_len"] <= 252 and 1e-4 <= best["lr"] <= 0.5
    assert best["transfer_dim"] in (10, 25, 50, 100) and best["layers"] in (1, 2)
    assert found["overrides"]["train"]["windows_per_market"] == max(1, round(best["batch"] / 2))
    assert "transfer_dim" not in space("notransfer-linear")
