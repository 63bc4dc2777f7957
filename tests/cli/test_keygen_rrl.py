"""``dnstfo keygen`` keeps existing keys, and ``dnstfo serve``'s RRL options and keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from dnstfo.cli import main
from dnstfo.cli.serve import build_config
from dnstfo.errors import UsageError
from dnstfo.kernel.sockets import TfoKey
from dnstfo.server.rrl import RrlConfig


def test_keygen_refuses_to_replace_a_key_without_force(tmp_path: Path) -> None:
    path = tmp_path / "tfo.key"
    assert CliRunner().invoke(main, ["keygen", "-o", str(path)]).exit_code == 0
    first = path.read_text()
    result = CliRunner().invoke(main, ["keygen", "-o", str(path)])
    assert result.exit_code == 1
    assert "exists; use --force" in result.output
    assert "Traceback" not in result.output
    assert path.read_text() == first
    result = CliRunner().invoke(main, ["keygen", "-o", str(path), "--force"])
    assert result.exit_code == 0, result.output
    assert path.read_text() != first
    assert path.read_text().endswith("\n")
    TfoKey.parse(path.read_text())


def test_rrl_is_off_by_default(tmp_path: Path) -> None:
    config = build_config({"zone": str(tmp_path)})
    assert config.rrl == RrlConfig()
    assert not config.rrl.enabled


def test_rrl_options_and_config_keys(tmp_path: Path) -> None:
    file = tmp_path / "serve.toml"
    file.write_text(f'zone = "{tmp_path}"\nrrl = 20\nrrl-slip = 2\n')
    config = build_config({"config": str(file)})
    assert config.rrl == RrlConfig(rate=20, slip=2)
    config = build_config({"config": str(file), "rrl": 5, "rrl_slip": 0})
    assert config.rrl == RrlConfig(rate=5, slip=0)


@pytest.mark.parametrize(
    ("text", "message"),
    [("rrl = \"ten\"", "rrl must be an integer"), ("rrl = -1", "RRL rate"),
     ("rrl-slip = true", "rrl-slip must be an integer")],
)  # fmt: skip
def test_bad_rrl_values_are_usage_errors(tmp_path: Path, text: str, message: str) -> None:
    file = tmp_path / "serve.toml"
    file.write_text(f'zone = "{tmp_path}"\n{text}\n')
    with pytest.raises(UsageError, match=message):
        build_config({"config": str(file)})


def test_serve_help_documents_rrl() -> None:
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert "--rrl RATE" in result.output
    assert "--rrl-slip N" in result.output
