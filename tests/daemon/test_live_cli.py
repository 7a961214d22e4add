"""``quantnet live --mode live`` refuses, in one line and before any connection, to trade without
[live] enabled, a named environment and API keys in the environment; with them it goes to the venue."""

from __future__ import annotations

from typer.testing import CliRunner

from quantnet.cli import app


def run(tmp_path, config: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    (tmp_path / "c.toml").write_text(config)
    args = ["live", "--mode", "live", "--symbols", "BTCUSDT", "--config", str(tmp_path / "c.toml")]
    args += ["--state-dir", str(tmp_path / "state"), "--rest-url", "http://127.0.0.1:9"]
    result = CliRunner().invoke(app, args, env={"BYBIT_API_KEY": "", "BYBIT_API_SECRET": "", **(env or {})})
    return result.exit_code, " ".join(result.output.split())


def test_live_mode_refusals(tmp_path):
    code, out = run(tmp_path, "")
    assert code == 2 and "needs [live] enabled = true" in out
    code, out = run(tmp_path, "[live]\nenabled = true\n")
    assert code == 2 and 'environment = "testnet", "demo" or "mainnet"' in out
    code, out = run(tmp_path, '[live]\nenabled = true\nenvironment = "testnet"\n')
    assert code == 2 and "BYBIT_API_KEY, BYBIT_API_SECRET not set" in out
    keys = {"BYBIT_API_KEY": "k", "BYBIT_API_SECRET": "s"}
    assert not (tmp_path / "state" / "journal.db").exists()  # refused before anything was written
    code, out = run(
        tmp_path, '[live]\nenabled = true\nenvironment = "testnet"\n[bybit]\nmax_retries = 0\n', keys
    )
    assert code == 2 and ("cannot reach Bybit" in out or "Bybit:" in out)  # allowed: it tries the venue


def test_bad_options_are_refused_in_one_line(tmp_path):
    result = CliRunner().invoke(app, ["live", "--mode", "paper", "--interval", "7", "--symbols", "X"])
    assert result.exit_code == 2 and "--interval must be one of" in result.output
    result = CliRunner().invoke(app, ["paper", "--category", "inverse", "--symbols", "X"])
    assert result.exit_code == 2 and "--category must be linear or spot" in result.output
