"""Bad configuration stops the program with one message naming the file and the key."""

from __future__ import annotations

import pytest

from engine.config import ConfigError
from quantnet.config import load_config


def write(tmp_path, text: str):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_unknown_key(tmp_path):
    path = write(tmp_path, "[costs]\ntaker_fee_bps = 5\nfee_typo = 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: unknown key 'costs.fee_typo'"


def test_wrong_type(tmp_path):
    path = write(tmp_path, '[portfolio]\ncash = "lots"\n')
    with pytest.raises(ConfigError, match=r"config.toml: 'portfolio.cash': Input should be a valid number"):
        load_config(path)


def test_impossible_value(tmp_path):
    path = write(tmp_path, "[costs]\ntaker_fee_bps = -1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (
        f"{path}: 'costs.taker_fee_bps': Input should be greater than or equal to 0 (got -1)"
    )


def test_not_toml(tmp_path):
    path = write(tmp_path, "[costs\n")
    with pytest.raises(ConfigError, match=r"config.toml: not valid TOML"):
        load_config(path)


def test_command_line_overrides_file(tmp_path):
    path = write(tmp_path, "[costs]\ntaker_fee_bps = 7\nslippage_bps = 3\n")
    cfg = load_config(path, {"costs": {"taker_fee_bps": 1.5, "slippage_bps": None}})
    assert cfg.costs.taker_fee_bps == 1.5 and cfg.costs.slippage_bps == 3


def test_repository_config_is_valid():
    from pathlib import Path

    cfg = load_config(Path(__file__).parents[2] / "config.toml")
    assert cfg.strategy.name


def test_unset_options_leave_defaults():
    cfg = load_config(None, {"data": {"path": None, "start": None}, "costs": {"slippage_bps": 4}})
    assert cfg.data.path == "" and cfg.costs.slippage_bps == 4 and cfg.costs.taker_fee_bps == 5.5


def test_config_show_prints_effective_settings_and_hides_secrets(tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    from quantnet.cli import app

    path = write(tmp_path, '[costs]\nslippage_bps = 3.5\n[bybit]\napi_secret_env = "MY_SECRET"\n')
    monkeypatch.setenv("MY_SECRET", "s3cr3t-value")
    monkeypatch.delenv("BYBIT_API_KEY", raising=False)
    result = CliRunner().invoke(app, ["config", "show", "--config", str(path)])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["costs"]["slippage_bps"] == 3.5 and shown["costs"]["taker_fee_bps"] == 5.5
    assert shown["secrets"] == {"BYBIT_API_KEY": "missing", "MY_SECRET": "set (hidden)"}
    assert "s3cr3t-value" not in result.output
    bad = CliRunner().invoke(app, ["config", "show", "--config", str(write(tmp_path, "[costs]\nfee = 1\n"))])
    assert bad.exit_code == 2 and "unknown key 'costs.fee'" in bad.output
