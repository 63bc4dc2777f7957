"""Forwarding decisions, without I/O: who may forward, to which upstreams, for how long.

Theory of operation. A query the authority refuses only because its name lies outside our
zones (``Reply.forwardable``) may be sent upstream instead (the I/O is in
``server/upstream.py``). This module decides, from bytes and configuration alone:

- whether the client may use forwarding at all (:meth:`ForwardConfig.allows`): loopback
  only by default, everyone else keeps the REFUSED (never an open resolver);
- which upstreams, in order (:meth:`ForwardConfig.route`): the longest ``--forward-zone``
  suffix that holds the name, else the default set;
- what an upstream's response says for the cache and the connection
  (:func:`scan_response`): where each TTL sits in the message (so served copies count
  down without parsing), how long it may be kept (the minimum TTL over the records;
  RFC 2308 §5 for negative answers: the SOA's TTL capped by its MINIMUM), and the
  upstream's edns-tcp-keepalive TIMEOUT (RFC 7828), if it gave one.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import NamedTuple

import dns.exception
import dns.name

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = tuple[str, int]

_LOOPBACK: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)
_OPT = 41
_SOA = 6
_NS = 2
_COOKIE = 10
_KEEPALIVE = 11
_PADDING = 12
HOP_BY_HOP = frozenset((_COOKIE, _KEEPALIVE, _PADDING))
"""EDNS options that belong to one client-server pair and are never passed on: COOKIE
(RFC 7873 §5: the cookies of the client and of its server), edns-tcp-keepalive (RFC 7828
§3.2) and PADDING (RFC 7830: sized for the hop it pads)."""
_NXDOMAIN = 3
_ALLOWED_MEMO = 65536
"""Client addresses whose ACL decision is remembered (then the memo starts over)."""


class ForwardTransport(enum.Enum):
    """How queries go to the upstreams."""

    TCP = "tcp"
    """TCP with Fast Open, connections kept open and pipelined (RFC 7766)."""
    UDP = "udp"
    """UDP, retried over TCP when the answer is truncated."""


@dataclass(frozen=True, slots=True)
class ForwardZone:
    """Upstreams for the names under one suffix."""

    suffix: str
    """The zone, lower case, absolute (``example.org.``)."""
    upstreams: tuple[Address, ...]
    """Where its names go, in order of preference."""


@dataclass(frozen=True, slots=True)
class ForwardConfig:
    """What ``--forward*`` asks for; forwarding is on when any upstream is given."""

    upstreams: tuple[Address, ...] = ()
    """The default upstream set, in order of preference."""
    zones: tuple[ForwardZone, ...] = ()
    """Per-suffix upstreams (the longest matching suffix wins)."""
    allow: tuple[IPNetwork, ...] = _LOOPBACK
    """Clients that may use forwarding; everyone else is REFUSED."""
    transport: ForwardTransport = ForwardTransport.TCP
    """How queries go upstream."""
    cache_size: int = 10_000
    """Upstream answers kept; 0 disables the cache."""
    timeout: float = 1.5
    """Seconds one upstream gets to answer before the next is tried."""
    budget: float = 4.0
    """Seconds a client's query may take in all; past it the client gets SERVFAIL."""
    connections: int = 4
    """TCP connections kept open to one upstream at most."""
    pipeline: int = 64
    """Queries in flight on one upstream connection at most (a new one opens past it)."""
    max_in_flight: int = 10_000
    """Forwarded queries waiting for an upstream at once, over all clients; past it a
    query gets SERVFAIL at once (a UDP flood cannot queue without bound)."""
    idle_timeout: float = 10.0
    """Seconds an idle upstream connection is kept when the upstream gave no keepalive."""
    _by_suffix: dict[str, tuple[Address, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    """``zones`` by suffix (built once)."""
    _allowed: dict[str, bool] = field(default_factory=dict, init=False, repr=False, compare=False)
    """Clients already checked against ``allow`` (parsing an address costs microseconds)."""

    def __post_init__(self) -> None:
        for zone in self.zones:
            self._by_suffix[zone.suffix] = zone.upstreams
        if self.cache_size < 0:
            raise ValueError("forward-cache-size must be 0 or more")

    @property
    def enabled(self) -> bool:
        """Some name can be forwarded."""
        return bool(self.upstreams or self.zones)

    def allows(self, client: str | None) -> bool:
        """Whether ``client`` (an address) may have its queries forwarded."""
        if client is None:
            return False
        known = self._allowed.get(client)
        if known is not None:
            return known
        if len(self._allowed) >= _ALLOWED_MEMO:
            self._allowed.clear()
        allowed = self._allowed[client] = self._check(client)
        return allowed

    def _check(self, client: str) -> bool:
        try:
            address = ipaddress.ip_address(client.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in net for net in self.allow)

    def route(self, qname: str) -> tuple[Address, ...]:
        """The upstreams for ``qname`` (absolute, any case), best first; empty: none."""
        if self._by_suffix:
            name = qname.lower()
            while True:
                found = self._by_suffix.get(name)
                if found is not None:
                    return found
                if name == ".":
                    break
                dot = name.find(".")
                name = name[dot + 1 :] or "."
        return self.upstreams


class ResponseScan(NamedTuple):
    """What the forwarder reads from an upstream response without parsing it fully.

    A NamedTuple rather than a frozen dataclass: one is built per upstream answer.
    """

    rcode: int
    """The response RCODE."""
    ttl_offsets: tuple[int, ...]
    """Where each record's TTL sits (OPT excluded)."""
    ttls: tuple[int, ...]
    """The TTL at each offset, as received."""
    cache_ttl: int | None
    """Seconds the response may be cached; None: not cacheable."""
    keepalive: int | None
    """The upstream's edns-tcp-keepalive TIMEOUT in units of 100 ms, if given."""
    options: tuple[int, int] | None = None
    """Where the OPT record's RDATA starts and ends when it carries options (None: no
    OPT, or one without options: nothing to strip)."""


def _skip_name(wire: bytes, pos: int) -> int:
    """The offset after the name at ``pos`` (pointers end it).

    Raises:
        ValueError: the name runs past the message.
    """
    size = len(wire)
    while True:
        if pos >= size:
            raise ValueError("name runs past the message")
        n = wire[pos]
        if n >= 0xC0:
            return pos + 2
        if n > 63:
            raise ValueError("bad label length")
        pos += 1 + n
        if n == 0:
            return pos


def scan_response(wire: bytes, question_end: int = 0, *, ttls: bool = True) -> ResponseScan:
    """Reads an upstream response's records' TTLs, cache lifetime and keepalive.

    ``question_end``: where its one question ends, when the caller checked it already
    (0: the question section is walked here). ``ttls`` False: the answer is not to be
    cached, so only its structure, RCODE and OPT are read (no TTLs, no lifetime).

    Positive answers (NOERROR with answers) and referrals (NOERROR, no answers, NS records
    in the authority section and no SOA) are kept for the smallest TTL of all records;
    NXDOMAIN and NODATA for the authority SOA's TTL capped by its MINIMUM (RFC 2308 §5),
    and not at all without an SOA; other RCODEs, and truncated responses, are not kept.

    Raises:
        ValueError: the message is malformed.
    """
    size = len(wire)
    if size < 12:
        raise ValueError("shorter than a header")
    rcode = wire[3] & 0xF
    pos = question_end
    if not pos:
        pos = 12
        for _ in range(wire[4] << 8 | wire[5]):
            pos = _skip_name(wire, pos) + 4
    keep = ttls
    offsets: list[int] = []
    found: list[int] = []
    negative: int | None = None
    delegation = False
    keepalive: int | None = None
    options: tuple[int, int] | None = None
    for section in (1, 2, 3):
        for _ in range(wire[4 + 2 * section] << 8 | wire[5 + 2 * section]):
            # A compression pointer is the usual owner name: no call for it.
            pos = pos + 2 if pos < size and wire[pos] >= 0xC0 else _skip_name(wire, pos)
            if pos + 10 > size:
                raise ValueError("record runs past the message")
            rtype = wire[pos] << 8 | wire[pos + 1]
            rdata = pos + 10
            end = rdata + (wire[pos + 8] << 8 | wire[pos + 9])
            if end > size:
                raise ValueError("record data runs past the message")
            if rtype == _OPT:
                if end > rdata:
                    options = (rdata, end)
                    keepalive = _keepalive(wire, rdata, end)
            elif keep:
                ttl = (wire[pos + 4] & 0x7F) << 24 | wire[pos + 5] << 16
                ttl |= wire[pos + 6] << 8 | wire[pos + 7]
                offsets.append(pos + 4)
                found.append(ttl)
                if section == 2:
                    if rtype == _SOA and end - rdata >= 20:
                        minimum = int.from_bytes(wire[end - 4 : end], "big")
                        negative = min(ttl, minimum)
                    elif rtype == _NS:
                        delegation = True
            pos = end
    cache_ttl: int | None = None
    truncated = bool(wire[2] & 0x02)
    if keep and not truncated and rcode in (0, _NXDOMAIN):
        if rcode == 0 and (wire[6] or wire[7]):  # answers
            cache_ttl = min(found)
        elif negative is not None:
            cache_ttl = negative
        elif rcode == 0 and delegation:
            cache_ttl = min(found)
    return ResponseScan(rcode, tuple(offsets), tuple(found), cache_ttl, keepalive, options)


def _keepalive(wire: bytes, pos: int, end: int) -> int | None:
    """The TIMEOUT of an edns-tcp-keepalive option in OPT data ``wire[pos:end]``."""
    while pos + 4 <= end:
        code = wire[pos] << 8 | wire[pos + 1]
        length = wire[pos + 2] << 8 | wire[pos + 3]
        if code == _KEEPALIVE and length == 2:
            return wire[pos + 4] << 8 | wire[pos + 5]
        pos += 4 + length
    return None


def opt_rdata(wire: bytes) -> tuple[int, int] | None:
    """Where the OPT record's RDATA starts and ends, or None (no OPT, or malformed).

    The OPT's CLASS (the UDP payload size) sits at ``start - 8``, its TTL (extended RCODE,
    version, DO and Z) at ``start - 6``.
    """
    if len(wire) < 12 or not (wire[10] or wire[11]):
        return None
    counts = [wire[4 + 2 * i] << 8 | wire[5 + 2 * i] for i in range(4)]
    try:
        pos = 12
        for _ in range(counts[0]):
            pos = _skip_name(wire, pos) + 4
        for _ in range(counts[1] + counts[2] + counts[3]):
            pos = _skip_name(wire, pos)
            if pos + 10 > len(wire):
                return None
            rdlen = wire[pos + 8] << 8 | wire[pos + 9]
            if wire[pos] << 8 | wire[pos + 1] == _OPT:
                end = pos + 10 + rdlen
                return (pos + 10, end) if end <= len(wire) else None
            pos += 10 + rdlen
    except ValueError:
        return None
    return None


def strip_options(wire: bytes, codes: frozenset[int] = HOP_BY_HOP, add: bytes = b"") -> bytes:
    """``wire`` without the EDNS options of ``codes``, with the encoded options ``add``
    appended. Unchanged without an OPT record."""
    span = opt_rdata(wire)
    if span is None:
        return wire
    return strip_options_at(wire, span, codes, add)


def strip_options_at(
    wire: bytes, span: tuple[int, int], codes: frozenset[int] = HOP_BY_HOP, add: bytes = b""
) -> bytes:
    """:func:`strip_options` for an OPT whose RDATA is known to be ``wire[span]``."""
    start, end = span
    kept: list[bytes] = []
    pos = start
    while pos + 4 <= end:
        length = wire[pos + 2] << 8 | wire[pos + 3]
        if (wire[pos] << 8 | wire[pos + 1]) not in codes:
            kept.append(wire[pos : pos + 4 + length])
        pos += 4 + length
    kept.append(add)
    rdata = b"".join(kept)
    if len(rdata) == end - start and rdata == wire[start:end]:
        return wire
    return wire[: start - 2] + len(rdata).to_bytes(2, "big") + rdata + wire[end:]


def set_keepalive(wire: bytes, *, ask: bool) -> bytes:
    """``wire`` without its edns-tcp-keepalive options (RFC 7828 §3.2: the option is
    hop-by-hop, never passed on), with an empty one added when ``ask`` (a query asking
    the upstream for its timeout). Unchanged without an OPT record."""
    return strip_options(wire, frozenset((_KEEPALIVE,)), b"\x00\x0b\x00\x00" if ask else b"")


def add_opt(response: bytes, query: bytes, payload: int) -> bytes:
    """``response`` (made by us, no additional records) with an OPT record when ``query``
    has one (RFC 6891 §7): our UDP ``payload``, version 0, the query's DO bit (RFC 3225)."""
    span = opt_rdata(query)
    if span is None or len(response) < 12 or response[10] or response[11]:
        return response
    do = query[span[0] - 4] & 0x80
    opt = b"\x00\x00\x29" + payload.to_bytes(2, "big") + bytes((0, 0, do, 0)) + b"\x00\x00"
    return response[:10] + b"\x00\x01" + response[12:] + opt


def question_end(wire: bytes) -> int:
    """The offset after a message's first question.

    Raises:
        ValueError: no whole question.
    """
    end = _skip_name(wire, 12) + 4
    if end > len(wire):
        raise ValueError("no whole question")
    return end


def parse_forward_zone(text: str) -> tuple[str, tuple[str, ...]]:
    """Splits ``ZONE=ADDR[,ADDR...]`` into the zone, absolute and lower case in the form
    the responder gives names in (IDN as A-labels, odd bytes escaped), and address texts.

    Raises:
        ValueError: no ``=``, an empty zone, no address, or a zone that is no DNS name.
    """
    zone, sep, rest = text.partition("=")
    zone = zone.strip()
    addresses = tuple(a.strip() for a in rest.split(",") if a.strip())
    if not sep or not zone or not addresses:
        raise ValueError(f"bad forward zone {text!r} (want ZONE=ADDR[:PORT][,ADDR...])")
    try:
        return dns.name.from_text(zone).to_text().lower(), addresses
    except dns.exception.DNSException as exc:
        raise ValueError(f"bad forward zone {text!r}: {exc}") from exc
