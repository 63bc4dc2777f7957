"""The DNS side of a query: build the message, check the answer (dnspython, lazily light).

Only ``dns.message`` and its dependencies are imported here (not ``dns.query`` nor
``dns.resolver``): start-up time is part of what a one-shot query costs.
"""

from __future__ import annotations

import dns.exception
import dns.flags
import dns.message

from dnstfo.client.config import QueryConfig
from dnstfo.errors import RemoteProtocolError, UsageError


def build_query(config: QueryConfig) -> dns.message.Message:
    """Returns the query message ``config`` describes (RD unless ``recurse`` is off).

    Raises:
        UsageError: the name, type or class is not valid.
    """
    try:
        query = dns.message.make_query(
            config.qname,
            config.rdtype,
            config.rdclass,
            use_edns=0 if config.edns_payload > 0 else False,
            payload=max(config.edns_payload, 512),
            want_dnssec=config.dnssec,
        )
    except (dns.exception.DNSException, ValueError) as exc:
        raise UsageError(f"cannot make a query for {config.qname!r}: {exc}") from exc
    if not config.recurse:
        query.flags &= ~dns.flags.RD
    return query


def parse_response(query: dns.message.Message, wire: bytes) -> dns.message.Message:
    """Parses a response and checks that it answers ``query``.

    Raises:
        RemoteProtocolError: malformed, not a response, or its ID or question differ.
    """
    try:
        response = dns.message.from_wire(wire)
    except dns.exception.DNSException as exc:
        raise RemoteProtocolError(f"malformed response ({len(wire)} bytes): {exc}") from exc
    if not response.flags & dns.flags.QR:
        raise RemoteProtocolError("the server sent a query, not a response")
    if response.id != query.id:
        raise RemoteProtocolError(f"response ID {response.id} does not match query ID {query.id}")
    if response.question != query.question:
        got = "; ".join(r.to_text() for r in response.question) or "none"
        raise RemoteProtocolError(f"response question ({got}) does not match the query's")
    return response
