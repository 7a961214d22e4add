"""The journal's JSON text of an event (orjson, one C call) reads back as the record the engine
defines (:func:`engine.journal.event_record`, built field by field): what audits and restarts read."""

from __future__ import annotations

import json
import math

import numpy as np

from engine.events import (
    Fill,
    Funding,
    Order,
    OrderStatus,
    OrderType,
    OrderUpdate,
    PositionUpdate,
    RiskEvent,
    Side,
    TradingState,
)
from engine.journal import Journal, event_json, event_record, read_journal

EVENTS = [
    Order("qn-AAPL-1", 1_700_000_000_000_000_000, 1, "AAPL", Side.SELL, 3.0, strategy="qn"),  # NaN price
    Order("l-1", 5, 6, "BTCUSDT", Side.BUY, 0.5, OrderType.LIMIT, 43_210.5, reduce_only=True, tag="sl"),
    OrderUpdate(7, 8, "c-1", "ÄÖ", OrderStatus.REJECTED, 'quantity 5e-06 below the "minimum"\n'),
    Fill(9, 10, "c-1", "AAPL", Side.BUY, np.float64(12.5), 101.25, 1e-05, "taker", "p-1", "", np.int64(3)),
    Fill(np.int64(11), 12, "c-2", "ETHUSDT", Side.SELL, 1e-300, 2.5e300, -0.0, "maker"),
    PositionUpdate(13, 14, "AAPL", -0.0, float("nan"), -2.5e-320),
    Funding(15, 16, "BTCUSDT", 0.25, 40_000.0, 1e-4, np.float64(1.0)),
    RiskEvent(17, 18, "max_drawdown", "halt", "", TradingState.HALTED, {"drawdown": np.float64(0.2)}),
    RiskEvent(19, 20, "odd", "details with an int key", details={1: 2.0}),  # type: ignore[dict-item]
]


def _normal(record: dict) -> dict:
    """The dict as JSON would give it back (int keys as strings)."""
    return json.loads(json.dumps(record))


def test_event_json_reads_back_as_the_event_record():
    for event in EVENTS:
        assert json.loads(event_json(event)) == _normal(event_record(event)), event
        assert list(json.loads(event_json(event))) == list(event_record(event))


def test_a_journal_stores_them_with_their_keys(tmp_path):
    journal = Journal(tmp_path / "journal.db")
    for event in EVENTS:
        journal.record(event)
    journal.flush()
    rows = journal.db.execute("SELECT event, ts_event, symbol, client_id FROM events ORDER BY id").fetchall()
    assert rows[3] == ("Fill", 9, "AAPL", "c-1")
    assert rows[4][1] == 11 and type(rows[4][1]) is int  # a numpy stamp stored as an integer
    assert rows[5] == ("PositionUpdate", 13, "AAPL", None)
    back = list(read_journal(tmp_path))
    assert back == [_normal(event_record(e)) for e in EVENTS]
    assert back[0]["price"] is None and back[5]["avg_price"] is None  # NaN as null
    assert back[3]["quantity"] == 12.5 and back[3]["ts_price"] == 3
    assert back[7]["state"] == TradingState.HALTED.value and math.isclose(back[7]["details"]["drawdown"], 0.2)
