"""Forwarding against scripted upstreams on loopback: failover, timeouts, faults, ACL, cache.

Each upstream is a thread with its own listening TCP and UDP sockets that behaves as its
``Mode`` says. The client always gets the answer or SERVFAIL within its timeout, and the
server keeps serving.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from dnstfo.answer.forward import ForwardConfig, ForwardTransport
from dnstfo.server.config import QueryLog
from dnstfo.server.forwardmetrics import ForwardCollector
from dnstfo.server.querylog import QUERY_LOGGER
from dnstfo.wire.framing import FrameDecoder, frame
from tests.server.conftest import ServerThread

SOA = "ns.fwd.example. h.fwd.example. 1 2 3 4 1"
"""MINIMUM 1 s: a negative answer lives 1 s whatever the SOA's TTL."""


class Mode(enum.Enum):
    OK = "ok"
    SILENT = "silent"
    GARBAGE = "garbage"
    WRONG_ID = "wrong id"
    WRONG_QUESTION = "wrong question"
    CLOSE_MID_ANSWER = "close mid-answer"
    RESET = "reset"
    REVERSED = "pipelined answers in reverse order"
    NXDOMAIN = "nxdomain"
    UDP_TRUNCATED = "udp answers truncated"
    CLOSE_ON_SECOND = "closes a connection at its second query (an idle close racing reuse)"
    KEEPALIVE = "answers with edns-tcp-keepalive TIMEOUT 0.3 s"


@dataclasses.dataclass
class Upstream:
    port: int
    mode: Mode
    ttl: int = 60
    queries: int = 0
    tcp_connections: int = 0
    udp_queries: int = 0
    options: list[list[int]] = dataclasses.field(default_factory=list)
    """The EDNS option codes of each query received over TCP."""


def _answer(query: dns.message.Message, up: Upstream) -> bytes:
    response = dns.message.make_response(query)
    name = query.question[0].name
    if up.mode is Mode.NXDOMAIN:
        response.set_rcode(dns.rcode.NXDOMAIN)
        response.authority.append(
            dns.rrset.from_text(
                "fwd.example.", up.ttl, "IN", "SOA", "ns.fwd.example. h.fwd.example. 1 2 3 4 1"
            )
        )
    else:
        # The first label's digits give the address, so answers show which query they answer.
        digits = "".join(c for c in name.labels[0].decode() if c.isdigit()) or "1"
        address = f"192.0.2.{int(digits) % 250 + 1}"
        response.answer.append(dns.rrset.from_text(name, up.ttl, "IN", "A", address))
    return response.to_wire()


def _serve_tcp(conn: socket.socket, up: Upstream, stop: threading.Event) -> None:
    decoder = FrameDecoder()
    held: list[dns.message.Message] = []
    seen = 0
    with conn:
        while not stop.is_set():
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            for wire in decoder.feed(data):
                query = dns.message.from_wire(wire)
                up.queries += 1
                up.options.append([int(o.otype) for o in query.options])
                seen += 1
                mode = up.mode
                if mode is Mode.CLOSE_ON_SECOND and seen == 2:
                    return
                if mode is Mode.SILENT:
                    continue
                if mode is Mode.GARBAGE:
                    conn.sendall(frame(b"\x12\x34garbage, not DNS"))
                elif mode is Mode.WRONG_ID:
                    response = dns.message.from_wire(_answer(query, up))
                    response.id = (query.id + 1) % 65536
                    conn.sendall(frame(response.to_wire()))
                elif mode is Mode.WRONG_QUESTION:
                    other = dns.message.make_query("other.fwd.example.", "A")
                    other.id = query.id
                    conn.sendall(frame(_answer(other, up)))
                elif mode is Mode.CLOSE_MID_ANSWER:
                    conn.sendall(frame(_answer(query, up))[:9])
                    return
                elif mode is Mode.RESET:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                elif mode is Mode.REVERSED:
                    held.append(query)
                elif mode is Mode.KEEPALIVE:
                    response = dns.message.from_wire(_answer(query, up))
                    option = dns.edns.GenericOption(dns.edns.OptionType.KEEPALIVE, b"\x00\x03")
                    response.use_edns(0, options=[option])
                    conn.sendall(frame(response.to_wire()))
                else:
                    conn.sendall(frame(_answer(query, up)))
            if held and len(held) >= 2:
                conn.sendall(b"".join(frame(_answer(q, up)) for q in reversed(held)))
                held.clear()


@contextlib.contextmanager
def upstream(mode: Mode, ttl: int = 60) -> Iterator[Upstream]:
    """A scripted upstream on 127.0.0.1 (TCP and UDP on one port)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    port = listener.getsockname()[1]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", port))
    udp.settimeout(0.05)
    up = Upstream(port, mode, ttl)
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            up.tcp_connections += 1
            conn.settimeout(0.05)
            t = threading.Thread(target=_serve_tcp, args=(conn, up, stop), daemon=True)
            t.start()
            threads.append(t)

    def datagrams() -> None:
        while not stop.is_set():
            try:
                data, peer = udp.recvfrom(65536)
            except TimeoutError:
                continue
            up.udp_queries += 1
            query = dns.message.from_wire(data)
            if up.mode is Mode.UDP_TRUNCATED:
                response = dns.message.make_response(query)
                response.flags |= dns.flags.TC
                udp.sendto(response.to_wire(), peer)
            elif up.mode is Mode.OK:
                udp.sendto(_answer(query, up), peer)

    for target in (accept, datagrams):
        t = threading.Thread(target=target, daemon=True)
        t.start()
        threads.append(t)
    try:
        yield up
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        listener.close()
        udp.close()


@pytest.fixture
def forwarder(make_server: Callable[..., ServerThread]) -> Callable[..., ServerThread]:
    def make(*ups: Upstream, **overrides: object) -> ServerThread:
        config = ForwardConfig(upstreams=tuple(("127.0.0.1", u.port) for u in ups))
        return make_server(forward=dataclasses.replace(config, **overrides))

    return make


def ask(server: ServerThread, name: str, timeout: float = 5.0) -> dns.message.Message:
    query = dns.message.make_query(name, "A")
    response = dns.query.tcp(query, *server.address[:1], port=server.address[1], timeout=timeout)
    assert response.id == query.id
    assert response.question == query.question
    return response


def address(response: dns.message.Message) -> str:
    return str(response.answer[0][0].address)


def stats(server: ServerThread, up: Upstream):  # type: ignore[no-untyped-def]
    return server.server.forwarding.forwarder.stats()[f"127.0.0.1:{up.port}"]


def test_answer_and_connection_reused(forwarder: Callable[..., ServerThread]) -> None:
    with upstream(Mode.OK) as up:
        server = forwarder(up, cache_size=0)
        for i in range(5):
            assert address(ask(server, f"q{i}.fwd.example.")) == f"192.0.2.{i + 1}"
        assert up.tcp_connections == 1
        s = stats(server, up)
        assert s.queries == 5
        assert s.answers[0] == 5
        assert s.connections == 1
        assert s.reused == 4
        # The upstream's listener has no Fast Open: no cookie, so no query rode in a SYN
        # (a loopback handshake is over before the first write: that write is not SYN data).
        assert (s.syn_data_sent, s.syn_data_acked) == (0, 0)
        registry = CollectorRegistry()
        registry.register(ForwardCollector(server.server.forwarding.stats))
        text = generate_latest(registry).decode()
        label = f'upstream="127.0.0.1:{up.port}"'
        assert f"dnstfo_upstream_queries_total{{{label}}} 5.0" in text
        assert f'dnstfo_upstream_answers_total{{rcode="NOERROR",{label}}} 5.0' in text
        assert f"dnstfo_upstream_reused_total{{{label}}} 4.0" in text
        assert f'dnstfo_upstream_latency_seconds_bucket{{le="+Inf",{label}}} 5.0' in text
        assert "dnstfo_forward_cache_misses_total 0.0" in text


@pytest.mark.parametrize(
    "bad",
    [
        Mode.SILENT,
        Mode.GARBAGE,
        Mode.WRONG_ID,
        Mode.WRONG_QUESTION,
        Mode.CLOSE_MID_ANSWER,
        Mode.RESET,
    ],
)
def test_fault_fails_over_to_next_upstream(
    forwarder: Callable[..., ServerThread], bad: Mode
) -> None:
    with upstream(bad) as broken, upstream(Mode.OK) as good:
        server = forwarder(broken, good, timeout=0.3, cache_size=0)
        started = time.monotonic()
        assert address(ask(server, "q7.fwd.example.")) == "192.0.2.8"
        assert time.monotonic() - started < 2.0
        assert broken.queries >= 1
        assert good.queries == 1
        s = stats(server, broken)
        assert s.timeouts + s.failures >= 1
        assert s.answers[0] == 0  # nothing from the broken upstream reached the client


@pytest.mark.parametrize("bad", [Mode.SILENT, Mode.GARBAGE, Mode.RESET])
def test_all_upstreams_fail_servfail_within_budget(
    forwarder: Callable[..., ServerThread], bad: Mode
) -> None:
    with upstream(bad) as one, upstream(bad) as two:
        server = forwarder(one, two, timeout=0.3, budget=1.0)
        started = time.monotonic()
        response = ask(server, "q1.fwd.example.")
        assert response.rcode() == dns.rcode.SERVFAIL
        assert time.monotonic() - started < 1.5
        # The server still answers its own zone and still forwards after the failure.
        assert ask(server, "www.test.example.").rcode() == dns.rcode.NOERROR


def test_servfail_log_line_says_why_and_what_was_tried(
    make_server: Callable[..., ServerThread], caplog: pytest.LogCaptureFixture
) -> None:
    with upstream(Mode.RESET) as one, upstream(Mode.SILENT) as two:
        routes = (("127.0.0.1", one.port), ("127.0.0.1", two.port))
        config = ForwardConfig(upstreams=routes, timeout=0.2, budget=5.0)
        caplog.set_level(logging.INFO, logger=QUERY_LOGGER)
        server = make_server(forward=config, query_log=QueryLog.TEXT)
        assert ask(server, "q1.fwd.example.").rcode() == dns.rcode.SERVFAIL
        deadline = time.monotonic() + 5
        lines: list[str] = []
        while not lines and time.monotonic() < deadline:  # written just after the answer
            lines = [r.getMessage() for r in caplog.records if "q1.fwd" in r.getMessage()]
            time.sleep(0.01)
    (line,) = lines
    tried = f"tried=127.0.0.1:{one.port},127.0.0.1:{two.port}"
    assert line.endswith(f"SERVFAIL tcp {line.split()[-4]} forward=failed reason=upstreams {tried}")


def test_budget_ends_before_slow_upstream(forwarder: Callable[..., ServerThread]) -> None:
    with upstream(Mode.SILENT) as slow:
        server = forwarder(slow, timeout=5.0, budget=0.5)
        started = time.monotonic()
        assert ask(server, "q1.fwd.example.").rcode() == dns.rcode.SERVFAIL
        assert 0.4 < time.monotonic() - started < 1.5


def test_failing_upstream_set_aside(forwarder: Callable[..., ServerThread]) -> None:
    with upstream(Mode.SILENT) as broken, upstream(Mode.OK) as good:
        server = forwarder(broken, good, timeout=0.2, cache_size=0)
        for i in range(3):
            ask(server, f"q{i}.fwd.example.")
        before = broken.queries
        ask(server, "q9.fwd.example.")
        assert broken.queries == before  # set aside: the good upstream went first


def test_pipelined_answers_out_of_order_reach_right_clients(
    forwarder: Callable[..., ServerThread],
) -> None:
    with upstream(Mode.REVERSED) as up:
        server = forwarder(up, cache_size=0, connections=1)
        results: dict[int, str] = {}

        def client(i: int) -> None:
            results[i] = address(ask(server, f"q{i}.fwd.example."))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert results == {0: "192.0.2.1", 1: "192.0.2.2"}
        assert up.tcp_connections == 1


def test_acl_refuses_outside_forward_allow(forwarder: Callable[..., ServerThread]) -> None:
    with upstream(Mode.OK) as up:
        server = forwarder(up, allow=(__import__("ipaddress").ip_network("192.0.2.0/24"),))
        assert ask(server, "q1.fwd.example.").rcode() == dns.rcode.REFUSED
        assert up.queries == 0
        query = dns.message.make_query("q1.fwd.example.", "A")
        udp = dns.query.udp(query, "127.0.0.1", port=server.address[1], timeout=5)
        assert udp.rcode() == dns.rcode.REFUSED
        assert up.udp_queries == 0


def test_cache_hit_counts_ttl_down_and_expires(forwarder: Callable[..., ServerThread]) -> None:
    with upstream(Mode.OK, ttl=2) as up:
        server = forwarder(up)
        first = ask(server, "q1.fwd.example.")
        assert first.answer[0].ttl == 2
        second = ask(server, "Q1.fwd.example.")  # any case: the same entry, the client's case
        assert up.queries == 1
        assert second.answer[0].ttl <= 2
        assert str(second.question[0].name) == "Q1.fwd.example."
        deadline = time.monotonic() + 5
        while up.queries == 1 and time.monotonic() < deadline:
            third = ask(server, "q1.fwd.example.")
            assert third.answer[0].ttl <= 2
            time.sleep(0.2)  # waiting for the TTL to run out is the point here
        assert up.queries == 2  # expired after its TTL, asked again
        cache = server.server.forwarding.forwarder.cache
        assert cache.hits >= 1
        assert cache.misses == 2


def test_cache_shared_by_clients_with_different_cookies(
    forwarder: Callable[..., ServerThread],
) -> None:
    """A client's COOKIE and PADDING (RFC 7873, RFC 7830) are for its hop to us: they are
    not in the cache key, not sent upstream, and no client gets another's cookie back."""
    with upstream(Mode.OK) as up:
        server = forwarder(up)
        host, port = server.address[:2]
        for i in range(3):
            cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, bytes([i]) * 8)
            padding = dns.edns.GenericOption(dns.edns.OptionType.PADDING, bytes(i))
            query = dns.message.make_query(
                "q7.fwd.example.", "A", use_edns=0, payload=1232 + i, options=[cookie, padding]
            )
            response = dns.query.tcp(query, host, port=port, timeout=5)
            assert address(response) == "192.0.2.8"
            assert [o.otype for o in response.options] == []
        assert up.queries == 1
        assert up.options == [[dns.edns.OptionType.KEEPALIVE]]  # ours only: no cookie, padding
        assert len(server.server.forwarding.forwarder.cache) == 1


def test_negative_answer_cached_for_soa_minimum(forwarder: Callable[..., ServerThread]) -> None:
    with upstream(Mode.NXDOMAIN, ttl=60) as up:
        server = forwarder(up)
        assert ask(server, "q1.fwd.example.").rcode() == dns.rcode.NXDOMAIN
        assert ask(server, "q1.fwd.example.").rcode() == dns.rcode.NXDOMAIN
        assert up.queries == 1
        # SOA MINIMUM is 1 s: the negative entry lives 1 s (RFC 2308 §5), not the SOA's 60.
        deadline = time.monotonic() + 5
        while up.queries == 1 and time.monotonic() < deadline:
            ask(server, "q1.fwd.example.")
            time.sleep(0.2)
        assert up.queries == 2


def test_udp_transport_retries_over_tcp_on_tc(forwarder: Callable[..., ServerThread]) -> None:
    with upstream(Mode.UDP_TRUNCATED) as up:
        server = forwarder(up, transport=ForwardTransport.UDP, cache_size=0)
        assert address(ask(server, "q3.fwd.example.")) == "192.0.2.4"
        assert up.udp_queries == 1
        assert up.tcp_connections == 1


def test_udp_transport_logged_as_udp_not_as_a_reused_connection(
    make_server: Callable[..., ServerThread], caplog: pytest.LogCaptureFixture
) -> None:
    with upstream(Mode.OK) as up:
        config = ForwardConfig(
            upstreams=(("127.0.0.1", up.port),), transport=ForwardTransport.UDP, cache_size=0
        )
        caplog.set_level(logging.INFO, logger=QUERY_LOGGER)
        server = make_server(forward=config, query_log=QueryLog.TEXT)
        assert address(ask(server, "q1.fwd.example.")) == "192.0.2.2"
        assert up.udp_queries == 1
        deadline = time.monotonic() + 5
        lines: list[str] = []
        while not lines and time.monotonic() < deadline:  # written just after the answer
            lines = [r.getMessage() for r in caplog.records if "q1.fwd" in r.getMessage()]
            time.sleep(0.01)
    (line,) = lines
    assert f"upstream=127.0.0.1:{up.port} udp upstream-ms=" in line


def test_client_gone_before_answer_nothing_breaks(forwarder: Callable[..., ServerThread]) -> None:
    with upstream(Mode.REVERSED) as up:
        server = forwarder(up, cache_size=0, connections=1)
        sock = socket.create_connection(server.address, timeout=5)
        query = dns.message.make_query("q1.fwd.example.", "A")
        sock.sendall(frame(query.to_wire()))
        deadline = time.monotonic() + 5
        while up.queries < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        sock.close()  # gone before its answer: the answer is dropped later
        results: list[str] = []
        t = threading.Thread(target=lambda: results.append(address(ask(server, "q2.fwd.example."))))
        t.start()
        t.join(10)
        assert results == ["192.0.2.3"]


def test_reused_connection_closed_retried_once_on_fresh(
    forwarder: Callable[..., ServerThread],
) -> None:
    with upstream(Mode.CLOSE_ON_SECOND) as up:
        server = forwarder(up, cache_size=0)
        assert address(ask(server, "q1.fwd.example.")) == "192.0.2.2"
        assert address(ask(server, "q2.fwd.example.")) == "192.0.2.3"
        assert up.tcp_connections == 2  # the second query went again on a new connection
        s = stats(server, up)
        assert s.failures == 0
        assert s.connections == 2


def test_upstream_keepalive_timeout_honoured(forwarder: Callable[..., ServerThread]) -> None:
    with upstream(Mode.KEEPALIVE) as up:
        server = forwarder(up, cache_size=0, idle_timeout=30.0)
        query = dns.message.make_query("q1.fwd.example.", "A", use_edns=0)
        response = dns.query.tcp(query, "127.0.0.1", port=server.address[1], timeout=5)
        assert response.options == ()  # the upstream's keepalive is not passed on
        fwd = server.server.forwarding.forwarder
        started = time.monotonic()
        while server.call(fwd.connections) and time.monotonic() - started < 5:
            time.sleep(0.02)  # polling for the close, bounded
        assert server.call(fwd.connections) == 0
        assert 0.2 < time.monotonic() - started < 2.0  # 0.3 s, not the 30 s of our own


def test_idle_timer_waits_for_forwarded_answer(
    make_server: Callable[..., ServerThread],
) -> None:
    """A connection whose answer is owed by a slow upstream is not idle: it outlives the
    idle timeout (0.3 s) and gets its SERVFAIL when the budget (1 s) ends."""
    from dnstfo.server.config import Limits

    with upstream(Mode.SILENT) as slow:
        config = ForwardConfig(upstreams=(("127.0.0.1", slow.port),), timeout=1.0, budget=1.0)
        server = make_server(forward=config, limits=Limits.from_seconds(idle_timeout=0.3))
        started = time.monotonic()
        response = ask(server, "q1.fwd.example.")
        assert response.rcode() == dns.rcode.SERVFAIL
        assert time.monotonic() - started > 0.9


def test_in_flight_bound_servfails_at_once(forwarder: Callable[..., ServerThread]) -> None:
    with upstream(Mode.SILENT) as slow:
        server = forwarder(slow, max_in_flight=1, timeout=2.0, budget=2.0, cache_size=0)
        held = socket.create_connection(server.address, timeout=5)
        held.sendall(frame(dns.message.make_query("q1.fwd.example.", "A").to_wire()))
        deadline = time.monotonic() + 5
        while slow.queries < 1 and time.monotonic() < deadline:
            time.sleep(0.01)  # polling for the first query to reach the upstream, bounded
        started = time.monotonic()
        assert ask(server, "q2.fwd.example.").rcode() == dns.rcode.SERVFAIL
        assert time.monotonic() - started < 1.0  # at once, not after the 2 s budget
        assert server.server.forwarding.forwarder.overloaded == 1
        held.close()


def test_answered_queries_are_not_kept_until_their_timeout(
    forwarder: Callable[..., ServerThread],
) -> None:
    """Each attempt's deadline waits in a heap; once answered, its query must not stay
    alive there for the timeout (a timeout's worth of queries held made every full
    garbage collection walk them: 13 ms pauses at 40,000 q/s)."""
    import gc

    from dnstfo.server.upstream import _Query

    with upstream(Mode.OK) as up:
        server = forwarder(up, cache_size=0, timeout=30.0, budget=30.0)
        with socket.create_connection(server.address, timeout=10) as conn:
            decoder = FrameDecoder()
            for batch in range(20):
                names = [f"q{batch * 50 + i}.fwd.example." for i in range(50)]
                conn.sendall(
                    b"".join(frame(dns.message.make_query(n, "A").to_wire()) for n in names)
                )
                got = 0
                while got < len(names):
                    got += len(decoder.feed(conn.recv(65536)))
        alive = sum(isinstance(o, _Query) for o in gc.get_objects())
        assert up.queries == 1000
        assert alive < 400  # at most the heap's slack, not the 1,000 answered
