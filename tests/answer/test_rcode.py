"""The exception -> RCODE mapping."""

from __future__ import annotations

import dns.exception
import dns.message
import dns.name
import dns.rcode
import pytest

from dnstfo.answer.rcode import parse_failure_rcode, rcode_for
from dnstfo.errors import FrameTooLarge, UsageError, ZoneLoadError


@pytest.mark.parametrize(
    ("exc", "rcode"),
    [
        (dns.message.ShortHeader(), dns.rcode.FORMERR),
        (dns.message.TrailingJunk(), dns.rcode.FORMERR),
        (dns.message.BadEDNS(), dns.rcode.FORMERR),
        (dns.name.BadPointer(), dns.rcode.FORMERR),
        (dns.name.NameTooLong(), dns.rcode.FORMERR),
        (dns.name.LabelTooLong(), dns.rcode.FORMERR),  # a SyntaxError, not a FormError
        (dns.name.BadLabelType(), dns.rcode.FORMERR),
        (dns.message.UnknownTSIGKey(), dns.rcode.NOTAUTH),
        (dns.message.BadTSIG(), dns.rcode.NOTAUTH),
        (FrameTooLarge("big"), dns.rcode.FORMERR),
        (ZoneLoadError("f", 1, "x"), dns.rcode.SERVFAIL),
        (UsageError("x"), dns.rcode.SERVFAIL),
        (RuntimeError("bug"), dns.rcode.SERVFAIL),
    ],
)
def test_rcode_for(exc: BaseException, rcode: dns.rcode.Rcode) -> None:
    assert rcode_for(exc) == rcode


@pytest.mark.parametrize(
    ("exc", "rcode"),
    [
        (ValueError("odd rdata"), dns.rcode.FORMERR),
        (dns.exception.SyntaxError(), dns.rcode.FORMERR),
        (dns.message.UnknownTSIGKey(), dns.rcode.NOTAUTH),
    ],
)
def test_parse_failure_rcode(exc: BaseException, rcode: dns.rcode.Rcode) -> None:
    assert parse_failure_rcode(exc) == rcode
