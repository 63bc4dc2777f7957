"""Zone transfer (AXFR, RFC 5936) as pure functions: a policy check and the messages.

The server runs transfers over TCP only. Over UDP an AXFR is answered REFUSED: RFC 5936
§4.2 leaves AXFR over UDP undefined, the query itself is well formed (so not FORMERR), and
REFUSED tells the client that this server will not do it this way. IXFR (RFC 1995) over TCP
is answered with the whole zone in AXFR form, which RFC 1995 §4 allows; over UDP it gets the
current SOA only (RFC 1995 §2), so the client knows to come back over TCP.

A transfer is a sequence of messages with the query's ID: the SOA first, every other RRset,
the SOA again last (RFC 5936 §2.2, which asks for no order in between: the zone's own order
is used, so nothing is sorted up front). Each message stays under ``max_size`` octets; an
RRset too big for one message is split into single records. The messages are made one at a
time as the caller asks (:func:`iter_axfr_messages`), so a server streams a big zone at the
pace its client reads, never holding more than one message of it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence

import dns.exception
import dns.flags
import dns.message
import dns.renderer
import dns.rrset

from dnstfo.answer.zones import LoadedZone

#: Under the 16 KiB most implementations use, leaving room for the 2-byte TCP prefix.
AXFR_MESSAGE_SIZE = 16_000

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def axfr_allowed(client_ip: str | None, allow: Sequence[Network]) -> bool:
    """Whether a client may transfer zones (the default, an empty list, allows nobody).

    Args:
        client_ip: the client's address as text; IPv4-mapped IPv6 counts as IPv4.
        allow: the networks allowed to transfer.

    Returns:
        True if the address lies in one of the networks.
    """
    if client_ip is None or not allow:
        return False
    try:
        address = ipaddress.ip_address(client_ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address.version == net.version and address in net for net in allow)


def _zone_rrsets(zone: LoadedZone) -> Iterator[dns.rrset.RRset]:
    """SOA, every other RRset of the zone in the zone's order, SOA again (RFC 5936 §2.2)."""
    yield zone.soa
    origin, soa_type = zone.origin, zone.soa.rdtype
    for name, by_type in zone.rrsets.items():
        for rdtype, rrset in by_type.items():
            if not (rdtype == soa_type and name == origin):
                yield rrset
    yield zone.soa


def _split(rrset: dns.rrset.RRset) -> Iterator[dns.rrset.RRset]:
    """One RRset as single-record RRsets."""
    for rdata in rrset:
        single = dns.rrset.RRset(rrset.name, rrset.rdclass, rrset.rdtype, rrset.covers)
        single.add(rdata, rrset.ttl)
        yield single


def iter_axfr_messages(
    zone: LoadedZone,
    query: dns.message.Message,
    max_size: int = AXFR_MESSAGE_SIZE,
    our_payload: int = 1232,
) -> Iterator[bytes]:
    """The messages of an AXFR response, each rendered when asked for.

    The first message echoes the question; later ones carry none (RFC 5936 §2.2.1). Each
    message has AA set and the query's ID and RD bit, and an OPT RR when the query had one.

    Args:
        zone: the zone to transfer; the caller checked the question names its apex and
            that :func:`axfr_allowed` said yes.
        query: the AXFR (or IXFR) query.
        max_size: the largest message, in octets.
        our_payload: the UDP payload size our OPT RR advertises (RFC 6891 §6.2.3).

    Yields:
        The messages, in order, unframed.

    Raises:
        dns.exception.TooBig: a single record does not fit in ``max_size`` (raised by the
            ``next`` that reaches it).
    """
    flags = dns.flags.QR | dns.flags.AA | (query.flags & dns.flags.RD)
    rrsets = _zone_rrsets(zone)
    split: list[dns.rrset.RRset] = []  # records of an RRset too big for one message
    renderer = _start(query, flags, max_size, with_question=True)
    records = 0
    pending = next(rrsets, None)
    while pending is not None:
        rrset = pending
        try:
            renderer.add_rrset(dns.renderer.ANSWER, rrset)
            records += 1
            pending = split.pop() if split else next(rrsets, None)
            continue
        except dns.exception.TooBig:
            pass
        if records == 0 and len(rrset) == 1:
            raise dns.exception.TooBig(f"{rrset.name} {rrset.rdtype!r} exceeds {max_size}")
        if records == 0:
            split = list(_split(rrset))
            split.reverse()  # used as a stack
            pending = split.pop()
            continue
        yield _finish(renderer, query, our_payload)
        renderer = _start(query, flags, max_size, with_question=False)
        records = 0
    yield _finish(renderer, query, our_payload)


def axfr_messages(
    zone: LoadedZone,
    query: dns.message.Message,
    max_size: int = AXFR_MESSAGE_SIZE,
    our_payload: int = 1232,
) -> list[bytes]:
    """All messages of an AXFR response at once (see :func:`iter_axfr_messages`)."""
    return list(iter_axfr_messages(zone, query, max_size, our_payload))


#: Room kept in every message for the OPT RR (11 octets, no options).
_OPT_SIZE = 11


def _start(
    query: dns.message.Message, flags: int, max_size: int, *, with_question: bool
) -> dns.renderer.Renderer:
    """A renderer for the next message of a transfer."""
    renderer = dns.renderer.Renderer(query.id, flags, max_size)
    if query.edns >= 0:
        renderer.reserve(_OPT_SIZE)
    if with_question:
        question = query.question[0]
        renderer.add_question(question.name, question.rdtype, question.rdclass)
    return renderer


def _finish(renderer: dns.renderer.Renderer, query: dns.message.Message, our_payload: int) -> bytes:
    """Closes one message: the OPT RR if the query had EDNS, then the header."""
    if query.edns >= 0:
        renderer.release_reserved()
        renderer.add_edns(0, query.ednsflags & dns.flags.DO, our_payload)
    renderer.write_header()
    return bytes(renderer.get_wire())
