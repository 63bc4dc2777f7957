"""``dnstfo lab``: options parsing, the privilege message, and the DNS demo end to end."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from dnstfo.cli import main
from dnstfo.cli.lab import parse_ms
from dnstfo.errors import PermissionNeeded
from dnstfo.lab.demo import ServedQuery
from dnstfo.lab.netns import lab_namespaces
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


_ROW = re.compile(r"^(plain TCP|priming|TFO)\s+(\d+\.\d)\s+\d+\.\d\s", re.MULTILINE)


def _rounds(output: str) -> list[tuple[str, float]]:
    """The compare table's (step, rounds) rows."""
    return [(step, float(rounds)) for step, rounds in _ROW.findall(output)]


def test_the_server_query_log_is_read_from_its_json_lines() -> None:
    line = (
        '{"client":"198.18.0.1","port":45238,"qname":"example.com.","qtype":"A",'
        '"rcode":"NOERROR","transport":"tcp","tfo":true,"latency_ms":0.069}'
    )
    served = ServedQuery.from_line(line)
    assert served is not None
    assert (served.port, served.tfo, served.qname) == (45238, True, "example.com.")
    assert ServedQuery.from_line("2026-01-01 INFO dnstfo.server.app: 2 zones loaded") is None


@pytest.mark.lab
@pytest.mark.netadmin
@requires_lab
def test_demo_serves_dns_in_two_round_trips_then_one() -> None:
    result = CliRunner().invoke(main, ["lab", "demo", "--rtt", "40ms"])
    assert result.exit_code == 0, result.output
    rows = _rounds(result.output)
    assert [step for step, _ in rows] == ["plain TCP", "priming", "TFO", "TFO", "TFO"]
    (_, plain), (_, priming), *tfo = rows
    assert 1.9 <= plain < 2.6
    assert 1.9 <= priming < 2.6
    assert all(0.9 <= r < 1.4 for _, r in tfo)
    assert "SYN-ACK brought one" in result.output
    assert result.output.count(" tcp TFO ") == 3, result.output
    assert "TFO turned 2 round trips into 1" in result.output
    assert lab_namespaces(mine=True) == []


@pytest.mark.lab
@pytest.mark.netadmin
@requires_lab
def test_demo_says_why_when_the_path_strips_the_cookie() -> None:
    result = CliRunner().invoke(
        main, ["lab", "demo", "--rtt", "40ms", "--fault", "strip-tfo-synack"]
    )
    assert result.exit_code == 3, result.output
    assert all(r >= 1.9 for _, r in _rounds(result.output))
    assert "the server sent none" in result.output
    assert "the delay line played strip-tfo-synack" in result.output
    assert " tcp TFO " not in result.output
    assert lab_namespaces(mine=True) == []
