"""TCP behaviour end to end: pipelining, limits, idle timeout, keepalive, reload."""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import replace

import dns.edns
import dns.message
import dns.query
import dns.rcode
import pytest

from dnstfo.server.config import Limits, QueryLog
from dnstfo.server.stats import Limit
from dnstfo.wire.connection import NS_PER_S
from dnstfo.wire.framing import FrameDecoder, frame
from tests.server.conftest import ServerThread, read_messages, tcp_connect
from tests.server.test_tcp_hardening import connections, wait_for


def query_wire(name: str, qid: int, rdtype: str = "A", **kw: object) -> bytes:
    q = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    q.id = qid
    return q.to_wire()


def closed_by_server(sock: socket.socket, within: float) -> float:
    """Seconds until the server closed the connection (EOF or reset), bounded."""
    sock.settimeout(within)
    start = time.monotonic()
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - start


def test_pipelined_queries_in_one_write_all_answered(server: ServerThread) -> None:
    names = ["www", "alias", "nope", "ns1", "big"] * 20
    batch = b"".join(frame(query_wire(f"{n}.test.example.", i)) for i, n in enumerate(names))
    with tcp_connect(server.address) as sock:
        sock.sendall(batch)
        answers = [dns.message.from_wire(m) for m in read_messages(sock, len(names))]
    assert sorted(a.id for a in answers) == list(range(len(names)))
    by_id = {a.id: a for a in answers}
    assert by_id[2].rcode() == dns.rcode.NXDOMAIN
    assert by_id[0].answer[0].to_text() == "www.test.example. 300 IN A 192.0.2.1"


def test_answers_of_one_read_come_in_one_segment(server: ServerThread) -> None:
    batch = b"".join(frame(query_wire("www.test.example.", i)) for i in range(10))
    with tcp_connect(server.address) as sock:
        sock.sendall(batch)
        time.sleep(0.2)  # let all answers arrive, then see them in one recv
        data = sock.recv(65536)
    assert data.count(b"\x03www\x04test\x07example") == 10


def test_idle_timeout_closes(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(limits=Limits.from_seconds(idle_timeout=0.3))
    with tcp_connect(server.address) as sock:
        elapsed = closed_by_server(sock, 5)
    assert 0.25 < elapsed < 2
    assert server.server.stats.limits[Limit.IDLE] == 1


def test_idle_timer_not_reset_by_a_drip(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(limits=Limits.from_seconds(idle_timeout=0.5))
    data = frame(query_wire("www.test.example.", 1))
    with tcp_connect(server.address) as sock:
        start = time.monotonic()
        sock.settimeout(0.1)
        for byte in data[:-1]:  # one byte per 100 ms: longer than the idle timeout
            sock.send(bytes([byte]))
            try:
                if sock.recv(1) == b"":
                    break
            except TimeoutError:
                continue
            except ConnectionResetError:
                break
        elapsed = time.monotonic() - start
    assert elapsed < 1.5  # closed at the idle deadline, not after the whole drip


def test_query_limit_answers_every_query_read(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(limits=Limits.from_seconds(max_queries=3))
    batch = b"".join(frame(query_wire("www.test.example.", i)) for i in range(5))
    with tcp_connect(server.address) as sock:
        sock.sendall(batch)  # one read: the limit is passed inside it
        answers = read_messages(sock, 5)
        assert closed_by_server(sock, 5) < 2
    assert len(answers) == 5  # every query read is answered, then the server closes
    assert server.server.stats.limits[Limit.QUERIES] == 1


def test_query_limit_loses_no_query_uncounted(make_server) -> None:  # type: ignore[no-untyped-def]
    """A client pipelining past the limit gets every answer of what was read, then FIN
    (not a reset that would destroy answers in flight); what it sent after is counted.

    How many queries the server read before the limit depends on how the writes were
    read (a slow server reads all 60 at once and answers them all); the contract holds
    either way. The server counts what it reads after its FIN until it reads the
    client's, so the count is read once the server has closed the connection."""
    server = make_server(limits=Limits.from_seconds(max_queries=10))
    total = 60
    answers: list[bytes] = []
    with tcp_connect(server.address) as sock:
        for i in range(total):  # separate writes, as a pipelining load generator makes
            sock.send(frame(query_wire("www.test.example.", i)))
        sock.settimeout(5)
        decoder = FrameDecoder()
        while data := sock.recv(65536):  # a reset here would raise and fail the test
            answers += decoder.feed(data)
    ids = [int.from_bytes(a[:2], "big") for a in answers]
    assert ids == list(range(len(ids)))
    assert 10 <= len(ids) <= total
    wait_for(lambda: connections(server) == 0, 5)
    dropped = server.call(lambda: server.server.stats.dropped)
    assert len(ids) + dropped == total  # every query answered or counted as dropped


def test_queries_sent_after_the_limit_are_counted(make_server) -> None:  # type: ignore[no-untyped-def]
    """Queries that arrive after the limit's last answer (and the server's FIN) are read
    and counted as dropped, none answered."""
    limits = Limits.from_seconds(max_queries=10)
    # The client's FIN comes at once; a long drain keeps a slow client from losing the race.
    limits = replace(limits, connection=replace(limits.connection, drain_ns=30 * NS_PER_S))
    server = make_server(limits=limits)
    with tcp_connect(server.address) as sock:
        for i in range(10):  # one read per query: the limit falls on the tenth
            sock.sendall(frame(query_wire("www.test.example.", i)))
            assert len(read_messages(sock, 1)) == 1
        sock.sendall(b"".join(frame(query_wire("www.test.example.", i)) for i in range(10, 60)))
        assert sock.recv(65536) == b""  # FIN after the tenth answer, nothing more
    wait_for(lambda: connections(server) == 0, 5)
    assert server.call(lambda: server.server.stats.dropped) == 50
    assert server.server.stats.limits[Limit.QUERIES] == 1


def test_lifetime(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(limits=Limits.from_seconds(idle_timeout=5, lifetime=0.5))
    with tcp_connect(server.address) as sock:
        for i in range(3):  # activity does not extend the lifetime
            sock.sendall(frame(query_wire("www.test.example.", i)))
            assert len(read_messages(sock, 1)) == 1
            time.sleep(0.1)
        assert closed_by_server(sock, 3) < 1.0
    assert server.server.stats.limits[Limit.LIFETIME] == 1


def test_per_client_and_total_limits(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(limits=Limits.from_seconds(max_per_client=2, max_connections=3))
    keep = [tcp_connect(server.address) for _ in range(2)]
    try:
        for sock in keep:  # make sure both are accepted and counted
            sock.sendall(frame(query_wire("www.test.example.", 1)))
            assert read_messages(sock, 1)
        with tcp_connect(server.address) as third:
            third.sendall(frame(query_wire("www.test.example.", 1)))
            assert read_messages(third, 1) == []  # reset or closed without an answer
    finally:
        for sock in keep:
            sock.close()
    assert server.server.stats.limits[Limit.PER_CLIENT] >= 1


def test_per_client_refusals_are_logged_once_per_interval(make_server, caplog) -> None:  # type: ignore[no-untyped-def]
    server = make_server(limits=Limits.from_seconds(max_per_client=1))
    caplog.set_level(logging.WARNING, logger="dnstfo.server.tcp")
    with tcp_connect(server.address) as keep:
        keep.sendall(frame(query_wire("www.test.example.", 1)))
        assert read_messages(keep, 1)
        for _ in range(3):
            with tcp_connect(server.address) as extra:
                extra.sendall(frame(query_wire("www.test.example.", 1)))
                assert read_messages(extra, 1) == []
    assert server.server.stats.limits[Limit.PER_CLIENT] == 3
    warned = [r.getMessage() for r in caplog.records if "--max-per-client" in r.getMessage()]
    assert len(warned) == 1  # the next two fall within the 10 s
    assert "from 127.0.0.1: it has 1 open" in warned[0]


def test_keepalive_advertised(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(limits=Limits.from_seconds(idle_timeout=7))
    option = dns.edns.GenericOption(dns.edns.OptionType.KEEPALIVE, b"")
    q = dns.message.make_query("www.test.example.", "A", use_edns=0, options=[option])
    host, port = server.address
    response = dns.query.tcp(q, host, port=port, timeout=5)
    (got,) = [o for o in response.options if o.otype == dns.edns.OptionType.KEEPALIVE]
    assert got.to_wire() == (70).to_bytes(2, "big")  # 7 s in 100 ms units
    # Over UDP the option is ignored (RFC 7828 §3.2.2): no keepalive in the answer.
    udp = dns.query.udp(q, host, port=port, timeout=5)
    assert not [o for o in udp.options if o.otype == dns.edns.OptionType.KEEPALIVE]


def test_keepalive_with_a_value_from_the_client_is_formerr(server: ServerThread) -> None:
    option = dns.edns.GenericOption(dns.edns.OptionType.KEEPALIVE, b"\x00\x10")
    q = dns.message.make_query("www.test.example.", "A", use_edns=0, options=[option])
    host, port = server.address
    assert dns.query.tcp(q, host, port=port, timeout=5).rcode() == dns.rcode.FORMERR


def break_zone(server: ServerThread) -> int:
    """Puts a bad record in the middle of the zone file; returns its line number."""
    path = server.config.zone_dir / "test.example.zone"
    lines = path.read_text().splitlines()
    lines.insert(6, "broken IN A not-an-address")
    path.write_text("\n".join(lines) + "\n")
    return 7


def test_reload_keeps_old_zone_when_file_breaks(server: ServerThread, caplog) -> None:  # type: ignore[no-untyped-def]
    host, port = server.address
    path = server.config.zone_dir / "test.example.zone"
    path.write_text(path.read_text().replace("192.0.2.1", "192.0.2.99"))
    result = server.call(server.server.reload)
    assert not result.errors
    q = dns.message.make_query("www.test.example.", "A")
    assert "192.0.2.99" in dns.query.tcp(q, host, port=port, timeout=5).to_text()
    path.write_text(path.read_text().replace("192.0.2.99", "192.0.2.42"))
    break_zone(server)
    with caplog.at_level("ERROR", logger="dnstfo.server.app"):
        result = server.call(server.server.reload)
    (error,) = result.errors
    assert error.path == str(path)
    assert error.line is not None
    assert f"test.example.zone:{error.line}: " in caplog.text
    answer = dns.query.tcp(q, host, port=port, timeout=5).to_text()
    assert "192.0.2.99" in answer  # the old zone, not the half-edited one
    assert result.zones == 1


def test_reload_error_names_the_exact_line(server: ServerThread) -> None:
    line = break_zone(server)
    (error,) = server.call(server.server.reload).errors
    assert error.line == line


@pytest.mark.parametrize("closer", ["shutdown", "close"])
def test_no_crash_when_client_closes_with_queries_pending(
    server: ServerThread, closer: str
) -> None:
    batch = b"".join(frame(query_wire("big.test.example.", i, "TXT")) for i in range(200))
    for _ in range(5):
        sock = tcp_connect(server.address)
        sock.sendall(batch)
        if closer == "shutdown":
            sock.shutdown(socket.SHUT_WR)
        sock.close()
    host, port = server.address
    q = dns.message.make_query("www.test.example.", "A")
    assert dns.query.tcp(q, host, port=port, timeout=5).answer


def test_query_log_names_the_local_address(make_server, caplog) -> None:  # type: ignore[no-untyped-def]
    server = make_server(query_log=QueryLog.TEXT)
    host, port = server.address
    with caplog.at_level("INFO", logger="dnstfo.query"), tcp_connect(server.address) as sock:
        sock.sendall(frame(query_wire("www.test.example.", 1)))
        assert len(read_messages(sock, 1)) == 1
    (line,) = [r.getMessage() for r in caplog.records if r.name == "dnstfo.query"]
    assert f"-> {host}#{port} www.test.example. A NOERROR tcp" in line
