"""DNS over TLS through the epoll driver on loopback: the client's blocking driver against
a TLS listener, and bad clients that cost only their own connection."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
from collections.abc import Iterator

import dns.rcode
import pytest

from dnstfo.answer.authority import Authority
from dnstfo.answer.responder import Responder
from dnstfo.client.config import QueryConfig, TfoMethod, TlsOptions
from dnstfo.client.query import exchange
from dnstfo.client.tls import TlsError
from dnstfo.errors import PhaseTimeout
from dnstfo.kernel.sockets import tfo_listener
from dnstfo.lab.testca import TestCa, make_test_ca
from dnstfo.server.config import Limits, QueryLog
from dnstfo.server.querylog import QueryLogger
from dnstfo.server.stats import ServerStats
from dnstfo.server.tcp import TcpServer
from dnstfo.server.tls import TlsServerContext


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCa:
    return make_test_ca(tmp_path_factory.mktemp("ca"))


class _TlsServer:
    def __init__(self, ca: TestCa) -> None:
        self.ctx = TlsServerContext(str(ca.cert), str(ca.key), handshake_timeout=1)
        self.listener = tfo_listener(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.loop = asyncio.new_event_loop()
        self.tcp = TcpServer(
            Responder(Authority()), Limits(), ServerStats(), QueryLogger(QueryLog.OFF)
        )
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(lambda: self.tcp.start([], tls=[(self.listener, self.ctx)]))

    def call(self, fn):
        async def run():
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.tcp.stop(1), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()
        self.listener.close()


@pytest.fixture
def tls_server(ca: TestCa) -> Iterator[_TlsServer]:
    server = _TlsServer(ca)
    yield server
    server.stop()


def _config(port: int, options: TlsOptions, **kw) -> QueryConfig:
    return QueryConfig("www.test.example.", "127.0.0.1", port=port, tls=options, timeout=5, **kw)


@pytest.mark.parametrize("tfo", [TfoMethod.OFF, TfoMethod.SENDTO, TfoMethod.CONNECT])
def test_a_query_over_tls_is_answered(tls_server: _TlsServer, ca: TestCa, tfo: TfoMethod) -> None:
    options = TlsOptions(ca_file=str(ca.ca_cert), hostname="dns.test")
    result = exchange(_config(tls_server.port, options, tfo=tfo))
    assert result.response.rcode() == dns.rcode.REFUSED  # no zones: the answer came back
    assert result.tls is not None
    assert result.tls.alpn == "dot"
    assert result.tls.verified
    assert tls_server.call(lambda: tls_server.ctx.stats.handshakes) >= 1


def test_a_wrong_name_fails_clearly(tls_server: _TlsServer, ca: TestCa) -> None:
    options = TlsOptions(ca_file=str(ca.ca_cert), hostname="other.test")
    with pytest.raises(TlsError, match="Hostname mismatch"):
        exchange(_config(tls_server.port, options))


def test_insecure_succeeds_and_says_so(tls_server: _TlsServer) -> None:
    result = exchange(_config(tls_server.port, TlsOptions(insecure=True)))
    assert result.tls is not None
    assert not result.tls.verified


def test_a_stalled_handshake_costs_only_its_connection(tls_server: _TlsServer, ca: TestCa) -> None:
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=5) as stalled:
        stalled.sendall(b"\x16\x03\x01\x02\x00\x01")  # a ClientHello that never ends
        options = TlsOptions(ca_file=str(ca.ca_cert), hostname="dns.test")
        assert exchange(_config(tls_server.port, options)).tls is not None  # others are served
        assert stalled.recv(100) == b""  # closed at the handshake deadline (1 s)
    assert tls_server.call(lambda: tls_server.ctx.stats.failures["timeout"]) == 1


def test_a_plain_tcp_server_is_named(ca: TestCa) -> None:
    """The client's ClientHello to a DNS-over-TCP server: the server waits for the rest of
    a 5,635-byte frame, so the client times out in its handshake, and says so."""
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", 0))
        plain.listen()
        options = TlsOptions(ca_file=str(ca.ca_cert), hostname="dns.test")
        config = dataclasses.replace(_config(plain.getsockname()[1], options), timeout=0.5)
        with pytest.raises(PhaseTimeout, match="TLS handshake"):
            exchange(config)
