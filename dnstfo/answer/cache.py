"""Wire-level answer cache: the same query bytes get the same response bytes.

Theory of operation. An answer depends on the query's flags, its question exactly as asked
(the case of QNAME is echoed, RFC 4343 §4), its EDNS state (present, version, DO, and the UDP
size the response must fit), the transport, and the zones. It does not depend on the ID,
which a hit patches into the stored bytes (RFC 1035 §4.1.1: the ID is the first two bytes).

:func:`cache_key` reads the header, the question and an optional OPT RR by hand and returns
``None`` for anything it does not fully understand; those queries take the uncached path.
A key is only produced for messages shaped exactly like a plain standard query:

- QR clear, OPCODE QUERY, QDCOUNT 1, ANCOUNT 0, NSCOUNT 0, ARCOUNT 0 or 1;
- a QNAME of plain labels (no compression pointers, labels <= 63, name <= 255 octets,
  RFC 1035 §3.1) and not AXFR/IXFR (those depend on the client, see ``transfer``);
- the one additional record, if any, an OPT RR at the root (RFC 6891 §6.1.2) of version 0
  whose options are all ones that do not change the answer: PADDING (RFC 7830),
  TCP-KEEPALIVE (RFC 7828, which we do not negotiate) and a well-formed COOKIE (RFC 7873
  §4, which we do not implement, so §5.2 tells us to ignore it);
- no trailing bytes.

The key is every byte from the flags to the end of the question, the OPT TTL field
(extended RCODE, version, DO and Z), the transport and the size the response must fit.
Anything the uncached path rejects as malformed is never stored, and every byte that
could make it reject a message is in the key or checked here.
"""

from __future__ import annotations

from dataclasses import dataclass

import dns.rcode

from dnstfo.wire.framing import MAX_MESSAGE
from dnstfo.wire.keepalive import KEEPALIVE_CODE, OPT_TYPE

#: Option codes that never change our answer, with KEEPALIVE_CODE (RFC 7830, RFC 7873, RFC 7828).
_PADDING, _COOKIE = 12, 10
#: Bytes 4..10 of a plain query header: QDCOUNT 1, ANCOUNT 0, NSCOUNT 0.
_PLAIN_COUNTS = b"\x00\x01\x00\x00\x00\x00"
_NO_ADDITIONAL, _ONE_ADDITIONAL = b"\x00\x00", b"\x00\x01"
#: Root owner name then TYPE OPT.
_OPT_HEAD = b"\x00" + OPT_TYPE.to_bytes(2, "big")
_XFR_TYPES = frozenset((251, 252))  # IXFR, AXFR


def _options_ignorable(wire: bytes, start: int, end: int) -> bool:
    """Whether the EDNS options in ``wire[start:end]`` are all ones we ignore, well formed."""
    pos = start
    while pos < end:
        if end - pos < 4:
            return False
        code = wire[pos] << 8 | wire[pos + 1]
        length = wire[pos + 2] << 8 | wire[pos + 3]
        pos += 4 + length
        if pos > end:
            return False
        if code == _COOKIE:
            # RFC 7873 §4: client cookie 8 octets, optional server cookie 8..32 octets.
            if length != 8 and not 16 <= length <= 40:
                return False
        elif code not in (_PADDING, KEEPALIVE_CODE):
            return False
    return True


def cache_key(wire: bytes, tcp: bool, udp_max: int, udp_default: int) -> bytes | None:
    """The cache key of a plain standard query, or None when it must take the full path.

    Args:
        wire: the query as received.
        tcp: whether it came over TCP (no size limit below 65535).
        udp_max: the largest UDP response we send (our advertised EDNS payload).
        udp_default: the UDP response limit without EDNS (512, RFC 1035 §4.2.1).

    Returns:
        The key, or None.
    """
    if len(wire) < 17 or wire[2] & 0xF8 or wire[4:10] != _PLAIN_COUNTS:
        return None  # a response, another opcode, or not exactly one question
    pos = 12
    try:
        length = wire[pos]
        while length:
            if length > 63:
                return None  # a pointer or an extended label type
            pos += length + 1
            length = wire[pos]
        if pos > 266:
            return None  # name longer than 255 octets
        qend = pos + 5
        if wire[pos + 1] == 0 and wire[pos + 2] in _XFR_TYPES:
            return None
    except IndexError:
        return None
    size = len(wire)
    additional = wire[10:12]
    if additional == _NO_ADDITIONAL:
        if size != qend:
            return None
        limit = MAX_MESSAGE if tcp else udp_default
        return wire[2:qend] + (b"T" if tcp else b"U") + limit.to_bytes(2, "big")
    if additional != _ONE_ADDITIONAL or wire[qend : qend + 3] != _OPT_HEAD:
        return None
    if size < qend + 11 or wire[qend + 6]:  # truncated OPT, or EDNS version > 0
        return None
    rdlen = wire[qend + 9] << 8 | wire[qend + 10]
    if qend + 11 + rdlen != size or not _options_ignorable(wire, qend + 11, size):
        return None
    if tcp:
        limit = MAX_MESSAGE
    else:  # RFC 6891 §6.2.5: values below 512 are treated as 512
        payload = wire[qend + 3] << 8 | wire[qend + 4]
        limit = max(udp_default, min(payload, udp_max))
    return (
        wire[2:qend]
        + wire[qend + 5 : qend + 9]
        + (b"T" if tcp else b"U")
        + limit.to_bytes(2, "big")
    )


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A stored response and what the query log needs about it."""

    tail: bytes
    """The response without its first two bytes (the ID)."""
    rcode: dns.rcode.Rcode
    """The response RCODE."""
    qname: str
    """The question name as asked."""
    qtype: int
    """The question type."""
    forwardable: bool
    """REFUSED because the name is outside our zones (see ``Reply.forwardable``)."""


class AnswerCache:
    """A bounded map from :func:`cache_key` keys to answers, valid for one generation.

    Eviction is first-in first-out: when full, the oldest entry goes. A hit costs one dict
    lookup and no bookkeeping, which is what the hot path wants; the working set of an
    authoritative server is small compared with the bound.
    """

    __slots__ = ("_entries", "capacity", "generation")

    def __init__(self, generation: int, capacity: int = 10_000) -> None:
        """Makes an empty cache.

        Args:
            generation: the Authority generation whose answers this cache holds.
            capacity: the most entries kept; 0 disables caching.
        """
        self.generation = generation
        self.capacity = capacity
        self._entries: dict[bytes, CachedAnswer] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> CachedAnswer | None:
        """The answer stored under ``key``, or None."""
        return self._entries.get(key)

    def put(self, key: bytes, answer: CachedAnswer) -> None:
        """Stores an answer, evicting the oldest entry when full."""
        entries = self._entries
        if self.capacity <= 0:
            return
        if len(entries) >= self.capacity and key not in entries:
            del entries[next(iter(entries))]
        entries[key] = answer
