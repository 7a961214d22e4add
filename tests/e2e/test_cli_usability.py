"""The command line as a new user meets it: help, version, bad input answered in one line."""

from __future__ import annotations

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
