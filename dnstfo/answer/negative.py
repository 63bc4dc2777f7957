"""Negative answers (NXDOMAIN, NODATA, REFUSED outside our zones) without dnspython.

Why: names that do not exist are where caching cannot help (every random name is a new
cache key), so "cache-busting" floods of random names all take this path; so does every
new name a forwarder passes on, which first gets the REFUSED it may replace. dnspython's
parse, build and render cost about 200 µs a query here; this path costs a few tens.

Theory of operation. It runs only for queries that :func:`~dnstfo.answer.cache.cache_key`
accepted, so their shape is known: header, one question of plain labels, optionally one
OPT of version 0. Then:

1. Class IN, a type other than DS (a DS at an apex is the parent zone's, see
   ``authority``) and the longest of our zone origins that contains QNAME (from a map
   keyed by lower-case labels, built once per authority generation). No origin contains
   it: REFUSED, ``forwardable`` (the full path's answer for a name outside our zones:
   QR, the query's RD and CD, the question as asked, our OPT when the query had one). Another
   class: None, and the caller takes the full path.
2. :func:`~dnstfo.answer.authority.lookup` decides, on the zone's index built at load
   time (names, cuts, RRsets by type): the one place that knows RFC 1034 §4.3.2 and
   RFC 4592. Only NXDOMAIN and NODATA are answered here; anything else takes the full
   path. Nothing here grows with the zone: a reload of a big zone adds no work.
3. The response is written byte by byte as dnspython's renderer would write it (the test
   compares the two on every name of the example zones): the query's ID, QR, AA, RD and CD
   (RFC 4035 §3.1.6), the RCODE; the question as asked (RFC 4343 §4: case kept); the
   zone's SOA with TTL min(SOA TTL, MINIMUM) in authority (RFC 2308 §3), names compressed
   against the question exactly as dnspython does (RFC 1035 §4.1.4); our OPT when the
   query had one (our payload size, DO echoed, RFC 3225 §3).
4. A response larger than the client's limit returns None (the full path truncates).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import dns.name
import dns.rcode
import dns.rdatatype

from dnstfo.answer.authority import Authority, Outcome, lookup
from dnstfo.answer.zones import LoadedZone

_IN = 1
_DS = int(dns.rdatatype.DS)
#: Labels that dnspython writes as they are (no escapes).
_PLAIN_LABEL = re.compile(rb"[A-Za-z0-9_*-]+")
_QR_AA = 0x8400
_QR_REFUSED = 0x8000 | dns.rcode.REFUSED
_RD_CD = 0x0110  # RD and CD, echoed from the query
_NXDOMAIN, _NODATA = Outcome.NXDOMAIN, Outcome.NODATA
_HEADER = 12
_MAX_POINTER = 0x3FFF
#: Type SOA, class IN.
_SOA_IN = b"\x00\x06\x00\x01"
#: The OPT RR up to its CLASS field: root owner, type 41.
_OPT_HEAD = b"\x00\x00\x29"
_DO = 0x80  # the DO bit, in the high byte of the OPT flags

Labels = tuple[bytes, ...]


class NegativeAnswer(NamedTuple):
    """A response written here, and what the query log and the forwarder need of it."""

    wire: bytes
    """The response message."""
    rcode: dns.rcode.Rcode
    """NXDOMAIN, NOERROR (NODATA) or REFUSED."""
    qname: str
    """The question name as asked, as text."""
    qtype: int
    """The question type."""
    forwardable: bool = False
    """REFUSED because the name is outside our zones (see ``Reply.forwardable``)."""


@dataclass(frozen=True, slots=True)
class _NegativeSoa:
    """A zone and its negative-answer SOA, cut where compression decides."""

    zone: LoadedZone
    """The zone."""
    origin: Labels
    """The origin's labels as stored (written when the question does not contain it)."""
    origin_key: Labels
    """The same in lower case (compression compares names case-insensitively)."""
    ttl: bytes
    """The negative TTL, 4 bytes (RFC 2308 §3)."""
    mname: Labels
    """The primary server's name."""
    mname_key: Labels
    """The same in lower case."""
    rname: Labels
    """The responsible mailbox's name."""
    rname_key: Labels
    """The same in lower case."""
    numbers: bytes
    """SERIAL, REFRESH, RETRY, EXPIRE, MINIMUM: 20 bytes."""


class NegativeIndex:
    """The zones of one authority generation, keyed for negative answers.

    Args:
        authority: the zones.
    """

    __slots__ = ("_authority", "_zones")

    def __init__(self, authority: Authority) -> None:
        self._authority = authority
        self._zones: Mapping[Labels, _NegativeSoa] = {
            _lower(origin.labels): _soa_parts(zone) for origin, zone in authority.zones.items()
        }

    def answer(self, wire: bytes, limit: int, our_payload: int) -> NegativeAnswer | None:
        """The NXDOMAIN, NODATA or out-of-zone REFUSED response to a plain query, or None
        (take the full path).

        Args:
            wire: a query that ``cache_key`` accepted.
            limit: the size the response must fit (the cache key's limit).
            our_payload: our EDNS UDP payload size, for our OPT.
        """
        labels, qend = _question(wire)
        if wire[qend - 2] or wire[qend - 1] != _IN:
            return None
        qtype = wire[qend - 4] << 8 | wire[qend - 3]
        lowered = _lower(labels)
        soa = None
        for start in range(len(lowered)):
            soa = self._zones.get(lowered[start:])
            if soa is not None:
                break
        if soa is None:
            return _refused(wire, qend, labels, qtype, limit, our_payload)
        if qtype == _DS:
            return None
        found = lookup(soa.zone, dns.name.Name(labels), qtype).outcome
        if found is _NXDOMAIN:
            rcode = dns.rcode.NXDOMAIN
        elif found is _NODATA:
            rcode = dns.rcode.NOERROR
        else:
            return None
        edns = len(wire) > qend
        flags = _QR_AA | ((wire[2] << 8 | wire[3]) & _RD_CD) | rcode
        out = bytearray(wire[:2])
        out += flags.to_bytes(2, "big")
        out += b"\x00\x01\x00\x00\x00\x01\x00\x01" if edns else b"\x00\x01\x00\x00\x00\x01\x00\x00"
        out += wire[_HEADER:qend]
        compress = _question_suffixes(lowered)
        _write_name(out, soa.origin, soa.origin_key, compress)
        out += _SOA_IN
        out += soa.ttl
        rdlength_at = len(out)
        out += b"\x00\x00"
        _write_name(out, soa.mname, soa.mname_key, compress)
        _write_name(out, soa.rname, soa.rname_key, compress)
        out += soa.numbers
        out[rdlength_at : rdlength_at + 2] = (len(out) - rdlength_at - 2).to_bytes(2, "big")
        if edns:
            _write_opt(out, wire, qend, our_payload)
        if len(out) > limit:
            return None
        return NegativeAnswer(bytes(out), rcode, _text(labels), qtype)


def _refused(
    wire: bytes, qend: int, labels: Labels, qtype: int, limit: int, our_payload: int
) -> NegativeAnswer | None:
    """REFUSED for a name outside our zones, as the full path writes it."""
    edns = len(wire) > qend
    flags = _QR_REFUSED | ((wire[2] << 8 | wire[3]) & _RD_CD)
    out = bytearray(wire[:2])
    out += flags.to_bytes(2, "big")
    out += b"\x00\x01\x00\x00\x00\x00\x00\x01" if edns else b"\x00\x01\x00\x00\x00\x00\x00\x00"
    out += wire[_HEADER:qend]
    if edns:
        _write_opt(out, wire, qend, our_payload)
    if len(out) > limit:
        return None
    return NegativeAnswer(bytes(out), dns.rcode.REFUSED, _text(labels), qtype, True)


def _write_opt(out: bytearray, wire: bytes, qend: int, our_payload: int) -> None:
    """Our OPT: version 0, our payload size, the query's DO bit, no options."""
    out += _OPT_HEAD
    out += our_payload.to_bytes(2, "big")
    out += b"\x00\x00"
    out += bytes((wire[qend + 7] & _DO, 0, 0, 0))


def _soa_parts(zone: LoadedZone) -> _NegativeSoa:
    soa = zone.negative_soa
    rdata = soa[0]
    numbers = b"".join(
        int(n).to_bytes(4, "big")
        for n in (rdata.serial, rdata.refresh, rdata.retry, rdata.expire, rdata.minimum)
    )
    return _NegativeSoa(
        zone=zone,
        origin=zone.origin.labels,
        origin_key=_lower(zone.origin.labels),
        ttl=int(soa.ttl).to_bytes(4, "big"),
        mname=rdata.mname.labels,
        mname_key=_lower(rdata.mname.labels),
        rname=rdata.rname.labels,
        rname_key=_lower(rdata.rname.labels),
        numbers=numbers,
    )


def _question(wire: bytes) -> tuple[Labels, int]:
    """The labels of the plain QNAME (root included) and the offset past the question."""
    labels = []
    pos = _HEADER
    while True:
        length = wire[pos]
        labels.append(wire[pos + 1 : pos + 1 + length])
        pos += length + 1
        if not length:
            return tuple(labels), pos + 4


def _lower(labels: Labels) -> Labels:
    return tuple(label.lower() for label in labels)


def _text(labels: Labels) -> str:
    """The name as ``dns.name.Name.to_text`` writes it (the query log's QNAME)."""
    if len(labels) > 1 and all(_PLAIN_LABEL.fullmatch(label) for label in labels[:-1]):
        return b".".join(labels).decode("ascii")
    return dns.name.Name(labels).to_text()


def _question_suffixes(lowered: Labels) -> dict[Labels, int]:
    """What dnspython's renderer remembers after writing the question: each suffix's offset."""
    compress = {}
    pos = _HEADER
    for i in range(len(lowered) - 1):  # the root alone is never remembered
        compress[lowered[i:]] = pos
        pos += len(lowered[i]) + 1
    return compress


def _write_name(
    out: bytearray, labels: Labels, lowered: Labels, compress: dict[Labels, int]
) -> None:
    """Writes a name as dnspython's ``Name.to_wire`` does with a compression table."""
    for i, label in enumerate(labels):
        suffix = lowered[i:]
        pointer = compress.get(suffix)
        if pointer is not None:
            out += (0xC000 | pointer).to_bytes(2, "big")
            return
        if len(suffix) > 1 and len(out) <= _MAX_POINTER:
            compress[suffix] = len(out)
        out.append(len(label))
        out += label
