"""Forward-cache hits take the local answer path: answered at once, never deferred.

A real :class:`Forwarding` (its forward cache filled by hand, as an upstream answer
would be) hooked into a real :class:`Responder` and :class:`TcpSession`, with the clock
passed in: no upstream is ever asked.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from dnstfo.answer.authority import Authority
from dnstfo.answer.forward import ForwardConfig, scan_response
from dnstfo.answer.responder import Reply, Responder, Transport
from dnstfo.server import upstream
from dnstfo.server.config import QueryLog
from dnstfo.server.forwardcache import NS_PER_S, cache_key
from dnstfo.server.forwarding import Forwarding
from dnstfo.server.querylog import QUERY_LOGGER, QueryLogger
from dnstfo.server.session import TcpSession
from dnstfo.server.stats import ServerStats
from dnstfo.server.upstream import ForwardTrace
from dnstfo.wire.connection import ConnectionPolicy
from dnstfo.wire.framing import FrameDecoder, frame
from tests.server.serveproc import free_port

ZONES = Path(__file__).resolve().parents[2] / "zones"
CLIENT = "127.0.0.1"


class Clock:
    """Monotonic ns, moved by the test."""

    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


def setup(clock: Clock, port: int = 9) -> tuple[Forwarding, Responder]:
    """A forwarding to a loopback port nothing is sent to, hooked into a responder of
    the example zones."""
    config = ForwardConfig(upstreams=((CLIENT, port),), cache_size=10)
    forwarding = Forwarding(config, clock, 1232)
    authority, errors = Authority.load(ZONES)
    assert errors == []
    return forwarding, Responder(authority, forwarded=forwarding.cached)


def store(forwarding: Forwarding, query: dns.message.Message, records: int = 1) -> None:
    """Puts the upstream answer to ``query`` (``records`` A records, TTL 300, AA clear
    as the forwarder stores it) into the forward cache at time 0."""
    response = dns.message.make_response(query)
    name = query.question[0].name
    rdatas = [
        dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.A, f"192.0.2.{i + 1}")
        for i in range(records)
    ]
    response.answer.append(dns.rrset.from_rdata_list(name, 300, rdatas))
    wire = response.to_wire()
    key = cache_key(query.to_wire())
    assert key is not None
    forwarding.forwarder.cache.put(key, wire, scan_response(wire), 0)


def test_tcp_hit_goes_out_with_local_answers_without_deferral(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    forwarding, responder = setup(clock)
    store(forwarding, dns.message.make_query("www.fwd.example.", "A", use_edns=0))
    deferred: list[bytes] = []

    def defer(session: TcpSession, slot: int, query: bytes, reply: Reply) -> bool:
        deferred.append(query)
        return True

    session = TcpSession(
        responder,
        ConnectionPolicy(),
        0,
        (CLIENT, 4000),
        False,
        ServerStats(),
        QueryLogger(QueryLog.TEXT),
        clock=clock,
        defer=defer,
    )
    caplog.set_level(logging.INFO, logger=QUERY_LOGGER)
    local = dns.message.make_query("example.com.", "SOA")
    hits = [dns.message.make_query("WWW.Fwd.example.", "A", use_edns=0) for _ in range(2)]
    for seconds, hit in zip((7, 9), hits, strict=True):  # the first is the responder's
        clock.now = seconds * NS_PER_S + 1  # miss, the second its cache's hit
        session.receive_data(frame(local.to_wire()) + frame(hit.to_wire()), clock.now)
        first, second = FrameDecoder().feed(bytes(session.data_to_send()))  # one write
        session.data_sent(len(session.data_to_send()), clock.now)
        assert dns.message.from_wire(first).id == local.id
        got = dns.message.from_wire(second)
        assert got.id == hit.id
        assert str(got.question[0].name) == "WWW.Fwd.example."  # the client's case
        assert got.rcode() == dns.rcode.NOERROR
        assert got.answer[0].ttl == 300 - seconds  # counted down
        assert dns.flags.AA not in got.flags
    assert deferred == []
    cache = forwarding.forwarder.cache
    assert (cache.hits, cache.misses) == (2, 0)
    assert session.stats.queries["tcp", dns.rcode.NOERROR] == 4
    lines = [r.getMessage() for r in caplog.records if "fwd.example" in r.getMessage().lower()]
    assert len(lines) == 2
    assert all("forward=cache" in line for line in lines)


def test_udp_hit_that_does_not_fit_is_truncated() -> None:
    clock = Clock()
    forwarding, responder = setup(clock)
    plain = dns.message.make_query("big.fwd.example.", "A", use_edns=False)
    edns = dns.message.make_query("big.fwd.example.", "A", use_edns=0, payload=4096)
    store(forwarding, plain, records=40)
    store(forwarding, edns, records=40)
    for _ in range(2):  # the responder's own cache missed, then hit
        small = responder.respond(plain.to_wire(), transport=Transport.UDP, client=CLIENT)
        assert small.wire is not None
        assert not small.forwardable
        assert small.note == "forward=cache"
        assert len(small.wire) <= 512
        got = dns.message.from_wire(small.wire)
        assert got.id == plain.id
        assert dns.flags.TC in got.flags
        assert not got.answer
        for query in (edns, plain):  # fits the client's 4096 (our 1232); TCP: no limit
            transport = Transport.UDP if query is edns else Transport.TCP
            full = responder.respond(query.to_wire(), transport=transport, client=CLIENT)
            assert full.wire is not None
            whole = dns.message.from_wire(full.wire)
            assert dns.flags.TC not in whole.flags
            assert len(whole.answer[0]) == 40
    assert forwarding.forwarder.cache.hits == 6


def test_client_outside_allow_and_miss_stay_forwardable() -> None:
    clock = Clock()
    forwarding, responder = setup(clock)
    cached = dns.message.make_query("www.fwd.example.", "A")
    store(forwarding, cached)
    outside = responder.respond(cached.to_wire(), transport=Transport.TCP, client="192.0.2.7")
    assert outside.forwardable
    assert outside.rcode == dns.rcode.REFUSED
    other = dns.message.make_query("other.fwd.example.", "A")
    miss = responder.respond(other.to_wire(), transport=Transport.TCP, client=CLIENT)
    assert miss.forwardable
    cache = forwarding.forwarder.cache
    assert (cache.hits, cache.misses) == (0, 1)


def test_forwarder_does_not_look_up_a_query_that_just_missed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The miss the responder's lookup counted is not counted again when the same query
    is forwarded; a query forwarded without that lookup first is looked up there."""
    clock = Clock()
    forwarding, _ = setup(clock, port=free_port())  # closed: the forward ends in SERVFAIL
    forwarder = forwarding.forwarder
    query = dns.message.make_query("www.fwd.example.", "A").to_wire()

    keys: list[bytes] = []

    def counted_key(wire: bytes) -> bytes | None:
        keys.append(wire)
        return cache_key(wire)

    monkeypatch.setattr(upstream, "cache_key", counted_key)

    async def forward(wire: bytes) -> tuple[bytes, ForwardTrace]:
        done: asyncio.Future[tuple[bytes, ForwardTrace]] = asyncio.Future()
        forwarder.forward(wire, "www.fwd.example.", lambda *got: done.set_result(got))
        return await asyncio.wait_for(done, 10)

    async def run() -> None:
        assert forwarder.cached(query) is None
        await forward(query)  # just missed: neither looked up nor keyed again
        assert (forwarder.cache.hits, forwarder.cache.misses) == (0, 1)
        assert len(keys) == 1
        await forward(query)
        assert (forwarder.cache.hits, forwarder.cache.misses) == (0, 2)
        assert len(keys) == 2
        forwarder.close()

    asyncio.run(run())


def test_sessions_given_answers_are_woken_once_each_in_order() -> None:
    forwarding, _ = setup(Clock())
    woken: list[str] = []

    class Session:
        def __init__(self, name: str) -> None:
            self.wake = lambda: woken.append(name)

    a, b, c = Session("a"), Session("b"), Session("c")
    c.wake = None  # type: ignore[assignment]  # (a session whose writer is gone)
    forwarding._waking = [a, b, a, c, b]  # type: ignore[list-item]
    forwarding._wake_all()
    assert woken == ["a", "b"]
    assert forwarding._waking == []
