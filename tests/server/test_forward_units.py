"""Forwarding's pure parts: routes, the ACL, response scans, the cache, config parsing."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rrset
import pytest

from dnstfo.answer.forward import (
    ForwardConfig,
    ForwardTransport,
    ForwardZone,
    parse_forward_zone,
    scan_response,
    set_keepalive,
)
from dnstfo.cli.serve import build_config
from dnstfo.errors import UsageError
from dnstfo.server.forwardcache import NS_PER_S, ForwardCache, cache_key
from dnstfo.server.forwarding import udp_limit
from dnstfo.server.upstream import servfail

A, B, C = ("192.0.2.1", 53), ("192.0.2.2", 53), ("192.0.2.3", 5300)


def test_route_longest_suffix_wins() -> None:
    config = ForwardConfig(
        upstreams=(A,),
        zones=(ForwardZone("example.org.", (B,)), ForwardZone("in.example.org.", (C,))),
    )
    assert config.route("www.example.net.") == (A,)
    assert config.route("www.Example.ORG.") == (B,)
    assert config.route("example.org.") == (B,)
    assert config.route("a.b.IN.example.org.") == (C,)
    assert config.route("notin.example.org.") == (B,)
    assert ForwardConfig(zones=(ForwardZone(".", (C,)),)).route("x.") == (C,)
    assert ForwardConfig(zones=(ForwardZone("org.", (C,)),)).route("x.net.") == ()


def test_acl_loopback_by_default() -> None:
    config = ForwardConfig(upstreams=(A,))
    assert config.allows("127.0.0.1")
    assert config.allows("::1")
    assert config.allows("::ffff:127.0.0.5")
    assert not config.allows("192.0.2.9")
    assert not config.allows("2001:db8::1")
    assert not config.allows(None)
    wide = ForwardConfig(upstreams=(A,), allow=(ipaddress.ip_network("192.0.2.0/24"),))
    assert wide.allows("192.0.2.9")
    assert not wide.allows("127.0.0.1")


def _response(rcode: int = 0, ttls: tuple[int, ...] = (300, 60), soa: str | None = None):  # type: ignore[no-untyped-def]
    query = dns.message.make_query("www.example.org.", "A", use_edns=0)
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    for i, ttl in enumerate(ttls):
        response.answer.append(
            dns.rrset.from_text(f"n{i}.example.org.", ttl, "IN", "A", "192.0.2.1")
        )
    if soa is not None:
        response.authority.append(dns.rrset.from_text("example.org.", 3600, "IN", "SOA", soa))
    return response


def test_scan_positive_min_ttl_and_offsets() -> None:
    wire = _response(ttls=(300, 60)).to_wire()
    scan = scan_response(wire)
    assert scan.rcode == 0
    assert scan.cache_ttl == 60
    assert scan.ttls == (300, 60)
    assert [int.from_bytes(wire[o : o + 4], "big") for o in scan.ttl_offsets] == [300, 60]
    assert scan.keepalive is None


def test_scan_negative_rfc2308() -> None:
    soa = "ns.example.org. h.example.org. 1 2 3 4 120"
    nx = scan_response(_response(dns.rcode.NXDOMAIN, (), soa).to_wire())
    assert nx.cache_ttl == 120  # min(SOA TTL 3600, MINIMUM 120)
    nodata = scan_response(_response(0, (), soa).to_wire())
    assert nodata.cache_ttl == 120
    assert scan_response(_response(dns.rcode.NXDOMAIN, ()).to_wire()).cache_ttl is None
    assert scan_response(_response(dns.rcode.SERVFAIL, ()).to_wire()).cache_ttl is None
    truncated = _response()
    truncated.flags |= dns.flags.TC
    assert scan_response(truncated.to_wire()).cache_ttl is None


def test_scan_referral_kept_for_its_smallest_ttl() -> None:
    referral = _response(ttls=())
    referral.authority.append(
        dns.rrset.from_text("child.example.org.", 900, "IN", "NS", "ns.child.example.org.")
    )
    referral.additional.append(
        dns.rrset.from_text("ns.child.example.org.", 600, "IN", "A", "192.0.2.9")
    )
    assert scan_response(referral.to_wire()).cache_ttl == 600
    nothing = _response(ttls=())  # NOERROR with no records at all: not kept
    assert scan_response(nothing.to_wire()).cache_ttl is None


def test_scan_keepalive_and_malformed() -> None:
    response = _response()
    option = dns.edns.GenericOption(dns.edns.OptionType.KEEPALIVE, b"\x01\x2c")
    response.use_edns(0, options=[option])
    assert scan_response(response.to_wire()).keepalive == 300
    wire = _response().to_wire()
    for cut in (5, 20, len(wire) - 3):
        with pytest.raises(ValueError):  # noqa: PT011 - the one error the scan raises
            scan_response(wire[:cut])


def test_cache_key_case_and_edns() -> None:
    plain = dns.message.make_query("www.example.org.", "A", use_edns=0)
    upper = dns.message.make_query("WWW.example.org.", "A", use_edns=0)
    do = dns.message.make_query("www.example.org.", "A", use_edns=0, want_dnssec=True)
    no_edns = dns.message.make_query("www.example.org.", "A", use_edns=False)
    upper.id = plain.id + 1
    assert cache_key(plain.to_wire()) == cache_key(upper.to_wire())
    assert cache_key(plain.to_wire()) != cache_key(do.to_wire())
    assert cache_key(plain.to_wire()) != cache_key(no_edns.to_wire())
    assert cache_key(b"\x00" * 13) is None


def test_cache_key_leaves_out_cookie_padding_and_payload() -> None:
    def key(*options: dns.edns.Option, payload: int = 1232) -> bytes | None:
        query = dns.message.make_query(
            "www.example.org.", "A", use_edns=0, payload=payload, options=list(options)
        )
        return cache_key(query.to_wire())

    cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"12345678")
    other = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"87654321" + b"s" * 16)
    padding = dns.edns.GenericOption(dns.edns.OptionType.PADDING, bytes(20))
    subnet = dns.edns.ECSOption("192.0.2.0", 24)
    assert key(cookie) == key(other, padding, payload=4096) == key()
    assert key(subnet) != key()  # an option that may change the answer stays in


def test_cache_counts_ttl_down_restores_id_and_case_and_expires() -> None:
    query = dns.message.make_query("www.example.org.", "A", use_edns=0)
    response = _response(ttls=(300, 60))
    wire = response.to_wire()
    cache = ForwardCache(10)
    key = cache_key(query.to_wire())
    assert key is not None
    cache.put(key, wire, scan_response(wire), 0)
    asker = dns.message.make_query("WWW.example.ORG.", "A", use_edns=0)
    asker.id = 4321
    got = dns.message.from_wire(cache.get(key, asker.to_wire(), 10 * NS_PER_S + 5))
    assert got.id == 4321
    assert str(got.question[0].name) == "WWW.example.ORG."
    assert [r.ttl for r in got.answer] == [290, 50]
    # Another client in the same second, then later: its own ID and case, TTLs of then.
    other = dns.message.make_query("www.EXAMPLE.org.", "A", use_edns=0)
    for at, ttls in ((10 * NS_PER_S + 900, [290, 50]), (12 * NS_PER_S, [288, 48])):
        got = dns.message.from_wire(cache.get(key, other.to_wire(), at))
        assert got.id == other.id
        assert str(got.question[0].name) == "www.EXAMPLE.org."
        assert [r.ttl for r in got.answer] == ttls
    fresh = dns.message.from_wire(cache.get(key, asker.to_wire(), 5))  # within 1 s: as sent
    assert [r.ttl for r in fresh.answer] == [300, 60]
    assert cache.get(key, asker.to_wire(), 60 * NS_PER_S) is None  # expired at min TTL
    assert (cache.hits, cache.misses, len(cache)) == (4, 1, 0)


def test_cache_lru_bound_and_off() -> None:
    cache = ForwardCache(2)
    wire = _response().to_wire()
    scan = scan_response(wire)
    for key in (b"a", b"b"):
        cache.put(key, wire, scan, 0)
    assert cache.get(b"a", wire, 1) is not None  # a is now the most recent
    cache.put(b"c", wire, scan, 0)
    assert len(cache) == 2
    assert cache.get(b"b", wire, 1) is None
    assert cache.get(b"a", wire, 1) is not None
    off = ForwardCache(0)
    off.put(b"a", wire, scan, 0)
    assert len(off) == 0


def test_servfail_and_udp_limit() -> None:
    query = dns.message.make_query("www.example.org.", "A", use_edns=0, payload=4096)
    response = dns.message.from_wire(servfail(query.to_wire()))
    assert response.id == query.id
    assert response.rcode() == dns.rcode.SERVFAIL
    assert response.question == query.question
    assert udp_limit(query.to_wire(), 1232) == 1232
    assert (response.edns, response.payload) == (0, 1232)
    assert not response.ednsflags & dns.flags.DO
    signed = dns.message.make_query("www.example.org.", "A", want_dnssec=True)
    assert dns.message.from_wire(servfail(signed.to_wire())).ednsflags & dns.flags.DO
    plain = dns.message.make_query("www.example.org.", "A")
    assert dns.message.from_wire(servfail(plain.to_wire())).edns == -1
    small = dns.message.make_query("www.example.org.", "A", use_edns=0, payload=800)
    assert udp_limit(small.to_wire(), 1232) == 800
    assert udp_limit(dns.message.make_query("x.", "A").to_wire(), 1232) == 512


def test_udp_limit_reads_the_opt_not_bytes_in_an_option_that_look_like_one() -> None:
    """A client cookie may hold the bytes of an OPT's start (root, TYPE 41) and a size:
    the limit is the OPT's payload size all the same."""
    cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"\x00\x00\x29\x04\xd0xyz")
    query = dns.message.make_query("x.", "A", use_edns=0, payload=600, options=[cookie])
    assert udp_limit(query.to_wire(), 1232) == 600


def _options(**given: object) -> dict[str, object]:
    return {"zone": "z", **given}


def test_config_options_and_file(tmp_path: Path) -> None:
    config = build_config(
        _options(
            forward=("192.0.2.1", "[2001:db8::1]:5300"),
            forward_zone=("Corp.Example=192.0.2.9,192.0.2.10:5353",),
            forward_allow=("10.0.0.0/8",),
            forward_transport="udp",
            forward_cache_size=0,
        )
    ).forward
    assert config.upstreams == (("192.0.2.1", 53), ("2001:db8::1", 5300))
    assert config.zones == (
        ForwardZone("corp.example.", (("192.0.2.9", 53), ("192.0.2.10", 5353))),
    )
    assert config.allow == (ipaddress.ip_network("10.0.0.0/8"),)
    assert config.transport is ForwardTransport.UDP
    assert config.cache_size == 0
    conf = tmp_path / "serve.toml"
    conf.write_text('zone = "z"\nforward = "192.0.2.1:5300"\nforward-cache-size = 5\n')
    from_file = build_config(_options(config=str(conf))).forward
    assert from_file.upstreams == (("192.0.2.1", 5300),)
    assert from_file.cache_size == 5
    assert from_file.allow == ForwardConfig().allow
    assert not build_config(_options()).forward.enabled


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ({"forward": ("not-an-address",)}, "not an IP address"),
        ({"forward_zone": ("example.org",)}, "bad forward zone"),
        ({"forward_zone": ("example.org=",)}, "bad forward zone"),
        ({"forward_allow": ("10.0.0.0/33",)}, "not an address or network"),
        ({"forward_cache_size": -1}, "forward-cache-size"),
        ({"forward": ("127.0.0.1:0",)}, "bad upstream port in '127.0.0.1:0'"),
        ({"forward_zone": ("example.org=[::1]:0",)}, r"bad upstream port in '\[::1\]:0'"),
    ],
)
def test_config_errors(given: dict[str, object], words: str) -> None:
    with pytest.raises(UsageError, match=words):
        build_config(_options(**given))


def test_parse_forward_zone() -> None:
    assert parse_forward_zone("example.org.=192.0.2.1") == ("example.org.", ("192.0.2.1",))
    with pytest.raises(ValueError, match="bad forward zone"):
        parse_forward_zone("=192.0.2.1")


@pytest.mark.parametrize("zone", ["a..example", "x" * 64 + ".example", "a\\999.example"])
def test_parse_forward_zone_refuses_what_is_no_name(zone: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"bad forward zone {zone + '=192.0.2.1'!r}")):
        parse_forward_zone(f"{zone}=192.0.2.1")


def test_forward_zone_written_as_the_names_it_routes() -> None:
    """A zone is kept in the form the responder gives names in (IDN as A-labels, odd
    bytes escaped), so the names under it go to its upstreams."""
    for text, suffix in (("Bücher.Example", "xn--bcher-kva.example."), ("a b.", "a\\032b.")):
        parsed, _ = parse_forward_zone(f"{text}=192.0.2.1")
        assert parsed == suffix
        config = ForwardConfig(
            upstreams=(("192.0.2.9", 53),), zones=(ForwardZone(parsed, (("192.0.2.1", 53),)),)
        )
        qname = dns.name.from_text(f"www.{text}").to_text()
        assert config.route(qname) == (("192.0.2.1", 53),)


def test_set_keepalive_strips_and_asks() -> None:
    keepalive = dns.edns.GenericOption(dns.edns.OptionType.KEEPALIVE, b"\x00\x05")
    cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"12345678")
    query = dns.message.make_query("www.example.org.", "A", use_edns=0, options=[cookie, keepalive])
    stripped = dns.message.from_wire(set_keepalive(query.to_wire(), ask=False))
    assert [o.otype for o in stripped.options] == [dns.edns.OptionType.COOKIE]
    asked = dns.message.from_wire(set_keepalive(query.to_wire(), ask=True))
    assert [(o.otype, o.to_wire()) for o in asked.options] == [
        (dns.edns.OptionType.COOKIE, b"12345678"),
        (dns.edns.OptionType.KEEPALIVE, b""),
    ]
    plain = dns.message.make_query("www.example.org.", "A").to_wire()
    assert set_keepalive(plain, ask=True) == plain
    no_option = dns.message.make_query("www.example.org.", "A", use_edns=0).to_wire()
    assert set_keepalive(no_option, ask=False) == no_option


def test_cache_key_fast_path_equals_the_general_one() -> None:
    """The one-pass key of the usual query shape is the key the general path (options
    stripped, payload size cut out) gives; other shapes take the general path."""
    from dnstfo.answer.forward import opt_rdata, question_end, strip_options

    def general(wire: bytes) -> bytes:
        end = question_end(wire)
        wire = strip_options(wire)
        span = opt_rdata(wire)
        if span is not None:
            wire = wire[: span[0] - 8] + wire[span[0] - 6 :]
        return wire[2:12] + wire[12:end].lower() + wire[end:]

    cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"12345678")
    keepalive = dns.edns.GenericOption(dns.edns.OptionType.KEEPALIVE, b"")
    padding = dns.edns.GenericOption(dns.edns.OptionType.PADDING, bytes(7))
    subnet = dns.edns.ECSOption("192.0.2.0", 24)
    shapes = [[], [cookie], [keepalive, padding], [subnet], [padding, subnet, cookie]]
    wires = [dns.message.make_query("WwW.Example.org.", "AAAA").to_wire()]
    for options in shapes:
        for do in (False, True):
            query = dns.message.make_query(
                "WwW.Example.org.", "AAAA", use_edns=0, want_dnssec=do, options=options
            )
            wires.append(query.to_wire())
    wires.append(wires[-1] + b"\x00")  # trailing byte: the general path
    for wire in wires:
        assert cache_key(wire) == general(wire)
    assert len({cache_key(w) for w in wires[:-1]}) == 5  # EDNS, DO and subnet count


def test_scan_reads_every_ttl_of_real_answers() -> None:
    """On the example zones' answers (compressed names, glue, SOA, OPT with and without
    options), the scan finds each record's TTL where dnspython reads it."""
    from dnstfo.answer.authority import Authority
    from dnstfo.answer.responder import Responder, ResponderConfig, Transport
    from tests.answer.conftest import ZONES

    authority, _ = Authority.load(ZONES)
    responder = Responder(authority, ResponderConfig(cache_size=0))
    checked = 0
    for zone in authority.zones.values():
        for name in zone.names:
            for rdtype in ("A", "AAAA", "MX", "NS", "SOA", "TXT", "CNAME", "TYPE65280"):
                query = dns.message.make_query(name, rdtype, use_edns=0, want_dnssec=True)
                wire = responder.respond(query.to_wire(), transport=Transport.TCP).wire
                assert wire is not None
                keepalive = dns.edns.GenericOption(dns.edns.OptionType.KEEPALIVE, b"\x00\x64")
                message = dns.message.from_wire(wire)
                message.use_edns(0, options=[keepalive])
                for response in (wire, message.to_wire()):
                    parsed = dns.message.from_wire(response)
                    want = [
                        rrset.ttl
                        for section in (parsed.answer, parsed.authority, parsed.additional)
                        for rrset in section
                        for _ in rrset
                    ]
                    scan = scan_response(response)
                    assert list(scan.ttls) == want
                    for offset, ttl in zip(scan.ttl_offsets, want, strict=True):
                        assert int.from_bytes(response[offset : offset + 4], "big") == ttl
                    assert (scan.options is not None) == (response is not wire)
                    checked += 1
    assert checked > 200


def test_scan_without_ttls_reads_the_rest_the_same() -> None:
    soa = "ns.example.org. h.example.org. 1 2 3 4 120"
    response = _response(dns.rcode.NXDOMAIN, (), soa)
    option = dns.edns.GenericOption(dns.edns.OptionType.KEEPALIVE, b"\x01\x2c")
    response.use_edns(0, options=[option])
    wire = response.to_wire()
    full, lean = scan_response(wire), scan_response(wire, ttls=False)
    assert (lean.rcode, lean.keepalive, lean.options) == (full.rcode, full.keepalive, full.options)
    assert full.cache_ttl == 120
    assert (lean.ttls, lean.ttl_offsets, lean.cache_ttl) == ((), (), None)
    for cut in (20, len(wire) - 3):
        with pytest.raises(ValueError):  # noqa: PT011 - the one error the scan raises
            scan_response(wire[:cut], ttls=False)
