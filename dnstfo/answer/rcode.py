"""The one mapping from exceptions to RCODEs.

Two questions, two functions:

- :func:`parse_failure_rcode`: the query bytes did not parse. Every failure of the parser on
  remote input means a malformed query (FORMERR, RFC 1035 §4.1.1), except a TSIG we cannot
  check: NOTAUTH (RFC 8945 §5.2; we hold no keys, so the reply goes unsigned).
- :func:`rcode_for`: answering failed. Our own errors map by type; anything else is a bug
  and becomes SERVFAIL, logged by the caller.
"""

from __future__ import annotations

import dns.exception
import dns.message
import dns.name
import dns.rcode

from dnstfo.errors import DnstfoError, RemoteProtocolError

#: Most specific first; the first ``isinstance`` match wins. ``FormError`` also covers
#: ``BadEDNS`` and dns.name's ``NameTooLong``, ``BadLabelType`` and ``BadPointer``;
#: ``LabelTooLong`` is a ``SyntaxError``, so it is listed. ``DnstfoError`` covers
#: ``ZoneLoadError``.
_RCODES: tuple[tuple[type[BaseException], dns.rcode.Rcode], ...] = (
    (dns.message.UnknownTSIGKey, dns.rcode.NOTAUTH),
    (dns.message.BadTSIG, dns.rcode.NOTAUTH),  # a FormError, so before it
    (dns.exception.FormError, dns.rcode.FORMERR),
    (dns.name.LabelTooLong, dns.rcode.FORMERR),
    (RemoteProtocolError, dns.rcode.FORMERR),
    (DnstfoError, dns.rcode.SERVFAIL),
)


def rcode_for(exc: BaseException) -> dns.rcode.Rcode:
    """The RCODE to answer with when ``exc`` stopped us.

    Args:
        exc: the exception.

    Returns:
        The mapped RCODE; SERVFAIL for anything unexpected.
    """
    for kind, rcode in _RCODES:
        if isinstance(exc, kind):
            return rcode
    return dns.rcode.SERVFAIL


def parse_failure_rcode(exc: BaseException) -> dns.rcode.Rcode:
    """The RCODE for a query whose bytes the parser rejected.

    Args:
        exc: whatever the parser raised.

    Returns:
        NOTAUTH for an unverifiable TSIG, FORMERR for everything else.
    """
    rcode = rcode_for(exc)
    return rcode if rcode == dns.rcode.NOTAUTH else dns.rcode.FORMERR
