"""``quantnet experiment``: QuantNet against the No-Transfer models and the classical baselines on
one dated held-out window, many seeds, optionally after a random search on Ray Tune.

Markets are read as ``quantnet train`` reads them. Settings: defaults < ``[model]``/``[train]`` of
the config file < command-line options.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from quantnet.commands.common import err_console, fail


def register(app: typer.Typer) -> None:
    @app.command("experiment")
    def experiment_command(
        data: Annotated[
            Path | None,
            typer.Option(
                "--data",
                help="OHLCV file, directory or built-in dataset: markets from a 'market' column, else one "
                "per file (default: built-in us_sectors)",
            ),
        ] = None,
        out: Annotated[
            Path, typer.Option("--out", help="directory for results, tables, report, models")
        ] = Path("experiment"),
        test_bars: Annotated[
            int, typer.Option("--test-bars", help="test window: the last N bars of the union calendar")
        ] = 752,
        val_bars: Annotated[
            int, typer.Option("--val-bars", help="validation block just before the test")
        ] = 252,
        variants: Annotated[
            str,
            typer.Option(
                "--variants",
                help="comma-separated: linear-linear, linear-lstm, lstm-linear, lstm-lstm, "
                "notransfer-linear, notransfer-lstm",
            ),
        ] = "lstm-linear,linear-linear,notransfer-linear,notransfer-lstm",
        seeds: Annotated[int, typer.Option("--seeds", help="seeds per learned variant")] = 5,
        steps: Annotated[int | None, typer.Option("--steps", help="training steps per model")] = None,
        cost_bps: Annotated[
            float, typer.Option("--cost-bps", help="cost per unit of position change; tables at 0 and this")
        ] = 10.0,
        train_cost_bps: Annotated[
            float | None,
            typer.Option("--train-cost-bps", help="cost term of the training loss (default: --cost-bps)"),
        ] = None,
        gross_trained: Annotated[
            str | None,
            typer.Option(
                "--gross-trained",
                metavar="VARIANTS",
                help="comma-separated variants also trained with no cost term, reported beside as "
                "VARIANT-gross (default: the first QuantNet variant; 'none': off)",
            ),
        ] = None,
        baseline_lookback: Annotated[
            int,
            typer.Option(
                "--baseline-lookback", help="bars in the baselines' windows (risk parity, momentum)"
            ),
        ] = 252,
        config: Annotated[
            Path | None,
            typer.Option(
                "--config", help="TOML whose [model] and [train] set the defaults (default ./config.toml)"
            ),
        ] = None,
        search: Annotated[
            int, typer.Option("--search", help="random-search trials per variant on Ray Tune (0: off)")
        ] = 0,
        ray_address: Annotated[
            str | None, typer.Option("--ray-address", help="existing Ray cluster (default: local)")
        ] = None,
        cpus_per_trial: Annotated[
            float, typer.Option("--cpus-per-trial", help="search: CPUs per trial")
        ] = 1.0,
        gpus_per_trial: Annotated[
            float, typer.Option("--gpus-per-trial", help="search: GPUs per trial")
        ] = 0.0,
        asha: Annotated[bool, typer.Option("--asha", help="search: stop poor trials early (ASHA)")] = False,
        resume: Annotated[
            bool,
            typer.Option("--resume", help="skip finished (variant, seed) units and search trials in --out"),
        ] = False,
        sources: Annotated[
            str | None,
            typer.Option(
                "--sources",
                metavar="MARKETS",
                help="comma-separated markets that train (shared layer included) but are not scored; "
                "their history may end before the test window",
            ),
        ] = None,
        start: Annotated[str | None, typer.Option("--start", help="first bar used (ISO 8601)")] = None,
        end: Annotated[str | None, typer.Option("--end", help="last bar used, inclusive")] = None,
    ) -> None:
        """Reproduce the QuantNet paper's evaluation (Table 1, tests, figures) on a dated test window."""
        from connectors.replay import DataError
        from engine.config import ConfigError, validate
        from models.config import BASELINE_VARIANTS, TRANSFER_VARIANTS, ModelConfig, TrainConfig
        from quantnet.commands.train import _configs, load_markets
        from quantnet.experiment import runner

        names = tuple(v.strip() for v in variants.split(",") if v.strip())
        known = (*TRANSFER_VARIANTS, *BASELINE_VARIANTS)
        bad = [v for v in names if v not in known]
        if bad or not names:
            fail(f"--variants: unknown {', '.join(bad) or '(none given)'}; choose from {', '.join(known)}")
        if len(set(names)) != len(names):
            fail("--variants: a variant is listed twice")
        for flag, value in (("--seeds", seeds), ("--test-bars", test_bars), ("--val-bars", val_bars)):
            if value < 1:
                fail(f"{flag} must be at least 1, got {value}")
        if baseline_lookback < 2:
            fail(f"--baseline-lookback must be at least 2, got {baseline_lookback}")
        trained_cost = cost_bps if train_cost_bps is None else train_cost_bps
        if gross_trained is None:
            first = next((v for v in names if v in TRANSFER_VARIANTS), None)
            gross_names: tuple[str, ...] = (first,) if first and trained_cost > 0 else ()
        elif gross_trained.strip().lower() == "none":
            gross_names = ()
        else:
            gross_names = tuple(dict.fromkeys(v.strip() for v in gross_trained.split(",") if v.strip()))
            stray = [v for v in gross_names if v not in names]
            if stray or not gross_names:
                fail(
                    f"--gross-trained: {', '.join(stray) or '(none given)'} not in --variants "
                    f"({', '.join(names)}); 'none' turns it off"
                )
            if trained_cost == 0:
                fail("--gross-trained: training is already gross (--train-cost-bps 0); use 'none'")
        source_names = tuple(dict.fromkeys(v.strip() for v in (sources or "").split(",") if v.strip()))
        if search < 0:
            fail(f"--search must be 0 or more, got {search}")
        if cost_bps < 0 or (train_cost_bps is not None and train_cost_bps < 0):
            fail("costs must be 0 or more basis points")
        try:
            model_raw, tcfg = _configs(config, {}, {"steps": steps})
            train_raw = tcfg.model_dump(exclude_defaults=True)
            model_raw.pop("variant", None)
            validate(ModelConfig, model_raw, "[model] (with command-line options)")
            markets = load_markets(data, start=start, end=end)
        except (ConfigError, DataError, FileNotFoundError) as exc:
            fail(str(exc))
        settings = runner.Settings(
            test_bars=test_bars,
            val_bars=val_bars,
            variants=names,
            seeds=seeds,
            cost_bps=cost_bps,
            train_cost_bps=train_cost_bps,
            model=model_raw,
            train=train_raw,
            lookback=baseline_lookback,
            sources=source_names,
            gross_trained=gross_names,
        )
        try:
            split = runner.dated_split(markets, test_bars=test_bars, val_bars=val_bars, sources=source_names)
        except ValueError as exc:
            fail(str(exc))
        out.mkdir(parents=True, exist_ok=True)
        total_steps = TrainConfig.model_validate(train_raw).steps
        units = len(settings.strategies()) * seeds
        progress = Progress(
            TextColumn("[bold]{task.fields[stage]}[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=err_console,
        )
        overall = progress.add_task("units", total=units, stage="experiment", detail="")
        inner = progress.add_task("step", total=total_steps, stage="", detail="", visible=False)
        done = {"n": 0}

        plain = not err_console.is_terminal  # no live display (a log file, nohup): a line per stage

        def say(text: str) -> None:
            if plain:
                err_console.print(f"experiment {time.perf_counter() - t0:7.0f} s  {text}", highlight=False)

        def notify(stage: str, info: dict[str, Any]) -> None:
            if stage == "baselines":
                say("baselines")
                progress.update(overall, stage="baselines", detail="buy-and-hold, risk parity, momentum")
            elif stage in ("train", "skip"):
                label = f"{info['variant']} seed {info['seed']}"
                if stage == "skip":
                    done["n"] += 1
                    say(f"unit {done['n']}/{units} {label}: done before")
                    progress.update(
                        overall, completed=done["n"], stage="resume", detail=f"{label}: done before"
                    )
                    return
                say(f"unit {done['n'] + 1}/{units} {label}: training")
                progress.update(overall, completed=done["n"], stage="train", detail=label)
                progress.update(inner, completed=0, visible=True, stage="  step", detail="")
                done["n"] += 1
            elif stage == "step":
                fields = {}
                if info.get("val_sharpe") is not None:
                    best = info.get("best_val_sharpe")
                    kept = "-" if best is None else f"{best:+.3f}"
                    fields["detail"] = f"val Sharpe {info['val_sharpe']:+.3f} (kept {kept})"
                progress.update(inner, completed=info["step"], **fields)

        tuned: dict[str, Any] = {}
        searches: dict[str, Any] = {}
        t0 = time.perf_counter()
        with progress:
            if search:
                from quantnet.experiment.search import SearchInterrupted, SearchUnavailable, run_search

                train_set = runner.training_markets(markets, split)
                for v in names:
                    progress.update(overall, stage="search", detail=f"{v}: {search} trials on Ray Tune")
                    say(f"search {v}: {search} trials on Ray Tune")
                    try:
                        found = run_search(
                            v,
                            train_set,
                            settings,
                            trials=search,
                            out=out,
                            address=ray_address,
                            cpus_per_trial=cpus_per_trial,
                            gpus_per_trial=gpus_per_trial,
                            asha=asha,
                            resume=resume,
                        )
                    except (SearchUnavailable, SearchInterrupted) as exc:
                        fail(str(exc))
                    searches[v] = found
                    tuned[v] = found["overrides"]
            try:
                outcome = runner.run(markets, out, settings, resume=resume, progress=notify, tuned=tuned)
            except ValueError as exc:
                fail(str(exc))
            progress.update(overall, completed=units, stage="report", detail="tables and report.html")
            progress.update(inner, visible=False)
            outcome.search = searches or None
            from quantnet.experiment.report import write_report
            from quantnet.experiment.results import markdown, summarise

            results = summarise(
                outcome,
                settings,
                {"data": str(data) if data else "built-in us_sectors", "search_trials": search},
            )
            runner.write_json(out / "results.json", results)
            text = markdown(results)
            (out / "table1.md").write_text(text)
            write_report(out / "report.html", results, outcome.units, outcome.baselines)
        print(text)
        err_console.print(
            f"{units} models and 4 baselines in {time.perf_counter() - t0:.0f} s; wrote "
            f"{out / 'results.json'}, {out / 'table1.md'}, {out / 'report.html'}",
            highlight=False,
        )
