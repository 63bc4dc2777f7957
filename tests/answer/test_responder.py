"""Responder rules: header checks, opcodes, SYN data, EDNS, truncation, transfers, cache."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.tsigkeyring
import dnslib
import pytest

from dnstfo.answer.authority import Authority
from dnstfo.answer.responder import Reply, Responder, ResponderConfig, Transport

from .conftest import AskFn, decode

UDP, TCP = Transport.UDP, Transport.TCP
LOCAL = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"))


def header(reply: Reply) -> tuple[int, int, int, int, int, int]:
    assert reply.wire is not None
    return struct.unpack("!6H", reply.wire[:12])


def test_too_short_gets_no_reply(responder: Responder) -> None:
    for size in range(12):
        assert responder.respond(b"\x12" * size, transport=UDP).wire is None


def test_responses_are_never_answered(responder: Responder) -> None:
    query = dns.message.make_query("example.com", "A")
    query.flags |= dns.flags.QR
    assert responder.respond(query.to_wire(), transport=UDP).wire is None


def test_garbage_after_header_is_formerr_with_id_echoed(responder: Responder) -> None:
    wire = b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff"
    reply = responder.respond(wire, transport=UDP)
    ident, flags, *counts = header(reply)
    assert ident == 0xABCD
    assert flags & 0x8000
    assert flags & 0x0100  # RD echoed
    assert flags & 0xF == dns.rcode.FORMERR == reply.rcode
    assert counts == [0, 0, 0, 0]
    assert dnslib.DNSRecord.parse(reply.wire).header.rcode == dnslib.RCODE.FORMERR


def test_trailing_junk_is_formerr(responder: Responder) -> None:
    wire = dns.message.make_query("example.com", "A").to_wire() + b"\x00"
    assert responder.respond(wire, transport=UDP).rcode == dns.rcode.FORMERR
    # and it does not poison the cache for the well-formed query
    assert responder.respond(wire[:-1], transport=UDP).rcode == dns.rcode.NOERROR


@pytest.mark.parametrize("count", [0, 2])
def test_qdcount_other_than_one_is_formerr(responder: Responder, count: int) -> None:
    query = dns.message.make_query("example.com", "A")
    query.question = query.question * count
    reply = responder.respond(query.to_wire(), transport=UDP)
    assert reply.rcode == dns.rcode.FORMERR
    assert header(reply)[0] == query.id


@pytest.mark.parametrize("opcode", [dns.opcode.NOTIFY, dns.opcode.UPDATE, dns.opcode.STATUS, 3])
def test_other_opcodes(responder: Responder, opcode: int) -> None:
    query = dns.message.make_query("example.com", "SOA")
    query.set_opcode(opcode)  # type: ignore[arg-type]
    wire = query.to_wire()
    normal = responder.respond(wire, transport=TCP)
    syn = responder.respond(wire, transport=TCP, from_syn_data=True)
    assert normal.rcode == dns.rcode.NOTIMP
    assert syn.rcode == dns.rcode.REFUSED  # RFC 7413 §6: not idempotent, not from SYN data
    for reply in (normal, syn):
        _, flags, *_ = header(reply)
        assert (flags >> 11) & 0xF == opcode
        assert dnslib.DNSRecord.parse(reply.wire).header.rcode == reply.rcode


def test_query_from_syn_data_is_answered(responder: Responder) -> None:
    query = dns.message.make_query("example.com", "SOA")
    reply = responder.respond(query.to_wire(), transport=TCP, from_syn_data=True)
    assert reply.rcode == dns.rcode.NOERROR
    assert decode(query, reply).msg.answer


def test_tsig_without_keys_is_notauth(responder: Responder) -> None:
    query = dns.message.make_query("example.com", "SOA")
    query.use_tsig(dns.tsigkeyring.from_text({"k.": "c2VjcmV0c2VjcmV0"}), "k.")
    assert responder.respond(query.to_wire(), transport=UDP).rcode == dns.rcode.NOTAUTH


def test_edns_echoed_with_our_payload_and_do(ask: AskFn) -> None:
    got = ask("example.com", "A", use_edns=0, payload=4096, want_dnssec=True)
    assert got.msg.edns == 0
    assert got.msg.payload == 1232
    assert got.msg.ednsflags & dns.flags.DO
    [opt] = [rr for rr in got.lib.ar if rr.rtype == dnslib.QTYPE.OPT]
    assert opt.rclass == 1232
    assert got.msg.options == ()


def test_no_opt_without_edns(ask: AskFn) -> None:
    got = ask("example.com", "A", use_edns=False)
    assert got.msg.edns == -1
    assert got.lib.ar == []


def test_do_not_set_when_not_asked(ask: AskFn) -> None:
    got = ask("example.com", "A", use_edns=0)
    assert not got.msg.ednsflags & dns.flags.DO


def test_ignored_options_are_not_echoed(ask: AskFn) -> None:
    cookie = dns.edns.CookieOption(b"12345678", b"")
    got = ask("example.com", "A", use_edns=0, options=[cookie])
    assert got.msg.rcode() == dns.rcode.NOERROR
    assert got.msg.options == ()


def test_badvers(ask: AskFn) -> None:
    got = ask("example.com", "A", use_edns=1)
    assert got.msg.rcode() == dns.rcode.BADVERS  # RFC 6891 §6.1.3
    assert got.msg.edns == 0
    assert got.msg.answer == []
    assert got.reply.rcode == dns.rcode.BADVERS


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    """A zone with a TXT RRset of ~2.6 KB and an MX whose additional data is large."""
    directory = tmp_path_factory.mktemp("big")
    lines = ["@ 60 SOA ns h 1 2 3 4 60", "@ 60 NS ns", "ns 60 A 192.0.2.1"]
    lines += [f'big 60 TXT "{i:03d} {"x" * 100}"' for i in range(25)]
    lines += ["mx 60 MX 10 m", "m 60 A 192.0.2.2"]
    lines += [f"m 60 AAAA 2001:db8::{i:x}" for i in range(1, 40)]
    (directory / "big.test").write_text("\n".join(lines) + "\n")
    authority, errors = Authority.load(directory)
    assert errors == []
    return authority


def test_udp_truncation_without_edns(big: Authority, ask: AskFn) -> None:
    got = ask("big.big.test", "TXT", responder_=Responder(big), use_edns=False)
    assert len(got.reply.wire) <= 512
    assert got.msg.flags & dns.flags.TC
    assert got.lib.header.tc == 1
    assert (got.msg.answer, got.msg.authority, got.msg.additional) == ([], [], [])
    assert got.msg.question[0].name == dns.name.from_text("big.big.test")


def test_udp_payload_honoured_and_capped(big: Authority, ask: AskFn) -> None:
    responder = Responder(big)
    small = ask("big.big.test", "TXT", responder_=responder, use_edns=0, payload=100)
    assert small.msg.flags & dns.flags.TC  # below 512 counts as 512
    assert len(small.reply.wire) <= 512
    assert small.msg.edns == 0
    capped = ask("big.big.test", "TXT", responder_=responder, use_edns=0, payload=65000)
    assert capped.msg.flags & dns.flags.TC  # ours is 1232
    larger = Responder(big, ResponderConfig(udp_payload=4096))
    fits = ask("big.big.test", "TXT", responder_=larger, use_edns=0, payload=4096)
    assert not fits.msg.flags & dns.flags.TC
    assert len(fits.msg.answer[0]) == 25


def test_tcp_is_not_truncated(big: Authority, ask: AskFn) -> None:
    got = ask("big.big.test", "TXT", TCP, responder_=Responder(big))
    assert not got.msg.flags & dns.flags.TC
    assert len(got.lib.rr) == 25


def test_additional_dropped_before_truncating(big: Authority, ask: AskFn) -> None:
    got = ask("mx.big.test", "MX", responder_=Responder(big), use_edns=False)
    assert not got.msg.flags & dns.flags.TC  # RFC 2181 §9
    assert len(got.msg.answer) == 1
    assert got.msg.additional == []
    full = ask("mx.big.test", "MX", TCP, responder_=Responder(big))
    assert full.msg.additional


def test_referral_that_does_not_fit_is_truncated(tmp_path: Path, ask: AskFn) -> None:
    lines = ["@ 60 SOA ns h 1 2 3 4 60", "@ 60 NS ns", "ns 60 A 192.0.2.1"]
    lines += [f"sub 60 NS ns{i}.sub" for i in range(12)]
    lines += [f"ns{i}.sub 60 AAAA 2001:db8::{i + 1:x}" for i in range(12)]
    (tmp_path / "r.test").write_text("\n".join(lines) + "\n")
    authority, _ = Authority.load(tmp_path)
    got = ask("x.sub.r.test", "A", responder_=Responder(authority), use_edns=False)
    assert got.msg.flags & dns.flags.TC


def test_forwardable_only_outside_zones(ask: AskFn) -> None:
    assert ask("example.org", "A").reply.forwardable
    assert not ask("nope.example.com", "A").reply.forwardable


def test_reply_names_the_question(ask: AskFn) -> None:
    got = ask("Mail.Example.com", "AAAA")
    assert (got.reply.qname, got.reply.qtype) == ("Mail.Example.com.", dns.rdatatype.AAAA)
    assert got.reply.rcode == dns.rcode.NOERROR


def test_unexpected_failure_is_servfail(
    authority: Authority, monkeypatch: pytest.MonkeyPatch
) -> None:
    responder = Responder(authority)

    def broken(query: dns.message.Message) -> dns.message.Message:
        raise RuntimeError("bug")

    monkeypatch.setattr(Authority, "answer", lambda self, query: broken(query))
    wire = dns.message.make_query("example.com", "A").to_wire()
    reply = responder.respond(wire, transport=UDP)
    assert reply.rcode == dns.rcode.SERVFAIL
    assert reply.qname == "example.com."
    assert len(responder.cache) == 0  # never cached


# --- zone transfer -------------------------------------------------------------------------


def transfer(responder: Responder, name: str, rdtype: str = "AXFR", **kw: object) -> Reply:
    query = dns.message.make_query(name, rdtype)
    return responder.respond(query.to_wire(), **kw)  # type: ignore[arg-type]


def test_axfr_refused_by_default(responder: Responder) -> None:
    reply = transfer(responder, "example.com", transport=TCP, client="127.0.0.1")
    assert reply.rcode == dns.rcode.REFUSED
    assert reply.more == ()


def test_axfr_over_udp_refused(authority: Authority) -> None:
    responder = Responder(authority, ResponderConfig(axfr_allow=LOCAL))
    assert transfer(responder, "example.com", transport=UDP, client="127.0.0.1").rcode == (
        dns.rcode.REFUSED
    )


def test_ixfr_over_udp_gets_soa(authority: Authority) -> None:
    reply = transfer(Responder(authority), "example.com", "IXFR", transport=UDP)
    msg = dns.message.from_wire(reply.wire)
    assert [r.rdtype for r in msg.answer] == [dns.rdatatype.SOA]


def test_axfr_not_at_apex_is_notauth(authority: Authority) -> None:
    responder = Responder(authority, ResponderConfig(axfr_allow=LOCAL))
    reply = transfer(responder, "www.example.com", transport=TCP, client="127.0.0.1")
    assert reply.rcode == dns.rcode.NOTAUTH


@pytest.mark.parametrize("rdtype", ["AXFR", "IXFR"])
def test_axfr_allowed_gives_whole_zone(authority: Authority, rdtype: str) -> None:
    responder = Responder(authority, ResponderConfig(axfr_allow=LOCAL))
    reply = transfer(responder, "example.com", rdtype, transport=TCP, client="127.0.0.1")
    assert reply.rcode == dns.rcode.NOERROR
    records = []
    for wire in (reply.wire, *reply.more):
        msg = dns.message.from_wire(wire, one_rr_per_rrset=True)
        records += [(r.name, r.rdtype, r[0]) for r in msg.answer]
    assert records[0][1] == records[-1][1] == dns.rdatatype.SOA
    zone = authority.zones[dns.name.from_text("example.com")]
    expected = {(n, t, rd) for n, by in zone.rrsets.items() for t, rs in by.items() for rd in rs}
    assert set(records) == expected
    assert len(records) == len(expected) + 1  # SOA twice
    assert not transfer(responder, "example.com", transport=TCP, client="192.0.2.9").more
