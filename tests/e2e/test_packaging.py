"""What a fresh clone promises: supported Pythons, ignored training logs, the README's set-up."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[2]


def test_python_312_and_313_are_allowed_and_torch_stays_pinned():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    spec = SpecifierSet(project["requires-python"])
    assert {"3.11.7", "3.12.0", "3.13.1"} <= set(spec.filter(["3.10.9", "3.11.7", "3.12.0", "3.13.1"]))
    assert "3.10.9" not in spec
    assert "torch==2.13.0" in project["dependencies"]


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_training_logs_beside_a_checkpoint_are_ignored():
    for name in ("model.log.jsonl", "runs/x/model.log.csv", "model.pt", "out/sma-20260101T000000Z/a.csv"):
        assert subprocess.run(["git", "check-ignore", "-q", name], cwd=ROOT).returncode == 0, name


def test_readme_set_up_is_a_venv_then_the_two_commands_and_the_cpu_index():
    text = (ROOT / "README.md").read_text()
    setup = text[text.index("## Set up and run") :]
    lines = [x for x in setup.splitlines() if x.startswith(("python3 -m venv", "pip install -e"))]
    assert lines[0].startswith("python3 -m venv .venv")
    assert lines[1].startswith("pip install -e . && quantnet backtest")
    assert lines[2].startswith('pip install -e ".[test]" && python -m pytest')
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in setup
    assert "CUDA" in setup
