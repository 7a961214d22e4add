"""Constants and entry points for the per-bar numpy work on small vectors.

At a few dozen entries numpy's per-call cost is the bill, not the arithmetic: a Python float or
int operand costs a scalar conversion on every call (about 0.4 µs in numpy 2.4, as much as the
operation itself), and ``np.count_nonzero``'s Python wrapper costs twice its C core. A 0-d float64
array gives the same numbers as the Python float it stands for (both are float64 operands).
"""

from __future__ import annotations

import numpy as np


def _const(value: float) -> np.ndarray:
    a = np.array(value, dtype=np.float64)
    a.setflags(write=False)
    return a


ZERO = _const(0.0)
ONE = _const(1.0)

try:
    from numpy._core.multiarray import count_nonzero  # the C function np.count_nonzero wraps
except ImportError:  # another numpy layout: the public wrapper, same answers
    count_nonzero = np.count_nonzero  # type: ignore[assignment]

__all__ = ["ONE", "ZERO", "count_nonzero"]
