"""The exchange core without sockets: phases, deadlines, decoding, and the light answer check."""

from __future__ import annotations

import dns.message
import dns.rcode
import pytest

from dnstfo.client.exchange import Exchange, check_header, question_of
from dnstfo.errors import RemoteProtocolError
from dnstfo.wire.framing import frame


def query(name: str = "Example.COM.", rdtype: str = "SOA") -> dns.message.Message:
    return dns.message.make_query(name, rdtype, use_edns=0)


def test_phases_and_per_phase_deadlines() -> None:
    q = query()
    ex = Exchange(q, q.to_wire(), 2.0, 1_000, per_phase=True)
    assert ex.phase == "connect"
    assert ex.deadline_ns == 1_000 + 2_000_000_000
    ex.on_connected(5_000)
    assert ex.phase == "first byte"
    assert ex.deadline_ns == 5_000 + 2_000_000_000
    assert not ex.expired(ex.deadline_ns - 1)
    assert ex.expired(ex.deadline_ns)
    assert ex.timeout_error().phase == "first byte"


def test_whole_exchange_deadline_does_not_move() -> None:
    q = query()
    ex = Exchange(q, q.to_wire(), 2.0, 0)
    ex.on_connected(1_000_000_000)
    assert ex.deadline_ns == 2_000_000_000


def test_decoding_one_byte_at_a_time_and_all_at_once() -> None:
    q = query()
    response = dns.message.make_response(q).to_wire()
    data = frame(response) + b"\x00"  # a trailing byte of the next frame stays buffered
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        ex = Exchange(q, q.to_wire(), 1.0, 0)
        ex.on_connected(1)
        got: list[bytes] = []
        for i, chunk in enumerate(chunks):
            got += ex.on_data(chunk, 10 + i)
        assert got == [response]
        assert ex.first_byte == 10
        assert ex.done is not None
        assert ex.check(got[0]).id == q.id


def test_eof_before_an_answer_is_a_protocol_error() -> None:
    q = query()
    ex = Exchange(q, q.to_wire(), 1.0, 0)
    with pytest.raises(RemoteProtocolError, match="closed"):
        ex.on_data(b"", 5)


def test_unsent_shrinks_as_bytes_go_out() -> None:
    q = query()
    ex = Exchange(q, q.to_wire(), 1.0, 0)
    total = len(ex.data)
    ex.on_sent(3)
    assert len(ex.unsent) == total - 3


def test_check_header_accepts_a_matching_answer_in_any_case() -> None:
    q = query()
    r = dns.message.make_response(dns.message.make_query("example.com.", "SOA", use_edns=0))
    r.id = q.id
    r.set_rcode(dns.rcode.NXDOMAIN)
    assert check_header(q.id, question_of(q.to_wire()), r.to_wire()) == dns.rcode.NXDOMAIN


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (lambda w: w[:11], "shorter than a DNS header"),
        (lambda w: w[:2] + bytes([w[2] & 0x7F]) + w[3:], "not a response"),
        (lambda w: bytes([w[0] ^ 1]) + w[1:], "does not match query ID"),
        (lambda w: w.replace(b"\x07Example", b"\x07Exbmple"), "question"),
        (lambda w: w.replace(b"\x00\x06\x00\x01", b"\x00\x01\x00\x01", 1), "question"),
        (lambda w: w[:4] + b"\x00\x02" + w[6:], "question"),
    ],
)
def test_check_header_refuses(mutate, why) -> None:  # type: ignore[no-untyped-def]
    q = query()
    r = dns.message.make_response(q).to_wire()
    with pytest.raises(RemoteProtocolError, match=why):
        check_header(q.id, question_of(q.to_wire()), mutate(r))


def test_question_of_needs_a_whole_question() -> None:
    with pytest.raises(ValueError, match="question"):
        question_of(query().to_wire()[:20])
