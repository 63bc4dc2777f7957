"""The server's TLS session around a real TCP session, driven in memory by the client layer."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import dns.message
import dns.rcode
import pytest

from dnstfo.answer.authority import Authority
from dnstfo.answer.responder import Responder
from dnstfo.client.config import TlsOptions
from dnstfo.client.tls import TlsClient
from dnstfo.errors import UsageError
from dnstfo.lab.testca import TestCa, make_test_ca
from dnstfo.server.config import QueryLog
from dnstfo.server.querylog import QueryLogger
from dnstfo.server.session import TcpSession
from dnstfo.server.stats import ServerStats
from dnstfo.server.tls import TlsServerContext, TlsSession, TlsStats
from dnstfo.wire.connection import ConnectionPolicy
from dnstfo.wire.framing import FrameDecoder, frame

QUERY = dns.message.make_query("www.test.example.", "A").to_wire()
SECOND = 1_000_000_000


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCa:
    return make_test_ca(tmp_path_factory.mktemp("ca"))


def _session(ctx: TlsServerContext, log: QueryLogger | None = None) -> TlsSession:
    inner = TcpSession(
        Responder(Authority()),
        ConnectionPolicy(),
        0,
        ("192.0.2.9", 4000),
        True,
        ServerStats(),
        log or QueryLogger(QueryLog.OFF),
    )
    return ctx.wrap(inner, 0)


def _out(session: TlsSession, now: int = 0) -> bytes:
    data = bytes(session.data_to_send())
    session.data_sent(len(data), now)
    return data


def _client(ca: TestCa) -> TlsClient:
    return TlsClient(TlsOptions(ca_file=str(ca.ca_cert)), "dns.test")


def test_a_query_over_tls_is_answered_in_two_flights(ca: TestCa) -> None:
    ctx = TlsServerContext(str(ca.cert), str(ca.key))
    server, client = _session(ctx), _client(ca)
    server.receive_data(client.start(), 0)  # the ClientHello (in the SYN with TFO)
    assert client.receive(_out(server)) == b""
    assert client.established
    assert client.info().alpn == "dot"
    client.send(frame(QUERY))  # with the client's Finished: one flight
    server.receive_data(client.data_to_send(), 1)
    assert server.data_to_send()  # tickets and the answer, together
    reply = client.receive(_out(server))
    (answer,) = FrameDecoder().feed(reply)
    assert dns.message.from_wire(answer).rcode() == dns.rcode.REFUSED  # no zones here
    assert ctx.stats.handshakes == 1
    assert ctx.stats.versions["TLSv1.3"] == 1
    assert server.wants_read()


def test_tls12_is_served(ca: TestCa) -> None:
    import ssl

    from dnstfo.client.tls import client_context

    options = TlsOptions(ca_file=str(ca.ca_cert))
    context = client_context(options)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    client = TlsClient(options, "dns.test", context)
    ctx = TlsServerContext(str(ca.cert), str(ca.key))
    server = _session(ctx)
    server.receive_data(client.start(), 0)
    for _ in range(3):
        data = _out(server)
        if data:
            client.receive(data)
        server.receive_data(client.data_to_send(), 0)
    assert client.established
    assert client.info().version == "TLSv1.2"


def test_a_stalled_handshake_times_out_alone(ca: TestCa) -> None:
    ctx = TlsServerContext(str(ca.cert), str(ca.key), handshake_timeout=2)
    server = _session(ctx)
    server.receive_data(_client(ca).start()[:50], 0)  # half a ClientHello, then nothing
    assert server.get_timer() == 2 * SECOND
    server.handle_timer(2 * SECOND - 1)
    assert not server.close_expected()
    server.handle_timer(2 * SECOND)
    assert server.close_expected()
    assert ctx.stats.failures == {"timeout": 1}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (frame(QUERY), "not-tls"),  # a plain DNS-over-TCP client on the TLS port
        (b"GET / HTTP/1.1\r\n\r\n", "not-tls"),
        (b"\x16\x03\x01\x00\x05" + os.urandom(5), "other"),
    ],
)
def test_garbage_closes_that_connection(ca: TestCa, data: bytes, reason: str) -> None:
    ctx = TlsServerContext(str(ca.cert), str(ca.key))
    server = _session(ctx)
    server.receive_data(data, 0)
    assert server.close_expected()
    ((got, n),) = ctx.stats.failures.items()
    assert n == 1
    assert got == reason or reason == "other"


def test_a_client_that_refuses_the_certificate_is_counted(ca: TestCa) -> None:
    ctx = TlsServerContext(str(ca.cert), str(ca.key))
    server = _session(ctx)
    client = TlsClient(TlsOptions(), "dns.test")  # the system store: our test CA is unknown
    server.receive_data(client.start(), 0)
    with pytest.raises(Exception, match="certificate was refused"):
        client.receive(_out(server))
    server.receive_data(client.data_to_send(), 0)  # its alert
    assert server.close_expected()
    assert ctx.stats.failures["alert"] == 1


def test_eof_mid_handshake(ca: TestCa) -> None:
    ctx = TlsServerContext(str(ca.cert), str(ca.key))
    server = _session(ctx)
    server.receive_eof(0)
    assert server.close_expected()
    assert ctx.stats.failures == {"closed": 1}


def test_query_log_marks_tls(ca: TestCa, caplog: pytest.LogCaptureFixture) -> None:
    ctx = TlsServerContext(str(ca.cert), str(ca.key))
    server, client = _session(ctx, QueryLogger(QueryLog.TEXT)), _client(ca)
    server.receive_data(client.start(), 0)
    client.receive(_out(server))
    client.send(frame(QUERY))
    with caplog.at_level(logging.INFO, logger="dnstfo.query"):
        server.receive_data(client.data_to_send(), 0)
    assert " tls TFO " in caplog.text


def test_a_key_readable_by_others_is_refused(ca: TestCa, tmp_path: Path) -> None:
    key = tmp_path / "open.key"
    key.write_bytes(ca.key.read_bytes())
    key.chmod(0o644)
    with pytest.raises(UsageError, match=r"readable by others.*chmod 600"):
        TlsServerContext(str(ca.cert), str(key))


def test_a_bad_pair_on_reload_keeps_the_old_one(ca: TestCa, tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_bytes(ca.cert.read_bytes())
    key.write_bytes(ca.key.read_bytes())
    key.chmod(0o600)
    ctx = TlsServerContext(str(cert), str(key))
    old = ctx.context
    cert.write_text("not a certificate\n")
    reason = ctx.reload()
    assert reason is not None
    assert "not a PEM certificate" in reason
    assert ctx.context is old
    cert.write_bytes(ca.cert.read_bytes())
    assert ctx.reload() is None
    assert ctx.context is not old


def test_stats_start_empty() -> None:
    assert TlsStats().handshakes == 0


def test_metrics_name_versions_resumptions_and_failure_reasons() -> None:
    from dnstfo.server.tls import TlsMetrics

    stats = TlsStats(handshakes=3, resumptions=1)
    stats.versions["TLSv1.3"] = 2
    stats.versions["TLSv1.2"] = 1
    stats.failures["timeout"] = 4
    got = {
        (family.name, tuple(sorted(sample.labels.items())), sample.value)
        for family in TlsMetrics(stats).collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    }
    assert got == {
        ("dnstfo_tls_handshakes", (("version", "TLSv1.2"),), 1),
        ("dnstfo_tls_handshakes", (("version", "TLSv1.3"),), 2),
        ("dnstfo_tls_resumptions", (), 1),
        ("dnstfo_tls_handshake_failures", (("reason", "timeout"),), 4),
    }
