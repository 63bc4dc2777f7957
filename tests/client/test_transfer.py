"""Real-socket exchanges that take more than one message or one try: AXFR and +tries.

The AXFR tests run the project's own server on loopback (several messages for a big zone);
a cut transfer and a silent first try come from small servers written here.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.rrset
import pytest

from dnstfo.client.config import QueryConfig, TfoMethod
from dnstfo.client.query import exchange
from dnstfo.errors import PhaseTimeout, RemoteProtocolError
from dnstfo.server.config import Endpoint, ServerConfig
from dnstfo.wire.framing import frame
from tests.client.scriptserver import serving
from tests.server.conftest import ServerThread

BIG_HOSTS = 3000
SMALL_ZONE = "$TTL 60\n@ SOA ns h 1 2 3 4 5\n@ NS ns\nns A 192.0.2.1\nw A 192.0.2.7\n"


def big_zone() -> str:
    """A zone of 3,004 records: several 16 kB AXFR messages."""
    hosts = "".join(f"h{i} A 198.51.{i // 250}.{i % 250 + 1}\n" for i in range(BIG_HOSTS))
    return SMALL_ZONE.replace("w A 192.0.2.7\n", hosts)


@pytest.fixture(scope="module")
def xfr_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """The project's server on loopback, with big.example and one.example, AXFR allowed."""
    zones: Path = tmp_path_factory.mktemp("zones")
    (zones / "big.example.zone").write_text(big_zone())
    (zones / "one.example.zone").write_text(SMALL_ZONE)
    config = ServerConfig(
        zone_dir=zones,
        listen=(Endpoint("127.0.0.1", 0),),
        axfr_allow=(ipaddress.ip_network("127.0.0.0/8"),),
    )
    server = ServerThread(config)
    try:
        yield server.address
    finally:
        server.stop()


def axfr(address: tuple[str, int], zone: str, **kw: object) -> QueryConfig:
    return QueryConfig(zone, address[0], port=address[1], rdtype="AXFR", tfo=TfoMethod.OFF, **kw)  # type: ignore[arg-type]


def test_axfr_reads_every_message_to_the_closing_soa(xfr_server):
    result = exchange(axfr(xfr_server, "big.example"))
    xfr = result.transfer
    assert xfr is not None
    assert len(xfr.messages) > 1
    assert xfr.records == BIG_HOSTS + 4  # SOA, NS, ns A, the hosts, SOA
    names = [r.name.to_text() for m in xfr.messages for r in m.answer]
    assert len(set(names) - {"big.example.", "ns.big.example."}) == BIG_HOSTS
    records = [r for m in xfr.messages for r in m.answer]
    assert records[0].rdtype == records[-1].rdtype == dns.rdatatype.SOA
    assert xfr.size == sum(len(m.to_wire()) for m in xfr.messages)
    assert result.elapsed_ms >= (result.tfo.timings.total_ms or 0)


def test_one_message_axfr_counts_both_soas(xfr_server):
    result = exchange(axfr(xfr_server, "one.example"))
    assert result.transfer is not None
    assert len(result.transfer.messages) == 1
    assert result.transfer.records == 5
    assert sum(len(r) for r in result.response.answer) == 5


def test_refused_axfr_is_an_answer_without_a_transfer(xfr_server):
    result = exchange(axfr(xfr_server, "nowhere.example"))
    assert result.transfer is None
    assert result.response.rcode() != 0


def _soa(origin: str) -> dns.rrset.RRset:
    return dns.rrset.from_text(origin, 60, "IN", "SOA", f"ns.{origin} h.{origin} 1 2 3 4 5")


def test_a_cut_transfer_is_an_error():
    def first_message_only(_n: int, conn: socket.socket, query: dns.message.Message) -> None:
        response = dns.message.make_response(query)
        response.answer.append(_soa("cut.example."))
        response.answer.append(dns.rrset.from_text("a.cut.example.", 60, "IN", "A", "192.0.2.1"))
        conn.sendall(frame(response.to_wire()))
        conn.shutdown(socket.SHUT_WR)  # the closing SOA never comes

    with serving(first_message_only) as port:
        config = axfr(("127.0.0.1", port), "cut.example")
        with pytest.raises(RemoteProtocolError, match=r"transfer was cut.* after 2 records in 1"):
            exchange(config)


def test_a_transfer_that_stalls_times_out_naming_the_phase():
    def stall(_n: int, conn: socket.socket, query: dns.message.Message) -> None:
        response = dns.message.make_response(query)
        response.answer.append(_soa("slow.example."))
        conn.sendall(frame(response.to_wire()))  # then nothing: the connection stays open

    with serving(stall) as port, pytest.raises(PhaseTimeout, match="transfer"):
        exchange(axfr(("127.0.0.1", port), "slow.example", timeout=1.0))


def test_tries_report_the_time_of_every_try():
    def silent_first(n: int, conn: socket.socket, query: dns.message.Message) -> None:
        if n == 0:
            return  # held open, never answered: the first try times out
        response = dns.message.make_response(query)
        response.answer.append(
            dns.rrset.from_text(query.question[0].name, 60, "IN", "A", "192.0.2.9")
        )
        conn.sendall(frame(response.to_wire()))

    timeout = 1.0  # long enough for the second try on a loaded machine
    with serving(silent_first) as port:
        config = QueryConfig(
            "x.example", "127.0.0.1", port=port, tfo=TfoMethod.OFF, timeout=timeout, tries=2
        )
        result = exchange(config)
    assert result.tries == 2
    # The whole includes the first try's full timeout; the last try alone does not.
    assert result.elapsed_ms >= timeout * 1000
    assert (result.tfo.timings.total_ms or 0) < result.elapsed_ms - timeout * 1000 + 1
