"""The client's TLS layer, driven in memory against a server ``SSLObject`` (no sockets)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from dnstfo.cli import digargs
from dnstfo.client.config import TlsOptions
from dnstfo.client.tls import TlsClient, TlsError
from dnstfo.errors import RemoteProtocolError, UsageError
from dnstfo.lab.testca import TestCa, make_test_ca


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCa:
    return make_test_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def expired_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCa:
    return make_test_ca(tmp_path_factory.mktemp("expired"), expired=True)


class _Server:
    def __init__(self, ca: TestCa) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(ca.cert, ca.key)
        ctx.set_alpn_protocols(["dot"])
        self.inb, self.outb = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inb, self.outb, server_side=True)

    def feed(self, data: bytes) -> bytes:
        self.inb.write(data)
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError:
            pass  # the client's alert: what it says is checked on the client
        return self.outb.read()


def _handshake(client: TlsClient, server: _Server) -> None:
    data = client.start()
    for _ in range(5):
        reply = server.feed(data)
        client.receive(reply)
        data = client.data_to_send()
        if client.established:
            assert client.receive(server.feed(data)) == b""  # session tickets, no data
            return
    pytest.fail("the handshake did not finish in 5 flights")


def test_handshake_with_the_test_ca_then_records(ca: TestCa) -> None:
    client = TlsClient(TlsOptions(ca_file=str(ca.ca_cert)), "dns.test")
    server = _Server(ca)
    _handshake(client, server)
    info = client.info()
    assert info.version == "TLSv1.3"
    assert info.alpn == "dot"
    assert info.verified
    assert not info.resumed
    client.send(b"\x00\x02hi")
    server.inb.write(client.data_to_send())
    assert server.obj.read() == b"\x00\x02hi"
    server.obj.write(b"\x00\x02ok")
    assert client.receive(server.outb.read()) == b"\x00\x02ok"


def test_the_client_hello_is_the_first_write(ca: TestCa) -> None:
    hello = TlsClient(TlsOptions(ca_file=str(ca.ca_cert)), "dns.test").start()
    assert hello[:1] == b"\x16"  # a handshake record
    assert hello[5] == 1  # ClientHello
    assert len(hello) < 1400  # fits in the SYN


def test_an_ip_address_is_checked_against_the_certificate(ca: TestCa) -> None:
    client = TlsClient(TlsOptions(ca_file=str(ca.ca_cert)), "127.0.0.1")
    _handshake(client, _Server(ca))
    assert client.established


@pytest.mark.parametrize(
    ("options", "name", "says"),
    [
        (lambda ca: TlsOptions(ca_file=str(ca.ca_cert)), "other.test", "Hostname mismatch"),
        (
            lambda ca: TlsOptions(ca_file=str(ca.ca_cert), hostname="other.test"),
            "dns.test",
            "Hostname mismatch",
        ),
        (lambda ca: TlsOptions(), "dns.test", "unable to get local issuer certificate"),
    ],
)
def test_a_refused_certificate_is_one_clear_error(ca: TestCa, options, name, says) -> None:
    client = TlsClient(options(ca), name)
    with pytest.raises(TlsError, match=f"certificate was refused: {says}"):
        _handshake(client, _Server(ca))


def test_an_expired_certificate_is_refused(expired_ca: TestCa) -> None:
    client = TlsClient(TlsOptions(ca_file=str(expired_ca.ca_cert)), "dns.test")
    with pytest.raises(TlsError, match="certificate has expired"):
        _handshake(client, _Server(expired_ca))


def test_insecure_skips_verification_and_says_so(ca: TestCa) -> None:
    client = TlsClient(TlsOptions(insecure=True), "other.test")
    _handshake(client, _Server(ca))
    assert not client.info().verified
    assert client.info().hostname is None


def test_a_plain_dns_server_on_the_port_is_named(ca: TestCa) -> None:
    client = TlsClient(TlsOptions(ca_file=str(ca.ca_cert)), "dns.test")
    client.start()
    with pytest.raises(TlsError, match="does not speak TLS"):
        client.receive(b"\x00\x1c" + bytes(28))  # a framed DNS message


def test_the_server_closing_mid_handshake(ca: TestCa) -> None:
    client = TlsClient(TlsOptions(ca_file=str(ca.ca_cert)), "dns.test")
    client.start()
    with pytest.raises(TlsError, match="closed the connection during the handshake"):
        client.receive(b"")


def test_the_server_closing_after_the_handshake(ca: TestCa) -> None:
    client = TlsClient(TlsOptions(ca_file=str(ca.ca_cert)), "dns.test")
    _handshake(client, _Server(ca))
    with pytest.raises(RemoteProtocolError, match="closed the TLS connection"):
        client.receive(b"")


def test_a_missing_ca_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot load the CA file"):
        TlsClient(TlsOptions(ca_file=str(tmp_path / "none.pem")), "dns.test")


@pytest.mark.parametrize(
    ("words", "tls", "ca", "hostname", "insecure"),
    [
        (["+tls"], True, None, None, None),
        (["--tls"], True, None, None, None),
        (["+tls-ca"], True, "", None, None),
        (["+tls-ca=/ca.pem"], True, "/ca.pem", None, None),
        (["--tls-ca=/ca.pem"], True, "/ca.pem", None, None),
        (["+tls-hostname=dns.test"], True, None, "dns.test", None),
        (["--tls-hostname", "dns.test"], True, None, "dns.test", None),
        (["+tls-insecure"], True, None, None, True),
        (["+notls"], False, None, None, None),
    ],
)
def test_tls_options_parse(words, tls, ca, hostname, insecure) -> None:
    d = digargs.parse(words)
    assert (d.tls, d.tls_ca, d.tls_hostname, d.tls_insecure) == (tls, ca, hostname, insecure)


def test_tls_hostname_needs_a_name() -> None:
    with pytest.raises(UsageError, match="needs a name"):
        digargs.parse(["+tls-hostname="])


def _verdict_cases() -> list[tuple]:
    from tests.client.test_verdict import CASES

    return CASES


@pytest.mark.parametrize("case", _verdict_cases())
def test_tls_adds_one_round_to_every_verdict(case: tuple) -> None:
    from dnstfo.client.verdict import judge
    from tests.client.test_verdict import CLEAN

    requested, no_cookie, before, obs, outcome, rounds, _ = case
    v = judge(requested, no_cookie, before, obs, CLEAN, tls=True)
    assert v.outcome is outcome
    assert v.expected_rounds == (None if rounds is None else rounds + 1)


def test_tls_in_syn_text_names_the_client_hello() -> None:
    from dnstfo.client.verdict import judge
    from tests.client.test_verdict import CACHED, CASES, CLEAN

    v = judge(True, False, CACHED, CASES[3][3], CLEAN, tls=True)
    assert v.text.startswith("answer in 2 round trips: ClientHello sent in the SYN")
