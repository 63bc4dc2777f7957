"""Authoritative answers (RFC 1034 §4.3.2, 2308, 4592, 8482), decoded by dnspython and dnslib."""

from __future__ import annotations

from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.zone
import dnslib
import pytest

from dnstfo.answer.authority import MAX_CNAME_CHAIN, Authority, Outcome, lookup
from dnstfo.answer.responder import Responder, Transport

from .conftest import ZONES, AskFn

UDP = Transport.UDP


def zone_rdata(zone: dns.zone.Zone, name: str, rdtype: str) -> set[str]:
    """The rdata of an RRset straight from the zone file, as text."""
    rdataset = zone.find_rdataset(dns.name.from_text(name), dns.rdatatype.from_text(rdtype))
    return {rdata.to_text() for rdata in rdataset}


def section(rrsets: list, rdtype: str | None = None) -> set[tuple[str, str, str]]:
    """(owner, type, rdata) triples of a dnspython section, lower-cased owners."""
    return {
        (rrset.name.to_text().lower(), dns.rdatatype.to_text(rrset.rdtype), rdata.to_text())
        for rrset in rrsets
        for rdata in rrset
        if rdtype is None or dns.rdatatype.to_text(rrset.rdtype) == rdtype
    }


def lib_section(rrs: list) -> set[tuple[str, str, str]]:
    """The same triples from dnslib's decoding."""
    return {(str(rr.rname).lower(), dnslib.QTYPE.get(rr.rtype), rr.rdata.toZone()) for rr in rrs}


def test_answer_is_authoritative_and_matches_zone(ask: AskFn, example_com: dns.zone.Zone) -> None:
    got = ask("server1.example.com", "AAAA")
    assert got.msg.rcode() == dns.rcode.NOERROR
    assert got.msg.flags & dns.flags.AA
    assert {r for _, _, r in section(got.msg.answer)} == zone_rdata(
        example_com, "server1.example.com.", "AAAA"
    )
    assert lib_section(got.lib.rr) == section(got.msg.answer)
    assert got.msg.authority == []


def test_case_insensitive_with_question_echoed_as_asked(ask: AskFn) -> None:
    got = ask("SeRvEr1.ExAmPlE.cOm", "A")
    assert got.msg.question[0].name.to_text() == "SeRvEr1.ExAmPlE.cOm."
    assert str(got.lib.q.qname) == "SeRvEr1.ExAmPlE.cOm."
    assert got.msg.rcode() == dns.rcode.NOERROR
    assert len(got.lib.rr) == 1
    assert got.reply.qname == "SeRvEr1.ExAmPlE.cOm."


def test_nxdomain_has_soa_with_negative_ttl(ask: AskFn, example_com: dns.zone.Zone) -> None:
    got = ask("nope.example.com", "A")
    soa = example_com.find_rrset(example_com.origin, "SOA")
    assert got.msg.rcode() == dns.rcode.NXDOMAIN
    assert got.lib.header.rcode == dnslib.RCODE.NXDOMAIN
    assert got.msg.flags & dns.flags.AA
    assert got.msg.answer == []
    [auth] = got.msg.authority
    assert auth.rdtype == dns.rdatatype.SOA
    assert auth.ttl == min(soa.ttl, soa[0].minimum)  # RFC 2308 §3
    assert got.lib.auth[0].ttl == auth.ttl


def test_negative_ttl_uses_soa_ttl_when_smaller(tmp_path: Path) -> None:
    (tmp_path / "t.test").write_text("@ 60 SOA ns h 1 2 3 4 3600\n@ 60 NS ns\nns 60 A 192.0.2.1\n")
    authority, errors = Authority.load(tmp_path)
    assert errors == []
    response = authority.answer(dns.message.make_query("x.t.test", "A"))
    assert response.authority[0].ttl == 60


def test_nodata_at_existing_name(ask: AskFn) -> None:
    got = ask("mail.example.com", "TXT")
    assert got.msg.rcode() == dns.rcode.NOERROR
    assert got.msg.answer == []
    assert got.lib.rr == []
    assert got.msg.authority[0].rdtype == dns.rdatatype.SOA


def test_empty_non_terminal_is_nodata_not_nxdomain(ask: AskFn) -> None:
    got = ask("_tcp.example.com", "SRV")
    assert got.msg.rcode() == dns.rcode.NOERROR
    assert got.msg.answer == []
    assert got.msg.authority[0].rdtype == dns.rdatatype.SOA


def test_cname_chain_followed_inside_zone(ask: AskFn, example_com: dns.zone.Zone) -> None:
    got = ask("www.example.com", "A")
    types = [dns.rdatatype.to_text(r.rdtype) for r in got.msg.answer]
    assert types == ["CNAME", "CNAME", "A"]
    assert [dnslib.QTYPE.get(rr.rtype) for rr in got.lib.rr] == types
    final = got.msg.answer[-1]
    assert final.name == dns.name.from_text("server1.example.com")
    assert {r.to_text() for r in final} == zone_rdata(example_com, "server1.example.com.", "A")


def test_cname_query_returns_cname_only(ask: AskFn) -> None:
    got = ask("www.example.com", "CNAME")
    assert section(got.msg.answer) == {("www.example.com.", "CNAME", "web.example.com.")}


def test_cname_into_another_of_our_zones_stops_at_the_zone_edge(ask: AskFn) -> None:
    # As Knot DNS, BIND and NSD: the CNAME alone, though we also serve example.com.
    got = ask("alias.example.net", "A")
    assert got.msg.rcode() == dns.rcode.NOERROR
    assert section(got.msg.answer) == {("alias.example.net.", "CNAME", "www.example.com.")}
    assert got.msg.authority == []
    assert got.msg.additional == []
    assert got.msg.flags & dns.flags.AA


def test_cname_leaving_our_zones_stops(ask: AskFn) -> None:
    got = ask("external.example.com", "A")
    assert got.msg.rcode() == dns.rcode.NOERROR
    assert section(got.msg.answer) == {("external.example.com.", "CNAME", "www.example.org.")}
    assert got.msg.authority == []


def test_dangling_cname_is_nxdomain_with_the_cname(ask: AskFn) -> None:
    got = ask("dangling.example.com", "A")
    assert got.msg.rcode() == dns.rcode.NXDOMAIN  # RFC 6604 §2.1: last name in the chain
    assert len(got.msg.answer) == 1
    assert got.msg.authority[0].rdtype == dns.rdatatype.SOA


def test_cname_loop_terminates(ask: AskFn) -> None:
    got = ask("loop1.example.com", "A")
    owners = [r.name.to_text() for r in got.msg.answer]
    assert owners == ["loop1.example.com.", "loop2.example.com."]


def test_cname_chain_is_bounded(tmp_path: Path) -> None:
    lines = ["@ 60 SOA ns h 1 2 3 4 60", "@ 60 NS ns", "ns 60 A 192.0.2.1"]
    lines += [f"c{i} 60 CNAME c{i + 1}" for i in range(MAX_CNAME_CHAIN + 5)]
    (tmp_path / "long.test").write_text("\n".join(lines) + "\n")
    authority, _ = Authority.load(tmp_path)
    response = authority.answer(dns.message.make_query("c0.long.test", "A"))
    assert len(response.answer) == MAX_CNAME_CHAIN


def test_wildcard_synthesises_owner_as_asked(ask: AskFn) -> None:
    got = ask("Any.Thing.wild.example.com", "A")
    assert got.msg.rcode() == dns.rcode.NOERROR
    [rrset] = got.msg.answer
    assert rrset.name.to_text().lower() == "any.thing.wild.example.com."
    assert str(got.lib.rr[0].rname).lower() == "any.thing.wild.example.com."
    assert {r.to_text() for r in rrset} == {"192.0.2.99"}


def test_wildcard_nodata_for_missing_type(ask: AskFn) -> None:
    got = ask("x.wild.example.com", "MX")
    assert got.msg.rcode() == dns.rcode.NOERROR
    assert got.msg.answer == []
    assert got.msg.authority[0].rdtype == dns.rdatatype.SOA


def test_no_wildcard_at_existing_name(ask: AskFn) -> None:
    got = ask("host.wild.example.com", "TXT")  # *.wild has TXT, host.wild has not
    assert got.msg.answer == []
    assert got.msg.rcode() == dns.rcode.NOERROR


def test_no_wildcard_at_empty_non_terminal(ask: AskFn) -> None:
    got = ask("ent.wild.example.com", "A")  # RFC 4592 §2.2.2
    assert got.msg.answer == []
    assert got.msg.rcode() == dns.rcode.NOERROR


def test_no_wildcard_below_empty_non_terminal(ask: AskFn) -> None:
    got = ask("x.ent.wild.example.com", "A")  # closest encloser ent.wild has no *
    assert got.msg.rcode() == dns.rcode.NXDOMAIN


def test_literal_wildcard_name(ask: AskFn) -> None:
    got = ask("*.wild.example.com", "TXT")
    assert got.msg.answer[0].name.to_text() == "*.wild.example.com."


@pytest.mark.parametrize("name", ["child.example.com", "deep.host.child.example.com"])
def test_referral_at_and_below_cut(ask: AskFn, example_com: dns.zone.Zone, name: str) -> None:
    got = ask(name, "A")
    assert got.msg.rcode() == dns.rcode.NOERROR
    assert not got.msg.flags & dns.flags.AA
    assert got.lib.header.aa == 0
    assert got.msg.answer == []
    ns = section(got.msg.authority, "NS")
    assert {r for _, _, r in ns} == zone_rdata(example_com, "child.example.com.", "NS")
    glue = section(got.msg.additional)
    assert ("ns1.child.example.com.", "A", "192.0.2.153") in glue
    assert ("ns1.child.example.com.", "AAAA", "2001:db8:2::53") in glue
    assert ("ns2.example.com.", "A", "198.51.100.53") in glue
    assert lib_section([rr for rr in got.lib.ar if rr.rtype != dnslib.QTYPE.OPT]) == glue


def test_glue_name_itself_is_referred(ask: AskFn) -> None:
    got = ask("ns1.child.example.com", "A")
    assert got.msg.answer == []
    assert not got.msg.flags & dns.flags.AA


def test_ds_at_cut_answered_by_parent(ask: AskFn, example_com: dns.zone.Zone) -> None:
    got = ask("child.example.com", "DS")
    assert got.msg.flags & dns.flags.AA
    assert {r for _, _, r in section(got.msg.answer)} == zone_rdata(
        example_com, "child.example.com.", "DS"
    )


def test_ds_below_cut_is_referral(ask: AskFn) -> None:
    got = ask("x.child.example.com", "DS")
    assert not got.msg.flags & dns.flags.AA
    assert got.msg.authority[0].rdtype == dns.rdatatype.NS


def test_cname_into_delegation_keeps_aa_and_refers(ask: AskFn) -> None:
    got = ask("tochild.example.com", "A")
    assert got.msg.flags & dns.flags.AA
    assert got.msg.answer[0].rdtype == dns.rdatatype.CNAME
    assert got.msg.authority[0].rdtype == dns.rdatatype.NS


def test_ns_answer_has_address_additionals(ask: AskFn, example_com: dns.zone.Zone) -> None:
    got = ask("example.com", "NS")
    extra = section(got.msg.additional)
    for host in ("ns1.example.com.", "ns2.example.com."):
        for rdtype in ("A", "AAAA"):
            for rdata in zone_rdata(example_com, host, rdtype):
                assert (host, rdtype, rdata) in extra


def test_mx_additionals_from_the_answering_zone_only_once(ask: AskFn) -> None:
    got = ask("example.com", "MX")
    extra = section(got.msg.additional)
    assert ("mail.example.com.", "A", "192.0.2.25") in extra
    # mail2.example.net is ours too, but another zone's data: not added (as Knot and BIND).
    assert not [r for r in got.msg.additional if r.name.to_text() == "mail2.example.net."]
    assert len(got.msg.additional) == len({(r.name, r.rdtype) for r in got.msg.additional})


def test_ns_additionals_not_taken_from_another_of_our_zones(ask: AskFn) -> None:
    got = ask("example.net", "NS")
    assert len(got.msg.answer[0]) == 2  # ns1 and ns2.example.com, which we also serve
    assert got.msg.additional == []


def test_srv_additionals(ask: AskFn) -> None:
    got = ask("_sip._tcp.example.com", "SRV")
    assert ("server1.example.com.", "A", "192.0.2.80") in section(got.msg.additional)


def test_no_additionals_below_a_cut(tmp_path: Path) -> None:
    (tmp_path / "z.test").write_text(
        "@ 60 SOA ns h 1 2 3 4 60\n@ 60 NS ns\nns 60 A 192.0.2.1\n"
        "@ 60 MX 1 mx.sub\nsub 60 NS ns\nmx.sub 60 A 192.0.2.2\n"
    )
    authority, _ = Authority.load(tmp_path)
    response = authority.answer(dns.message.make_query("z.test", "MX"))
    assert response.additional == []


def test_any_is_minimal(ask: AskFn, example_com: dns.zone.Zone) -> None:
    got = ask("example.com", "ANY")
    assert len(got.msg.answer) == 1  # RFC 8482 §4.2
    [rrset] = got.msg.answer
    node = example_com.find_node(example_com.origin)
    assert rrset.rdtype == min(rds.rdtype for rds in node.rdatasets)
    assert got.msg.rcode() == dns.rcode.NOERROR


def test_any_at_wildcard_and_at_empty_non_terminal(ask: AskFn) -> None:
    assert len(ask("q.wild.example.com", "ANY").msg.answer) == 1
    assert ask("_tcp.example.com", "ANY").msg.answer == []


@pytest.mark.parametrize("name", ["example.org", "com", "."])
def test_refused_outside_our_zones(ask: AskFn, name: str) -> None:
    got = ask(name, "A")
    assert got.msg.rcode() == dns.rcode.REFUSED
    assert not got.msg.flags & dns.flags.AA
    assert got.reply.forwardable


def test_refused_for_other_classes(ask: AskFn) -> None:
    got = ask("example.com", "TXT", rdclass="CH")
    assert got.msg.rcode() == dns.rcode.REFUSED
    assert not got.reply.forwardable


def test_longest_match_zone_and_ds_from_parent(tmp_path: Path) -> None:
    (tmp_path / "example.com.zone").write_text((ZONES / "example.com.zone").read_text())
    (tmp_path / "child.example.com").write_text(
        "@ 60 SOA ns1 h 7 2 3 4 60\n@ 60 NS ns1\nns1 60 A 192.0.2.153\nhost 60 A 192.0.2.7\n"
    )
    authority, errors = Authority.load(tmp_path)
    assert errors == []
    responder = Responder(authority)
    for name, rdtype, origin in [
        ("host.child.example.com", "A", "child.example.com."),
        ("child.example.com", "SOA", "child.example.com."),
        ("child.example.com", "DS", "example.com."),  # RFC 4035 §3.1.4.1
    ]:
        query = dns.message.make_query(name, rdtype)
        response = dns.message.from_wire(responder.respond(query.to_wire(), transport=UDP).wire)
        assert response.flags & dns.flags.AA, name
        assert response.answer, name
        owner = authority.zones[dns.name.from_text(origin)].rrsets[dns.name.from_text(name)]
        assert response.answer[0] == owner[dns.rdatatype.from_text(rdtype)], name
        zone = authority.find_zone(dns.name.from_text(name))
        assert zone is not None
        if rdtype != "DS":
            assert zone.origin.to_text() == origin


def test_cd_copied() -> None:
    authority, _ = Authority.load(ZONES)
    query = dns.message.make_query("example.com", "A")
    query.flags |= dns.flags.CD
    assert authority.answer(query).flags & dns.flags.CD


def test_lookup_outcomes(authority: Authority) -> None:
    zone = authority.zones[dns.name.from_text("example.com")]
    table = {
        ("example.com", "SOA"): Outcome.ANSWER,
        ("www.example.com", "A"): Outcome.CNAME,
        ("nope.example.com", "A"): Outcome.NXDOMAIN,
        ("_tcp.example.com", "A"): Outcome.NODATA,
        ("a.child.example.com", "A"): Outcome.REFERRAL,
        ("child.example.com", "DS"): Outcome.ANSWER,
        ("child.example.com", "NS"): Outcome.REFERRAL,
        ("z.wild.example.com", "A"): Outcome.ANSWER,
    }
    for (name, rdtype), outcome in table.items():
        got = lookup(zone, dns.name.from_text(name), dns.rdatatype.from_text(rdtype))
        assert got.outcome is outcome, (name, rdtype)
