"""Scoped torch intra-op thread count.

Our tensors are tiny (a few markets × tens of units), so torch's process-wide thread pool buys
nothing, and on a busy machine its spin-waiting workers turn a sub-millisecond step into stalls
of tens of milliseconds. Work here runs on the requested count and restores the caller's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads (None or 0: leave torch's setting alone)."""
    prev = torch.get_num_threads()
    if not n or n == prev:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)
