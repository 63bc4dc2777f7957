"""The forwarder's cache: upstream answers by query bytes, kept for their TTL.

Theory of operation. This is the one store of forwarded answers (TTL, LRU, counters);
the server asks it and puts into it, and keeps nothing of its own. Every query the
authority refuses only because its name is outside our zones is looked up once, by the
responder's ``forwarded`` hook (``Forwarding.cached`` → ``Forwarder.cached``), while
the query is answered: a hit is the reply at once, like a local answer. Only a miss is
forwarded (the forwarder reuses the key of that lookup and does not count the miss
again), and the upstream's answer, AA cleared, is put here.

The key is what the answer depends on: the query's flags (RD, AD,
CD), its question with the name in lower case, and its additional section without the
EDNS options of one client-server pair (COOKIE, PADDING, edns-tcp-keepalive; the
forwarder never passes them upstream, see ``HOP_BY_HOP``) and without the UDP payload
size (the forwarder cuts every answer to the client's size itself). So EDNS presence,
version, the DO bit and any other option (such as a client subnet) are part of it, and
clients that differ only in their cookies share one entry. The usual query shape (one
question, then at most an OPT ending the message) is keyed in one pass, about 1.7 µs
here; other shapes go through ``strip_options``.
An entry holds the response without its ID, when it was stored, when it
expires (the lifetime from :func:`~dnstfo.answer.forward.scan_response`: the minimum TTL,
RFC 2308 for negative answers) and where its TTLs sit. A hit costs no parse: the ID and
the client's question (its case, RFC 4343 / 0x20) are copied in and each TTL is lowered
by the seconds the entry has been kept (RFC 1035 §4.1.3: a cache never serves a TTL
higher than what is left; the lowered copy is kept for the hits of the same second).
Entries are evicted least recently used first, and expired
ones when met.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from dnstfo.answer.forward import (
    HOP_BY_HOP,
    ResponseScan,
    opt_rdata,
    question_end,
    strip_options,
)

NS_PER_S = 1_000_000_000
_ONE_QUESTION = b"\x00\x01\x00\x00\x00\x00"
"""QDCOUNT 1, ANCOUNT 0, NSCOUNT 0."""
_NONE, _ONE = b"\x00\x00", b"\x00\x01"
_ROOT_OPT = b"\x00\x00\x29"


@dataclass(slots=True)
class _Entry:
    body: bytes
    """The response after its ID, TTLs as received."""
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
    aged: int = 0
    """Whole seconds kept when ``aged_body`` was written (hits within one second share
    it); 0: not written yet."""
    aged_body: bytes = b""
    """``body`` with each TTL lowered by ``aged``."""


def cache_key(query: bytes) -> bytes | None:
    """The cache key of a query (None: no whole question).

    It runs for every query that may be forwarded (a hit's whole cost is this and a
    dict lookup), so the usual shape, one question then at most an OPT that ends the
    message, is read in one pass here; anything else takes :func:`strip_options`.
    """
    try:
        end = question_end(query)
    except ValueError:
        return None
    head = query[2:12] + query[12:end].lower()
    if query[4:10] == _ONE_QUESTION:
        arcount = query[10:12]
        if arcount == _NONE and len(query) == end:
            return head
        if arcount == _ONE and query[end : end + 3] == _ROOT_OPT and len(query) >= end + 11:
            kept = _kept_options(query, end + 11)
            if kept is not None:  # (the payload size, the OPT's CLASS, is left out)
                opt = query[end : end + 3] + query[end + 5 : end + 9]
                return head + opt + len(kept).to_bytes(2, "big") + kept
    query = strip_options(query)
    span = opt_rdata(query)
    if span is not None:  # the payload size (the OPT's CLASS) is left out
        query = query[: span[0] - 8] + query[span[0] - 6 :]
    return head + query[end:]


def _kept_options(query: bytes, start: int) -> bytes | None:
    """The options of the OPT whose RDATA starts at ``start`` and ends the message,
    without the hop-by-hop ones; None when the RDATA does not end the message exactly."""
    if (query[start - 2] << 8 | query[start - 1]) != len(query) - start:
        return None
    end = len(query)
    if start == end:
        return b""
    kept = b""
    pos = start
    while pos + 4 <= end:
        length = query[pos + 2] << 8 | query[pos + 3]
        if (query[pos] << 8 | query[pos + 1]) not in HOP_BY_HOP:
            kept += query[pos : pos + 4 + length]
        pos += 4 + length
    return kept if pos == end else None


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
        elapsed = (now - entry.stored_ns) // NS_PER_S
        body = entry.body
        if elapsed:
            if elapsed != entry.aged:  # (0 at first: never equal here)
                aged = bytearray(body)
                for offset, ttl in zip(entry.ttl_offsets, entry.ttls, strict=True):
                    aged[offset - 2 : offset + 2] = max(0, ttl - elapsed).to_bytes(4, "big")
                entry.aged, entry.aged_body = elapsed, bytes(aged)
            body = entry.aged_body
        qend = entry.question_end
        return query[:2] + body[:10] + query[12:qend] + body[qend - 2 :]

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
