"""Component state as plain values, for a daemon's journal: what a restart needs to resume.

Each stateful component names the attributes that make up its state; shared references (bus,
clock, portfolio, venue) are never part of it. Arrays are restored in place, because other
components may hold views of them.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np


def capture(obj: object, names: Iterable[str]) -> dict[str, Any]:
    """A deep copy of the named attributes (the component keeps running and mutating them)."""
    return {name: copy.deepcopy(getattr(obj, name)) for name in names}


def restore_into(obj: object, state: Mapping[str, Any]) -> None:
    for name, value in state.items():
        current = getattr(obj, name, None)
        if isinstance(current, np.ndarray) and isinstance(value, np.ndarray) and current.shape == value.shape:
            current[...] = value
        else:
            setattr(obj, name, value)
