"""The edns-tcp-keepalive option (RFC 7828) read from queries and added to responses.

Theory of operation. Over TCP a client signals with an empty edns-tcp-keepalive option
(code 11) that it would like to keep the connection open; the server answers with the
option carrying TIMEOUT, the idle time it will allow, in units of 100 ms (§3.1). A query
whose option is not empty is a FORMERR over TCP (§3.2.2); over UDP the option is ignored.

The answer engine's responses are cached as bytes and must not depend on the connection,
so the option is added here, to the finished response: the OPT RR is the last record of a
response without TSIG (RFC 6891 §6.1.1 allows it anywhere in the additional section; the
walk below finds it wherever it is, and leaves the response unchanged when it has none).
"""

from __future__ import annotations

import enum

KEEPALIVE_CODE = 11
OPT_TYPE = 41


class KeepaliveRequest(enum.Enum):
    """What a query said about edns-tcp-keepalive."""

    ABSENT = "absent"
    """No OPT RR, or no keepalive option in it."""
    EMPTY = "empty"
    """The option, empty as RFC 7828 §3.2.1 wants: advertise our TIMEOUT."""
    MALFORMED = "malformed"
    """The option with a length other than zero: FORMERR over TCP (§3.2.2)."""


def _skip_name(wire: bytes, pos: int) -> int:
    """Returns the offset after the name at ``pos`` (IndexError if it runs off the end)."""
    while True:
        length = wire[pos]
        if length == 0:
            return pos + 1
        if length >= 0xC0:
            return pos + 2  # a compression pointer ends the name
        if length > 63:
            raise IndexError("extended label type")
        pos += length + 1


def _find_opt(wire: bytes) -> int | None:
    """Offset of the OPT RR's owner name, or None (also for messages that do not parse)."""
    try:
        counts = [wire[i] << 8 | wire[i + 1] for i in (4, 6, 8, 10)]
        if counts[3] == 0:
            return None
        pos = 12
        for _ in range(counts[0]):
            pos = _skip_name(wire, pos) + 4
        for index in range(counts[1] + counts[2] + counts[3]):
            start = pos
            pos = _skip_name(wire, pos)
            rtype = wire[pos] << 8 | wire[pos + 1]
            rdlen = wire[pos + 8] << 8 | wire[pos + 9]
            pos += 10 + rdlen
            if pos > len(wire):
                return None
            if rtype == OPT_TYPE and index >= counts[1] + counts[2]:
                return start
    except IndexError:
        return None
    return None


def keepalive_request(query: bytes) -> KeepaliveRequest:
    """Reads a query's edns-tcp-keepalive option.

    Args:
        query: the query as received (unparseable bytes give ABSENT).

    Returns:
        Whether the option is absent, empty, or malformed.
    """
    start = _find_opt(query)
    if start is None:
        return KeepaliveRequest.ABSENT
    pos = _skip_name(query, start)
    end = pos + 10 + (query[pos + 8] << 8 | query[pos + 9])
    pos += 10
    while pos + 4 <= end:
        code = query[pos] << 8 | query[pos + 1]
        length = query[pos + 2] << 8 | query[pos + 3]
        if code == KEEPALIVE_CODE:
            return KeepaliveRequest.EMPTY if length == 0 else KeepaliveRequest.MALFORMED
        pos += 4 + length
    return KeepaliveRequest.ABSENT


def add_keepalive(response: bytes, timeout: int) -> bytes:
    """Returns ``response`` with an edns-tcp-keepalive option carrying ``timeout``.

    Args:
        response: a response with an OPT RR (without one, it is returned unchanged:
            RFC 7828 options live only in an OPT RR).
        timeout: TIMEOUT in units of 100 ms (0..65535).

    Returns:
        The response with the option appended to its OPT RR's options.
    """
    start = _find_opt(response)
    if start is None:
        return response
    pos = _skip_name(response, start)
    rdlen = response[pos + 8] << 8 | response[pos + 9]
    rdata_end = pos + 10 + rdlen
    option = KEEPALIVE_CODE.to_bytes(2, "big") + b"\x00\x02" + timeout.to_bytes(2, "big")
    return b"".join(
        (
            response[: pos + 8],
            (rdlen + len(option)).to_bytes(2, "big"),
            response[pos + 10 : rdata_end],
            option,
            response[rdata_end:],
        )
    )
