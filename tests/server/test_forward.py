"""Forwarding through ``dnstfo serve`` to Knot DNS on loopback (real sockets, real kernel).

The server under test serves ``test.example.`` itself and forwards everything else to a
``knotd`` on 127.0.0.1 serving ``example.com.`` and ``example.net.`` (zones/).
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from collections.abc import Callable, Iterator

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from dnstfo.answer.forward import ForwardConfig, ForwardTransport
from tests.knot import knot_config
from tests.server.conftest import ServerThread
from tests.server.serveproc import free_port

QUESTIONS = [
    ("example.com.", "A"),
    ("example.com.", "MX"),
    ("example.com.", "NS"),
    ("text.example.com.", "TXT"),
    ("mail.example.com.", "AAAA"),
    ("nothere.example.com.", "A"),  # NXDOMAIN
    ("mail.example.com.", "TXT"),  # NODATA
    ("example.net.", "SOA"),
]


def _wait_answering(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    query = dns.message.make_query("example.com.", "SOA")
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"knotd exited: {proc.stderr.read() if proc.stderr else ''!r}")
        try:
            dns.query.tcp(query, "127.0.0.1", port=port, timeout=0.5)
            return
        except OSError:
            time.sleep(0.05)  # not listening yet: poll with a bounded deadline
    raise RuntimeError("knotd did not answer within 10 s")


@pytest.fixture(scope="module")
def knot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A ``knotd`` on 127.0.0.1; yields its port."""
    port = free_port()
    conf = knot_config(tmp_path_factory.mktemp("knot"), "127.0.0.1", port)
    proc = subprocess.Popen(
        ["knotd", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _wait_answering(port, proc)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.fixture
def forwarder(make_server: Callable[..., ServerThread], knot: int) -> Callable[..., ServerThread]:
    """Starts ``dnstfo serve`` forwarding to knotd (ForwardConfig overrides as keywords)."""

    def make(**overrides: object) -> ServerThread:
        config = ForwardConfig(upstreams=(("127.0.0.1", knot),))
        return make_server(forward=dataclasses.replace(config, **overrides))

    return make


def _sections(message: dns.message.Message) -> list[list[tuple[str, int, list[str]]]]:
    """Sections as (name, type, sorted records), without TTLs."""
    out = []
    for section in (message.answer, message.authority):
        out.append(sorted((str(r.name), int(r.rdtype), sorted(map(str, r))) for r in section))
    return out


def _max_ttl(message: dns.message.Message) -> dict[tuple[str, int], int]:
    sections = (message.answer, message.authority)
    return {(str(r.name), int(r.rdtype)): r.ttl for s in sections for r in s}


def _tcp(address: tuple[str, int], name: str, rdtype: str) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    return dns.query.tcp(query, address[0], port=address[1], timeout=5)


@pytest.mark.parametrize("transport", [ForwardTransport.TCP, ForwardTransport.UDP])
def test_forwarded_answers_equal_knots(
    forwarder: Callable[..., ServerThread], knot: int, transport: ForwardTransport
) -> None:
    server = forwarder(transport=transport, cache_size=0)
    for name, rdtype in QUESTIONS:
        direct = _tcp(("127.0.0.1", knot), name, rdtype)
        for ask in (dns.query.tcp, dns.query.udp):
            query = dns.message.make_query(name, rdtype)
            got = ask(query, server.address[0], port=server.address[1], timeout=5)
            assert got.id == query.id
            assert got.rcode() == direct.rcode(), (name, rdtype)
            assert _sections(got) == _sections(direct), (name, rdtype)
            direct_ttls = _max_ttl(direct)
            for key, ttl in _max_ttl(got).items():
                assert ttl <= direct_ttls[key]


def test_own_zone_answered_not_forwarded(forwarder: Callable[..., ServerThread]) -> None:
    server = forwarder()
    got = _tcp(server.address, "www.test.example.", "A")
    assert got.rcode() == dns.rcode.NOERROR
    assert dns.flags.AA in got.flags
    stats = server.server.forwarding.forwarder.stats()
    assert sum(s.queries for s in stats.values()) == 0


def test_keepalive_is_hop_by_hop(forwarder: Callable[..., ServerThread]) -> None:
    """The client's edns-tcp-keepalive is not passed on, and the upstream's is not
    passed back: the client sees exactly one, ours (RFC 7828 §3.2)."""
    import dns.edns

    server = forwarder(cache_size=0)
    option = dns.edns.GenericOption(dns.edns.OptionType.KEEPALIVE, b"")
    query = dns.message.make_query("example.com.", "A", use_edns=0, options=[option])
    response = dns.query.tcp(query, server.address[0], port=server.address[1], timeout=5)
    assert response.rcode() == dns.rcode.NOERROR
    assert response.answer
    kinds = [o.otype for o in response.options]
    assert kinds == [dns.edns.OptionType.KEEPALIVE]


def test_start_log_names_upstreams_and_acl(
    forwarder: Callable[..., ServerThread], knot: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="dnstfo.server.forwarding")
    forwarder(cache_size=5)
    assert (
        f"forwarding names outside our zones to 127.0.0.1:{knot} over TCP (Fast Open, "
        "kept open), cache 5, for 127.0.0.0/8, ::1/128" in caplog.text
    )


def test_forwarded_answers_are_not_authoritative(
    forwarder: Callable[..., ServerThread], knot: int
) -> None:
    """Knot is the authority and sets AA; we are not, so a forwarded answer, fresh or from
    the forward cache, has AA clear (RFC 1035 §4.1.1, RFC 2181 §5.4.1); RA is Knot's."""
    server = forwarder()
    direct = _tcp(("127.0.0.1", knot), "example.com.", "A")
    assert dns.flags.AA in direct.flags
    fresh = _tcp(server.address, "example.com.", "A")
    hit = _tcp(server.address, "example.com.", "A")
    query = dns.message.make_query("example.com.", "A")
    over_udp = dns.query.udp(query, server.address[0], port=server.address[1], timeout=5)
    cache = server.server.forwarding.forwarder.cache
    assert (cache.hits, cache.misses) == (2, 1)  # a hit counted once, the miss once
    for got in (fresh, hit, over_udp):
        assert got.rcode() == dns.rcode.NOERROR
        assert _sections(got) == _sections(direct)
        assert dns.flags.AA not in got.flags
        assert (dns.flags.RA in got.flags) == (dns.flags.RA in direct.flags)
