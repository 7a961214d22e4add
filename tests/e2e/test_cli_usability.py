"""The command line as a new user meets it: help, version, bad input answered in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantnet.cli import COMMANDS, app, load_command

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def quantnet(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The real entry point, as a process (what the console script runs)."""
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(cwd or ROOT), "COLUMNS": "100"}
    return subprocess.run(
        [sys.executable, "-m", "quantnet.cli", *args],
        cwd=cwd or ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_top_level_help_imports_no_heavy_library():
    """Start-up cost is imports: --help must not load pandas, torch or aiohttp (1.6-2.6 s before)."""
    code = (
        "import sys\n"
        "from quantnet.cli import app\n"
        "try:\n"
        "    app(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('pandas', 'torch', 'aiohttp', 'numpy', 'matplotlib')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={"PYTHONPATH": str(ROOT)}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
    for name in COMMANDS:
        assert name in out.stdout


def test_version_and_short_help(tmp_path):
    version = quantnet("--version", cwd=tmp_path)
    assert version.returncode == 0
    assert version.stdout.startswith("quantnet ")
    assert version.stdout.split()[1][0].isdigit()
    short = quantnet("backtest", "-h", cwd=tmp_path)
    assert short.returncode == 0, short.stderr
    assert "Usage: quantnet backtest" in short.stdout


def _helps() -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = []
    for name in COMMANDS:
        cmd = load_command(name)
        paths.append((name,))
        paths.extend((name, sub) for sub in getattr(cmd, "commands", {}))
    return paths


@pytest.mark.parametrize("path", _helps(), ids=" ".join)
def test_every_help_has_value_metavars(path):
    """-h everywhere; placeholders read as values (PATH, N, TEXT), flags take none, no <bool>."""
    result = runner.invoke(app, [*path, "-h"], terminal_width=100)
    assert result.exit_code == 0, result.output
    assert "Usage: quantnet " + " ".join(path) in result.output
    assert "<" not in result.output.replace("<=", ""), result.output
    assert "╭" not in result.output  # plain help: no boxes that wrap lines apart
    assert "-h, --help  " in result.output  # a flag: help text follows, no placeholder


def test_bad_log_level_is_one_line_and_names_the_choices(tmp_path):
    result = quantnet("--log-level", "verbose", "config", "show", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "--log-level" in result.stderr and "debug" in result.stderr and "verbose" in result.stderr


def test_a_misspelt_command_is_answered_with_the_right_one(tmp_path):
    result = quantnet("backtst", cwd=tmp_path)
    assert result.returncode == 2
    assert "Did you mean 'backtest'" in result.stderr


# --- quantnet backtest: input checked before any data is read, one line naming the option -------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--start", "01/02/2005"], "--start '01/02/2005' is not an ISO 8601 date"),
        (["--end", "2005-13-01"], "--end '2005-13-01' is not a valid date"),
        (["--start", "2012-01-01", "--end", "2011-01-01"], "--start 2012-01-01 is after --end 2011-01-01"),
        (["--fee-bps", "-3"], "--fee-bps must be at least 0, got -3"),
        (["--slippage-bps", "-1"], "--slippage-bps must be at least 0, got -1"),
        (["--cash", "0"], "--cash must be greater than 0, got 0"),
        (["--param", "fats=3"], "unknown parameter 'fats' (valid parameters: fast, slow, target, short"),
        (["--strategy", "nope"], "unknown strategy 'nope'; available: buy_and_hold, cs_momentum"),
    ],
)
def test_backtest_refuses_bad_options_in_one_line(tmp_path, prices_csv, args, expected):
    result = runner.invoke(app, ["backtest", "--data", str(prices_csv), "--strategy", "sma_crossover", *args])
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert result.output.count("\n") <= 2, result.output
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_backtest_model_checks(tmp_path, prices_csv):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    result = runner.invoke(app, ["backtest", "--data", str(prices_csv), "--model", str(junk)])
    assert result.exit_code == 2
    assert f"--model {junk} is not a QuantNet checkpoint" in result.output
    assert "weights_only" not in result.output
    result = runner.invoke(app, ["backtest", "--model", str(tmp_path), "--data", str(prices_csv)])
    assert "is a directory" in result.output
    ok_zip = tmp_path / "real.zip"
    import zipfile

    with zipfile.ZipFile(ok_zip, "w") as zf:
        zf.writestr("x", "y")
    result = runner.invoke(
        app, ["backtest", "--strategy", "sma_crossover", "--model", str(ok_zip), "--data", str(prices_csv)]
    )
    assert result.exit_code == 2
    assert "--strategy sma_crossover takes no model" in result.output


def test_backtest_output_that_is_a_file_or_unwritable(tmp_path, prices_csv):
    afile = tmp_path / "afile"
    afile.write_text("x")
    result = runner.invoke(app, ["backtest", "--data", str(prices_csv), "--output", str(afile)])
    assert result.exit_code == 2
    assert f"--output {afile} is a file" in result.output
    result = runner.invoke(app, ["backtest", "--data", str(prices_csv), "--output", str(afile / "sub")])
    assert result.exit_code == 2
    assert "cannot create the directory" in result.output
    assert "Traceback" not in result.output


def test_each_run_gets_its_own_folder_and_the_summary_names_it_and_the_config(tmp_path, prices_csv):
    """Two runs from a directory without config.toml: two folders, both named, defaults stated;
    with a config.toml beside the run, the summary names that file."""
    first = quantnet("backtest", "--strategy", "sma_crossover", "--data", str(prices_csv), cwd=tmp_path)
    second = quantnet("backtest", "--strategy", "sma_crossover", "--data", str(prices_csv), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    folders = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(folders) == 2
    assert all((name.startswith("sma_crossover-") and name.endswith("Z")) or "Z-" in name for name in folders)
    for run, folder in zip((first, second), folders, strict=True):
        assert f"results in out/{folder}/" in run.stdout
        assert (tmp_path / "out" / folder / "metrics.json").is_file()
        assert f"no config.toml in {tmp_path}; built-in defaults apply" in run.stdout
    (tmp_path / "config.toml").write_text("[costs]\ntaker_fee_bps = 0\n")
    third = quantnet("backtest", "--strategy", "sma_crossover", "--data", str(prices_csv), cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert f"config: {tmp_path / 'config.toml'}" in third.stdout


# --- other commands: the option typed is what the error names, before slow work starts ---------


def test_train_refuses_bad_variant_and_zero_steps_before_reading_data(tmp_path):
    missing = str(tmp_path / "no-such-data")
    result = runner.invoke(app, ["train", "--variant", "lstm-foo", "--data", missing])
    assert result.exit_code == 2
    assert "--variant 'lstm-foo' is not a QuantNet variant: use one of linear-linear" in result.output
    result = runner.invoke(app, ["train", "--steps", "0", "--data", missing, "--out", str(tmp_path / "m.pt")])
    assert result.exit_code == 2
    assert "--steps must be at least 1, got 0" in result.output
    assert not (tmp_path / "m.pt").exists()


def test_data_fetch_start_in_the_future_and_non_iso_dates():
    result = runner.invoke(app, ["data", "fetch", "--symbols", "BTCUSDT", "--start", "2200-01-01"])
    assert result.exit_code == 2
    assert "--start 2200-01-01 is in the future (now is 20" in result.output
    assert "None" not in result.output
    result = runner.invoke(
        app, ["data", "fetch", "--symbols", "X", "--start", "2024-01-01", "--end", "02/01/2024"]
    )
    assert result.exit_code == 2 and "--end '02/01/2024' is not an ISO 8601 date" in result.output


def test_backtest_data_finds_the_fetch_layout_or_says_where_the_files_are(tmp_path, bars):
    """``data fetch --out data/bybit`` writes data/bybit/bybit_linear_60/SYMBOL.parquet; pointing
    --data at data/bybit uses the one data set below, or names each when there are several."""
    root = tmp_path / "data" / "bybit"
    fetched = root / "bybit_linear_60"
    fetched.mkdir(parents=True)
    for symbol, frame in bars.groupby("symbol"):
        frame.to_parquet(fetched / f"{symbol}.parquet", index=False)
    out = tmp_path / "o"
    args = ["backtest", "--strategy", "buy_and_hold", "--data", str(root), "--output", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_fills"] == bars["symbol"].nunique()
    other = root / "bybit_linear_D"
    other.mkdir()
    next(iter(bars.groupby("symbol")))[1].to_parquet(other / "AAA.parquet", index=False)
    result = runner.invoke(app, [*args[:-2], "--output", str(tmp_path / "o2")])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert f"{fetched} (2 files)" in text and f"{other} (1 files)" in text
    assert "give one of them" in text


def test_a_date_beyond_the_engine_range_is_one_line():
    result = runner.invoke(app, ["backtest", "--start", "2999-01-01"])
    assert result.exit_code == 2
    assert "--start '2999-01-01' is outside the dates the engine handles" in result.output
