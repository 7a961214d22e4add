"""The backtest runner: wires replay data, paper execution, portfolio and a strategy on one bus.

The wiring in :func:`assemble` is shared with paper and live trading; only the clock, the data
source and the venue differ.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import structlog

from connectors import datasets
from connectors.funding import SimulatedFunding
from connectors.paper import PaperBroker
from connectors.replay import BarMatrix, DataError, load_ohlcv, parse_time
from engine.bus import EventBus, replay
from engine.clock import Clock, ReplayClock
from engine.events import BarSet, Fill, Order, RiskEvent, TradingState
from engine.journal import JOURNAL_FILE, Journal
from engine.metrics import backtest_metrics, benchmark_curve, periods_per_year, versus_benchmark
from engine.orders import OrderGate, OrderManager
from engine.portfolio import Portfolio
from engine.ports import ExecutionVenue
from engine.risk import RiskManager
from engine.roundtrips import Prices, round_trips
from engine.strategy import Strategy, StrategyHost
from engine.summary import state_name
from quantnet.config import AppConfig
from quantnet.every_bar import fill_columns, replay_every_bar
from quantnet.quiet import replay_quiet
from strategies.registry import create

log = structlog.get_logger("quantnet.backtest")
_DAY_NS = 86_400_000_000_000


@dataclass(slots=True)
class TradingNode:
    bus: EventBus
    clock: Clock
    portfolio: Portfolio
    orders: OrderManager
    host: StrategyHost
    fills: list[Fill] = field(default_factory=list)
    fill_batches: list[Any] = field(default_factory=list)
    """Fills of a batched replay kept as arrays, after every one in ``fills`` (see quantnet.every_bar)."""
    risk_events: list[RiskEvent] = field(default_factory=list)
    risk: RiskManager | None = None


def assemble(
    cfg: AppConfig,
    strategy: Strategy,
    symbols: tuple[str, ...],
    bus: EventBus,
    clock: Clock,
    venue_factory: Callable[[EventBus, Clock], ExecutionVenue],
    *,
    gates: tuple[OrderGate, ...] = (),
    capacity: int = 1024,
    persist_risk: bool = True,
    instance_id: str = "",
    record_positions: bool = True,
    long_only: bool = False,
) -> TradingNode:
    """Subscription order is execution order for each bar: the venue fills what was ordered on
    earlier bars at this bar's prices, the portfolio books and marks, the risk manager (when
    ``[risk]`` configures a rule) checks limits and exits, then the strategy decides (and, with
    ``[portfolio] rebalance = "every_bar"``, the order manager then trades every weight back to its
    target; with ``on_change``, it trades the targets that waited for their symbol's first price).

    ``persist_risk`` keeps a halt in ``[risk] state_file`` across restarts (paper and live); a
    backtest passes False so that no run inherits another's halt. ``instance_id`` goes into every
    order id (a daemon's, persisted in its state directory); ``record_positions=False`` keeps no
    per-bar position history (a process that runs for weeks); ``long_only`` holds negative targets
    as flat (spot, which cannot be sold short)."""
    venue = venue_factory(bus, clock)
    portfolio = Portfolio(
        symbols,
        cfg.portfolio.cash,
        bus,
        capacity=capacity,
        record_positions=record_positions,
        borrow_rate=cfg.costs.borrow_rate,
    )
    orders = OrderManager(
        bus,
        clock,
        portfolio,
        venue,
        gates=gates,
        rebalance=cfg.portfolio.rebalance,
        rebalance_band=cfg.portfolio.rebalance_band,
        min_trade_notional=cfg.portfolio.min_trade_notional,
        instance_id=instance_id,
        long_only=long_only,
    )
    risk = RiskManager(orders, cfg.risk, persist=persist_risk) if cfg.risk.active else None
    host = StrategyHost(
        strategy, bus, clock, symbols, max_weight=cfg.portfolio.max_weight, weights=portfolio.weights
    )
    # after the strategy: trades this bar's targets (every_bar), or those that waited for a price
    bus.subscribe(BarSet, orders.rebalance if orders.every_bar else orders.trade_unpriced)
    node = TradingNode(bus, clock, portfolio, orders, host, risk=risk)
    bus.subscribe(Fill, node.fills.append)
    bus.subscribe(RiskEvent, node.risk_events.append)
    return node


@dataclass(slots=True)
class BacktestResult:
    metrics: dict[str, float]
    equity: pd.DataFrame
    positions: pd.DataFrame
    trades: pd.DataFrame
    risk_events: list[dict[str, Any]]
    settings: dict[str, Any]
    bars: int
    seconds: float
    prices: Prices | None = None
    benchmark: tuple[str, np.ndarray] | None = None
    strategy_info: dict[str, Any] | None = None


def simulated_venue(
    bus: EventBus,
    clock: Clock,
    symbols: tuple[str, ...],
    cfg: AppConfig,
    *,
    fill_at: str = "next_open",
    stamps: tuple[int, int] = (0, 0),
) -> PaperBroker:
    """The paper broker, and perpetual funding when a rate is configured (after the broker, so it
    charges the position that the bar's opening fills leave)."""
    broker = PaperBroker(bus, clock, symbols, cfg.costs, fill_at=fill_at, stamps=stamps)
    if cfg.costs.funding_rate_bps:
        SimulatedFunding(bus, clock, symbols, cfg.costs)
    return broker


def data_path(cfg: AppConfig) -> Path:
    """The configured file or directory; a built-in dataset's name works as a path too."""
    if not cfg.data.path:
        return datasets.path(cfg.data.dataset)
    given = Path(cfg.data.path)
    if not given.exists() and cfg.data.path in datasets.names():
        return datasets.path(cfg.data.path)
    return given


def load_data(cfg: AppConfig, *, history: bool = False, close_only_warning: bool = True) -> pd.DataFrame:
    """The configured bars from ``start`` to ``end``; with ``history``, also every bar before
    ``start`` (for warm-up)."""
    start = None if history else cfg.data.start or None
    return load_ohlcv(
        data_path(cfg),
        start=start,
        end=cfg.data.end or None,
        timestamp_unit=cfg.data.timestamp_unit,
        timestamp_format=cfg.data.timestamp_format,
        close_only_warning=close_only_warning,
    )


def close_only(data: pd.DataFrame) -> bool:
    """Whether the bars carry no opens: the loader took open, high and low from the close because
    no file had them."""
    return bool(data.attrs.get("close_only", False))


def fill_timing(cfg: AppConfig, data: pd.DataFrame) -> str:
    """``[execution] fill_at`` for these bars, with one warning for data without opens: "next open"
    would be the next close there, one bar later than the strategy meant."""
    chosen = cfg.execution.fill_at
    if chosen == "close" or not close_only(data):
        return "next_open" if chosen == "auto" else chosen
    if chosen == "auto":
        log.warning(
            "close-only data (open/high/low taken from close): market orders fill at the close of the "
            'bar they are decided on ([execution] fill_at = "close")'
        )
        return "close"
    log.warning(
        "close-only data (open/high/low taken from close): with fill_at = next_open a decision at one "
        'close trades at the next close, one bar late ([execution] fill_at = "close" trades at its own)'
    )
    return chosen


class Delisting:
    """Backtests: a symbol whose data ends ``after`` bars before the data set's is taken as delisted
    on its ``after``-th bar without data: its working orders are cancelled, its position is settled
    at its last close (no fee, no slippage) and later orders for it are refused. Each is published
    as a RiskEvent (journaled, in the report) and listed in the summary."""

    def __init__(
        self,
        matrix: BarMatrix,
        labels: np.ndarray,
        after: int,
        bus: EventBus,
        clock: Clock,
        state: Callable[[], TradingState],
    ) -> None:
        self.bus, self.clock, self.state = bus, clock, state
        self.symbols = matrix.symbols
        self.labels = labels
        self.venue: PaperBroker | None = None
        self.closed: list[dict[str, Any]] = []
        self._due: dict[int, list[tuple[int, int, float]]] = {}
        if after <= 0 or not len(matrix):
            return
        codes = matrix.codes
        last_row = np.full(len(self.symbols), -1, dtype=np.int64)
        np.maximum.at(last_row, codes, np.arange(len(codes), dtype=np.int64))
        last_slot = np.searchsorted(matrix.offsets, last_row, side="right") - 1
        close = matrix.columns[3]
        for i in np.flatnonzero(last_slot + after < len(matrix)):
            due = int(last_slot[i] + after)
            self._due.setdefault(due, []).append((int(i), int(last_slot[i]), float(close[last_row[i]])))

    def bars_due(self) -> list[int]:
        """The bars on which :meth:`on_bars` may act (the others it ignores)."""
        return sorted(self._due)

    def on_bars(self, bars: BarSet) -> None:
        due = self._due.pop(bars.index, None) if self._due else None
        if due is None or self.venue is None:
            return
        for i, last, price in due:
            symbol = self.symbols[i]
            since = _label(self.labels[last])
            reason = f"{symbol} delisted: no bar since {since}"
            held, cancelled = self.venue.delist(symbol, price, bars.ts_event, reason)
            if not held and not cancelled:
                continue
            message = (
                f"{reason}: position {held:.8g} closed at its last close {price:.8g}, "
                f"{cancelled} working order(s) cancelled"
            )
            log.warning("delisted", symbol=symbol, quantity=held, price=price, orders_cancelled=cancelled)
            details: dict[str, float | str] = {
                "quantity": held,
                "price": price,
                "orders_cancelled": cancelled,
            }
            now = self.clock.now_ns()
            self.bus.publish(
                RiskEvent(bars.ts_event, now, "delisted", message, symbol, self.state(), details)
            )
            self.closed.append(
                {
                    "symbol": symbol,
                    "quantity": held,
                    "price": price,
                    "last_bar": since,
                    "closed_on": _label(self.labels[bars.index]),
                    "orders_cancelled": cancelled,
                }
            )


def _label(ns: int | np.integer) -> str:
    return str(pd.Timestamp(int(ns), tz="UTC"))


def split_warmup(data: pd.DataFrame, start: str, bars: int) -> tuple[pd.DataFrame, int]:
    """Keep the bars from ``start`` on, preceded by at most ``bars`` earlier timestamps for warm-up;
    returns the frame and how many of its timestamps are warm-up."""
    if not start:
        return data, 0
    first = parse_time(start)
    before = data["timestamp"] < first
    if before.all():
        raise DataError(f"no bars from {start} on")
    if bars <= 0 or not before.any():
        return data[~before], 0
    earlier = data.loc[before, "timestamp"].drop_duplicates().nlargest(bars)
    keep = ~before | data["timestamp"].isin(earlier)
    return data[keep], len(earlier)


def run_backtest(
    cfg: AppConfig,
    *,
    strategy: Strategy | None = None,
    data: pd.DataFrame | None = None,
    output: str | Path | None = None,
    gates: tuple[OrderGate, ...] = (),
    progress: Callable[[Iterable[Any], int], Iterator[Any]] | None = None,
    journal_path: str | Path | None = None,
    observe: Callable[[EventBus], None] | None = None,
) -> BacktestResult:
    """``journal_path``: where to journal (default: ``journal.db`` in ``output`` when
    ``[engine] journal``); an existing journal there is replaced. ``observe`` is handed the bus once
    the node is wired, before the first bar (tools that watch a run: ``quantnet check``)."""
    strategy = strategy or create(cfg.strategy.name, cfg.strategy.params)
    if data is None:
        data = load_data(cfg, history=cfg.data.warmup, close_only_warning=False)
    fill_at = fill_timing(cfg, data)
    data, warm = split_warmup(data, cfg.data.start, strategy.warmup_bars if cfg.data.warmup else 0)
    matrix = BarMatrix.from_frame(data, timestamps=cfg.data.timestamps)
    if cfg.report.benchmark and cfg.report.benchmark not in matrix.symbols:
        raise DataError(
            f"--benchmark {cfg.report.benchmark}: not a symbol of the data ({', '.join(matrix.symbols[:20])})"
        )
    bus = EventBus("backtest")
    clock = ReplayClock()
    # a user reads the data's own labels: a bar labelled D (its open, or its close) is D; a fill at
    # an intraday bar's open is its start, one at its close its end; a daily bar's fills are its date
    label_back = matrix.interval_ns if cfg.data.timestamps == "open" else 0
    labels = matrix.ts_event - label_back
    daily = matrix.interval_ns >= _DAY_NS
    stamps = (label_back, label_back) if daily else (matrix.interval_ns, 0)
    risk_state: list[RiskManager | None] = [None]
    delisting = Delisting(
        matrix,
        labels,
        cfg.data.delist_after_bars,
        bus,
        clock,
        lambda: risk_state[0].state if risk_state[0] is not None else TradingState.ACTIVE,
    )
    out = Path(output) if output is not None else None
    journal = None
    if journal_path is None and out is not None and cfg.engine.journal:
        journal_path = out / JOURNAL_FILE
    if journal_path is not None:
        journal_path = Path(journal_path)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{journal_path}{suffix}").unlink(missing_ok=True)
        # subscribed first: a fill is recorded before the position change it causes
        journal = Journal(journal_path, bus)
    bus.subscribe(BarSet, delisting.on_bars)  # before the bar's fills, marks and decisions
    try:
        node = assemble(
            cfg,
            strategy,
            matrix.symbols,
            bus,
            clock,
            lambda b, c: simulated_venue(b, c, matrix.symbols, cfg, fill_at=fill_at, stamps=stamps),
            gates=gates,
            capacity=len(matrix),
            persist_risk=False,
        )
        delisting.venue = node.orders.venue  # type: ignore[assignment]
        risk_state[0] = node.risk
        if fill_at == "close":  # last: after every decision on the bar
            bus.subscribe(BarSet, node.orders.venue.on_close)  # type: ignore[attr-defined]
        if observe is not None:
            observe(bus)
        bar_sets = matrix.bar_sets()
        for bars in itertools.islice(bar_sets, warm):  # before the start: the strategy only
            clock.advance(bars.ts_event)
            node.host.warm(bars)
        started = time.perf_counter()
        scheduled = ((delisting.on_bars, delisting.bars_due()),)
        if not replay_quiet(
            bus, clock, matrix, warm, node.host, node.orders, scheduled=scheduled, progress=progress
        ) and not replay_every_bar(
            bus, clock, matrix, warm, node, journal=journal, scheduled=scheduled, progress=progress
        ):
            events: Iterable[Any] = bar_sets
            if progress is not None:
                events = progress(events, len(matrix) - warm)
            replay(bus, events, clock)
    finally:
        if journal is not None:
            journal.close()
    seconds = time.perf_counter() - started
    result = _result(cfg, strategy, matrix, node, seconds, warm, label_back)
    result.settings["force_closed"] = delisting.closed
    if out is not None:
        write_outputs(result, out)
    return result


def _result(
    cfg: AppConfig,
    strategy: Strategy,
    matrix: BarMatrix,
    node: TradingNode,
    seconds: float,
    warm: int,
    label_back: int = 0,
) -> BacktestResult:
    """Times a user reads are the data's own labels: an equity row is labelled like the bar it was
    marked on (``bar_close``: the engine's stamp, that bar's close), a fill by when its price
    traded (``Fill.ts_price``). ``label_back``: label = close stamp - label_back."""
    pf = node.portfolio
    times = pf.times()
    curve = pf.curve()
    stamp = pd.to_datetime((times - label_back).astype("datetime64[ns]"), utc=True)  # not via objects
    equity = pd.DataFrame(
        {
            "timestamp": stamp,
            "equity": curve[:, 0],
            "cash": curve[:, 1],
            "gross_exposure": curve[:, 2],
            "bar_close": pd.to_datetime(times.astype("datetime64[ns]"), utc=True),
        }
    )
    values, held = pf.positions()
    positions = pd.DataFrame(values, index=stamp, columns=list(held), copy=False)
    fills = node.fills
    more = fill_columns(node.fill_batches, matrix.symbols)
    trades = pd.DataFrame(
        {
            "timestamp": pd.to_datetime(
                [f.ts_price or f.ts_event for f in fills] + more["ts_price"], utc=True
            ),
            "symbol": [f.symbol for f in fills] + more["symbol"],
            "side": [f.side.name.lower() for f in fills] + more["side"],
            "quantity": [f.quantity for f in fills] + more["quantity"],
            "price": [f.price for f in fills] + more["price"],
            "fee": [f.fee for f in fills] + more["fee"],
            "bar_close": pd.to_datetime([f.ts_event for f in fills] + more["ts_event"], utc=True),
        }
    )
    ppy = periods_per_year(times, cfg.data.calendar, cfg.data.periods_per_year)
    metrics = backtest_metrics(
        times,
        curve[:, 0],
        curve[:, 2],
        trade_pnls=np.asarray(pf.trade_pnls, dtype=float),
        turnover_notional=pf.turnover_notional,
        n_fills=pf.n_fills,
        periods_per_year=ppy,
    )
    metrics["periods_per_year"] = ppy
    metrics["fees"] = pf.fees
    metrics["funding"] = pf.funding
    metrics["borrow_cost"] = pf.borrow_cost
    with np.errstate(divide="ignore", invalid="ignore"):
        leverage = curve[:, 2] / curve[:, 0]
    metrics["max_gross_exposure"] = float(np.nanmax(leverage)) if len(leverage) else 0.0
    if node.risk is not None:
        metrics.update(node.risk.metrics())
    prices = Prices(
        matrix.ts_event[warm:] - label_back,
        matrix.symbols,
        matrix.close[warm:],
        matrix.high[warm:],
        matrix.low[warm:],
    )
    benchmark = benchmark_curve(prices.close, matrix.symbols, cfg.report.benchmark) if len(times) else None
    if benchmark is not None:
        metrics.update(versus_benchmark(curve[:, 0], benchmark[1], ppy))
    risk = [
        {
            "timestamp": str(pd.Timestamp(e.ts_event - label_back, tz="UTC")),
            "rule": e.rule,
            "state": e.state.value,
            "symbol": e.symbol,
            "message": e.message,
        }
        for e in node.risk_events
    ]
    settings = {
        "strategy": strategy.name,
        "params": strategy.params.model_dump(),
        "symbols": list(matrix.symbols),
        "first_bar": str(stamp[0]) if len(stamp) else "",
        "last_bar": str(stamp[-1]) if len(stamp) else "",
        "bars": matrix.bars(warm),
        "timestamps": len(matrix) - warm,
        "warmup_bars": warm,
        "cash": cfg.portfolio.cash,
        "costs": cfg.costs.model_dump(),
        "data": cfg.data.path or f"built-in dataset {cfg.data.dataset}",
        "risk": cfg.risk.model_dump(exclude_defaults=True),
        "trading_state": node.risk.state.value if node.risk is not None else "active (no risk rules)",
        "halt": _halt_summary(node.risk, label_back),
        "max_gross_target": node.host.max_gross_target,
        "borrow_rate": cfg.costs.borrow_rate,
        "open_orders": [_order_record(o, label_back) for o in node.orders.venue.open_orders()],
    }
    settings["report"] = cfg.report.model_dump()
    return BacktestResult(
        metrics,
        equity,
        positions,
        trades,
        risk,
        settings,
        matrix.bars(warm),
        seconds,
        prices,
        benchmark,
        strategy.report_info(),
    )


def _order_record(order: Order, label_back: int = 0) -> dict[str, Any]:
    """An order still working when the run ended (it never filled: no bar came to fill it, or its
    level was never reached), as the summary, metrics.json and the report list it."""
    return {
        "symbol": order.symbol,
        "side": order.side.name.lower(),
        "type": order.type.value,
        "quantity": order.quantity,
        "price": order.price if order.price == order.price else None,
        "decided": str(pd.Timestamp(order.ts_event - label_back, tz="UTC")),  # the bar's label
        "client_id": order.client_id,
        "tag": order.tag,
    }


def _halt_summary(risk: RiskManager | None, label_back: int = 0) -> dict[str, str] | None:
    """The halt a run ended in (rule, time: the label of the bar it happened on, reason), for the
    summary; None when it did not."""
    record = risk.halt_record if risk is not None else None
    if record is None:
        return None
    summary = {k: str(record.get(k, "")) for k in ("rule", "time", "reason")}
    if isinstance(record.get("ts_event"), int):
        summary["time"] = str(pd.Timestamp(record["ts_event"] - label_back, tz="UTC"))
    return summary


def write_outputs(result: BacktestResult, out: Path) -> None:
    from engine.report import write_report  # plotly.js: read only when a report is written

    out.mkdir(parents=True, exist_ok=True)
    with (out / "metrics.json").open("w") as fh:
        listed = {k: result.settings.get(k, []) for k in ("open_orders", "force_closed")}
        named = (
            {"trading_state": state_name(result.metrics["trading_state"])}
            if "trading_state" in result.metrics
            else {}
        )
        json.dump({**_json_safe(result.metrics), **named, **listed}, fh, indent=2, sort_keys=True)
    write_csv(result.equity, out / "equity.csv")
    write_csv(result.trades, out / "trades.csv")
    trips = round_trips(result.trades, result.prices)
    write_csv(trips, out / "round_trips.csv")
    write_report(
        out / "report.html",
        title=f"Backtest: {result.settings['strategy']}",
        equity=result.equity,
        positions=result.positions,
        metrics=result.metrics,
        trades=result.trades,
        risk_events=result.risk_events,
        settings=result.settings,
        prices=result.prices,
        benchmark=result.benchmark[1] if result.benchmark else None,
        benchmark_name=result.benchmark[0] if result.benchmark else "",
        rolling_window=result.settings["report"]["rolling_window"],
        strategy_info=result.strategy_info,
        trips=trips,
    )


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """``frame.to_csv(path, index=False)``, the same text, with UTC time columns formatted by numpy:
    pandas formats tz-aware stamps one at a time (1.2 s for the trades of a 165k-fill run). Only
    columns of whole seconds are pre-formatted ("YYYY-MM-DD HH:MM:SS+00:00", as pandas writes
    them); others are left to pandas."""
    formatted = {}
    for name, col in frame.items():
        if not isinstance(col.dtype, pd.DatetimeTZDtype) or str(col.dt.tz) != "UTC":
            continue
        stamps = col.to_numpy(dtype="datetime64[ns]")
        missing = np.isnat(stamps)
        if (stamps[~missing].view(np.int64) % 1_000_000_000).any():
            continue  # fractions of a second: pandas' own format
        text = np.strings.add(np.strings.replace(np.datetime_as_string(stamps, unit="s"), "T", " "), "+00:00")
        values = text.astype(object)
        values[missing] = None  # written as pandas writes NaT
        formatted[name] = values
    if formatted:
        frame = frame.copy(deep=False)
        for name, values in formatted.items():
            frame[name] = values
    frame.to_csv(path, index=False)


def _json_safe(metrics: dict[str, float]) -> dict[str, float | None]:
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in metrics.items()}
