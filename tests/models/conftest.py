"""Tiny synthetic markets built in memory: tests never read the development data."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
import torch

from models import Market


@pytest.fixture(autouse=True)
def _one_torch_thread() -> object:
    """Tiny tensors: one thread is fastest, and immune to spin-wait stalls on a busy machine."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def synthetic_markets(
    *,
    seed: int = 0,
    sizes: tuple[int, ...] = (4, 5, 3),
    rows: int = 600,
    phi: float = 0.3,
    missing: float = 0.03,
) -> list[Market]:
    """Markets whose assets follow AR(1) returns (momentum a model can learn), with holes: random
    missing bars and, in the first market, one asset listed only after a third of the sample."""
    rng = np.random.default_rng(seed)
    index = pd.bdate_range("2015-01-02", periods=rows, tz="UTC")
    out = []
    for k, n in enumerate(sizes):
        eps = rng.normal(0.0, 0.01, (rows, n))
        r = np.zeros((rows, n))
        for t in range(1, rows):
            r[t] = phi * r[t - 1] + eps[t]
        r[rng.random((rows, n)) < missing] = np.nan
        if k == 0:
            r[: rows // 3, -1] = np.nan
        out.append(Market(f"mkt{k}", tuple(f"m{k}a{j}" for j in range(n)), index, r))
    return out


@pytest.fixture
def make_markets() -> Callable[..., list[Market]]:
    return synthetic_markets
