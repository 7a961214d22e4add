"""Instrument trading rules: what quantities and prices a venue accepts."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class InstrumentRules:
    """Tick and lot rules. Zero means "no constraint" (e.g. fractional backtests)."""

    symbol: str
    tick_size: float = 0.0
    qty_step: float = 0.0
    min_qty: float = 0.0
    max_qty: float = 0.0
    min_notional: float = 0.0

    def round_qty(self, qty: float) -> float:
        """Round a positive quantity down to the lot step: never trade more than was asked."""
        if self.qty_step <= 0:
            return qty
        steps = math.floor(qty / self.qty_step + 1e-9)
        return _clean(steps * self.qty_step, self.qty_step)

    def round_price(self, price: float, *, up: bool = False) -> float:
        if self.tick_size <= 0:
            return price
        ticks = price / self.tick_size
        ticks = math.ceil(ticks - 1e-9) if up else math.floor(ticks + 1e-9)
        return _clean(ticks * self.tick_size, self.tick_size)

    def rejection(self, qty: float, price: float) -> str | None:
        """Why a venue would refuse this order, or None if it is acceptable."""
        if qty <= 0:
            return f"{self.symbol}: quantity {qty} is not positive"
        if self.min_qty and qty < self.min_qty - 1e-12:
            return f"{self.symbol}: quantity {qty} below minimum {self.min_qty}"
        if self.max_qty and qty > self.max_qty + 1e-12:
            return f"{self.symbol}: quantity {qty} above maximum {self.max_qty}"
        if self.min_notional and qty * price < self.min_notional - 1e-9:
            return f"{self.symbol}: notional {qty * price:.8g} below minimum {self.min_notional}"
        return None


def _clean(value: float, step: float) -> float:
    """Drop float noise such as 0.30000000000000004 by rounding to the step's own decimals."""
    text = f"{step:.12f}".rstrip("0")
    return round(value, len(text.split(".")[1]))
