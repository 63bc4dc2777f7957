"""``dnstfo lab demo --tls``: the promise is 3 round trips then 2 (pure checks)."""

from __future__ import annotations

import pytest

from dnstfo.lab.demo import rounds_shortfall
from tests.lab.conftest import requires_lab


@pytest.mark.parametrize(
    ("baseline", "tfo", "held"),
    [
        (3.0, [2.0, 2.1], True),
        (3.4, [2.4], True),
        (2.0, [1.0], False),  # TCP's figures are not TLS's
        (3.0, [3.0], False),  # the ClientHello did not ride in the SYN
        (5.0, [2.0], False),  # Nagle's two extra round trips
    ],
)
def test_tls_promise(baseline: float, tfo: list[float], held: bool) -> None:
    assert (rounds_shortfall(True, baseline, tfo, extra=1) is None) is held


def test_tls_shortfall_names_the_tls_figures() -> None:
    assert rounds_shortfall(True, 3.0, [3.0], extra=1) == (
        "the TFO queries took 3 round trips (median), not 2"
    )
    assert rounds_shortfall(True, 2.0, [1.0], extra=1) == "plain TCP took 2 round trips, not 3"


@pytest.mark.lab
@pytest.mark.netadmin
@pytest.mark.linux
@requires_lab
def test_demo_over_tls_shows_3_then_2() -> None:
    from dnstfo.lab.demo import run_demo
    from dnstfo.lab.topology import LabSpec

    result = run_demo(LabSpec(rtt_ms=100, ipv6=False), tfo_queries=2, tls=True)
    assert result.story_held, result.shortfall
    assert all(s.result.tls is not None for s in result.comparison.steps)
    tfo = [q.tfo for q in result.served if q.transport == "tls"]
    assert tfo == [False, False, True, True]


@pytest.mark.lab
@pytest.mark.netadmin
@pytest.mark.linux
@requires_lab
def test_lab_demo_tls_command() -> None:
    from click.testing import CliRunner

    from dnstfo.cli import main

    result = CliRunner().invoke(main, ["lab", "demo", "--tls", "--count", "2", "--rtt", "50ms"])
    assert result.exit_code == 0, result.output
    assert "+tls +tls-ca=" in result.output
    assert "ClientHello in the SYN with the cached cookie, acked in the SYN-ACK (x2)" in (
        result.output
    )
    assert "TFO turned 3 round trips into 2 over TLS" in result.output
