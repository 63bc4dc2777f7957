"""``dnstfo lab``: options parsing, the privilege message, and the demo end to end."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from dnstfo.cli import main
from dnstfo.cli.lab import parse_ms
from dnstfo.errors import PermissionNeeded
from tests.lab.conftest import requires_lab


@pytest.mark.parametrize(("text", "ms"), [("100ms", 100.0), ("0.1s", 100.0), ("25", 25.0)])
def test_durations(text: str, ms: float) -> None:
    assert parse_ms(None, None, text) == ms


def test_without_privileges_the_lab_says_why_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> None:
        raise PermissionNeeded("the lab needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN): run it as root")

    monkeypatch.setattr("dnstfo.lab.netns.check_privileges", refuse)
    result = CliRunner().invoke(main, ["lab", "demo", "--rtt", "10ms"])
    assert result.exit_code == 2
    assert "needs root" in result.output
    assert "Traceback" not in result.output


@pytest.mark.lab
@pytest.mark.netadmin
@requires_lab
def test_demo_shows_two_round_trips_then_one() -> None:
    result = CliRunner().invoke(main, ["lab", "demo", "--rtt", "60ms"])
    assert result.exit_code == 0, result.output
    rounds = [float(r) for r in re.findall(r"= (\d+\.\d+) RTT", result.output)]
    assert len(rounds) == 3
    assert 1.98 <= rounds[0] < 2.3
    assert all(0.99 <= r < 1.3 for r in rounds[1:])
    assert "SYN data acked: yes" in result.output
