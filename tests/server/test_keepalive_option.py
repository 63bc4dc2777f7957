"""edns-tcp-keepalive (RFC 7828) read from queries and added to responses, checked by dnspython."""

from __future__ import annotations

import dns.edns
import dns.message

from dnstfo.wire.keepalive import KeepaliveRequest, add_keepalive, keepalive_request


def query(options: list[dns.edns.Option] | None, edns: bool = True) -> bytes:
    q = dns.message.make_query("www.example.", "A", use_edns=0 if edns else None, options=options)
    return q.to_wire()


def test_request_kinds() -> None:
    empty = dns.edns.GenericOption(dns.edns.OptionType.KEEPALIVE, b"")
    bad = dns.edns.GenericOption(dns.edns.OptionType.KEEPALIVE, b"\x00\x05")
    assert keepalive_request(query([empty])) is KeepaliveRequest.EMPTY
    assert keepalive_request(query([bad])) is KeepaliveRequest.MALFORMED
    assert keepalive_request(query([])) is KeepaliveRequest.ABSENT
    assert keepalive_request(query(None, edns=False)) is KeepaliveRequest.ABSENT
    assert keepalive_request(b"\x00") is KeepaliveRequest.ABSENT


def test_added_option_parses_with_the_timeout() -> None:
    q = dns.message.make_query("www.example.", "A", use_edns=0)
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text("www.example.", 60, "IN", "A", "192.0.2.1"))
    wire = add_keepalive(r.to_wire(), 100)
    parsed = dns.message.from_wire(wire)
    (option,) = parsed.options
    assert option.otype == dns.edns.OptionType.KEEPALIVE
    assert option.to_wire() == b"\x00\x64"
    assert parsed.answer == r.answer


def test_no_opt_no_change() -> None:
    q = dns.message.make_query("www.example.", "A", use_edns=None)
    wire = dns.message.make_response(q).to_wire()
    assert add_keepalive(wire, 100) == wire
