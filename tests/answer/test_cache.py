"""The wire answer cache: identical bytes to the uncached path, keys, bounds, generations."""

from __future__ import annotations

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnstfo.answer.authority import Authority
from dnstfo.answer.cache import AnswerCache, CachedAnswer, cache_key
from dnstfo.answer.responder import Responder, Transport

from .conftest import uncached

UDP, TCP = Transport.UDP, Transport.TCP

TABLE = [
    ("www.example.com", "A", {}),
    ("WWW.EXAMPLE.com", "A", {}),
    ("example.com", "MX", {"use_edns": 0}),
    ("example.com", "NS", {"use_edns": 0, "want_dnssec": True}),
    ("nope.example.com", "AAAA", {"use_edns": 0, "payload": 512}),
    ("a.b.wild.example.com", "TXT", {}),
    ("x.child.example.com", "A", {}),
    ("example.org", "A", {}),
    ("example.com", "ANY", {"use_edns": 0, "payload": 4096}),
    ("alias.example.net", "AAAA", {"use_edns": 0, "options": [dns.edns.GenericOption(12, b"")]}),
    ("text.example.com", "TXT", {"use_edns": 0, "options": [dns.edns.CookieOption(b"c" * 8, b"")]}),
]


def patched(wire: bytes, ident: int) -> bytes:
    return ident.to_bytes(2, "big") + wire[2:]


@pytest.mark.parametrize(("name", "rdtype", "kwargs"), TABLE)
@pytest.mark.parametrize("transport", [UDP, TCP])
def test_hit_is_byte_identical_to_uncached(
    authority: Authority, name: str, rdtype: str, kwargs: dict, transport: Transport
) -> None:
    cached, plain = Responder(authority), uncached(authority, negative_index=False)
    query = dns.message.make_query(name, rdtype, **kwargs)
    first = cached.respond(query.to_wire(), transport=transport)
    assert not first.cached
    query.id = (query.id + 1) % 65536
    again = cached.respond(query.to_wire(), transport=transport)
    assert again.cached
    reference = plain.respond(query.to_wire(), transport=transport)
    assert again.wire == reference.wire
    assert again.wire == patched(first.wire, query.id)
    assert again[1:4] == reference[1:4]
    assert again.forwardable == reference.forwardable


def test_key_separates_transport_case_flags_and_edns() -> None:
    def key(**kw: object) -> bytes | None:
        tcp = bool(kw.pop("tcp", False))
        query = dns.message.make_query(str(kw.pop("name", "a.test")), "A", **kw)  # type: ignore[arg-type]
        return cache_key(query.to_wire(), tcp, 1232, 512)

    keys = [
        key(),
        key(tcp=True),
        key(name="A.test"),
        key(use_edns=0),
        key(use_edns=0, want_dnssec=True),
        key(use_edns=0, payload=600),
        key(use_edns=0, payload=600, tcp=True),
    ]
    assert None not in keys
    assert len(set(keys)) == len(keys)
    # payloads clamped to the same limit share a key; cookies do not change it
    assert key(use_edns=0, payload=2000) == key(use_edns=0, payload=4096)
    assert key(use_edns=0, payload=100) == key(use_edns=0, payload=512)
    assert key(use_edns=0, options=[dns.edns.CookieOption(b"1" * 8, b"")]) == key(
        use_edns=0, options=[dns.edns.CookieOption(b"2" * 8, b"2" * 16)]
    )


@pytest.mark.parametrize(
    "kw",
    [
        {"use_edns": 1},
        {"use_edns": 0, "options": [dns.edns.GenericOption(3, b"")]},  # NSID: not ignorable
        {"use_edns": 0, "options": [dns.edns.GenericOption(10, b"1234")]},  # bad cookie
    ],
)
def test_unusual_queries_are_not_keyed(kw: dict) -> None:
    assert (
        cache_key(dns.message.make_query("a.test", "A", **kw).to_wire(), False, 1232, 512) is None
    )


@pytest.mark.parametrize(
    "wire",
    [
        b"\x00\x00\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",  # pointer
        b"\x00\x00\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x00\x00\xfc\x00\x01",  # AXFR
        b"\x00\x00\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05a\x00",  # truncated name
        b"\x00\x00\x81\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x00\x00\x01\x00\x01",  # QR
        b"\x00\x00\x01\x00\x00\x01\x00\x00\x00\x00\x00\x02\x01a\x00\x00\x01\x00\x01",  # AR 2
        # an OPT cut short
        b"\x00\x00\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01\x01a\x00\x00\x01\x00\x01\x00",
        b"\x00\x00\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\x3f" + b"a" * 63 + b"\x00" * 5,
    ],
)
def test_malformed_shapes_are_not_keyed(wire: bytes) -> None:
    expected_none = not wire.startswith(b"\x00\x00\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x3f")
    assert (cache_key(wire, False, 1232, 512) is None) == expected_none


def test_over_long_name_is_not_keyed() -> None:
    name = (b"\x3f" + b"a" * 63) * 4 + b"\x00"  # 257 octets
    wire = b"\x00\x00\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + name + b"\x00\x01\x00\x01"
    assert cache_key(wire, False, 1232, 512) is None


def test_cache_is_bounded_first_in_first_out() -> None:
    cache = AnswerCache(generation=1, capacity=2)
    entry = CachedAnswer(b"", dns.rcode.NOERROR, "a.", 1, False)
    for key in (b"1", b"2", b"1", b"3"):
        cache.put(key, entry)
    assert len(cache) == 2
    assert cache.get(b"1") is None
    assert cache.get(b"3") is entry
    disabled = AnswerCache(generation=1, capacity=0)
    disabled.put(b"1", entry)
    assert len(disabled) == 0


def test_swapping_authority_clears_cache(authority: Authority) -> None:
    responder = Responder(authority)
    wire = dns.message.make_query("example.com", "A").to_wire()
    responder.respond(wire, transport=UDP)
    assert len(responder.cache) == 1
    newer = Authority(authority.zones, authority.generation + 1)
    responder.use(newer)
    assert responder.authority is newer
    assert responder.cache.generation == newer.generation
    assert not responder.respond(wire, transport=UDP).cached


def test_respond_many_matches_respond(authority: Authority) -> None:
    wires = [dns.message.make_query(n, "A").to_wire() for n in ("example.com", "nope.example.com")]
    many = Responder(authority).respond_many(wires * 2, transport=TCP)
    assert [r.rcode for r in many] == [dns.rcode.NOERROR, dns.rcode.NXDOMAIN] * 2
    assert [r.cached for r in many] == [False, False, True, True]


# --- property tests ----------------------------------------------------------------------

NAMES = st.sampled_from(
    ["example.com", "WwW.example.com", "x.wild.example.com", "child.example.com", "example.org"]
)
TYPES = st.sampled_from(["A", "AAAA", "MX", "TXT", "NS", "DS", "ANY", "SOA", "CNAME"])
OPTIONS = st.lists(
    st.tuples(st.sampled_from([3, 8, 10, 11, 12, 15]), st.binary(max_size=44)), max_size=3
)


@settings(max_examples=300, deadline=None)
@given(
    name=NAMES,
    rdtype=TYPES,
    edns=st.sampled_from([-1, 0]),
    payload=st.integers(0, 65535),
    do=st.booleans(),
    options=OPTIONS,
    flags=st.integers(0, 0xFFFF),
    tcp=st.booleans(),
)
def test_cached_equals_uncached(
    authority: Authority,
    name: str,
    rdtype: str,
    edns: int,
    payload: int,
    do: bool,
    options: list[tuple[int, bytes]],
    flags: int,
    tcp: bool,
) -> None:
    query = dns.message.make_query(name, rdtype)
    query.flags = flags & ~0x8000
    if edns == 0:
        opts = [dns.edns.GenericOption(code, data) for code, data in options]
        query.use_edns(0, dns.flags.DO if do else 0, max(payload, 1), options=opts)
    wire = query.to_wire()
    transport = TCP if tcp else UDP
    cached = Responder(authority)
    first = cached.respond(wire, transport=transport)
    second = cached.respond(wire, transport=transport)
    reference = uncached(authority, negative_index=False).respond(wire, transport=transport)
    assert first == reference
    assert second.wire == reference.wire
    assert second[1:4] == reference[1:4]
    # the second answer came from the cache whenever the query could be keyed and stored
    keyed = cache_key(wire, tcp, 1232, 512) is not None
    assert second.cached == (
        keyed and reference.rcode not in (dns.rcode.FORMERR, dns.rcode.SERVFAIL)
    )
