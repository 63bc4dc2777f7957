"""Bytes in, bytes out: the front of ``answer/`` that the server calls for every query.

Theory of operation, in the order the checks run:

1. Fewer than 12 bytes: no header to echo, no reply. QR set: a response, never answered
   (answering responses invites loops and reflection).
2. OPCODE other than QUERY: header-only NOTIMP (RFC 1035 §4.1.1), except when the query came
   in the data of a TCP SYN: REFUSED. RFC 7413 §6 warns that SYN data can be delivered twice,
   so only idempotent requests may be served from it; QUERY is, UPDATE or NOTIFY are not.
   REFUSED says "not like this" (retry after a full handshake), which stays true when such
   opcodes are implemented one day; NOTIMP would be a statement about the opcode itself.
3. Bytes that do not parse: header-only FORMERR (NOTAUTH for an unverifiable TSIG), see
   ``rcode``. QDCOUNT other than 1: FORMERR.
4. EDNS version above 0: BADVERS with our OPT of version 0 (RFC 6891 §6.1.3).
5. AXFR and IXFR: see ``transfer`` (TCP only, allow list, default nobody).
6. Everything else goes to ``Authority.answer``. A REFUSED for a name outside our zones is
   marked ``Reply.forwardable``: this is the seam where a forwarder takes over, by sending
   the query upstream instead of the reply. The responder itself never does I/O: it only
   asks the forwarder's cache through the ``forwarded`` hook (see ``ForwardLookup``), and a
   hit is the reply, no longer forwardable, with a note for the query log.
7. EDNS on the way out: an OPT echoes the query's (our payload size, DO copied, RFC 3225 §3;
   no options). UDP responses fit the client's payload size, at least 512 and at most ours
   (RFC 6891 §6.2.5); a response that does not fit loses its additional section if that is
   enough and it is not a referral (RFC 2181 §9), otherwise it becomes header, question and
   OPT with TC set. TCP responses may use up to 65535 octets (RFC 7766 §8). Records keep
   their zone-file order (dnspython would shuffle them): the same query always gets the
   same bytes, which is what makes the cache exact.

The hot path is the cache (see ``cache``): a plain query whose bytes were seen before, with
the same transport and size limit, gets the stored response with its ID patched in, without
any dnspython parsing. Replacing the authority (a reload) starts an empty cache. A stored
forwardable REFUSED is the same kind of hit: the ``forwarded`` hook is then asked, and the
forward cache's answer (ID and question case patched in, TTLs counted down, no parse) is
returned on this path, so a forwarded name asked again costs two lookups and no deferral.

On a miss, a plain query for a name or type that does not exist, or for a name outside
our zones (the forwardable REFUSED, so a forwarder's every new name), is answered from the
negative index (see ``negative``), again without dnspython, and stored in a cache of its
own: random names (a cache-busting flood) then churn only that one and never evict the
answers other clients reuse, while a negative answer asked again is still a hit.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.rrset

from dnstfo.answer.authority import Authority
from dnstfo.answer.cache import AnswerCache, CachedAnswer, cache_key
from dnstfo.answer.negative import NegativeIndex
from dnstfo.answer.rcode import parse_failure_rcode, rcode_for
from dnstfo.answer.transfer import Network, axfr_allowed, iter_axfr_messages
from dnstfo.wire.framing import MAX_MESSAGE

log = logging.getLogger(__name__)

_HEADER_SIZE = 12
_QR = 0x8000
_TC = 0x0200
_ONE_QUESTION = b"\x00\x01\x00\x00\x00\x00\x00\x00"  # QDCOUNT 1, other counts 0
_ECHOED_IN_ERRORS = 0x7800 | 0x0100  # OPCODE and RD
#: Never cached: a malformed query (RFC 1035 §4.1.1) or a failure of ours.
_UNCACHED = frozenset((dns.rcode.FORMERR, dns.rcode.SERVFAIL))


class Transport(enum.Enum):
    """How a query arrived; decides the size limit of the response."""

    UDP = "udp"
    TCP = "tcp"


#: A module global: reading a member through the Enum class costs about 0.1 µs a hit.
_TCP = Transport.TCP


class Reply(NamedTuple):
    """What to send back for one query, and what the query log needs.

    A NamedTuple rather than a frozen dataclass: it is built once per query on the hot path,
    and measured here a frozen dataclass costs about 2 µs to build, a tuple 0.2 µs.
    """

    wire: bytes | None
    """The response message (unframed), or None: send nothing."""
    rcode: dns.rcode.Rcode | None
    """The response RCODE (None when nothing is sent)."""
    qname: str | None
    """The question name as asked, when the question could be read."""
    qtype: int | None
    """The question type, when the question could be read."""
    more: Iterable[bytes] = ()
    """Further messages to send after ``wire`` (the rest of a zone transfer, TCP only),
    each rendered when the iteration reaches it: take them as the socket drains."""
    cached: bool = False
    """The response came from the answer cache or the forwarder's cache."""
    forwardable: bool = False
    """REFUSED only because the name is outside our zones: a forwarder may answer instead."""
    note: str | None = None
    """How the answer was obtained, for the query log (``forward=cache``), or None."""


class CachedForward(NamedTuple):
    """A forwarder's cached answer, given at once (see ``Responder.forwarded``).

    A NamedTuple like :class:`Reply`: one is built per forward-cache hit.
    """

    wire: bytes
    """The response: the query's ID and question, TTLs counted down, AA clear, within
    the transport's size limit."""
    rcode: dns.rcode.Rcode
    """Its RCODE."""
    note: str
    """How it was obtained, for the query log."""


ForwardLookup = Callable[[bytes, Transport, str | None], CachedForward | None]
"""``(query, transport, client)`` to a forwarder's cached answer, or None (not cached, or
the client may not forward): the query then stays forwardable."""

_NO_REPLY = Reply(None, None, None, None)
_new_reply = tuple.__new__  # Reply(...) without the keyword-handling wrapper, for hits


@dataclass(frozen=True, slots=True)
class ResponderConfig:
    """Response policy of a :class:`Responder`."""

    udp_payload: int = 1232
    """Our EDNS UDP payload size: advertised, and the largest UDP response (DNS flag day
    2020 value, avoids IP fragmentation)."""
    udp_default: int = 512
    """The UDP response limit for queries without EDNS (RFC 1035 §4.2.1)."""
    cache_size: int = 10_000
    """Answers kept in the wire cache; 0 disables it."""
    axfr_allow: tuple[Network, ...] = ()
    """Networks that may transfer zones over TCP; empty allows nobody."""
    negative_index: bool = True
    """Answer NXDOMAIN and NODATA from the precomputed index (see ``negative``); False
    renders them with dnspython like every other answer (for comparison)."""


class Responder:
    """Turns query bytes into response bytes for one :class:`Authority` at a time.

    Not thread-safe; meant for one event loop. Use :meth:`use` to swap in a reloaded
    authority: the cache belongs to one authority generation and starts empty.
    """

    __slots__ = ("_current", "_udp_default", "_udp_max", "config", "forwarded")

    def __init__(
        self,
        authority: Authority,
        config: ResponderConfig | None = None,
        forwarded: ForwardLookup | None = None,
    ) -> None:
        """Makes a responder.

        Args:
            authority: the zones to answer from.
            config: response policy; defaults to :class:`ResponderConfig()`.
            forwarded: asked for each forwardable query; its cached answer is the
                reply (None: forwardable queries are left to the caller).
        """
        self.config = config or ResponderConfig()
        self.forwarded = forwarded
        """The forwarder's cache lookup (see ``ForwardLookup``); may be set later."""
        self._udp_max = self.config.udp_payload
        self._udp_default = self.config.udp_default
        self._current = self._generation(authority)

    def _generation(
        self, authority: Authority
    ) -> tuple[Authority, AnswerCache, NegativeIndex | None, AnswerCache]:
        """What belongs to one authority generation: empty caches and the negative index."""
        generation, size = authority.generation, self.config.cache_size
        negatives = NegativeIndex(authority) if self.config.negative_index else None
        return authority, AnswerCache(generation, size), negatives, AnswerCache(generation, size)

    @property
    def authority(self) -> Authority:
        """The authority answers come from."""
        return self._current[0]

    @property
    def cache(self) -> AnswerCache:
        """The answer cache of the current authority generation."""
        return self._current[1]

    def use(self, authority: Authority) -> None:
        """Answers from ``authority`` from now on, with an empty cache.

        Args:
            authority: typically the result of ``Authority.reload``.
        """
        self._current = self._generation(authority)

    def respond(
        self,
        wire: bytes,
        *,
        transport: Transport,
        from_syn_data: bool = False,
        client: str | None = None,
    ) -> Reply:
        """Answers one query message. Never raises.

        Args:
            wire: the query message (for TCP, without its length prefix).
            transport: how it arrived.
            from_syn_data: it arrived in the data of a TCP SYN (TFO, RFC 7413 §6).
            client: the client's IP address, for the zone transfer allow list.

        Returns:
            The reply: send ``wire`` (if not None) then each of ``more``, framed for TCP.
        """
        authority, cache, negatives, negative_cache = self._current
        key = cache_key(wire, transport is _TCP, self._udp_max, self._udp_default)
        if key is not None:
            hit = cache.get(key) or negative_cache.get(key)
            if hit is not None:
                if hit.forwardable and self.forwarded is not None:
                    got = self.forwarded(wire, transport, client)
                    if got is not None:
                        return _new_reply(
                            Reply, (got[0], got[1], hit.qname, hit.qtype, (), True, False, got[2])
                        )
                return _new_reply(
                    Reply,
                    (
                        wire[:2] + hit.tail,
                        hit.rcode,
                        hit.qname,
                        hit.qtype,
                        (),
                        True,
                        hit.forwardable,
                        None,
                    ),
                )
            negative = None
            if negatives is not None:
                negative = negatives.answer(wire, key[-2] << 8 | key[-1], self._udp_max)
            if negative is not None:
                out, rcode, qname, qtype, forwardable = negative
                negative_cache.put(key, CachedAnswer(out[2:], rcode, qname, qtype, forwardable))
                reply = Reply(out, rcode, qname, qtype, forwardable=forwardable)
            else:
                reply = self._respond_uncached(wire, transport, from_syn_data, client, authority)
                entry = _cache_entry(reply)
                if entry is not None:
                    cache.put(key, entry)
        else:
            reply = self._respond_uncached(wire, transport, from_syn_data, client, authority)
        if reply.forwardable and self.forwarded is not None:
            got = self.forwarded(wire, transport, client)
            if got is not None:
                return Reply(
                    got.wire, got.rcode, reply.qname, reply.qtype, cached=True, note=got.note
                )
        return reply

    def respond_many(
        self,
        wires: Iterable[bytes],
        *,
        transport: Transport,
        from_syn_data: bool = False,
        client: str | None = None,
    ) -> list[Reply]:
        """Answers several queries that arrived together (one TCP read of pipelined queries).

        For drivers with nothing to do between answers; the server's TCP session calls
        ``respond`` per query instead, because it adds keepalive options and log lines.

        Args:
            wires: the query messages, in order.
            transport: how they arrived.
            from_syn_data: they arrived in the data of a TCP SYN.
            client: the client's IP address.

        Returns:
            One reply per query, in order.
        """
        respond = self.respond
        return [
            respond(wire, transport=transport, from_syn_data=from_syn_data, client=client)
            for wire in wires
        ]

    def _respond_uncached(
        self,
        wire: bytes,
        transport: Transport,
        from_syn_data: bool,
        client: str | None,
        authority: Authority,
    ) -> Reply:
        """The full path: steps 1-7 of the module docstring."""
        if len(wire) < _HEADER_SIZE:
            return _NO_REPLY
        flags = wire[2] << 8 | wire[3]
        if flags & _QR:
            return _NO_REPLY
        if dns.opcode.from_flags(flags) != dns.opcode.QUERY:
            return _header_only(wire, dns.rcode.REFUSED if from_syn_data else dns.rcode.NOTIMP)
        try:
            query = dns.message.from_wire(wire)
        except Exception as exc:  # any parser failure on remote bytes is a malformed query
            return _header_only(wire, parse_failure_rcode(exc))
        if len(query.question) != 1:
            return _header_only(wire, dns.rcode.FORMERR)
        question = query.question[0]
        qname, qtype = question.name.to_text(), int(question.rdtype)
        try:
            return self._answer(query, question, qname, qtype, transport, client, authority)
        except Exception as exc:  # a bug: answer SERVFAIL rather than drop the query
            log.exception("failed to answer %s type %d", qname, qtype)
            return _header_only(wire, rcode_for(exc), qname, qtype)

    def _answer(
        self,
        query: dns.message.Message,
        question: dns.rrset.RRset,
        qname: str,
        qtype: int,
        transport: Transport,
        client: str | None,
        authority: Authority,
    ) -> Reply:
        """Steps 4-7: BADVERS, transfers, authoritative answers, EDNS and truncation."""
        forwardable = False
        if query.edns > 0:
            response = dns.message.make_response(query, pad=0)
            response.set_rcode(dns.rcode.BADVERS)
        elif qtype in (dns.rdatatype.AXFR, dns.rdatatype.IXFR):
            transfer = self._transfer(query, question, transport, client, authority)
            if not isinstance(transfer, dns.message.Message):
                return Reply(next(transfer), dns.rcode.NOERROR, qname, qtype, transfer)
            response = transfer
        else:
            response = authority.answer(query)
            forwardable = response.rcode() == dns.rcode.REFUSED and not authority.covers(
                question.name
            )
        out = self._render(query, response, transport)
        return Reply(out, response.rcode(), qname, qtype, forwardable=forwardable)

    def _transfer(
        self,
        query: dns.message.Message,
        question: dns.rrset.RRset,
        transport: Transport,
        client: str | None,
        authority: Authority,
    ) -> dns.message.Message | Iterator[bytes]:
        """Step 5: the transfer messages, or the single response that replaces them."""
        response = dns.message.make_response(query, pad=0)
        zone = authority.zones.get(question.name)
        if transport is Transport.UDP:
            if question.rdtype == dns.rdatatype.IXFR and zone is not None:
                response.flags |= dns.flags.AA  # RFC 1995 §2: the SOA says "use TCP"
                response.answer.append(zone.soa)
            else:  # RFC 5936 §4.2: AXFR over UDP is not defined
                response.set_rcode(dns.rcode.REFUSED)
        elif not axfr_allowed(client, self.config.axfr_allow):
            response.set_rcode(dns.rcode.REFUSED)  # RFC 5936 §6: access control
        elif zone is None:
            response.set_rcode(dns.rcode.NOTAUTH)  # RFC 5936 §2.2.1: not our zone apex
        else:
            return iter_axfr_messages(zone, query, our_payload=self.config.udp_payload)
        return response

    def _render(
        self, query: dns.message.Message, response: dns.message.Message, transport: Transport
    ) -> bytes:
        """Step 7: our OPT when the query had one, then the wire form within the size limit."""
        if query.edns >= 0:
            rcode = response.rcode()
            response.use_edns(0, query.ednsflags & dns.flags.DO, self._udp_max, options=[])
            response.set_rcode(rcode)  # use_edns reset the extended RCODE bits
            limit = max(self._udp_default, min(query.payload, self._udp_max))
        else:
            response.use_edns(False)
            limit = self._udp_default
        if transport is _TCP:
            limit = MAX_MESSAGE  # RFC 7766 §8
        try:
            return response.to_wire(max_size=limit, want_shuffle=False)
        except dns.exception.TooBig:
            pass
        referral = not response.flags & dns.flags.AA and bool(response.authority)
        if response.additional and not referral:
            response.additional = []  # RFC 2181 §9: dropping additional data needs no TC
            try:
                return response.to_wire(max_size=limit, want_shuffle=False)
            except dns.exception.TooBig:
                pass
        response.answer, response.authority, response.additional = [], [], []
        response.flags |= dns.flags.TC
        return response.to_wire(max_size=limit, want_shuffle=False)


def _header_only(
    wire: bytes, rcode: dns.rcode.Rcode, qname: str | None = None, qtype: int | None = None
) -> Reply:
    """A reply of just a header: the query's ID, OPCODE and RD, QR set, the RCODE."""
    flags = _QR | ((wire[2] << 8 | wire[3]) & _ECHOED_IN_ERRORS) | (rcode & 0xF)
    header = wire[:2] + flags.to_bytes(2, "big") + bytes(8)
    return Reply(header, rcode, qname, qtype)


def truncated_reply(wire: bytes) -> bytes | None:
    """The smallest answer that sends a UDP client to TCP: header and question, TC set.

    Used where a full answer must not go out (rate limiting's "slip"): the ID, OPCODE, RD
    and question are the query's, QR and TC are set, every other section is empty.

    Args:
        wire: the query as received.

    Returns:
        The response, or None for anything but a query with one plainly encoded question.
    """
    if len(wire) < 17 or wire[2] & 0x80 or wire[4:6] != b"\x00\x01":
        return None
    pos = _HEADER_SIZE
    try:
        length = wire[pos]
        while length:
            if length > 63:
                return None  # a compression pointer or an extended label type
            pos += length + 1
            length = wire[pos]
    except IndexError:
        return None
    end = pos + 5
    if end > len(wire) or pos - _HEADER_SIZE >= 255:  # RFC 1035 §3.1: 255 octets at most
        return None
    flags = _QR | _TC | ((wire[2] << 8 | wire[3]) & _ECHOED_IN_ERRORS)
    return wire[:2] + flags.to_bytes(2, "big") + _ONE_QUESTION + wire[_HEADER_SIZE:end]


def _cache_entry(reply: Reply) -> CachedAnswer | None:
    """What to store for a reply; None for replies that must never come from the cache."""
    if (
        reply.wire is None
        or reply.rcode is None
        or reply.rcode in _UNCACHED
        or reply.qname is None
        or reply.qtype is None
        or reply.more
    ):
        return None
    return CachedAnswer(reply.wire[2:], reply.rcode, reply.qname, reply.qtype, reply.forwardable)
