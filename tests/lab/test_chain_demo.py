"""The forwarding chain: three namespaces, a delay line per link, rounds counted per link."""

from __future__ import annotations

from pathlib import Path

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
        # Each link timed on its own, by its delay line, without what the programs at its
        # ends held the query (their work and their scheduling): within 5 %.
        assert client == pytest.approx(case.want_client, rel=0.05), case
        assert upstream == pytest.approx(case.want_upstream, rel=0.05), case
        # The forwarder's log times the upstream from its side: around the same exchange.
        assert case.upstream_ms is not None, case
        assert case.upstream_server_ms is not None, case
        assert case.logged_upstream_ms is not None, case
        assert case.upstream_ms + case.upstream_server_ms <= case.logged_upstream_ms, case
        # What each program did itself: the forwarder's is what forwarding costs.
        assert case.own_ms is not None, case
        assert 0 < case.own_ms < case.held_ms, case
        assert case.upstream_server_ms > 0, case
        assert case.client_own_ms > 0, case
    assert not plain.client_in_syn
    assert "fresh syn-data=no" in plain.note
    assert tfo.client_in_syn
    assert "fresh syn-data=acked" in tfo.note
    assert reused.client_in_syn
    assert " reused " in reused.note
    assert (plain.upstream_opened, tfo.upstream_opened, reused.upstream_opened) == (
        True,
        True,
        False,
    )


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


@requires_lab
@pytest.mark.lab
@pytest.mark.netadmin
@pytest.mark.linux
def test_forward_demo_times_the_client_on_the_wire(tmp_path: Path) -> None:
    # The client's time, the sum of both links and each program's own work, must be its
    # query on the wire (as the delay line saw it), not also its reads of the cookie
    # cache, sysctls and routes before and after (a few ms on neither link).
    from dnstfo.client.config import TfoMethod
    from dnstfo.lab import forwarddemo
    from dnstfo.lab.chain import FORWARDER_V4, ChainSpec, start_chain

    (tmp_path / "fwd.test.zone").write_text(forwarddemo._OWN_ZONE)
    tmp_path.chmod(0o755)
    serve = ["--zone", str(tmp_path), "--listen", f"{FORWARDER_V4}:{forwarddemo.PORT}"]
    with (
        start_chain(ChainSpec(rtt_ms=CLIENT_RTT)) as chain,
        forwarddemo._serve(chain.forwarder, serve, []),
    ):
        forwarddemo._ask(chain, TfoMethod.SENDTO, forwarddemo.WARM_UP)  # cookie, warm-up
        over: list[float] = []
        for _ in range(3):
            chain.client_link.clear()
            asked = forwarddemo._ask(chain, TfoMethod.SENDTO, forwarddemo.WARM_UP)
            ms = asked.wire_ms
            packets = [p for p in chain.client_link.packets() if p.tcp]
            (syn,) = [p for p in packets if p.is_syn]
            answer = [p for p in packets if p.payload_len and p.dport == syn.sport][-1]
            assert answer.sent_ns is not None
            wire_ms = (answer.sent_ns - syn.received_ns) / 1e6
            assert asked.in_syn
            assert syn.sport == asked.port
            assert wire_ms <= ms, (ms, wire_ms)  # the clock starts before the SYN leaves
            over.append(ms - wire_ms)
        # The SYN leaves a few µs after the clock starts, the answer is read a few µs after
        # the relay writes it: within 1 ms (the client's own reads: ~2.5 ms, every time).
        # The best of three: a busy machine may wake the client late once, never early.
        assert min(over) < 1.0, over


@requires_lab
@pytest.mark.lab
@pytest.mark.netadmin
@pytest.mark.linux
def test_forward_demo_cli_says_each_link_and_the_forwarders_own_work() -> None:
    result = CliRunner().invoke(main, ["lab", "demo", "--forward", "--rtt", "50ms"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert sum("client link " in line and "rounds (want " in line for line in lines) == 3
    assert sum("upstream link " in line and "rounds (want " in line for line in lines) == 3
    own = [line for line in lines if line.strip().startswith("own work       forwarder ")]
    assert len(own) == 3, result.output
    assert all("upstream server" in line and "client" in line for line in own), result.output
    assert "each link took the round trips expected" in result.output


def test_the_story_needs_the_rounds_and_the_upstream_connection_as_expected() -> None:
    from dataclasses import replace

    from dnstfo.lab.chain import ChainSpec
    from dnstfo.lab.forwarddemo import ForwardCase, ForwardDemoResult

    reused = ForwardCase(
        title="reused",
        client_ms=152.0,
        client_link_ms=50.2,
        held_ms=101.4,
        upstream_ms=100.1,
        upstream_server_ms=0.3,
        logged_upstream_ms=100.8,
        note="upstream=198.18.1.2:53 reused upstream-ms=100.8",
        client_in_syn=True,
        want_client=1,
        want_upstream=1,
        upstream_opened=False,
        want_upstream_opened=False,
    )
    spec = ChainSpec(rtt_ms=CLIENT_RTT, upstream_rtt_ms=UPSTREAM_RTT)
    assert ForwardDemoResult(spec, (reused,)).story_held
    for broken in (
        replace(reused, upstream_opened=True),  # a new connection: not the reused case
        replace(reused, upstream_opened=None, upstream_ms=None, upstream_server_ms=None),
        replace(reused, client_link_ms=100.4),  # two rounds on the client link
        replace(reused, upstream_ms=200.2),
    ):
        assert not ForwardDemoResult(spec, (broken,)).story_held, broken
