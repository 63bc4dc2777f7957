"""The DNS side of a query: build the message, check the answer (dnspython, lazily light).

Only ``dns.message`` and its dependencies are imported here (not ``dns.query`` nor
``dns.resolver``): start-up time is part of what a one-shot query costs.
"""

from __future__ import annotations

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

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


def is_transfer(query: dns.message.Message) -> bool:
    """Whether ``query`` asks for a zone transfer (AXFR), answered in several messages."""
    return bool(query.question) and query.question[0].rdtype == dns.rdatatype.AXFR


def parse_response(
    query: dns.message.Message, wire: bytes, *, continuation: bool = False
) -> dns.message.Message:
    """Parses a response and checks that it answers ``query``.

    A transfer's messages keep one record per RRset, in wire order (dig prints them so, and
    the two SOAs that open and close a one-message transfer stay two records).

    Args:
        query: the query sent.
        wire: one message, without its length prefix.
        continuation: a transfer's later message, whose question may be empty (RFC 5936
            §2.2.1).

    Raises:
        RemoteProtocolError: malformed, not a response, or its ID or question differ.
    """
    xfr = is_transfer(query)
    try:
        response = dns.message.from_wire(wire, xfr=xfr, one_rr_per_rrset=xfr)
    except dns.exception.DNSException as exc:
        raise RemoteProtocolError(malformed(wire, exc)) from exc
    if not response.flags & dns.flags.QR:
        raise RemoteProtocolError("the server sent a query, not a response")
    if response.id != query.id:
        raise RemoteProtocolError(f"response ID {response.id} does not match query ID {query.id}")
    if response.question != query.question and not (continuation and not response.question):
        got = "; ".join(r.to_text() for r in response.question) or "none"
        raise RemoteProtocolError(f"response question ({got}) does not match the query's")
    return response


def malformed(wire: bytes, exc: dns.exception.DNSException) -> str:
    """Why dnspython could not parse a response, in our words (as the probe puts it)."""
    import dns.name

    if isinstance(exc, dns.message.ShortHeader):
        return f"a {len(wire)}-byte message is shorter than a DNS header"
    if isinstance(exc, dns.message.TrailingJunk):
        why = "bytes follow the last record"
    elif isinstance(exc, dns.name.BadPointer):
        why = "a name's compression pointer points forward"
    elif isinstance(exc, dns.name.BadLabelType | dns.name.LabelTooLong | dns.name.NameTooLong):
        why = "a name is badly encoded"
    else:
        why = "its records run past its end or are badly encoded"
    return f"malformed response ({len(wire)} bytes): {why}"


def transfer_soas(response: dns.message.Message, *, first: bool) -> int:
    """The SOA records in one message of an AXFR (RFC 5936 §2.2): the second one closes it.

    Returns:
        0 when a refused or empty first message means there is no transfer to read.

    Raises:
        RemoteProtocolError: the transfer does not start with an SOA, or a later message
            has an error RCODE.
    """
    rcode = response.rcode()
    if first and (rcode != dns.rcode.NOERROR or not response.answer):
        return 0
    if rcode != dns.rcode.NOERROR:
        raise RemoteProtocolError(f"the transfer stopped with {dns.rcode.to_text(rcode)}")
    if first and response.answer[0].rdtype != dns.rdatatype.SOA:
        raise RemoteProtocolError("the transfer does not start with the zone's SOA")
    return sum(len(r) for r in response.answer if r.rdtype == dns.rdatatype.SOA)
