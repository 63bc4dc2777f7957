"""``dnstfo serve --tls-listen``: options, start-up errors, answers over TLS, reload."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import dns.rcode
import pytest
from click.testing import CliRunner

from dnstfo.cli import main
from dnstfo.cli.serve import build_config
from dnstfo.client.config import QueryConfig, TfoMethod, TlsOptions
from dnstfo.client.query import exchange
from dnstfo.errors import UsageError
from dnstfo.kernel.sockets import tfo_listener
from dnstfo.lab.testca import TestCa, make_test_ca
from dnstfo.server.app import DnsServer, load_authority
from dnstfo.server.config import Endpoint, ServerConfig
from dnstfo.server.listener import open_listeners


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCa:
    return make_test_ca(tmp_path_factory.mktemp("ca"))


def test_options_build_the_tls_config(ca: TestCa, zone_dir: Path) -> None:
    config = build_config(
        {
            "zone": str(zone_dir),
            "tls_listen": ("127.0.0.1", "[::1]:8853"),
            "tls_cert": str(ca.cert),
            "tls_key": str(ca.key),
        }
    )
    assert config.tls_listen == (Endpoint("127.0.0.1", 853), Endpoint("::1", 8853))
    assert config.tls_cert == ca.cert


def test_tls_listen_needs_a_certificate(zone_dir: Path) -> None:
    with pytest.raises(UsageError, match="needs --tls-cert"):
        ServerConfig(zone_dir=zone_dir, tls_listen=(Endpoint("127.0.0.1", 853),))


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ("mode", "readable by others"),
        ("garbage", "not a PEM certificate and its key"),
        ("missing", "No such file"),
    ],
)
def test_a_bad_certificate_or_key_is_one_line(
    ca: TestCa, zone_dir: Path, tmp_path: Path, change: str, says: str
) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_bytes(ca.cert.read_bytes())
    key.write_bytes(ca.key.read_bytes())
    key.chmod(0o600)
    if change == "mode":
        key.chmod(0o640)
    elif change == "garbage":
        cert.write_text("garbage\n")
    else:
        cert.unlink()
    result = CliRunner().invoke(
        main,
        ["serve", "--zone", str(zone_dir), "--listen", "127.0.0.1:0",
         "--tls-listen", "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key)],
    )  # fmt: skip
    assert result.exit_code == 1
    assert says in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


class _Served:
    def __init__(self, config: ServerConfig) -> None:
        self.loop = asyncio.new_event_loop()
        listeners = open_listeners(config.listen, tfo_queue=16, key=None, reuseport=False)
        tls = [tfo_listener(("127.0.0.1", 0))]
        self.port = tls[0].getsockname()[1]
        self.server = DnsServer(config, listeners, load_authority(config), tls)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self.server.start())

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def stop(self) -> None:
        self.call(self.server.stop(1))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def served(ca: TestCa, zone_dir: Path, tmp_path: Path) -> Iterator[_Served]:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_bytes(ca.cert.read_bytes())
    key.write_bytes(ca.key.read_bytes())
    key.chmod(0o600)
    config = ServerConfig(
        zone_dir=zone_dir,
        listen=(Endpoint("127.0.0.1", 0),),
        tls_listen=(Endpoint("127.0.0.1", 0),),
        tls_cert=cert,
        tls_key=key,
    )
    s = _Served(config)
    yield s
    s.stop()


def _query(port: int, ca: TestCa) -> QueryConfig:
    options = TlsOptions(ca_file=str(ca.ca_cert), hostname="dns.test")
    return QueryConfig("www.test.example.", "127.0.0.1", port=port, tls=options, tfo=TfoMethod.OFF)


def test_the_zones_are_served_over_tls(served: _Served, ca: TestCa) -> None:
    result = exchange(_query(served.port, ca))
    assert result.response.rcode() == dns.rcode.NOERROR
    assert str(result.response.answer[0][0]) == "192.0.2.1"
    assert served.server.tls is not None
    assert served.server.tls.stats.handshakes == 1
    assert served.server.stats.queries["tcp", 0] == 1


def test_sighup_reload_swaps_the_pair_and_keeps_a_bad_one_out(
    served: _Served, ca: TestCa, tmp_path: Path
) -> None:
    tls = served.server.tls
    assert tls is not None
    old = tls.context
    (tmp_path / "c.pem").write_text("broken\n")

    async def reload() -> None:
        served.server.request_reload()
        await asyncio.sleep(0)
        async with served.server._reload_lock:  # the queued reload ran
            pass

    served.call(reload())
    assert tls.context is old
    assert exchange(_query(served.port, ca)).tls is not None  # the old pair still serves
    (tmp_path / "c.pem").write_bytes(ca.cert.read_bytes())
    served.call(reload())
    assert tls.context is not old
    assert exchange(dataclasses.replace(_query(served.port, ca))).tls is not None


def test_tls_with_workers_is_refused_in_one_line(ca: TestCa, zone_dir: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["serve", "--zone", str(zone_dir), "--listen", "127.0.0.1:0", "--workers", "2",
         "--tls-listen", "127.0.0.1:0", "--tls-cert", str(ca.cert), "--tls-key", str(ca.key)],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "leave out --workers" in result.output
