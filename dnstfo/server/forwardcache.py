"""The forwarder's cache: upstream answers by query bytes, kept for their TTL.

Theory of operation. The key is what the answer depends on: the query's flags (RD, AD,
CD), its question with the name in lower case, and its additional section without the
EDNS options of one client-server pair (COOKIE, PADDING, edns-tcp-keepalive; the
forwarder never passes them upstream, see ``HOP_BY_HOP``) and without the UDP payload
size (the forwarder cuts every answer to the client's size itself). So EDNS presence,
version, the DO bit and any other option (such as a client subnet) are part of it, and
clients that differ only in their cookies share one entry.
An entry holds the response without its ID, when it was stored, when it
expires (the lifetime from :func:`~dnstfo.answer.forward.scan_response`: the minimum TTL,
RFC 2308 for negative answers) and where its TTLs sit. A hit costs no parse: the ID and
the client's question (its case, RFC 4343 / 0x20) are copied in and each TTL is lowered
by the seconds the entry has been kept (RFC 1035 §4.1.3: a cache never serves a TTL
higher than what is left). Entries are evicted least recently used first, and expired
ones when met.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from dnstfo.answer.forward import ResponseScan, opt_rdata, question_end, strip_options

NS_PER_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class _Entry:
    body: bytes
    """The response after its ID."""
    stored_ns: int
    """When it was stored (monotonic ns)."""
    expires_ns: int
    """When it stops being served."""
    ttl_offsets: tuple[int, ...]
    """Where each TTL sits in the full message."""
    ttls: tuple[int, ...]
    """The TTLs as received."""
    question_end: int
    """The offset after the question in the full message."""


def cache_key(query: bytes) -> bytes | None:
    """The cache key of a query (None: no whole question)."""
    try:
        end = question_end(query)
    except ValueError:
        return None
    query = strip_options(query)
    span = opt_rdata(query)
    if span is not None:  # the payload size (the OPT's CLASS) is left out
        query = query[: span[0] - 8] + query[span[0] - 6 :]
    return query[2:12] + query[12:end].lower() + query[end:]


class ForwardCache:
    """Upstream answers, bounded in entries, least recently used evicted first.

    Args:
        size: entries kept at most (0: nothing is kept).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self.hits = 0
        """Answers served from the cache."""
        self.misses = 0
        """Lookups that found nothing fresh."""

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, query: bytes, now: int) -> bytes | None:
        """The cached answer to ``query`` with its ID and question and TTLs counted down,
        or None (a miss)."""
        entry = self._entries.get(key)
        if entry is None or entry.expires_ns <= now:
            if entry is not None:
                del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        qend = entry.question_end
        wire = bytearray(query[:2] + entry.body)
        wire[12:qend] = query[12:qend]
        elapsed = (now - entry.stored_ns) // NS_PER_S
        if elapsed:
            for offset, ttl in zip(entry.ttl_offsets, entry.ttls, strict=True):
                wire[offset : offset + 4] = max(0, ttl - elapsed).to_bytes(4, "big")
        return bytes(wire)

    def put(self, key: bytes, response: bytes, scan: ResponseScan, now: int) -> None:
        """Stores an upstream response to the query of ``key`` if it may be kept."""
        if not self.size or not scan.cache_ttl:
            return
        try:
            qend = question_end(response)
        except ValueError:
            return
        self._entries[key] = _Entry(
            response[2:],
            now,
            now + scan.cache_ttl * NS_PER_S,
            scan.ttl_offsets,
            scan.ttls,
            qend,
        )
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
