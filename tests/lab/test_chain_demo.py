"""The forwarding chain: three namespaces, a delay line per link, rounds counted per link."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from click.testing import CliRunner

from dnstfo.cli import main
from tests.lab.conftest import requires_lab

if TYPE_CHECKING:
    from dnstfo.lab.delay import PacketRecord

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
        # Each link timed on its own: the client link is the client's time less the
        # forwarder's hold (as the client link's delay line saw it), the upstream link its
        # own delay line's view; the forwarder's own work is on neither.
        assert client == pytest.approx(case.want_client, rel=0.05), case
        assert upstream == pytest.approx(case.want_upstream, rel=0.05), case
        # The forwarder's log times the upstream from its side of the same exchange: a
        # little longer than the wire, and within 5 % too.
        assert case.upstream_ms is not None, case
        assert case.logged_upstream_ms is not None, case
        assert case.upstream_ms <= case.logged_upstream_ms, case
        logged = case.logged_upstream_ms / UPSTREAM_RTT
        assert logged == pytest.approx(case.want_upstream, rel=0.05), case
        # What the forwarder did itself (read, forward, write the answer): the rest.
        assert case.own_ms is not None, case
        assert 0 < case.own_ms < case.held_ms, case
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


@requires_lab
@pytest.mark.lab
@pytest.mark.netadmin
@pytest.mark.linux
def test_forward_demo_times_the_client_on_the_wire(tmp_path: Path) -> None:
    # The client link's share is the client's time minus the upstream's: the client's time
    # must be its query on the wire (as the delay line saw it), not also its reads of the
    # cookie cache, sysctls and routes before and after (a few ms on neither link).
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
            # The SYN leaves a few µs after the clock starts, the answer is read a few
            # µs after the relay writes it: within 1 ms (the client's own reads: ~2.5).
            assert wire_ms <= ms < wire_ms + 1.0, (ms, wire_ms)


def _packet(
    direction: str, ms: tuple[float, float], ports: tuple[int, int], flags: str, payload: int
) -> PacketRecord:
    from dnstfo.lab.delay import Action, Direction, PacketRecord
    from dnstfo.lab.packet import TcpFlags

    bits = TcpFlags(0)
    for letter, flag in (("S", TcpFlags.SYN), (".", TcpFlags.ACK), ("F", TcpFlags.FIN)):
        if letter in flags:
            bits |= flag
    received, sent = (round(t * 1e6) for t in ms)
    return PacketRecord(0, Direction(direction), received, sent, Action.FORWARDED, 4, 40 + payload,
                        True, *ports, bits, False, None, False, payload)  # fmt: skip


def test_the_hold_runs_from_the_whole_query_to_the_first_answer_segment() -> None:
    from dnstfo.lab.forwarddemo import _held_ns

    client, other = 40000, 39998
    packets = [
        _packet("c2s", (0, 25), (client, 53), "S", 0),
        _packet("s2c", (10, 35), (53, other), "F.", 0),  # the last query's connection closing
        _packet("s2c", (25, 50), (53, client), "S.", 0),
        _packet("c2s", (50, 75), (client, 53), ".", 2),  # the query in two segments
        _packet("c2s", (50, 75.5), (client, 53), ".", 40),
        _packet("s2c", (60, 85), (53, client), ".", 0),  # the forwarder's ACK
        _packet("s2c", (277.5, 302.5), (53, client), ".", 1400),  # the answer in two
        _packet("s2c", (277.6, 302.6), (53, client), ".", 200),
        _packet("c2s", (303, 328), (client, 53), "F.", 0),
    ]
    assert _held_ns(packets, client) == 202_000_000


def test_the_upstream_exchange_runs_from_the_first_packet_to_the_whole_answer() -> None:
    from dnstfo.lab.forwarddemo import _upstream_ns

    up, old = 50000, 49998
    reused = [
        _packet("c2s", (0, 50), (up, 53), ".", 0),  # a late ACK of the last answer
        _packet("c2s", (5, 55), (up, 53), ".", 44),  # the query, on the same connection
        _packet("s2c", (105.2, 155.2), (53, up), ".", 1400),
        _packet("s2c", (105.3, 155.3), (53, up), ".", 200),
    ]
    assert _upstream_ns(reused) == 150_300_000
    fresh = [
        _packet("s2c", (0, 50), (53, old), "F.", 0),  # an old connection closing
        _packet("c2s", (1, 51), (up, 53), "S", 44),
        _packet("s2c", (51.1, 101.1), (53, up), "S.", 0),
        _packet("s2c", (51.3, 101.3), (53, up), ".", 60),
    ]
    assert _upstream_ns(fresh) == 100_300_000
    assert _upstream_ns([_packet("c2s", (0, 50), (up, 53), ".", 0)]) is None


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
    own = [line for line in lines if "ms of its own work (it held the query" in line]
    assert len(own) == 3, result.output
    assert "each link took the round trips expected" in result.output
