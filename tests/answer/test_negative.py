"""Negative answers from the index are the bytes dnspython renders, for every name and type.

Every name of the example zones, names below them, beside them and under wildcards, in
mixed case, with and without EDNS, over UDP and TCP: where the index answers, its bytes
equal the full path's; where the full path says NXDOMAIN or NODATA from the zone's own
data, the index answers (so it really carries the load).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnstfo.answer.authority import Authority
from dnstfo.answer.negative import NegativeIndex
from dnstfo.answer.responder import Responder, Transport
from tests.answer.conftest import uncached

TYPES = ("A", "AAAA", "MX", "TXT", "NS", "SOA", "CNAME", "SRV", "ANY", "DS", "TYPE65280")
EDNS: tuple[dict[str, object], ...] = (
    {"use_edns": False},
    {"use_edns": 0},
    {"use_edns": 0, "want_dnssec": True},
    {"use_edns": 0, "payload": 100},
)


def names(authority: Authority) -> Iterator[str]:
    """Every owner and empty non-terminal, and names around them."""
    for zone in authority.zones.values():
        for name in sorted(zone.names):
            text = name.to_text()
            yield text
            yield "nope." + text
            yield "a.b.c." + text
            yield text.upper()
            if text.startswith("*"):
                yield "x." + text[2:]
                yield "y.x." + text[2:]
    # Outside every zone: REFUSED, forwardable.
    yield from ("nothere.example.org.", "example.org.", "com.", ".", "Other.TEST.", "a\\.b.org.")


def full_and_fast(authority: Authority) -> tuple[Responder, Responder]:
    slow = uncached(authority, negative_index=False)
    return slow, uncached(authority)


def cases(authority: Authority) -> Iterator[tuple[str, str, dict[str, object], Transport]]:
    transports = (Transport.UDP, Transport.TCP)
    yield from itertools.product(names(authority), TYPES, EDNS, transports)


def test_index_answers_equal_the_full_path(authority: Authority) -> None:
    slow, fast = full_and_fast(authority)
    index = NegativeIndex(authority)
    answered = refused = 0
    for name, rdtype, edns, transport in cases(authority):
        wire = dns.message.make_query(name, rdtype, **edns).to_wire()  # type: ignore[arg-type]
        full = slow.respond(wire, transport=transport)
        quick = fast.respond(wire, transport=transport)
        assert quick.wire == full.wire, (name, rdtype, edns, transport)
        assert (quick.rcode, quick.qname, quick.qtype) == (full.rcode, full.qname, full.qtype)
        assert quick.forwardable == full.forwardable
        from_index = index.answer(wire, 65535, 1232)
        assert full.wire is not None
        response = dns.message.from_wire(full.wire)
        negative_here = full.forwardable or (
            response.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)
            and not response.answer
            and len(response.authority) == 1
            and response.authority[0].rdtype == dns.rdatatype.SOA
            and rdtype != "DS"
        )
        assert (from_index is not None) == negative_here, (name, rdtype, edns)
        answered += from_index is not None
        refused += full.forwardable
    assert answered > 1000
    assert refused == 6 * len(TYPES) * len(EDNS) * 2


@settings(max_examples=300, deadline=None)
@given(
    labels=st.lists(st.binary(min_size=1, max_size=8).filter(lambda b: b"." not in b), max_size=3),
    zone=st.sampled_from(
        ["example.com.", "wild.example.com.", "example.net.", "child.example.com."]
    ),
    qtype=st.sampled_from([1, 2, 5, 6, 15, 16, 28, 43, 255, 65280]),
    do=st.booleans(),
)
def test_random_names_match_the_full_path(
    authority: Authority, labels: list[bytes], zone: str, qtype: int, do: bool
) -> None:
    slow, fast = full_and_fast(authority)
    name = dns.name.Name(tuple(labels) + dns.name.from_text(zone).labels)
    query = dns.message.make_query(name, qtype, use_edns=0, want_dnssec=do)
    wire = query.to_wire()
    full = slow.respond(wire, transport=Transport.UDP)
    quick = fast.respond(wire, transport=Transport.UDP)
    assert quick.wire == full.wire
    assert quick.qname == full.qname


def test_negative_answers_do_not_evict_cached_answers(authority: Authority) -> None:
    responder = Responder(authority)
    hot = dns.message.make_query("www.example.com.", "A").to_wire()
    responder.respond(hot, transport=Transport.UDP)
    for i in range(2 * responder.config.cache_size // 100):
        random = dns.message.make_query(f"r{i}.example.com.", "A").to_wire()
        assert responder.respond(random, transport=Transport.UDP).rcode == dns.rcode.NXDOMAIN
    assert len(responder.cache) == 1
    assert responder.respond(hot, transport=Transport.UDP).cached
    again = dns.message.make_query("r0.example.com.", "A").to_wire()
    assert responder.respond(again, transport=Transport.UDP).cached  # its own cache


@pytest.mark.parametrize("name", ["nope.example.com.", "www.example.com."])
def test_nodata_and_nxdomain_keep_rd_and_cd(authority: Authority, name: str) -> None:
    query = dns.message.make_query(name, "TYPE65280", use_edns=0)
    query.flags |= dns.flags.CD
    reply = Responder(authority).respond(query.to_wire(), transport=Transport.UDP)
    assert reply.wire is not None
    response = dns.message.from_wire(reply.wire)
    assert response.flags & dns.flags.CD
    assert response.flags & dns.flags.RD
    assert response.flags & dns.flags.AA
