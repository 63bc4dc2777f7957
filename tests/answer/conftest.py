"""Fixtures for answer/: the example zones, a responder, and a helper that asks and decodes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.rdatatype
import dns.zone
import dnslib
import pytest

from dnstfo.answer.authority import Authority
from dnstfo.answer.responder import Reply, Responder, ResponderConfig, Transport

ZONES = Path(__file__).resolve().parents[2] / "zones"


@dataclass(frozen=True)
class Asked:
    """One query through the responder, its reply decoded by dnspython and by dnslib."""

    query: dns.message.Message
    reply: Reply
    msg: dns.message.Message
    lib: dnslib.DNSRecord


def decode(query: dns.message.Message, reply: Reply) -> Asked:
    """Decodes a reply twice, asserting the two decoders and the header agree."""
    assert reply.wire is not None
    msg = dns.message.from_wire(reply.wire)
    lib = dnslib.DNSRecord.parse(reply.wire)
    assert lib.header.id == query.id == msg.id
    assert lib.header.qr == 1
    assert lib.header.rcode == msg.rcode() & 0xF
    assert lib.header.aa == bool(msg.flags & dns.flags.AA)
    assert len(lib.rr) == sum(len(r) for r in msg.answer)
    assert len(lib.auth) == sum(len(r) for r in msg.authority)
    return Asked(query, reply, msg, lib)


@pytest.fixture(scope="session")
def authority() -> Authority:
    auth, errors = Authority.load(ZONES)
    assert errors == []
    return auth


@pytest.fixture(scope="session")
def example_com() -> dns.zone.Zone:
    return dns.zone.from_file(str(ZONES / "example.com.zone"), relativize=False)


@pytest.fixture
def responder(authority: Authority) -> Responder:
    return Responder(authority)


AskFn = Callable[..., Asked]


@pytest.fixture
def ask(responder: Responder) -> AskFn:
    """ask(name, type, transport=UDP, **make_query kwargs) -> Asked."""

    def _ask(
        name: str,
        rdtype: str = "A",
        transport: Transport = Transport.UDP,
        responder_: Responder | None = None,
        **kwargs: object,
    ) -> Asked:
        query = dns.message.make_query(name, rdtype, **kwargs)  # type: ignore[arg-type]
        reply = (responder_ or responder).respond(query.to_wire(), transport=transport)
        return decode(query, reply)

    return _ask


def uncached(authority: Authority, **config: object) -> Responder:
    """A responder with the cache switched off."""
    return Responder(authority, ResponderConfig(cache_size=0, **config))  # type: ignore[arg-type]
