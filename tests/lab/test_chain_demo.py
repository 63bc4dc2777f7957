"""The forwarding chain: three namespaces, a delay line per link, rounds counted per link."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from dnstfo.cli import main
from tests.lab.conftest import requires_lab

CLIENT_RTT, UPSTREAM_RTT = 50.0, 100.0


@requires_lab
@pytest.mark.lab
@pytest.mark.netadmin
@pytest.mark.linux
def test_forward_demo_rounds_per_link() -> None:
    from dnstfo.lab.chain import ChainSpec
    from dnstfo.lab.forwarddemo import run_forward_demo

    result = run_forward_demo(ChainSpec(rtt_ms=CLIENT_RTT, upstream_rtt_ms=UPSTREAM_RTT))
    plain, tfo, reused = result.cases
    assert result.story_held, result
    for case in result.cases:
        client, upstream = result.rounds(case)
        # The upstream link, as the forwarder timed it: within 5 %.
        assert upstream == pytest.approx(case.want_upstream, rel=0.05), case
        # The client link: what the client saw minus the upstream part; it also holds the
        # client's and the forwarder's own work (a few ms), so it is checked within 0.15.
        assert case.want_client <= client < case.want_client + 0.15, case
    assert not plain.client_in_syn
    assert "fresh syn-data=no" in plain.note
    assert tfo.client_in_syn
    assert "fresh syn-data=acked" in tfo.note
    assert reused.client_in_syn
    assert " reused " in reused.note


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["up", "--chain", "--fault", "drop-syn-data"], "do not apply to a chain"),
        (["up", "--chain", "--anycast", "2"], "do not apply to a chain"),
        (["up", "--chain", "--client-tfo", "1"], "one TFO setting"),
        (["demo", "--forward", "--loss", "1"], "do not apply to a chain"),
        (["up", "--chain", "--upstream-rtt", "fast"], "not a duration"),
    ],
)
def test_bad_chain_options_are_usage_errors(args: list[str], says: str) -> None:
    result = CliRunner().invoke(main, ["lab", *args])
    assert result.exit_code == 2
    assert says in result.output
    assert "Traceback" not in result.output
