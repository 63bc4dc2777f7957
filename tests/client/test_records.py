"""The query's JSON shapes (``client/records.py``): real loopback queries, written by the
library exactly as ``cli/render.py`` wrote them (byte for byte, keys in the same order)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from dnstfo.cli import render
from dnstfo.client import records
from dnstfo.client.compare import compare
from dnstfo.client.config import QueryConfig, TfoMethod
from dnstfo.client.query import exchange
from dnstfo.client.report import CookieChange, Fallback
from dnstfo.client.result import QueryFailure, QueryResult
from dnstfo.client.tls import TlsInfo
from dnstfo.errors import DnstfoError
from dnstfo.kernel.tcpinfo import FastOpenClientFail as Fail
from dnstfo.server.config import Endpoint, ServerConfig
from tests.client import tinyserver
from tests.client.scriptserver import answer_a, serving
from tests.server.conftest import ServerThread

ZONE = "$TTL 60\n@ SOA ns h 1 2 3 4 5\n@ NS ns\nns A 192.0.2.1\n" + "".join(
    f"h{i} A 198.51.100.{i % 250 + 1}\n" for i in range(1500)
)
COOKIE = bytes.fromhex("0011223344556677")
OTHER = bytes.fromhex("8899aabbccddeeff0011")
TLS = TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", "dot", False, True, "dns.example")


@pytest.fixture(scope="module")
def tfo_server() -> Iterator[tuple[str, int]]:
    with tinyserver.running(tinyserver.make_listener(tfo=True)) as address:
        yield address


@pytest.fixture(scope="module")
def xfr_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    zones: Path = tmp_path_factory.mktemp("zones")
    (zones / "x.example.zone").write_text(ZONE)
    config = ServerConfig(
        zone_dir=zones,
        listen=(Endpoint("127.0.0.1", 0),),
        axfr_allow=(ipaddress.ip_network("127.0.0.0/8"),),
    )
    server = ServerThread(config)
    try:
        yield server.address
    finally:
        server.stop()


def _results(tfo: tuple[str, int], xfr: tuple[str, int]) -> list[QueryResult]:
    host, port = tfo
    base = QueryConfig("example.com", host, port=port)
    results = [exchange(base), exchange(base)]  # priming, then in the SYN
    results.append(exchange(replace(base, tfo=TfoMethod.OFF, dnssec=True, recurse=False)))
    results.append(exchange(replace(base, tfo=TfoMethod.CONNECT, edns_payload=0, rdtype="MX")))
    axfr = QueryConfig("x.example", xfr[0], port=xfr[1], rdtype="AXFR", tfo=TfoMethod.OFF)
    results.append(exchange(axfr))
    results.append(replace(results[0], tls=TLS))
    results.append(replace(results[1], tls=replace(TLS, alpn=None, verified=False, hostname=None)))
    # The host's own sysctl may hand out no cookies: the cookie fields from the types.
    tfo = results[1].tfo
    cookies = replace(
        tfo,
        before=replace(tfo.before, cookie=COOKIE),
        after=replace(tfo.after, cookie=OTHER, cookie_change=CookieChange.CHANGED,
                      client_fail=Fail.DATA_NOT_ACKED, fallback=Fallback.CLIENT_OFF,
                      fallback_reason="the client bit is off", attempted=True),
    )  # fmt: skip
    results.append(replace(results[1], tfo=cookies))
    return results


def test_one_query_and_a_transfer_are_written_as_before(tfo_server, xfr_server):
    results = _results(tfo_server, xfr_server)
    xfr = results[4].transfer
    assert xfr is not None
    assert len(xfr.messages) > 1
    for result in results:
        for name in ("example.com", "localhost", "dns.exämple"):
            old = render.result_json(result, name)
            assert records.to_line(records.result_json(result, name)) == records.to_line(old)
            assert records.tfo_json(result.tfo) == render.tfo_json(result.tfo)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_failed_query_is_written_as_before():
    config = QueryConfig("x.example", "127.0.0.1", port=_closed_port(), tries=2, dnssec=True)
    with pytest.raises(DnstfoError) as caught:
        exchange(config)
    failure = QueryFailure.from_error(caught.value)
    assert failure.errname == "ECONNREFUSED"
    for f in (failure, QueryFailure("first byte", None, "timed out after 0.3 s")):
        old = render.failure_json(config, "127.0.0.1", f, 1_700_000_000.25)
        new = records.failure_json(config, "127.0.0.1", f, 1_700_000_000.25)
        assert records.to_line(new) == records.to_line(old)


def test_compare_is_written_as_before(tfo_server):
    def fail_priming(n, conn, q):
        if n == 1:
            conn.shutdown(socket.SHUT_WR)
        else:
            answer_a(conn, q)

    comparisons = [compare(QueryConfig("example.com", tfo_server[0], port=tfo_server[1]))]
    with serving(fail_priming) as port:
        comparisons.append(compare(QueryConfig("x.example", "127.0.0.1", port=port), tfo_queries=2))
    assert comparisons[-1].failed
    for c in comparisons:
        old = render.compare_json(c, "server.example")
        assert records.to_line(records.compare_json(c, "server.example")) == records.to_line(old)
        assert c.in_order() == render._in_order(c)
