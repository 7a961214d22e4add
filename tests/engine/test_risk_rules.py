"""Each risk rule firing at the right bar and price, on hand-built price paths.

Bars are daily and stamped at their close (``timestamps = "close"``), so bar ``k`` is day ``k`` and
a decision on bar ``k``'s close fills at bar ``k + 1``'s open. Costs are zero unless a test is about
them, so every expected number below is plain arithmetic on the path.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pandas as pd
import pytest
from structlog.testing import capture_logs
from typer.testing import CliRunner

from connectors.paper import PaperBroker
from connectors.replay import BarMatrix
from engine.bus import EventBus
from engine.clock import ReplayClock
from engine.config import ConfigError, CostConfig
from engine.events import Order, OrderType, Side, TradingState
from engine.journal import read_journal
from engine.risk import RiskManager, RiskStateError, _headroom, clear_halt, read_state
from quantnet.backtest import BacktestResult, TradingNode, assemble, run_backtest
from quantnet.cli import app
from quantnet.config import load_config
from tests.conftest import Scripted

DAYS = pd.date_range("2024-01-01", periods=12, freq="D", tz="UTC")
NAN = math.nan


def frame(**paths: list[tuple[float, float, float, float]]) -> pd.DataFrame:
    """Long-format OHLCV from (open, high, low, close) per day per symbol."""
    rows = [
        {"timestamp": DAYS[k], "symbol": s, "open": o, "high": h, "low": lo, "close": c, "volume": 1.0}
        for s, path in paths.items()
        for k, (o, h, lo, c) in enumerate(path)
    ]
    return pd.DataFrame(rows)


def config(risk: dict[str, Any], *, slippage_bps: float = 0.0, fee_bps: float = 0.0, cash: float = 10_000):
    return load_config(
        None,
        {
            "portfolio": {"cash": cash},
            "costs": {"taker_fee_bps": fee_bps, "maker_fee_bps": fee_bps, "slippage_bps": slippage_bps},
            "data": {"timestamps": "close"},
            "risk": risk,
        },
    )


def run(risk: dict[str, Any], plan: dict[int, list[float]], data: pd.DataFrame, **kw: Any) -> BacktestResult:
    output = kw.pop("output", None)
    return run_backtest(config(risk, **kw), strategy=Scripted(plan), data=data, output=output)


def fills(result: BacktestResult) -> list[tuple[int, str, str, float, float]]:
    """(bar index, symbol, side, quantity, price) per fill."""
    t = result.trades
    day = [DAYS.get_loc(ts) for ts in t["timestamp"]]
    return list(zip(day, t["symbol"], t["side"], t["quantity"], t["price"], strict=True))


def events(result: BacktestResult, rule: str | None = None) -> list[dict[str, Any]]:
    return [e for e in result.risk_events if rule is None or e["rule"] == rule]


def bar_of(event: dict[str, Any]) -> int:
    return DAYS.get_loc(pd.Timestamp(event["timestamp"]))


FLAT = (100.0, 100.0, 100.0, 100.0)


# stops -----------------------------------------------------------------------------------------


def test_stop_hit_intrabar_fills_at_the_stop_price_from_the_real_entry():
    # decided at bar 0's close (100), bought at bar 1's open (102): the stop is 5% below 102
    a = [FLAT, (102, 103, 101, 102), (101, 102, 97.5, 98), (98, 99, 96.0, 97), (97, 98, 90, 91)]
    result = run({"stop_loss": 0.05}, {0: [0.5]}, frame(A=a))
    entry = 102.0
    stop = entry * 0.95  # 96.9: bar 2's low 97.5 stays above, bar 3's low 96.0 reaches it
    qty = 0.5 * 10_000 / 100
    assert fills(result) == [(1, "A", "buy", qty, entry), (3, "A", "sell", qty, pytest.approx(stop))]
    (hit,) = events(result, "stop_loss")
    assert bar_of(hit) == 3 and hit["symbol"] == "A" and hit["state"] == "active"
    assert result.equity["equity"].iloc[-1] == pytest.approx(10_000 + qty * (stop - entry))
    assert result.metrics["risk_stop_exits"] == 1


def test_entry_bar_is_protected_from_the_fill_at_the_stop_level():
    # bought at bar 1's open (101); the same bar falls to 94: the stop armed by the fill, 5% below
    # 101, fills at its level 95.95 (not 95, 5% below the decision close)
    a = [FLAT, (101, 101, 94, 96), (96, 97, 95, 96)]
    result = run({"stop_loss": 0.05}, {0: [0.5]}, frame(A=a))
    assert fills(result) == [(1, "A", "buy", 50, 101), (1, "A", "sell", 50, pytest.approx(101 * 0.95))]


def test_entry_gapping_past_the_levels_is_not_sold_at_its_own_open():
    # decided at close 100; bar 1 opens at 97, below a 2% stop from that close (98), and its range
    # stays above 2% below the fill (97 · 0.98 = 95.06): the position is kept
    a = [FLAT, (97, 98, 96, 97.5), (97.5, 98, 97, 97.5)]
    result = run({"stop_loss": 0.02}, {0: [0.5]}, frame(A=a), slippage_bps=10)
    entry = 97 * 1.001
    assert fills(result) == [(1, "A", "buy", 50, pytest.approx(entry))]
    assert not events(result, "stop_loss") and result.positions["A"].iloc[-1] == pytest.approx(50 * 97.5)
    # the same for a take-profit: bar 1 opens at 106, beyond 5% above the close (105); the target
    # is 5% above the fill (111.3), which bar 2 reaches
    a = [FLAT, (106, 107, 105, 106), (106, 112, 105, 110)]
    result = run({"take_profit": 0.05}, {0: [0.5]}, frame(A=a))
    assert fills(result) == [(1, "A", "buy", 50, 106), (2, "A", "sell", 50, pytest.approx(106 * 1.05))]


def test_exits_are_priced_from_the_fill_with_slippage_and_fees():
    # a short sold at 100 less 10 bps: stop 3% above 99.9 = 102.897, reached by the entry bar's
    # high 102.95 (a level from the decision close, 103, would not be)
    a = [FLAT, (100, 102.95, 99, 100), (100, 101, 99, 100)]
    result = run({"stop_loss": 0.03}, {0: [-0.5]}, frame(A=a), slippage_bps=10, fee_bps=5)
    entry = 100 * 0.999
    assert fills(result) == [
        (1, "A", "sell", 50, pytest.approx(entry)),
        (1, "A", "buy", 50, pytest.approx(entry * 1.03 * 1.001)),
    ]
    exit_price = entry * 1.03 * 1.001
    assert result.trades["fee"].tolist() == pytest.approx([50 * entry * 5e-4, 50 * exit_price * 5e-4])
    (hit,) = events(result, "stop_loss")
    assert hit["message"].endswith(f"(level {entry * 1.03:.8g})")


def test_bar_opening_beyond_the_take_profit_fills_it_at_the_open():
    # long 50 at 100, stop 95, target 110; bar 2 opens at 112 and then falls to 90: the open came
    # first, so the take-profit fills there and the stop is cancelled
    a = [FLAT, FLAT, (112, 113, 90, 91), (91, 92, 90, 91)]
    result = run({"stop_loss": 0.05, "take_profit": 0.1}, {0: [0.5]}, frame(A=a))
    assert fills(result) == [(1, "A", "buy", 50, 100), (2, "A", "sell", 50, 112)]
    assert len(events(result, "take_profit")) == 1 and not events(result, "stop_loss")
    assert result.positions["A"].iloc[-1] == 0


def test_gap_through_the_stop_fills_at_the_open_with_slippage():
    a = [FLAT, FLAT, (100, 101, 99, 100), (90, 92, 88, 91), (91, 92, 90, 91)]
    result = run({"stop_loss": 0.05}, {0: [0.5]}, frame(A=a), slippage_bps=10)
    slip = 0.001
    entry = 100 * (1 + slip)
    qty = 0.5 * 10_000 / 100
    # the stop (95.095) is gapped through: filled at bar 3's open 90, less slippage
    assert fills(result) == [
        (1, "A", "buy", qty, pytest.approx(entry)),
        (3, "A", "sell", qty, pytest.approx(90 * (1 - slip))),
    ]
    (hit,) = events(result, "stop_loss")
    assert bar_of(hit) == 3
    assert hit["message"].endswith(f"(level {entry * 0.95:.8g})")


def test_short_stop_and_trailing_stop():
    # short 50 at 100; the best (lowest) low is 80 at bar 2, so the 10% trailing stop sits at 88
    # from bar 3 on (tighter than the 20% stop-loss at 120); bar 3's high 89 reaches it
    a = [FLAT, (100, 101, 95, 96), (95, 96, 80, 82), (83, 89, 82, 88), (88, 90, 87, 89)]
    result = run({"stop_loss": 0.2, "trailing_stop": 0.1}, {0: [-0.5]}, frame(A=a))
    assert fills(result) == [(1, "A", "sell", 50, 100), (3, "A", "buy", 50, pytest.approx(88.0))]
    (hit,) = events(result, "trailing_stop")
    assert bar_of(hit) == 3 and not events(result, "stop_loss")


def test_take_profit_cancels_the_stop():
    a = [FLAT, FLAT, (100, 111, 99, 108), (108, 108, 90, 91), (91, 92, 80, 85)]
    result = run({"stop_loss": 0.05, "take_profit": 0.1}, {0: [0.5]}, frame(A=a), fee_bps=10)
    # the limit fills at its price 110 as maker; the stop is cancelled, so bar 3's fall to 90 sells
    # nothing more and the account stays flat
    assert fills(result) == [(1, "A", "buy", 50, 100), (2, "A", "sell", 50, pytest.approx(110.0))]
    assert result.trades["fee"].tolist() == pytest.approx([50 * 100 * 0.001, 50 * 110 * 0.001])
    assert result.positions["A"].iloc[-1] == 0
    assert len(events(result, "take_profit")) == 1 and result.metrics["risk_take_profits"] == 1


def test_stop_and_take_profit_in_one_bar_take_the_stop_and_never_flip():
    a = [FLAT, FLAT, (100, 112, 94, 105), (105, 113, 104, 112)]
    result = run({"stop_loss": 0.05, "take_profit": 0.1}, {0: [0.5]}, frame(A=a))
    assert fills(result) == [(1, "A", "buy", 50, 100), (2, "A", "sell", 50, pytest.approx(95.0))]
    assert result.positions["A"].tolist()[-2:] == [0, 0]
    assert not events(result, "take_profit")


def test_strategy_exit_cancels_the_stop_so_a_gap_does_not_sell_twice():
    # the strategy closes at bar 2's close; bar 3 gaps below the stop: only one sale, at the open
    a = [FLAT, FLAT, (100, 101, 99, 100), (90, 91, 89, 90), (90, 91, 89, 90)]
    result = run({"stop_loss": 0.05}, {0: [0.5], 2: [0.0]}, frame(A=a))
    assert fills(result) == [(1, "A", "buy", 50, 100), (3, "A", "sell", 50, 90)]
    assert result.positions["A"].iloc[-1] == 0 and not events(result, "stop_loss")


# daily loss ------------------------------------------------------------------------------------


def test_daily_loss_blocks_new_risk_until_the_next_day():
    a = [FLAT, FLAT, (100, 100, 90, 92), (92, 93, 91, 92), (92, 93, 91, 92), (92, 93, 91, 92)]
    b = [(50, 50, 50, 50)] * 6
    plan = {0: [1.0, NAN], 2: [0.5, 0.5], 3: [NAN, 0.4]}
    result = run({"max_daily_loss": 0.05}, plan, frame(A=a, B=b))
    # bar 2: long 100 A falls from 100 to 92, the day's loss is 8% > 5%: REDUCING. The decision
    # of bar 2 may halve A (a reduction) but not buy B.
    equity2 = 10_000 - 100 * 8
    a_sell = 100 - 0.5 * equity2 / 92
    equity3 = equity2  # bar 3: A sold at 92, the rest unchanged
    b_buy = 0.4 * equity3 / 50
    assert fills(result) == [
        (1, "A", "buy", 100, 100),
        (3, "A", "sell", pytest.approx(a_sell), 92),
        (4, "B", "buy", pytest.approx(b_buy), 50),
    ]
    (breach,) = events(result, "daily_loss")
    assert bar_of(breach) == 2 and breach["state"] == "reducing"
    (blocked,) = events(result, "trading_state")
    assert bar_of(blocked) == 2 and blocked["symbol"] == "B" and "rejected" in blocked["message"]
    (lifted,) = events(result, "daily_loss_reset")
    assert bar_of(lifted) == 3 and lifted["state"] == "active"
    assert result.metrics["bars_reducing"] == 1 and result.metrics["trading_state"] == 0


def test_day_boundary_follows_day_start_hour_on_hourly_bars():
    hours = pd.date_range("2024-01-01 20:00", periods=8, freq="h", tz="UTC")
    prices = [100, 100, 100, 90, 90, 90, 90, 90]
    data = pd.DataFrame(
        {"timestamp": hours, "symbol": "A", "open": prices, "high": prices, "low": prices, "close": prices}
    ).assign(volume=1.0)
    plan = {0: [1.0], 3: [0.5], 4: [0.8]}
    cfg = config({"max_daily_loss": 0.05, "day_start_hour": 23})
    result = run_backtest(cfg, strategy=Scripted(plan), data=data)
    # bars close at 20:00..03:00; the day starts at 23:00, so the bar stamped 23:00 (index 3)
    # still belongs to the old day and the one stamped 00:00 (index 4) opens the new day
    rules = [(e["rule"], pd.Timestamp(e["timestamp"]).hour) for e in result.risk_events]
    assert rules == [("daily_loss", 23), ("daily_loss_reset", 0)]
    trades = result.trades[["side", "quantity"]].values.tolist()
    assert trades == [
        ["buy", 100],
        ["sell", pytest.approx(100 - 0.5 * 9_000 / 90)],
        ["buy", pytest.approx(0.8 * 9_000 / 90 - 50)],
    ]


# drawdown and halt -----------------------------------------------------------------------------


DD_PATH = [FLAT, FLAT, (100, 110, 100, 110), (108, 108, 97, 98), (97, 98, 96, 97), (99, 120, 99, 120)]


def paper(risk: dict[str, Any], plan: dict[int, list[float]], data: pd.DataFrame) -> TradingNode:
    """A paper run over ``data``: the wiring paper and live trading use, which persists a halt."""
    cfg = config(risk)
    matrix = BarMatrix.from_frame(data, timestamps="close")
    bus, clock = EventBus(), ReplayClock()
    node = assemble(
        cfg,
        Scripted(plan),
        matrix.symbols,
        bus,
        clock,
        lambda b, c: PaperBroker(b, c, matrix.symbols, cfg.costs),
    )
    for bars in matrix.bar_sets():
        clock.advance(bars.ts_event)
        bus.publish(bars)
    return node


def node_fills(node: TradingNode) -> list[tuple[int, str, str, float, float]]:
    return [
        (DAYS.get_loc(pd.Timestamp(f.ts_event, tz="UTC")), f.symbol, f.side.name.lower(), f.quantity, f.price)
        for f in node.fills
    ]


RISING = [(100 + k, 101 + k, 99 + k, 100 + k) for k in range(5)]


def test_drawdown_flattens_and_halts(tmp_path):
    state = tmp_path / "risk_state.json"
    risk = {"max_drawdown": 0.1, "state_file": str(state)}
    result = run(risk, {0: [1.0], 4: [0.5], 5: [0.8]}, frame(A=DD_PATH), output=tmp_path / "out")
    # peak 11 000 at bar 2; bar 3 closes at 9 800, 10.9% down: flatten at bar 4's open (97)
    assert fills(result) == [(1, "A", "buy", 100, 100), (4, "A", "sell", 100, 97)]
    (halt,) = events(result, "max_drawdown")
    assert bar_of(halt) == 3 and halt["state"] == "halted"
    blocked = events(result, "trading_state")
    assert [bar_of(e) for e in blocked] == [4, 5]
    assert result.equity["equity"].iloc[-1] == pytest.approx(9_700)
    assert result.metrics["trading_state"] == 2 and result.metrics["bars_halted"] == 3
    assert result.metrics["risk_halts"] == 1
    assert result.settings["halt"]["rule"] == "max_drawdown"
    assert pd.Timestamp(result.settings["halt"]["time"]) == DAYS[3]
    report = (tmp_path / "out" / "report.html").read_text()
    assert "max_drawdown" in report and "halted" in report
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["trading_state"] == "HALTED" and metrics["risk_events"] == len(result.risk_events)
    # a backtest keeps its halt to itself: the next one (same config) starts active and trades
    assert not state.exists()
    again = run(risk, {0: [1.0]}, frame(A=RISING))
    assert fills(again) == [(1, "A", "buy", 100, 101)]
    assert again.metrics["trading_state"] == 0 and again.settings["halt"] is None


def test_backtest_ignores_a_halt_persisted_by_paper_trading(tmp_path):
    state = tmp_path / "risk_state.json"
    paper({"max_drawdown": 0.1, "state_file": str(state)}, {0: [1.0]}, frame(A=DD_PATH))
    assert read_state(state)["halted"] is True
    result = run({"max_drawdown": 0.1, "state_file": str(state)}, {0: [1.0]}, frame(A=RISING))
    assert fills(result) == [(1, "A", "buy", 100, 101)] and result.metrics["trading_state"] == 0
    assert read_state(state)["halted"] is True  # untouched: it belongs to the paper account


def test_cli_summary_says_the_run_ended_halted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    frame(A=DD_PATH).to_csv(tmp_path / "a.csv", index=False)
    (tmp_path / "cfg.toml").write_text(
        '[data]\ntimestamps = "close"\n[strategy]\nname = "buy_and_hold"\n[risk]\nmax_drawdown = 0.1\n'
    )
    args = ["backtest", "--config", "cfg.toml", "--data", "a.csv", "--output", "out", "--fee-bps", "0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (line,) = [x for x in result.output.splitlines() if "Ended HALTED" in x]
    assert "max_drawdown" in line and "2024-01-04" in line and "drawdown" in line.split(":", 3)[-1]
    assert "Trading state" in result.output


def test_paper_run_persists_a_halt_until_an_operator_resets_it(tmp_path):
    state = tmp_path / "risk_state.json"
    risk = {"max_drawdown": 0.1, "state_file": str(state)}
    node = paper(risk, {0: [1.0], 4: [0.5], 5: [0.8]}, frame(A=DD_PATH))
    assert node_fills(node) == [(1, "A", "buy", 100, 100), (4, "A", "sell", 100, 97)]
    saved = read_state(state)
    assert saved["halted"] is True and saved["rule"] == "max_drawdown"
    assert saved["equity"] == pytest.approx(9_800) and saved["peak_equity"] == pytest.approx(11_000)

    # a restart on fresh, rising data stays halted: nothing trades
    again = paper(risk, {0: [1.0]}, frame(A=RISING))
    assert node_fills(again) == []
    assert [e.rule for e in again.risk_events] == ["halted", "trading_state"]
    assert again.risk is not None and again.risk.metrics()["bars_halted"] == 5

    # the operator resets it: the next start trades
    result = CliRunner().invoke(app, ["risk", "reset", "--state", str(state), "--by", "test"])
    assert result.exit_code == 0, result.output
    assert "cleared" in result.output
    cleared = read_state(state)
    assert cleared["halted"] is False and cleared["reset_by"] == "test" and cleared["last_halt"]["halted"]
    resumed = paper(risk, {0: [1.0]}, frame(A=RISING))
    assert node_fills(resumed) == [(1, "A", "buy", 100, 101)]
    assert resumed.risk is not None and resumed.risk.state is TradingState.ACTIVE


def test_state_changes_and_breaches_are_logged():
    with capture_logs() as logs:
        run({"max_drawdown": 0.1}, {0: [1.0]}, frame(A=DD_PATH))
    states = [(e["previous"], e["state"]) for e in logs if e["event"] == "trading state"]
    assert states == [("active", "halted")]
    (breach,) = [e for e in logs if e.get("rule") == "max_drawdown"]
    assert breach["log_level"] == "error" and breach["state"] == "halted"


def test_config_can_clear_a_persisted_halt(tmp_path):
    state = tmp_path / "risk_state.json"
    paper({"max_drawdown": 0.1, "state_file": str(state)}, {0: [1.0]}, frame(A=DD_PATH))
    assert read_state(state)["halted"]
    resumed = paper(
        {"max_drawdown": 0.1, "state_file": str(state), "clear_halt": True}, {0: [1.0]}, frame(A=RISING[:3])
    )
    assert [e.rule for e in resumed.risk_events] == ["halt_reset"]
    assert node_fills(resumed) == [(1, "A", "buy", 100, 101)]
    assert read_state(state)["reset_by"] == "config clear_halt"
    assert clear_halt(state, by="again") is None


def test_reset_in_a_running_engine_measures_the_drawdown_afresh(tmp_path):
    state = tmp_path / "risk_state.json"
    cfg = config({"max_drawdown": 0.1, "state_file": str(state)})
    path = [*DD_PATH, (120, 121, 119, 120), (120, 121, 119, 120)]
    matrix = BarMatrix.from_frame(frame(A=path), timestamps="close")
    bus, clock = EventBus(), ReplayClock()
    node = assemble(
        cfg,
        Scripted({0: [1.0], 5: [0.5]}),
        ("A",),
        bus,
        clock,
        lambda b, c: PaperBroker(b, c, ("A",), cfg.costs),
    )
    risk = node.risk
    assert risk is not None
    for bars in matrix.bar_sets():
        clock.advance(bars.ts_event)
        bus.publish(bars)
        if bars.index == 4:
            assert risk.state is TradingState.HALTED and read_state(state)["halted"]
            risk.reset_halt(by="desk")
    # flattened at bar 4 (equity 9 700); after the reset the peak is 9 700, the bar 5 decision
    # (half of 9 700 at 120) buys 40 at bar 6's open
    assert risk.state is TradingState.ACTIVE and risk.peak_equity == pytest.approx(9_700)
    assert [(f.side, f.quantity, f.price) for f in node.fills][-1] == (
        Side.BUY,
        pytest.approx(0.5 * 9_700 / 120),
        120,
    )
    assert read_state(state)["reset_by"] == "desk"
    assert [e.rule for e in node.risk_events] == ["max_drawdown", "halt_reset"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{halted", "not valid JSON"),
        ("", "is empty"),
        ("   \n", "is empty"),
        ("[true]", "must be a JSON object"),
        ('{"halted": "false"}', "'halted': Input should be a valid boolean (got 'false')"),
        ('{"halted": 1}', "'halted': Input should be a valid boolean (got 1)"),
        ('{"rule": "max_drawdown"}', "'halted': Field required"),
        ('{"halted": true, "ts_event": "yesterday"}', "'ts_event'"),
        (None, "is a directory"),
    ],
)
def test_bad_state_file_refuses_to_start_with_one_line(tmp_path, content, message):
    state = tmp_path / "risk_state.json"
    if content is None:
        state.mkdir()
    else:
        state.write_text(content)
    with pytest.raises(RiskStateError, match=re.escape(message)) as caught:
        paper({"max_drawdown": 0.1, "state_file": str(state)}, {0: [1.0]}, frame(A=DD_PATH))
    assert str(state) in str(caught.value) and "\n" not in str(caught.value)
    result = CliRunner().invoke(app, ["risk", "status", "--state", str(state)])
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output
    assert not isinstance(result.exception, RiskStateError | OSError)


def test_a_valid_state_file_that_is_not_halted_trades(tmp_path):
    state = tmp_path / "risk_state.json"
    state.write_text('{"halted": false, "reset_by": "desk", "last_halt": {"halted": true}}')
    node = paper({"max_drawdown": 0.1, "state_file": str(state)}, {0: [1.0]}, frame(A=RISING))
    assert node_fills(node) == [(1, "A", "buy", 100, 101)]


def test_halt_cancels_resting_exits_before_flattening():
    result = run({"max_drawdown": 0.1, "stop_loss": 0.2}, {0: [1.0]}, frame(A=DD_PATH))
    # the stop at 80 is cancelled with the halt; only the flatten sells
    assert fills(result) == [(1, "A", "buy", 100, 100), (4, "A", "sell", 100, 97)]


# pre-trade limits ------------------------------------------------------------------------------


def test_order_rejected_for_size():
    a = [FLAT] * 4
    result = run({"max_order_notional": 0.3}, {0: [0.5], 1: [0.25]}, frame(A=a))
    # 0.5 of equity (5 000) is above 30% (3 000): rejected whole; 0.25 (2 500) goes through
    assert fills(result) == [(2, "A", "buy", 25, 100)]
    (rejected,) = events(result, "max_order_notional")
    assert bar_of(rejected) == 0 and "rejected" in rejected["message"] and "5,000.00" in rejected["message"]
    assert result.metrics["risk_orders_rejected"] == 1


def test_order_below_the_instrument_minimum_is_rejected():
    result = run({"instruments": {"A": {"min_qty": 10}}}, {0: [0.05], 1: [0.2]}, frame(A=[FLAT] * 4))
    assert fills(result) == [(2, "A", "buy", 20, 100)]
    (rejected,) = events(result, "instrument")
    assert "quantity 5.0 below minimum 10" in rejected["message"]


def test_position_gross_and_net_limits_cut_orders():
    a, b = [FLAT] * 3, [(50, 50, 50, 50)] * 3
    result = run({"max_position": 0.3}, {0: [0.5, -0.2]}, frame(A=a, B=b))
    assert fills(result) == [(1, "A", "buy", 30, 100), (1, "B", "sell", 40, 50)]
    (cut,) = events(result, "max_position")
    assert cut["symbol"] == "A" and "cut to 30" in cut["message"]

    result = run({"max_gross_exposure": 0.6}, {0: [0.4, -0.4]}, frame(A=a, B=b))
    assert fills(result) == [(1, "A", "buy", 40, 100), (1, "B", "sell", pytest.approx(40), 50)]

    result = run({"max_net_exposure": 0.5}, {0: [0.4, 0.4]}, frame(A=a, B=b))
    assert fills(result) == [(1, "A", "buy", 40, 100), (1, "B", "buy", pytest.approx(20), 50)]
    assert result.metrics["risk_orders_resized"] == 1


def test_reductions_always_pass_and_flips_are_cut_at_the_limit():
    a = [FLAT] * 5
    result = run({"max_position": 0.3}, {0: [0.3], 2: [-0.6]}, frame(A=a))
    # the sale closes 30 and opens a short cut to 30% of equity
    assert fills(result) == [(1, "A", "buy", 30, 100), (3, "A", "sell", 60, 100)]
    result = run({"max_position": 0.3}, {0: [0.3], 2: [-0.6]}, frame(A=a), slippage_bps=0)
    assert result.positions["A"].iloc[-1] == pytest.approx(-3_000)


def test_tick_and_lot_rounding():
    # lot 5: 0.33 · 10 000 / 100 = 33 shares -> 30; entry 101, stop 3% = 97.97 -> up to the tick 98.0,
    # take-profit 7% = 108.07 -> 108.5 (a long's exits round towards safety / a better price)
    a = [FLAT, (101, 101, 100, 100), (100, 101, 98.2, 99), (99, 100, 97.5, 98)]
    rules = {"instruments": {"A": {"qty_step": 5, "tick_size": 0.5}}, "stop_loss": 0.03, "take_profit": 0.07}
    result = run(rules, {0: [0.33]}, frame(A=a))
    assert fills(result) == [(1, "A", "buy", 30, 101), (3, "A", "sell", 30, 98.0)]


def test_a_position_below_the_minimum_order_gets_no_exits_and_one_warning():
    # 50 bought, 46 sold (4,600, above the minimum 500): the 4 left are worth 400, their stop at
    # 95 would be a 380 order, which the venue refuses. When the sale is accepted (bar 2) the stop
    # is cancelled and none is sent for the rest; the warning comes once, and bar 5's fall through
    # 95 sells nothing
    a = [FLAT] * 5 + [(100, 100, 90, 92), (92, 93, 91, 92)]
    rules = {"instruments": {"A": {"qty_step": 1, "min_notional": 500}}, "stop_loss": 0.05}
    result = run(rules, {0: [0.5], 2: [0.04]}, frame(A=a))
    assert fills(result) == [(1, "A", "buy", 50, 100), (3, "A", "sell", 46, 100)]
    (skipped,) = events(result, "exit_skipped")
    assert bar_of(skipped) == 2 and skipped["symbol"] == "A"
    assert "position 4: below the venue's minimum order (notional 380 below minimum 500" in skipped["message"]
    assert not events(result, "stop_loss") and result.positions["A"].iloc[-1] == pytest.approx(4 * 92)


def test_review_rounds_limit_and_stop_prices_and_quantities():
    bus, clock = EventBus(), ReplayClock()
    cfg = config({"instruments": {"*": {"tick_size": 0.25, "qty_step": 0.1}}})
    node = assemble(
        cfg, Scripted({}), ("A",), bus, clock, lambda b, c: PaperBroker(b, c, ("A",), CostConfig())
    )
    risk = node.risk
    assert isinstance(risk, RiskManager) and node.orders.gates[-1] is risk
    node.portfolio.last_price[0] = 100.0

    def order(side: Side, kind: OrderType, price: float) -> Order:
        return Order("x", 0, 0, "A", side, 1.2345, kind, price)

    assert risk.review(order(Side.BUY, OrderType.LIMIT, 100.37)).price == 100.25
    assert risk.review(order(Side.SELL, OrderType.LIMIT, 100.37)).price == 100.5
    # stops trigger no later than asked, as the venues round them: a buy stop down, a sell stop up
    assert risk.review(order(Side.BUY, OrderType.STOP, 100.37)).price == 100.25
    assert risk.review(order(Side.SELL, OrderType.STOP, 100.37)).price == 100.5
    assert risk.review(order(Side.BUY, OrderType.MARKET, NAN)).quantity == 1.2
    assert risk.state is TradingState.ACTIVE


def test_headroom():
    assert _headroom(0.0, 10.0, 5.0) == 0.5  # half the order fits
    assert _headroom(8.0, 10.0, 5.0) == 0.0  # already beyond: nothing more
    assert _headroom(8.0, -20.0, 5.0) == pytest.approx(0.65)  # back through zero to -5
    assert _headroom(8.0, -4.0, 1.0) == 1.0  # a reduction that stays beyond the cap still passes
    assert _headroom(3.0, 0.0, 1.0) == 1.0


# config and wiring -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("max_drawdown", 1.5, "'risk.max_drawdown': Input should be less than or equal to 1 (got 1.5)"),
        ("max_daily_loss", -0.02, "'risk.max_daily_loss': Input should be greater than 0 (got -0.02)"),
        ("stop_loss", 1.0, "'risk.stop_loss': Input should be less than 1 (got 1.0)"),
        ("max_position", 0, "'risk.max_position': Input should be greater than 0 (got 0)"),
        ("stop_los", 0.05, "unknown key 'risk.stop_los'"),
    ],
)
def test_bad_risk_config_names_the_key(tmp_path, key, value, message):
    path = tmp_path / "config.toml"
    path.write_text(f"[risk]\n{key} = {value}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: {message}"


def test_no_rule_no_risk_manager():
    cfg = load_config(None)
    assert not cfg.risk.active
    result = run({}, {0: [0.5]}, frame(A=[FLAT] * 3))
    assert "trading_state" not in result.metrics and result.risk_events == []
    assert load_config(None, {"risk": {"instruments": {"A": {"qty_step": 1}}}}).risk.active


def test_trailing_stop_is_amended_in_place(tmp_path):
    """A moving trailing stop is amended at the venue, never cancelled and re-sent, so the position
    is protected at every moment and the stop keeps its place in the queue."""
    a = [FLAT, (100, 105, 99, 104), (104, 120, 103, 118), (118, 119, 107, 110), (110, 111, 109, 110)]
    result = run({"trailing_stop": 0.1}, {0: [0.5]}, frame(A=a), output=tmp_path)
    assert fills(result) == [(1, "A", "buy", 50, 100), (3, "A", "sell", 50, pytest.approx(108.0))]
    journal = list(read_journal(tmp_path / "journal.db"))
    stops = [e for e in journal if e["event"] == "Order" and e["strategy"] == "risk"]
    assert len(stops) == 1
    updates = [e for e in journal if e["event"] == "OrderUpdate" and e["client_id"] == stops[0]["client_id"]]
    assert [u["reason"] for u in updates if u["reason"] == "amended"] == ["amended", "amended"]
    assert "cancelled" not in {u["status"] for u in updates}
