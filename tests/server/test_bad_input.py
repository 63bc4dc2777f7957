"""Malformed input gets FORMERR or a close, never a crash, and never slows other clients."""

from __future__ import annotations

import resource
import socket
import time

import dns.edns
import dns.message
import dns.query
import dns.rcode
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnstfo.answer.authority import Authority
from dnstfo.answer.responder import Responder
from dnstfo.server.config import Limits, QueryLog
from dnstfo.server.querylog import QueryLogger
from dnstfo.server.session import TcpSession
from dnstfo.server.stats import ServerStats
from dnstfo.wire.connection import ConnectionPolicy
from dnstfo.wire.framing import FrameDecoder, frame
from tests.server.conftest import ServerThread, read_messages, tcp_connect

GOOD = dns.message.make_query("www.test.example.", "A").to_wire()


def compression_loop() -> bytes:
    header = b"\x00\x07\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    return header + b"\xc0\x0c" + b"\x00\x01\x00\x01"  # QNAME points at itself


def two_questions() -> bytes:
    q = bytearray(GOOD)
    q[5] = 2  # QDCOUNT 2, but only one question follows
    return bytes(q)


@pytest.mark.parametrize(
    ("message", "rcode"),
    [
        (compression_loop(), dns.rcode.FORMERR),
        (two_questions(), dns.rcode.FORMERR),
        (GOOD[:20], dns.rcode.FORMERR),  # truncated inside the question
        (b"\x00\x09" + b"\x01\x00" + b"\xff" * 20, dns.rcode.FORMERR),  # garbage counts
    ],
)
def test_malformed_message_gets_formerr(server: ServerThread, message: bytes, rcode: int) -> None:
    with tcp_connect(server.address) as sock:
        sock.sendall(frame(message) + frame(GOOD))
        first, second = read_messages(sock, 2)
    assert dns.message.from_wire(first, ignore_trailing=True).rcode() == rcode
    assert dns.message.from_wire(second).answer  # the connection stays usable


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x00",  # zero-length frame
        b"\x00\x05ab",  # half a frame, then close
        b"\x00",  # half a length prefix
    ],
)
def test_bad_framing_closes_without_answer(server: ServerThread, data: bytes) -> None:
    with tcp_connect(server.address) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        assert read_messages(sock, 1) == []
    assert server.server.stats.protocol_errors == 1
    host, port = server.address
    q = dns.message.make_query("www.test.example.", "A")
    assert dns.query.tcp(q, host, port=port, timeout=5).answer


def test_zero_length_frame_closes_even_mid_stream(server: ServerThread) -> None:
    with tcp_connect(server.address) as sock:
        sock.sendall(frame(GOOD) + b"\x00\x00" + frame(GOOD))
        answers = read_messages(sock, 3)
    # The query before the bad frame is answered; nothing after it is.
    assert len(answers) == 1
    assert server.server.stats.protocol_errors == 1


def test_byte_at_a_time_drip_is_answered(server: ServerThread) -> None:
    with tcp_connect(server.address) as sock:
        for byte in frame(GOOD):
            sock.send(bytes([byte]))
        (answer,) = read_messages(sock, 1)
    assert dns.message.from_wire(answer).answer


def session() -> TcpSession:
    authority = Authority()
    return TcpSession(
        Responder(authority),
        ConnectionPolicy(max_queries=50),
        0,
        ("192.0.2.9", 4000),
        True,
        ServerStats(),
        QueryLogger(QueryLog.OFF),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_fuzz_session_bytes_in_bytes_out(chunks: list[bytes]) -> None:
    s = session()
    decoder = FrameDecoder()
    for now, chunk in enumerate(chunks):
        s.receive_data(chunk, now)
        out = bytes(s.data_to_send())
        s.data_sent(len(out), now)
        for message in decoder.feed(out):  # answers are well framed ...
            assert len(message) >= 12  # ... and at least a header
        if not s.wants_read():
            break
    s.receive_eof(len(chunks))
    assert s.close_expected()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=120), min_size=1, max_size=6))
def test_fuzz_framed_garbage_always_gets_an_answer_or_nothing(bodies: list[bytes]) -> None:
    s = session()
    s.receive_data(b"".join(frame(b) for b in bodies), 0)
    out = bytes(s.data_to_send())
    answers = FrameDecoder().feed(out)
    assert len(answers) <= len(bodies)
    ids = {body[:2] for body in bodies}
    for answer in answers:
        assert answer[:2] in ids  # every answer carries the ID of a query we sent
        assert answer[2] & 0x80  # QR set: a response, never an echoed query


def raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def test_1000_connections_idle_and_dripping_do_not_stop_others(make_server) -> None:  # type: ignore[no-untyped-def]
    raise_nofile(4096)
    server = make_server(limits=Limits.from_seconds(max_per_client=2000, idle_timeout=30))
    address = server.address
    idle: list[socket.socket] = []
    drips: list[socket.socket] = []
    try:
        for i in range(1000):
            sock = socket.create_connection(address, timeout=5)
            sock.setblocking(False)
            (drips if i % 2 else idle).append(sock)
        data = frame(GOOD)
        host, port = address
        q = dns.message.make_query("www.test.example.", "A")
        worst = 0.0
        for step in range(len(data) - 1):  # every dripping client sends one more byte
            for sock in drips:
                sock.send(data[step : step + 1])
            start = time.monotonic()
            assert dns.query.tcp(q, host, port=port, timeout=5).answer
            assert dns.query.udp(q, host, port=port, timeout=5).answer
            worst = max(worst, time.monotonic() - start)
        assert server.call(lambda: server.server.connections) >= 1000
        assert worst < 1.0, f"a well-behaved client waited {worst:.3f} s"
    finally:
        for sock in idle + drips:
            sock.close()


def test_bad_keepalive_in_an_unparseable_query_does_not_crash() -> None:
    option = dns.edns.GenericOption(dns.edns.OptionType.KEEPALIVE, b"\x00\x05")
    wire = bytearray(
        dns.message.make_query("a.example.", "A", use_edns=0, options=[option]).to_wire()
    )
    wire[5] = 2  # QDCOUNT 2 with one question: does not parse
    s = session()
    s.receive_data(frame(bytes(wire)), 0)
    (answer,) = FrameDecoder().feed(bytes(s.data_to_send()))
    assert answer[3] & 0xF == dns.rcode.FORMERR
