"""``quantnet train``: fit a QuantNet model (or fine-tune one on new markets) and write a checkpoint.

Markets come from a ``market`` column or, failing that, one per file (named after the file).
Settings: defaults < ``[model]``/``[train]`` of the config file < command-line options.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import pandas as pd
import typer
from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from connectors.replay import DataError, load_ohlcv
from engine.config import ConfigError, read_toml, validate
from models.config import ModelConfig, TrainConfig

if TYPE_CHECKING:
    from models import Market, QuantNet, Splits
from quantnet.commands.common import check_range, err_console, fail, iso_time

DEFAULT_DATASET = "us_sectors"
_SUFFIXES = (".parquet", ".pq", ".csv", ".csv.gz")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def load_markets(path: Path | None, *, start: str | None = None, end: str | None = None) -> list[Market]:
    """Markets from a file, a directory of files or a built-in dataset name (default: the built-in
    multi-market dataset)."""
    from connectors import datasets
    from models import markets_from_frame

    if path is None:
        path = datasets.path(DEFAULT_DATASET)
    elif not path.exists() and str(path) in datasets.names():
        path = datasets.path(str(path))
    files = sorted(p for p in path.iterdir() if p.name.endswith(_SUFFIXES)) if path.is_dir() else [path]
    if not files:
        raise DataError(f"{path}: directory holds no .parquet or .csv files")
    frames = []
    for f in files:
        df = load_ohlcv(f, start=start, end=end)
        if "market" not in df.columns:
            df["market"] = _stem(f)
        frames.append(df[["timestamp", "symbol", "close", "market"]])
    data = pd.concat(frames, ignore_index=True)
    clash = data.drop_duplicates(["symbol", "market"]).duplicated("symbol")
    if clash.any():
        sym = data.drop_duplicates(["symbol", "market"])[clash]["symbol"].iloc[0]
        raise DataError(f"symbol {sym!r} appears in more than one market")
    return markets_from_frame(data)


def _section(raw: dict[str, Any], name: str, schema: type[BaseModel], source: str) -> dict[str, Any]:
    section = raw.get(name, {})
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: [{name}] must be a table")
    validate(schema, section, f"{source} [{name}]")  # reject unknown keys and bad values early
    return dict(section)


def _configs(
    config: Path | None, model_overrides: dict[str, Any], train_overrides: dict[str, Any]
) -> tuple[dict[str, Any], TrainConfig]:
    raw: dict[str, Any] = {}
    source = "defaults"
    if config is not None or Path("config.toml").is_file():
        path = config or Path("config.toml")
        raw, source = read_toml(path), str(path)
    model_raw = _section(raw, "model", ModelConfig, source)
    train_raw = _section(raw, "train", TrainConfig, source)
    model_raw.update({k: v for k, v in model_overrides.items() if v is not None})
    train_raw.update({k: v for k, v in train_overrides.items() if v is not None})
    return model_raw, validate(TrainConfig, train_raw, f"{source} (with command-line options)")


def _fmt(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.3f}"


def _scores(
    markets: Sequence[Market], model: QuantNet, cfg: TrainConfig, ppy: float, splits: Splits
) -> tuple[dict[str, float], dict[str, float]]:
    """Train and validation Sharpe per market (and their mean); the test block is never scored."""
    from models import evaluate

    kw: dict[str, Any] = {"splits": splits, "seq_len": cfg.seq_len, "periods_per_year": ppy}
    cut = [m.rows(0, splits.bounds(m)[1]) for m in markets]
    tr = evaluate(model, cut, rows="train", cost_bps=cfg.cost_bps, **kw)
    va = evaluate(model, cut, rows="val", cost_bps=cfg.cost_bps, **kw)
    return tr, va


def _summary(
    markets: Sequence[Market], tr: dict[str, float], va: dict[str, float], splits: Splits
) -> Table:
    """Train and validation Sharpe per market; the test block is counted, never scored here."""
    table = Table(title="QuantNet: Sharpe by market (eq. 7, after training)")
    cols = ("market", "assets", "first", "last", "train rows", "val rows", "test rows", "train", "val")
    for col in cols:
        table.add_column(col, justify="left" if col in ("market", "first", "last") else "right")
    for m in markets:
        v0, t0 = splits.bounds(m)
        table.add_row(
            m.name, str(m.n_assets), str(m.index[0].date()), str(m.index[-1].date()), str(v0),
            str(t0 - v0), str(len(m) - t0), _fmt(tr.get(m.name)), _fmt(va.get(m.name)),
        )  # fmt: skip
    table.add_row("mean", "", "", "", "", "", "", _fmt(tr.get("mean")), _fmt(va.get("mean")), style="bold")
    return table


def _blocks(splits: Splits) -> str:
    def day(t: pd.Timestamp | None) -> str:
        return "-" if t is None else str(t.date()) if t == t.normalize() else t.isoformat()

    text = f"training {day(splits.first)} .. {day(splits.train_end)}"
    if splits.val_start is not None:
        text += f", validation {day(splits.val_start)} .. {day(splits.val_end)}"
    if splits.test_start is not None:
        text += f", test (untouched) {day(splits.test_start)} .. {day(splits.last)}"
    return text


def _check_flags(*, variant: str | None, steps: int | None, start: str | None, end: str | None) -> None:
    """Refuse bad options by the flag typed, before torch and the data load (seconds each)."""
    from typing import get_args

    from models.config import Variant

    if variant is not None and variant not in get_args(Variant):
        fail(f"--variant {variant!r} is not a QuantNet variant: use one of {', '.join(get_args(Variant))}")
    if steps is not None and steps < 1:
        fail(f"--steps must be at least 1, got {steps} (a checkpoint needs at least one training step)")
    check_range(iso_time(start, "--start"), iso_time(end, "--end"))


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_command(
        data: Annotated[
            Path | None,
            typer.Option(
                "--data",
                help="OHLCV file, directory or built-in dataset name: markets from a 'market' column, "
                f"else one per file (default: built-in {DEFAULT_DATASET})",
            ),
        ] = None,
        out: Annotated[Path, typer.Option("--out", help="checkpoint to write")] = Path("model.pt"),
        variant: Annotated[
            str | None,
            typer.Option(
                "--variant",
                help="linear-linear, linear-lstm, lstm-linear, lstm-lstm, notransfer-linear, notransfer-lstm",
            ),
        ] = None,
        steps: Annotated[int | None, typer.Option("--steps", help="training steps")] = None,
        test_bars: Annotated[
            int | None,
            typer.Option(
                "--test-bars",
                help="hold out the last N bars of the union calendar (one date for all markets); default 0",
            ),
        ] = None,
        val_bars: Annotated[
            int | None,
            typer.Option(
                "--val-bars", help="validation bars before the test block, for early stopping; default 252"
            ),
        ] = None,
        seed: Annotated[int | None, typer.Option("--seed", help="seed (init, sampling, dropout)")] = None,
        config: Annotated[
            Path | None,
            typer.Option(
                "--config", help="TOML whose model and train tables set the defaults (default ./config.toml)"
            ),
        ] = None,
        init_from: Annotated[
            Path | None,
            typer.Option("--init-from", help="start from this checkpoint; markets it lacks get fresh parts"),
        ] = None,
        shared: Annotated[
            str | None,
            typer.Option(
                "--shared", help="with --init-from: shared layer full, partial (smaller lr) or frozen"
            ),
        ] = None,
        start: Annotated[str | None, typer.Option("--start", help="first bar used (ISO 8601)")] = None,
        end: Annotated[
            str | None, typer.Option("--end", help="last bar used, inclusive: keep later data for testing")
        ] = None,
        log: Annotated[
            Path | None,
            typer.Option("--log", help="training log, JSON lines (.csv: CSV); default: beside --out"),
        ] = None,
        device: Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda")] = None,
    ) -> None:
        """Train QuantNet (paper algorithm 1) with early stopping on a dated validation block."""
        _check_flags(variant=variant, steps=steps, start=start, end=end)
        try:
            model_raw, cfg = _configs(
                config,
                {"variant": variant},
                {
                    "steps": steps, "seed": seed, "shared": shared, "device": device,
                    "test_bars": test_bars, "val_bars": val_bars,
                },
            )  # fmt: skip
            mcfg = validate(ModelConfig, model_raw, "[model] (with command-line options)")
        except ConfigError as exc:
            fail(str(exc))
        from models import (  # torch loads here, after the options are known to be good
            CheckpointMismatch,
            QuantNet,
            check_assets,
            dated_splits,
            load_checkpoint,
            save_checkpoint,
            train,
        )

        try:
            markets = load_markets(data, start=start, end=end)
            splits = dated_splits(markets, cfg.test_bars, cfg.val_bars)
            previous = None
            if init_from is not None:
                ckpt = load_checkpoint(init_from)
                model, previous = ckpt.model, ckpt.meta
                if variant is not None and variant != model.config.variant:
                    fail(f"--variant {variant} differs from {init_from}'s variant {model.config.variant}")
                for i, name in enumerate(check_assets(model, markets, allow_new=True)):
                    assets = next(m.assets for m in markets if m.name == name)
                    model.add_market(name, assets, seed=cfg.seed + 1000 + i)
                    err_console.print(f"new market {name} ({len(assets)} assets): fresh encoder/decoder")
            else:
                model = QuantNet(mcfg, [(m.name, m.assets) for m in markets], seed=cfg.seed)
        except (ConfigError, DataError, CheckpointMismatch, FileNotFoundError) as exc:
            fail(str(exc))
        except ValueError as exc:  # the calendar cannot hold the requested blocks
            fail(str(exc))
        err_console.print(_blocks(splits), highlight=False)
        log_path = log or out.with_name(_stem(out) + ".log.jsonl")
        progress = Progress(
            TextColumn("train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  val Sharpe {task.fields[val]} (best {task.fields[best]})"),
            TimeElapsedColumn(),
            console=err_console,
        )
        task = progress.add_task("train", total=cfg.steps, loss="-", val="-", best="-")

        def on_step(rec: dict[str, Any]) -> None:
            fields: dict[str, Any] = {"loss": f"{rec['loss']:+.3f}"}
            if "val_sharpe" in rec:
                fields["val"] = _fmt(rec["val_sharpe"])
                fields["best"] = _fmt(rec.get("best_val_sharpe"))
            progress.update(task, completed=rec["step"], **fields)

        try:
            with progress:
                result = train(model, markets, cfg, callback=on_step, log_path=log_path, splits=splits)
        except ValueError as exc:
            fail(str(exc))
        tr, va = _scores(markets, model, cfg, result.periods_per_year, splits)
        by_market = {
            m.name: float(va[m.name]) for m in markets if m.name in va and math.isfinite(va[m.name])
        }
        save_checkpoint(
            out,
            model,
            train_config=cfg,
            data=markets,
            periods_per_year=result.periods_per_year,
            previous=previous,
            splits=splits,
            extra={
                "init_from": str(init_from) if init_from else None,
                "steps_run": result.steps,
                "best_step": result.best_step,
                "best_val_sharpe": result.best_val_sharpe,
                "stopped_early": result.stopped_early,
                "val_sharpe_by_market": by_market,
            },
        )
        console = Console()
        console.print(_summary(markets, tr, va, splits))
        note = " (stopped early)" if result.stopped_early else ""
        console.print(
            f"{result.steps} steps in {result.seconds:.1f} s{note}; best validation Sharpe "
            f"{_fmt(result.best_val_sharpe)} at step {result.best_step}; "
            f"checkpoint {out}, log {log_path}",
            highlight=False,
        )
