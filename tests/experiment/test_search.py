"""The random search through Ray Tune in local mode, on training rows only: two trials, ASHA
stopping a poor trial early, and a search resumed after Ctrl+C running only the missing trial.

One single-CPU Ray session serves the module (starting Ray costs seconds); trials run one at a
time, in order, on tiny markets and a few steps."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.data import Market
from quantnet.experiment import runner

NO_RAY = "Ray Tune is not installed (pip install 'quantnet-engine[test]')"
ray = pytest.importorskip("ray", reason=NO_RAY)
tune = pytest.importorskip("ray.tune", reason=NO_RAY)


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _markets() -> list[Market]:
    rng = np.random.default_rng(0)
    index = pd.bdate_range("2018-01-01", periods=300, tz="UTC")
    return [Market(f"m{k}", (f"m{k}a", f"m{k}b"), index, rng.normal(0, 0.01, (300, 2))) for k in range(2)]


def _train_set() -> list[Market]:
    markets = _markets()
    split = runner.dated_split(markets, test_bars=60, val_bars=60)
    return runner.training_markets(markets, split)


def _settings(steps: int, eval_every: int) -> runner.Settings:
    return runner.Settings(
        test_bars=60, val_bars=60, train={"steps": steps, "eval_every": eval_every}, model={"decoder_dim": 3}
    )


def test_two_trials_in_local_mode(tmp_path):
    from quantnet.experiment.search import run_search, space

    train_set = _train_set()
    assert all(len(m) == 240 for m in train_set)  # the test window never reaches a trial
    found = run_search("linear-linear", train_set, _settings(4, 2), trials=2, out=tmp_path)
    assert len(found["trials"]) == 2
    scores = [t["val_sharpe"] for t in found["trials"]]
    assert found["best_val_sharpe"] == max(scores)
    assert all(t["steps"] == 4 and not t["stopped_by_asha"] for t in found["trials"])
    assert all([s for s, _ in t["curve"]] == [2, 4] for t in found["trials"])
    best = found["best"]
    assert 16 <= best["batch"] <= 96 and 21 <= best["seq_len"] <= 252 and 1e-4 <= best["lr"] <= 0.5
    assert best["transfer_dim"] in (10, 25, 50, 100) and best["layers"] in (1, 2)
    assert found["overrides"]["train"]["windows_per_market"] == max(1, round(best["batch"] / 2))
    assert "transfer_dim" not in space("notransfer-linear")


def test_asha_stops_a_poor_trial_early(tmp_path):
    """Rungs at steps 2 and 6 of 8 (reduction factor 3): a trial whose validation Sharpe at a rung
    is below the 2/3 quantile of the earlier trials' values there stops at that rung."""
    from quantnet.experiment.search import run_search

    found = run_search(
        "linear-linear", _train_set(), _settings(8, 2), trials=3, out=tmp_path, asha=True, grace_steps=2
    )
    rows = sorted(found["trials"], key=lambda t: t["trial"])
    assert len(rows) == 3
    stopped = [t for t in rows if t["stopped_by_asha"]]
    assert stopped, [t["curve"] for t in rows]
    for t in rows:
        if t["stopped_by_asha"]:
            assert t["steps"] in (2, 6) and t["curve"][-1][0] == t["steps"]
        else:
            assert t["steps"] == 8 and [s for s, _ in t["curve"]] == [2, 4, 6, 8]
    for rung in (2, 6):
        seen: list[float] = []
        for t in rows:
            at = dict(t["curve"]).get(rung)
            if at is None:
                continue
            cut = np.percentile(seen, 200 / 3) if seen else -np.inf
            assert (t["stopped_by_asha"] and t["steps"] == rung) == (at < cut)
            seen.append(at)
    assert found["best_val_sharpe"] == max(t["val_sharpe"] for t in rows if not t["stopped_by_asha"])


class _InterruptAfterFirstTrial(tune.Callback):
    """Ctrl+C once, as the first trial finishes (the flag file keeps the restored copy quiet)."""

    def __init__(self, flag: Path) -> None:
        self.flag = str(flag)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if not os.path.exists(self.flag):
            Path(self.flag).touch()
            os.kill(os.getpid(), signal.SIGINT)


def test_resume_runs_only_the_missing_trial(tmp_path):
    from quantnet.experiment.search import SearchInterrupted, run_search

    train_set, settings = _train_set(), _settings(4, 2)
    with pytest.raises(SearchInterrupted, match=r"1 of 2 trials finished.*--resume"):
        run_search(
            "linear-linear",
            train_set,
            settings,
            trials=2,
            out=tmp_path,
            callbacks=[_InterruptAfterFirstTrial(tmp_path / "interrupted")],
        )
    resumed_at = time.time()
    found = run_search("linear-linear", train_set, settings, trials=2, out=tmp_path, resume=True)
    rows = sorted(found["trials"], key=lambda t: t["trial"])
    assert len(rows) == 2 and all(t["steps"] == 4 for t in rows)
    first, second = (t["finished_at"] for t in rows)  # whole seconds
    assert first < resumed_at <= second + 1  # the first trial's result predates the resume
