"""``dnstfo query +tls`` end to end on loopback against the server's TLS listener."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from dnstfo.cli.query import run
from dnstfo.lab.testca import TestCa, make_test_ca
from tests.server.test_tls_driver import _TlsServer


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCa:
    return make_test_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def served(ca: TestCa) -> Iterator[_TlsServer]:
    server = _TlsServer(ca)
    yield server
    server.stop()


def _query(served: _TlsServer, *words: str) -> list[str]:
    return ["www.test.example", "@127.0.0.1", "-p", str(served.port), "+tls", *words]


def test_json_gains_tls(served: _TlsServer, ca: TestCa, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(_query(served, f"+tls-ca={ca.ca_cert}", "+json")) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["server"]["transport"] == "tls"
    tls = obj["tls"]
    assert (tls["version"], tls["alpn"], tls["resumed"], tls["verified"]) == (
        "TLSv1.3", "dot", False, True
    )  # fmt: skip
    assert tls["cipher"]


def test_text_says_what_was_verified(
    served: _TlsServer, ca: TestCa, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(_query(served, f"+tls-ca={ca.ca_cert}")) == 0
    out = capsys.readouterr().out
    assert ";; TLS: TLSv1.3" in out
    assert "certificate verified for 127.0.0.1" in out
    assert "+tcp +tls" in out


def test_insecure_says_so(served: _TlsServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(_query(served, "+tls-insecure")) == 0
    assert "certificate NOT verified (+tls-insecure)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("words", "says"),
    [
        (["+tls-hostname=other.test"], "Hostname mismatch, certificate is not valid for"),
        ([], "unable to get local issuer certificate"),  # the system store lacks our CA
    ],
)
def test_a_refused_certificate_is_one_line(
    served: _TlsServer, ca: TestCa, capsys: pytest.CaptureFixture[str], words, says
) -> None:
    ca_words = [] if not words else [f"+tls-ca={ca.ca_cert}"]
    assert run(_query(served, *ca_words, *words)) == 10
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(";; TLS: the server's certificate was refused: ")
    assert says in err


def test_a_missing_ca_file_is_a_usage_error(
    served: _TlsServer, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(_query(served, f"+tls-ca={tmp_path / 'none.pem'}")) == 2
    assert "cannot load the CA file" in capsys.readouterr().err


def test_a_plain_tcp_server_on_the_port_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as plain:
        plain.bind(("127.0.0.1", 0))
        plain.listen()
        port = str(plain.getsockname()[1])
        assert run(["example.com", "@127.0.0.1", "-p", port, "+tls", "+timeout=0.3"]) == 9
    err = capsys.readouterr().err
    assert err == (
        ";; no answer: timed out after 0.3 s waiting for TLS handshake (a plain DNS-over-TCP "
        "server on this port? it would wait so)\n"
    )


def test_tls_port_defaults_to_853() -> None:
    from dnstfo.cli import digargs
    from dnstfo.cli.query import _config

    config, _ = _config(digargs.parse(["example.com", "@127.0.0.1", "+tls"]))
    assert config.port == 853
    assert config.tls is not None
    assert config.tls.hostname == "127.0.0.1"
    config, _ = _config(digargs.parse(["example.com", "@127.0.0.1"]))
    assert (config.port, config.tls) == (53, None)


@pytest.mark.parametrize("parse", [True, False])
def test_the_multiplexed_driver_speaks_tls(served: _TlsServer, ca: TestCa, parse: bool) -> None:
    import dns.message

    from dnstfo.client.config import QueryConfig, TfoMethod, TlsOptions
    from dnstfo.client.multiplex import Multiplexer

    options = TlsOptions(ca_file=str(ca.ca_cert))
    bad = TlsOptions(ca_file=str(ca.ca_cert), hostname="other.test")
    mux = Multiplexer(parse=parse)
    outcomes = []
    query = dns.message.make_query("www.test.example.", "A")
    for tls, tfo in [(options, TfoMethod.OFF), (options, TfoMethod.SENDTO), (bad, TfoMethod.OFF)]:
        config = QueryConfig("www.test.example.", "127.0.0.1", port=served.port, tls=tls, tfo=tfo)
        mux.start(config, query, outcomes.append)
    while len(mux):
        mux.poll(5)
    mux.close()
    answered = [o for o in outcomes if o.error is None]
    (refused,) = [o for o in outcomes if o.error is not None]
    assert [o.rcode for o in answered] == [5, 5]  # REFUSED: the test server has no zones
    assert "Hostname mismatch" in str(refused.error)
    assert served.call(lambda: served.ctx.stats.handshakes) == 2


def test_repeat_resumes_the_session(
    served: _TlsServer, ca: TestCa, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(_query(served, f"+tls-ca={ca.ca_cert}", "+json", "+repeat=3", "+notfo")) == 0
    resumed = [json.loads(line)["tls"]["resumed"] for line in capsys.readouterr().out.splitlines()]
    assert resumed == [False, True, True]
    stats = served.call(lambda: (served.ctx.stats.handshakes, served.ctx.stats.resumptions))
    assert stats == (3, 2)
