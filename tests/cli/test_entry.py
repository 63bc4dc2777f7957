"""The console entry: ``dnstfo query`` runs without click; everything else goes through it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dnstfo.cli import digargs
from dnstfo.errors import UsageError

PROBE = """
import sys
from dnstfo.cli import entry
sys.argv = ["dnstfo", *sys.argv[1:]]
try:
    entry()
except SystemExit as exc:
    heavy = [m for m in HEAVY if m in sys.modules]
    print("heavy", *heavy, file=sys.stderr)
    print("exit", exc.code, "click" in sys.modules, file=sys.stderr)
"""
HEAVY = ("pyroute2", "asyncio", "dns.query", "dns.resolver")
"""Modules the query path must not import (start-up time); click is checked apart."""


def run_entry(*args: str) -> tuple[str, str, str]:
    """Runs ``entry`` with ``args``; returns stdout, the ``heavy ...`` and ``exit ...`` lines."""
    probe = f"HEAVY = {HEAVY!r}\n{PROBE}"
    proc = subprocess.run(
        [sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=30
    )
    *_, heavy, last = proc.stderr.strip().splitlines()
    return proc.stdout, heavy, last


def test_query_runs_without_importing_click() -> None:
    # Port 1 on loopback: refused at once, so the whole path runs with no server.
    _, heavy, last = run_entry("query", "example.com", "@127.0.0.1", "-p", "1", "+timeout=1")
    assert last == "exit 9 False"
    assert heavy == "heavy"  # none of HEAVY was imported


def test_query_usage_error_without_click() -> None:
    _, _, last = run_entry("query", "+bogus")
    assert last == "exit 2 False"


def test_query_help_goes_through_click() -> None:
    out, _, last = run_entry("query", "--help")
    assert "+compare" in out
    assert last == "exit 0 True"


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["-p", "5353"], {"port": 5353}),
        (["-p5353"], {"port": 5353}),
        (["--port=5353"], {"port": 5353}),
        (["-b", "127.0.0.2", "-6"], {"source": "127.0.0.2", "family": 6}),
        (["--method", "connect", "--timeout", "2"], {"method": "connect", "timeout": 2.0}),
        (["--notfo", "+tfo"], {"tfo": True}),
        (["+notfo", "--short"], {"tfo": False, "short": True}),
    ],
)
def test_dash_options(words: list[str], expected: dict[str, object]) -> None:
    parsed = digargs.parse(["example.com", *words])
    assert {k: getattr(parsed, k) for k in expected} == expected


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["-4", "-6"], "exclude each other"),
        (["-p"], "needs a value"),
        (["-y"], "unknown option -y"),
        (["--method", "carrier-pigeon"], "sendto or connect"),
        (["--short=yes"], "unknown option"),
    ],
)
def test_dash_option_errors(words: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        digargs.parse(words)


def test_help_lists_every_command_and_only_those() -> None:
    from click.testing import CliRunner

    from dnstfo.cli import COMMANDS, load, main

    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    rows = result.output.split("Commands:")[1].splitlines()
    listed = [row.split()[0] for row in rows if row.startswith("  ") and row.strip()]
    assert listed == sorted(COMMANDS)
    for name in COMMANDS:
        assert load(name) is not None  # every listed command imports


def test_package_description_names_only_commands_that_exist() -> None:
    import tomllib
    from pathlib import Path

    from dnstfo.cli import COMMANDS

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    description = tomllib.loads(pyproject.read_text())["project"]["description"]
    # The capabilities the description may name, and the command each needs.
    needs = {"server": "serve", "client": "query", "probe": "probe", "lab": "lab"}
    for word, command in needs.items():
        if word in description:
            assert command in COMMANDS, f"the description names a {word}, no {command} command"
