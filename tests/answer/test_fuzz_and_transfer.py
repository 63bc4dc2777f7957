"""Arbitrary bytes never raise; zone transfer splitting and the allow list."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dnslib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnstfo.answer.authority import Authority
from dnstfo.answer.responder import Responder, Transport
from dnstfo.answer.transfer import axfr_allowed, axfr_messages

PLAIN = dns.message.make_query("www.example.com", "A", use_edns=0).to_wire()


def check_reply(wire: bytes, responder: Responder, transport: Transport) -> None:
    reply = responder.respond(wire, transport=transport)
    if reply.wire is None:
        assert len(wire) < 12 or wire[2] & 0x80
        return
    assert reply.wire[:2] == wire[:2]
    assert reply.wire[2] & 0x80
    assert reply.rcode != dns.rcode.SERVFAIL  # only a bug of ours gives SERVFAIL
    parsed = dns.message.from_wire(reply.wire)
    try:
        dnslib.DNSRecord.parse(reply.wire)
    except dnslib.DNSError:
        # dnslib decodes labels as text; DNS labels are any octets (RFC 2181 §11)
        assert any(byte >= 0x80 for q in parsed.question for label in q.name for byte in label)


@settings(max_examples=300, deadline=None)
@given(wire=st.binary(max_size=300), tcp=st.booleans())
def test_arbitrary_bytes(authority: Authority, wire: bytes, tcp: bool) -> None:
    check_reply(wire, Responder(authority), Transport.TCP if tcp else Transport.UDP)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_queries(authority: Authority, data: st.DataObject) -> None:
    wire = bytearray(PLAIN)
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(wire) - 1))
        wire[index] = data.draw(st.integers(0, 255))
    check_reply(bytes(wire), Responder(authority), Transport.UDP)


@pytest.mark.parametrize(
    ("client", "allowed"),
    [
        ("127.0.0.1", True),
        ("::ffff:127.0.0.5", True),
        ("2001:db8::1", True),
        ("fe80::1%eth0", False),
        ("192.0.2.1", False),
        ("not an address", False),
        (None, False),
    ],
)
def test_axfr_allowed(client: str | None, allowed: bool) -> None:
    allow = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("2001:db8::/32")]
    assert axfr_allowed(client, allow) is allowed
    assert axfr_allowed(client, []) is False


def test_axfr_split_under_size_limit(tmp_path: Path) -> None:
    lines = ["@ 60 SOA ns h 9 2 3 4 60", "@ 60 NS ns", "ns 60 A 192.0.2.1"]
    lines += [f'h{i} 60 TXT "{"y" * 200}"' for i in range(300)]
    lines += [f'bigset 60 TXT "{i:04d}{"z" * 200}"' for i in range(120)]  # > one message
    (tmp_path / "x.test").write_text("\n".join(lines) + "\n")
    authority, errors = Authority.load(tmp_path)
    assert errors == []
    zone = authority.zones[dns.name.from_text("x.test")]
    query = dns.message.make_query("x.test", "AXFR", use_edns=0)
    messages = axfr_messages(zone, query, max_size=16_000)
    assert len(messages) > 5
    total = 0
    for index, wire in enumerate(messages):
        assert len(wire) <= 16_000
        msg = dns.message.from_wire(wire, one_rr_per_rrset=True)
        assert msg.id == query.id
        assert msg.edns == 0
        assert bool(msg.question) == (index == 0)
        total += len(msg.answer)
        assert len(dnslib.DNSRecord.parse(wire).rr) == len(msg.answer)
    assert total == 3 + 300 + 120 + 1


def test_axfr_record_too_big_for_a_message(tmp_path: Path) -> None:
    (tmp_path / "y.test").write_text(
        "@ 60 SOA ns h 9 2 3 4 60\n@ 60 NS ns\nns 60 A 192.0.2.1\n" + f'big 60 TXT "{"a" * 250}"\n'
    )
    authority, _ = Authority.load(tmp_path)
    zone = authority.zones[dns.name.from_text("y.test")]
    with pytest.raises(dns.exception.TooBig):
        axfr_messages(zone, dns.message.make_query("y.test", "AXFR"), max_size=200)
