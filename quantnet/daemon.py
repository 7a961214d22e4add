"""The live daemon: Bybit klines in, signals (and paper or live orders) out, for weeks on end.

It is the backtest's node (:func:`quantnet.backtest.assemble`: portfolio, order manager, risk,
strategy host, paper broker) driven by the kline stream and the bar assembler instead of replay.
Decisions run on market time (a clock advanced by the bars, as in a backtest), so the same bars
give the same signals, orders and fills as ``quantnet backtest``; wall time only decides how long
the assembler waits for a late symbol and how stale a bar is.

Every processed cross-section is one journal transaction (bar, signals, events, equity, book
state; every ``snapshot_every`` bars the strategy's state). A restart restores the book and the
strategy (snapshot plus the journaled bars after it), fetches through REST the bars that closed
while it was down and processes them in order, marked late, without trading those older than
``[live] max_trade_lag``. Bars are keyed by their close time: none is processed twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import pickle
import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
import structlog

from connectors.bybit.config import BybitConfig
from connectors.bybit.errors import BybitError
from connectors.bybit.intervals import interval_ms
from connectors.bybit.kline_stream import KlineStream
from connectors.bybit.rest import BybitRest, Kline
from connectors.paper import PaperBroker
from engine.assembler import BarAssembler
from engine.bus import EventBus
from engine.clock import LiveClock, ReplayClock
from engine.events import (
    Bar,
    BarOpen,
    BarSet,
    ForeignExecution,
    Heartbeat,
    Order,
    OrderType,
    PositionUpdate,
    RiskEvent,
    Side,
    Signal,
    TradingState,
)
from engine.journal import JOURNAL_FILE, JOURNALED, Journal, JournalError
from engine.strategy import Strategy
from quantnet.backtest import TradingNode, assemble, simulated_venue
from quantnet.config import AppConfig

log = structlog.get_logger("quantnet.daemon")

MODES = ("signal", "paper", "live")
LOCK_FILE = "daemon.lock"
_MS = 1_000_000
CHECKPOINT_EVERY = 200
"""Bars between WAL checkpoints (SQLite's automatic one would land inside some bar's commit)."""
_FAR_MS = 2**52  # "up to now": the venue drops the candle still open


class CrashPoint:
    """Fault injection for the crash-recovery test: ``QUANTNET_CRASH_AT=name:n`` kills the
    process with SIGKILL the n-th time it reaches point ``name`` (signal, order, commit, bar,
    backfill). Unset, each point costs one comparison."""

    def __init__(self, spec: str) -> None:
        name, _, n = spec.partition(":")
        self.name = name
        self.left = int(n or 1)

    def reached(self, name: str) -> None:
        if name == self.name:
            self.left -= 1
            if self.left <= 0:
                os.kill(os.getpid(), signal.SIGKILL)


_CRASH = CrashPoint(os.environ.get("QUANTNET_CRASH_AT", ""))


class DaemonError(RuntimeError):
    """The daemon refuses to start or to go on; the message is the one line the operator reads."""


def iso(ts_ns: int) -> str:
    return datetime.fromtimestamp(ts_ns / 1e9, UTC).isoformat().replace("+00:00", "Z")


def model_hash(path: str | Path | None) -> str | None:
    """The checkpoint's identity in signal records and the journal: its bytes' SHA-256 (16 hex)."""
    if not path:
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


@dataclass(slots=True)
class DaemonOptions:
    mode: str
    symbols: tuple[str, ...]
    interval: str
    category: str
    state_dir: Path
    signals_path: Path | None = None
    http_port: int = 0
    max_bars: int = 0
    adopt: bool = False
    model: str | None = None
    stdout: bool = True


class StateLock:
    """One process per state directory: an exclusive ``flock`` (released by the kernel when the
    process dies, even by ``kill -9``) on a lock file that names the holder."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / LOCK_FILE
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fh = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise DaemonError(f"state directory {self.directory} is in use ({holder})") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}\n")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def in_use(directory: Path) -> bool:
    """Whether a daemon holds the state directory now."""
    path = directory / LOCK_FILE
    if not path.exists():
        return False
    with path.open("a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


class TradeGate:
    """The daemon's own pre-trade gate: signal mode sends nothing, and a bar processed too long
    after its close (catch-up after downtime) does not trade."""

    def __init__(self, mode: str) -> None:
        self.allow = mode != "signal"
        self.blocked = 0

    def review(self, order: Order) -> Order | None:
        if self.allow:
            return order
        self.blocked += 1
        return None


@dataclass
class DaemonStats:
    bars: int = 0
    late: int = 0
    untraded: int = 0
    signals: int = 0
    orders: int = 0
    rejects: int = 0
    started: float = field(default_factory=time.time)
    last_bar: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)


class Daemon:
    """Build with the validated config and a strategy, then ``await daemon.run()``; returns the
    exit code. ``stop()`` (SIGTERM, SIGINT) stops intake and ends after the bar in hand."""

    def __init__(
        self,
        cfg: AppConfig,
        strategy: Strategy,
        opts: DaemonOptions,
        *,
        bybit: BybitConfig | None = None,
        write: Callable[[str], None] | None = None,
    ) -> None:
        if opts.mode not in MODES:
            raise DaemonError(f"unknown mode {opts.mode!r}: use signal, paper or live")
        if cfg.execution.fill_at == "close":
            raise DaemonError(
                '[execution] fill_at = "close" is for backtests: a running daemon cannot trade at a close '
                "it has already seen; paper trading fills at the next bar's first price (next_open or auto)"
            )
        self.cfg = cfg
        self.live = cfg.live
        self.strategy = strategy
        self.opts = opts
        self.symbols = opts.symbols
        self.bybit = (bybit or cfg.bybit).model_copy(update={"category": opts.category})
        self.interval = opts.interval
        self.step_ms = interval_ms(opts.interval)
        self.model = model_hash(opts.model)
        self.write = write or _stdout
        self.stats = DaemonStats()
        self.stream: KlineStream | None = None
        self.rest: BybitRest | None = None
        self.journal: Journal | None = None
        self.node: TradingNode | None = None
        self.bus = EventBus("live")
        self.gate = TradeGate(opts.mode)
        self.clock = ReplayClock()
        self.wall = LiveClock()
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.stopping = asyncio.Event()
        self.instance_id = ""
        self.seq = 0
        self.last_ts = 0
        self.venue_ns = 0
        self.peak = 0.0
        self.catching_up = False
        self.ws_state = "starting"
        self.listeners: list[Callable[[list[dict[str, Any]]], None]] = []
        self._opens: dict[str, BarOpen] = {}
        self._signals_fh: IO[str] | None = None
        self._lock = StateLock(opts.state_dir)
        self._bar_seen_ns = 0
        self._since_snapshot = 0
        self._has_snapshot = False
        self.fatal = ""
        self.exchange: Any = None
        """Live mode: the Bybit execution adapter (its events reach the bus through the queue)."""
        self.foreign = 0
        self.reconciliation: list[str] = []
        """What start-up reconciliation found different (live mode; adopted with --adopt)."""
        self.last_latency: float | None = None
        """Seconds from the frame that completed the last cross-section to its commit."""

    # lifecycle --------------------------------------------------------------------------------

    async def run(self) -> int:
        self._lock.acquire()
        ops = None
        try:
            self._open_journal()
            self._build()
            self._restore()
            self.rest = BybitRest(self.bybit)
            if self.opts.mode == "live":
                await self._start_live()
            if self.opts.signals_path is not None:
                self._signals_fh = self._open_signals(self.opts.signals_path)
            if self.opts.http_port:
                from quantnet.ops import OpsServer  # the HTTP side: only when asked for

                ops = OpsServer(self, self.opts.http_port)
                await ops.start()
            await self._catch_up()
            if not self._done():
                await self._run_stream()
            if self.fatal:
                raise DaemonError(self.fatal)
            return 0
        finally:
            if ops is not None:
                await ops.stop()
            await self._close()

    def stop(self) -> None:
        """Stop intake; the bar in hand is finished and committed, then the daemon exits."""
        if not self.stopping.is_set():
            log.info("stopping: finishing the bar in hand")
            self.stopping.set()
            if self.stream is not None:
                self.stream.stop()
            self.queue.put_nowait(None)

    async def _close(self) -> None:
        if self.stream is not None:
            self.stream.stop()
        if self.exchange is not None:
            with contextlib.suppress(Exception):
                await self.exchange.stop()
        if self.rest is not None:
            await self.rest.close()
        if self._signals_fh is not None:
            self._signals_fh.close()
        if self.journal is not None:
            self.journal.close()
        self._lock.release()

    def _done(self) -> bool:
        return (
            bool(self.fatal)
            or self.stopping.is_set()
            or bool(self.opts.max_bars and self.stats.bars >= self.opts.max_bars)
        )

    # wiring -----------------------------------------------------------------------------------

    def identity(self) -> dict[str, str]:
        """What a state directory belongs to: resuming it with anything else is refused."""
        return {
            "mode": self.opts.mode,
            "strategy": self.strategy.name,
            "params": json.dumps(self.strategy.params.model_dump(), sort_keys=True, default=str),
            "model": self.model or "",
            "symbols": ",".join(self.symbols),
            "interval": self.interval,
            "category": self.opts.category,
        }

    def _open_journal(self) -> None:
        path = self.opts.state_dir / JOURNAL_FILE
        sync = "FULL" if self.opts.mode == "live" else "NORMAL"
        self.journal = Journal(path, synchronous=sync, per_bar=True)
        # WAL checkpoints out of the bar's commit: run after the signal is out (_commit)
        self.journal.db.execute("PRAGMA wal_autocheckpoint=0")
        meta = self.journal.meta()
        mine = self.identity()
        if meta:
            differ = [
                f"{k}: journal {meta.get(k, '')!r}, now {v!r}" for k, v in mine.items() if meta.get(k) != v
            ]
            if differ:
                raise DaemonError(f"{path} belongs to another setup ({'; '.join(differ)})")
            self.instance_id = meta["instance_id"]
        else:
            self.instance_id = uuid.uuid4().hex[:8]
            self.journal.set_meta({**mine, "instance_id": self.instance_id, "created": iso(time.time_ns())})

    def _build(self) -> None:
        bus = self.bus
        assert self.journal is not None
        for event_type in JOURNALED:  # first: a fill is recorded before what it causes
            bus.subscribe(event_type, self.journal.record)
        bus.subscribe(ForeignExecution, self.journal.record)
        bus.subscribe(ForeignExecution, self._on_foreign)
        bus.subscribe(BarSet, self._before_bar)
        bus.subscribe(Order, self._count_order)
        if _CRASH.name:
            bus.subscribe(Signal, lambda _: _CRASH.reached("signal"))  # before the order manager
            self.journal.inside_commit = lambda: _CRASH.reached("commit")
        node = self.node = assemble(
            self.cfg,
            self.strategy,
            self.symbols,
            bus,
            self.clock,
            self._venue,
            gates=(self.gate,),
            instance_id=self.instance_id,
            record_positions=False,
            # spot cannot be sold short; signal mode, which trades nothing, shows what the strategy wants
            long_only=self.opts.category == "spot" and self.opts.mode != "signal",
        )
        bus.subscribe(BarSet, self._after_bar)
        bus.subscribe(RiskEvent, self._on_risk)
        self.peak = node.portfolio.equity
        wait = int(self.live.assemble_wait * 1e9)
        self.assembler = BarAssembler(bus, self.wall, self.symbols, wait_ns=wait)

    def _venue(self, bus: EventBus, clock: Any) -> Any:
        if self.opts.mode == "live":
            from connectors.bybit.execution import BybitExecution  # only live mode talks to an account

            self.exchange = BybitExecution(
                _Posting(bus, self.queue),  # type: ignore[arg-type]
                config=self.bybit,
                instance_id=self.instance_id,
            )
            return self.exchange
        return simulated_venue(bus, clock, self.symbols, self.cfg)

    def _on_foreign(self, event: ForeignExecution) -> None:
        self.foreign += 1

    # live start-up ----------------------------------------------------------------------------

    async def _start_live(self) -> None:
        """Before any order: the orders the journal has on their way (the order manager's, and the
        risk manager's stops and take-profits resting at Bybit) are settled against Bybit (fills
        the journal lacks are booked), then Bybit's open orders, positions and cash are
        compared with the book. A difference stops the daemon here, unless ``--adopt`` takes
        Bybit's state (journaled as an adoption)."""
        ex, node, journal = self.exchange, self.node, self.journal
        assert ex is not None and node is not None and journal is not None
        await ex.start()
        if node.risk is not None:  # [risk.instruments] are for backtests: the exchange's rules count
            node.risk.use_rules(ex.rules)
        if self.opts.category == "spot":
            other = [s for s in self.symbols if ex.pair(s)[1] != "USDT"]
            if other:
                names = ", ".join(other)
                raise DaemonError(f"live spot trades USDT pairs only (the book's cash is USDT): {names}")
        seen = []
        for (record,) in journal.db.execute("SELECT record FROM events WHERE event = 'Fill'"):
            exec_id = json.loads(record).get("exec_id")
            if exec_id:
                seen.append(exec_id)
        in_flight = self._journaled_orders(node.orders.working())
        if node.risk is not None:  # its stops and take-profits rest at Bybit between bars
            known = {o.client_id for o in in_flight}
            in_flight += [o for o in node.risk.working_exits() if o.client_id not in known]
        fresh = self.live.max_trade_lag * 1e9
        await ex.resume(in_flight, seen, resend=lambda o: self.lag_ns(o.ts_event) <= fresh)
        await ex.drain()
        self._drain_queue()
        account = await ex.account()
        self.reconciliation = self._differences(account)
        if self.reconciliation and not self.opts.adopt:
            raise DaemonError(
                "live: Bybit and the journal differ, not trading: "
                + "; ".join(self.reconciliation)
                + " (check the account; --adopt takes Bybit's state)"
            )
        if self.reconciliation:
            self._adopt(account)
        self._commit_startup()
        log.info(
            "live: reconciled with Bybit",
            resumed_orders=len(in_flight),
            differences=len(self.reconciliation),
            adopted=bool(self.reconciliation),
        )

    def _journaled_orders(self, client_ids: list[str]) -> list[Order]:
        assert self.journal is not None
        if not client_ids:
            return []
        marks = ",".join("?" * len(client_ids))
        out = []
        sql = f"SELECT record FROM events WHERE event = 'Order' AND client_id IN ({marks}) ORDER BY id"
        for (record,) in self.journal.db.execute(sql, client_ids):
            r = json.loads(record)
            out.append(
                Order(
                    r["client_id"],
                    r["ts_event"],
                    r["ts_init"],
                    r["symbol"],
                    Side(r["side"]),
                    r["quantity"],
                    OrderType(r["type"]),
                    float("nan") if r.get("price") is None else r["price"],
                    r.get("reduce_only", False),
                    r.get("strategy", ""),
                    r.get("tag", ""),
                )
            )
        return list({o.client_id: o for o in out}.values())

    def _drain_queue(self) -> None:
        while not self.queue.empty():
            item = self.queue.get_nowait()
            if item is not None:
                self._handle(item)

    def _bybit_cash(self, account: dict[str, Any]) -> float:
        """Bybit's equity less its positions' value: the same quantity as the book's cash (on
        spot, the USDT balance itself)."""
        if "cash" in account:
            return float(account["cash"])
        cash = float(account["equity"])
        for size, _avg, mark in account["positions"].values():
            cash -= size * mark
        return cash

    def _differences(self, account: dict[str, Any]) -> list[str]:
        ex, pf = self.exchange, self.node.portfolio  # type: ignore[union-attr]
        spot = self.opts.category == "spot"
        mine = {t.link_id for t in ex.orders.values()}
        prefix = f"{self.instance_id}-"
        out = []
        for o in account["orders"]:
            link = str(o.get("orderLinkId") or "")
            symbol = str(o.get("symbol"))
            if link in mine:
                continue
            what = f"{o.get('side')} {o.get('qty')} {symbol} ({link or o.get('orderId')})"
            if link.startswith(prefix):
                out.append(f"working order {what} is at Bybit but not in the journal")
            elif symbol in self.symbols:
                out.append(f"working order {what} was not placed by this daemon")
        positions = account["positions"]
        for i, symbol in enumerate(self.symbols):
            size = positions.get(symbol, (0.0, 0.0, 0.0))[0]
            book = float(pf.qty[i])
            rules = ex.rules.get(symbol)
            step = rules.qty_step if rules is not None else 0.0
            tol = step / 2 if step > 0 else 1e-9 * max(1.0, abs(book))
            if abs(size - book) > tol:
                what = f" ({ex.pair(symbol)[0]} balance)" if spot else ""
                out.append(f"{symbol} position{what}: Bybit {size:.10g}, journal {book:.10g}")
        outside = sorted(s for s in positions if s not in self.symbols)
        if outside:
            log.warning("live: the account holds positions outside the universe", symbols=outside)
        cash = self._bybit_cash(account)
        share = self.live.cash_tolerance
        tolerance = max(share * abs(pf.equity), 1.0)
        if abs(cash - pf.cash) > tolerance:
            whose = "the USDT balance" if spot else "equity less positions"
            out.append(
                f"cash: Bybit {cash:,.2f} USDT ({whose}), journal {pf.cash:,.2f}, "
                f"{abs(cash - pf.cash):,.2f} apart, more than the {tolerance:,.2f} allowed "
                f"([live] cash_tolerance {share:g} of equity {pf.equity:,.2f})"
            )
        return out

    def _adopt(self, account: dict[str, Any]) -> None:
        """Take Bybit's positions, cash and this instance's working orders as the book's."""
        ex, node = self.exchange, self.node
        assert node is not None
        pf = node.portfolio
        now = self.wall.now_ns()
        ts = max(self.last_ts, self.clock.now_ns())
        for i, symbol in enumerate(self.symbols):
            size, avg, mark = account["positions"].get(symbol, (0.0, 0.0, 0.0))
            pf.take(i, size, avg, mark)
            self.bus.publish(PositionUpdate(ts, now, symbol, size, avg if size else 0.0, 0.0))
        pf.set_cash(self._bybit_cash(account))
        self.peak = max(self.peak, pf.equity)
        prefix = f"{self.instance_id}-"
        adopted = []
        for o in account["orders"]:
            link = str(o.get("orderLinkId") or "")
            if not link.startswith(prefix) or ex.tracks(link) or str(o.get("symbol")) not in self.symbols:
                continue
            order = Order(
                link,
                ts,
                now,
                str(o.get("symbol")),
                Side.BUY if o.get("side") == "Buy" else Side.SELL,
                float(o.get("leavesQty") or o.get("qty") or 0.0),
                OrderType.LIMIT if o.get("orderType") == "Limit" else OrderType.MARKET,
                float(o.get("price") or "nan"),
                strategy="adopted",
            )
            ex.adopt(order, link)
            node.orders.adopt(order)  # on its way, as if sent by this book
            adopted.append(link)
        message = "took Bybit's state at start-up: " + "; ".join(self.reconciliation)
        self.bus.publish(RiskEvent(ts, now, "adoption", message, details={"orders": ",".join(adopted)}))
        self.journal.set_meta({"adopted": iso(now)})  # type: ignore[union-attr]
        log.warning("live: adopted Bybit's state", differences=self.reconciliation, orders=adopted)

    # restore ----------------------------------------------------------------------------------

    def _book(self) -> bytes:
        """The book a restart resumes from: portfolio, orders on their way, venue, risk."""
        node = self.node
        assert node is not None
        venue = node.orders.venue
        book: dict[str, Any] = {
            "portfolio": node.portfolio.state(),
            "orders": node.orders.state(),
            "venue": venue.state() if isinstance(venue, PaperBroker) else None,
            "risk": node.risk.snapshot() if node.risk is not None else None,
            "peak": self.peak,
            "last_bar": self.stats.last_bar,
        }
        return pickle.dumps(book, protocol=pickle.HIGHEST_PROTOCOL)

    def _commit_startup(self) -> None:
        """Start-up fills and an adoption are journaled at once with the book they leave, in
        their own transaction: a crash before the first bar must not lose them (the restart
        would book them twice or refuse the adopted account again)."""
        assert self.journal is not None
        if self.journal.pending:
            self.journal.commit_events(snapshots={"book": self._book()}, ts=self.last_ts)

    def _restore(self) -> None:
        journal, node = self.journal, self.node
        assert journal is not None and node is not None
        last = journal.last_bar()
        book = journal.snapshot("book")
        if last is None:
            if book is not None:  # adopted (or filled) at a first start that processed no bar
                self._restore_book(pickle.loads(book[1]))
            return
        self.last_ts = last
        self.seq = journal.last_seq()
        if book is None or book[0] != last:
            raise JournalError(f"{journal.path}: the last bar has no book state; the journal is damaged")
        self._restore_book(pickle.loads(book[1]))
        snap = journal.snapshot("strategy")
        if snap is None:
            raise JournalError(f"{journal.path}: no strategy snapshot; the journal is damaged")
        node.host.restore(snap[1])
        replayed = 0
        for record in journal.bars_after(snap[0], len(self.symbols)):
            bars = record.bar_set(self.symbols)
            self.clock.advance(bars.ts_event)
            node.host.replay(bars)
            replayed += 1
        self._since_snapshot = replayed
        self._has_snapshot = True
        self.clock.advance(last)
        self.assembler.last_emitted = last
        self._apply_reset_request()
        log.info(
            "resumed from the journal",
            last_bar=iso(last),
            seq=self.seq,
            equity=round(node.portfolio.equity, 2),
            strategy_snapshot=iso(snap[0]),
            bars_replayed=replayed,
            working_orders=len(node.orders.working()),
        )

    def _restore_book(self, state: dict[str, Any]) -> None:
        node = self.node
        assert node is not None
        node.portfolio.restore(state["portfolio"])
        node.orders.restore(state["orders"])
        if state.get("venue") is not None and isinstance(node.orders.venue, PaperBroker):
            node.orders.venue.restore(state["venue"])
        if node.risk is not None and state.get("risk") is not None:
            node.risk.restore(state["risk"])
        self.peak = state["peak"]
        self.stats.last_bar = dict(state.get("last_bar", {}))

    def _apply_reset_request(self) -> None:
        """``quantnet risk reset --state-dir`` leaves its request in the journal's meta."""
        assert self.journal is not None and self.node is not None
        by = self.journal.meta().get("halt_reset_request")
        if not by:
            return
        risk = self.node.risk
        if risk is not None and risk.halted:
            risk.reset_halt(by=by)
            log.warning("risk halt lifted", by=by)
        self.journal.set_meta({"halt_reset_request": ""})

    # catch-up and warm-up through REST ------------------------------------------------------

    async def _history(self, since_ms: int) -> list[BarSet]:
        """Closed cross-sections with start >= ``since_ms`` up to the venue's now, cut where the
        symbol fetched last has no bar yet (the stream delivers the rest)."""
        assert self.rest is not None
        per: dict[str, list[Kline]] = {}
        for symbol in self.symbols:
            per[symbol] = await self.rest.klines(self.opts.category, symbol, self.interval, since_ms, _FAR_MS)
        lasts = [k[-1].start for k in per.values() if k]
        if not lasts:
            return []
        cut = min(lasts)
        starts = sorted({k.start for ks in per.values() for k in ks if k.start <= cut})
        row = {s: i for i, s in enumerate(starts)}
        n = len(self.symbols)
        values = np.full((len(starts), 5, n), np.nan)
        for j, symbol in enumerate(self.symbols):
            for k in per[symbol]:
                i = row.get(k.start)
                if i is not None:
                    values[i, :, j] = (k.open, k.high, k.low, k.close, k.volume)
        now = time.time_ns()
        out = []
        for i, start in enumerate(starts):
            v = values[i]
            out.append(BarSet((start + self.step_ms) * _MS, now, self.symbols, v[0], v[1], v[2], v[3], v[4]))
        return out

    async def _catch_up(self) -> None:
        """First start: warm the strategy on the REST history it declares. Restart: process, in
        order and marked late, every bar that closed while the daemon was down."""
        assert self.node is not None and self.rest is not None
        with contextlib.suppress(BybitError, OSError, TimeoutError):
            await self.rest.sync_time()
        if self.last_ts:
            missed = [b for b in await self._history(self.last_ts // _MS) if b.ts_event > self.last_ts]
            if missed:
                self.venue_ns = max(self.venue_ns, missed[-1].ts_event)
                log.info(
                    "backfilling bars closed while down", bars=len(missed), first=iso(missed[0].ts_event)
                )
            self.catching_up = True
            try:
                for bars in missed:
                    self.assembler.last_emitted = bars.ts_event
                    self.bus.publish(bars)
                    _CRASH.reached("backfill")
                    if self._done():
                        break
                    if self.opts.mode == "live":
                        await self._settle(bars)
            finally:
                self.catching_up = False
            return
        warm = self.strategy.warmup_bars
        since = self.rest.now_ms() - (warm + 2) * self.step_ms
        history = await self._history(since - since % self.step_ms)
        if not history:
            raise DaemonError(f"no {self.interval} history for {', '.join(self.symbols)} from the venue")
        used = history[-warm:] if warm else []
        for bars in used:
            self.clock.advance(bars.ts_event)
            self.node.host.warm(bars)
        self.last_ts = history[-1].ts_event
        self.clock.advance(self.last_ts)
        self.assembler.last_emitted = self.last_ts
        self.venue_ns = self.last_ts
        log.info("warmed up", bars=len(used), live_from=iso(self.last_ts))

    async def _settle(self, bars: BarSet) -> None:
        """Live catch-up: before the next late bar, wait (up to ``[live] settle_timeout``) for the
        outcomes of the orders this one sent, so the next decision sizes from what the venue did
        (a spot buy delivers its quantity less the fee in the coin: a sell sized from the order
        instead of the fill asks for coins the wallet lacks, and Bybit refuses it)."""
        assert self.node is not None
        orders = self.node.orders
        if not orders.working():
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.live.settle_timeout
        while orders.working() and not self._done():
            left = deadline - loop.time()
            if left <= 0:
                log.warning(
                    "catch-up goes on with orders still on their way",
                    bar=iso(bars.ts_event),
                    orders=len(orders.working()),
                    waited_s=self.live.settle_timeout,
                )
                return
            try:
                item = await asyncio.wait_for(self.queue.get(), left)
            except TimeoutError:
                continue
            if item is None:  # a stop: leave it for the loop that ends the run
                self.queue.put_nowait(None)
                return
            self._handle(item)

    # streaming --------------------------------------------------------------------------------

    async def _run_stream(self) -> None:
        self.stream = KlineStream(
            self.symbols,
            self.interval,
            on_bar=self.queue.put_nowait,
            on_gap=self._on_gap,
            config=self.bybit,
            category=self.opts.category,
            start_ms=self.last_ts // _MS,
            on_open=self._on_open_frame,
        )
        stream_task = asyncio.ensure_future(self.stream.run(self.stopping))
        beat = asyncio.ensure_future(self._heartbeat())
        self.ws_state = "connected"
        try:
            while not self._done():
                getter = asyncio.ensure_future(self.queue.get())
                done, _ = await asyncio.wait({getter, stream_task}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    stream_task.result()  # a refused subscription raises here
                    break
                item = getter.result()
                if item is None:
                    break
                self._handle(item)
        finally:
            self.ws_state = "stopped"
            beat.cancel()
            self.stream.stop()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(stream_task, 5.0)

    def _handle(self, item: Any) -> None:
        if isinstance(item, Bar):
            if item.ts_event <= self.last_ts:
                log.warning("bar from the past ignored", symbol=item.symbol, ts=iso(item.ts_event))
                return
            self._bar_seen_ns = time.perf_counter_ns()
            self.bus.publish(item)
        elif isinstance(item, BarOpen):
            self._on_open(item)
        else:
            self.bus.publish(item)

    def _on_gap(self, gap: dict[str, Any]) -> None:
        """A gap the stream could not fill (or its later resolution): journaled, in order."""
        now = self.wall.now_ns()
        message = f"{gap['topic']}: bars from {iso(gap['first_missing_ms'] * _MS)} {gap['state']}"
        self.queue.put_nowait(RiskEvent(now, now, "data_gap", message, gap["symbol"], details=dict(gap)))

    def _on_open_frame(self, symbol: str, start_ms: int, price: float, ts_init: int) -> None:
        self.queue.put_nowait(BarOpen(start_ms * _MS, ts_init, symbol, price))

    def _on_open(self, bar: BarOpen) -> None:
        """A new bar's first price: fill at once what the last processed close decided; a bar
        whose previous close is still being assembled waits for that close's commit."""
        self.venue_ns = max(self.venue_ns, bar.ts_event)
        if bar.ts_event == self.last_ts:
            self.bus.publish(bar)
        elif bar.ts_event > self.last_ts:
            self._opens[bar.symbol] = bar

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.queue.put_nowait(Heartbeat(self.wall.now_ns(), self.wall.now_ns(), "daemon"))

    # the bar -----------------------------------------------------------------------------------

    def lag_ns(self, ts: int) -> int:
        return max(self.wall.now_ns(), self.venue_ns) - ts

    def _before_bar(self, bars: BarSet) -> None:
        """First handler of every cross-section: market time, and whether this bar may trade."""
        self.clock.advance(bars.ts_event)
        self.venue_ns = max(self.venue_ns, bars.ts_event)
        fresh = self.lag_ns(bars.ts_event) <= self.live.max_trade_lag * 1e9
        self.gate.allow = self.opts.mode != "signal" and fresh

    def _after_bar(self, bars: BarSet) -> None:
        """Last handler: the bar's signals, equity and state, committed in one transaction. A bar
        that cannot be committed stops the daemon: going on would trade on unrecorded state."""
        try:
            self._commit(bars)
        except Exception as exc:
            self.fatal = f"bar {iso(bars.ts_event)} could not be journaled: {type(exc).__name__}: {exc}"
            log.error("stopping: bar not journaled", error=self.fatal)
            self.stop()
            raise

    def _commit(self, bars: BarSet) -> None:
        node, journal = self.node, self.journal
        assert node is not None and journal is not None
        ts = bars.ts_event
        late = self.catching_up
        targets = node.orders.targets
        records = []
        lines = []
        for i, symbol in enumerate(self.symbols):
            self.seq += 1
            t = float(targets[i])
            record = {
                "ts": iso(ts),
                "bar_open": iso(ts - self.step_ms * _MS),
                "symbol": symbol,
                "target": 0.0 if t != t else t,
                "strategy": self.strategy.name,
                "model": self.model,
                "seq": self.seq,
                "late": late,
            }
            records.append(record)
            lines.append((self.seq, symbol, json.dumps(record, separators=(",", ":"))))
            if bars.close[i] == bars.close[i]:
                self.stats.last_bar[symbol] = ts
        pf = node.portfolio
        self.peak = max(self.peak, pf.equity)
        drawdown = 1.0 - pf.equity / self.peak if self.peak > 0 else 0.0
        snapshots = {"book": self._book()}
        self._since_snapshot += 1
        periodic = False
        if not self._has_snapshot:  # the first one goes with its bar: a restart needs one
            snapshots["strategy"] = node.host.snapshot()
            self._since_snapshot = 0
            self._has_snapshot = True
        elif self._since_snapshot >= self.live.snapshot_every:
            periodic = True
            self._since_snapshot = 0
        journal.commit_bar(
            bars,
            late=late,
            traded=self.gate.allow,
            signals=lines,
            equity=(pf.equity, pf.cash, pf.gross_exposure, drawdown, self.trading_state()),
            snapshots=snapshots,
        )
        self.last_ts = ts
        st = self.stats
        self.last_latency = None
        if self._bar_seen_ns:
            self.last_latency = (time.perf_counter_ns() - self._bar_seen_ns) / 1e9
            st.latencies.append(self.last_latency)
            if len(st.latencies) > 10_000:
                del st.latencies[:5_000]
            self._bar_seen_ns = 0
        st.bars += 1
        st.signals += len(records)
        st.late += int(late)
        st.untraded += int(self.opts.mode != "signal" and not self.gate.allow)
        self._emit(lines, records)
        if st.bars % CHECKPOINT_EVERY == 0:
            journal.checkpoint()
            # the per-bar history a backtest reports from is the journal's equity table here: kept
            # in memory it would grow by ~60 bytes a bar for as long as the daemon runs
            pf.drop_history()
        if periodic:
            # after the signal is out, in a transaction of its own: the model states are a few
            # hundred kB of pickle, the one bar in snapshot_every that would carry them set the p99.
            # A crash before it commits leaves the previous snapshot: a restart replays one
            # snapshot_every of journaled bars more, with the same result.
            journal.save_snapshot("strategy", ts, node.host.snapshot())
        _CRASH.reached("bar")
        if self._done():
            self.stop()
        for symbol in [s for s, o in self._opens.items() if o.ts_event <= ts]:
            bar = self._opens.pop(symbol)
            if bar.ts_event == ts:
                self.bus.publish(bar)

    def _emit(self, lines: list[tuple[int, str, str]], records: list[dict[str, Any]]) -> None:
        if self._signals_fh is not None:
            self._signals_fh.write("".join(line + "\n" for _, _, line in lines))
            self._signals_fh.flush()
        if self.opts.stdout:
            for _, _, line in lines:
                self.write(line)
        for listener in self.listeners:
            listener(records)

    def _open_signals(self, path: Path) -> IO[str]:
        """Append, after writing what the journal has beyond the file's last ``seq`` (a crash
        between commit and write): each (ts, symbol) is in the file exactly once, in order."""
        assert self.journal is not None
        path.parent.mkdir(parents=True, exist_ok=True)
        _drop_partial_line(path)
        written = _last_seq_in(path)
        fh = path.open("a", encoding="utf-8")
        missing = self.journal.db.execute(
            "SELECT record FROM signals WHERE seq > ? ORDER BY seq", (written,)
        ).fetchall()
        if missing:
            fh.write("".join(r[0] + "\n" for r in missing))
            fh.flush()
            log.info("signals file caught up from the journal", records=len(missing))
        return fh

    def _count_order(self, order: Order) -> None:
        self.stats.orders += 1
        _CRASH.reached("order")

    def _on_risk(self, event: RiskEvent) -> None:
        if "reject" in event.message[:60].lower():
            self.stats.rejects += 1

    # views ------------------------------------------------------------------------------------

    def trading_state(self) -> str:
        if self.opts.mode == "signal":
            return "signal-only"
        node = self.node
        if node is not None and node.risk is not None:
            return node.risk.state.value
        return TradingState.ACTIVE.value

    def health(self) -> dict[str, Any]:
        """What ``/healthz`` reports; degraded when the stream is down, a bar is overdue or
        trading is halted."""
        now = max(self.wall.now_ns(), self.venue_ns)
        limit = 2 * self.step_ms * _MS + int(self.live.assemble_wait * 1e9)
        symbols = {}
        overdue = []
        for s in self.symbols:
            ts = self.stats.last_bar.get(s)
            symbols[s] = {
                "last_bar": None if ts is None else iso(ts),
                "lag_s": None if ts is None else (now - ts) / 1e9,
            }
            if ts is None or now - ts > limit:
                overdue.append(s)
        stream = self.stream.stats if self.stream is not None else None
        degraded = (
            self.ws_state != "connected"
            or bool(overdue)
            or self.trading_state() == "halted"
            or self.foreign > 0
            or (stream is not None and stream.degraded)
        )
        return {
            "status": "degraded" if degraded else "ok",
            "mode": self.opts.mode,
            "websocket": self.ws_state,
            "trading_state": self.trading_state(),
            "symbols": symbols,
            "overdue": overdue,
            "journal": {
                "last_bar": iso(self.last_ts) if self.last_ts else None,
                "lag_s": (now - self.last_ts) / 1e9 if self.last_ts else None,
                "uncommitted_events": self.journal.pending if self.journal is not None else 0,
            },
            "bars_processed": self.stats.bars,
            "foreign_executions": self.foreign,
            "silent_topics": sorted(stream.silent_topics) if stream is not None else [],
            "open_gaps": sorted(stream.open_gaps) if stream is not None else [],
        }


class _Posting:
    """The bus as the execution adapter sees it: subscriptions go to the bus, posted events to
    the daemon's queue, so fills and order updates are handled in arrival order between bars."""

    def __init__(self, bus: EventBus, queue: asyncio.Queue[Any]) -> None:
        self.subscribe = bus.subscribe
        self.post = queue.put_nowait


def _drop_partial_line(path: Path) -> None:
    """A crash in the middle of a write leaves half a line: cut it (its record is rewritten)."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb+") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 65_536))
        tail = fh.read()
        if tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n")
        fh.truncate(size - len(tail) + cut + 1 if cut >= 0 else max(0, size - len(tail)))


def _last_seq_in(path: Path) -> int:
    """The ``seq`` of the last complete line of a signals file (0 when there is none)."""
    if not path.is_file():
        return 0
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 65_536))
        tail = fh.read().decode("utf-8", "replace")
    for line in reversed(tail.splitlines()):
        try:
            return int(json.loads(line)["seq"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0


def _stdout(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def install_signal_handlers(daemon: Daemon) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stop)
