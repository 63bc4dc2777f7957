"""The multiplexed driver on real loopback sockets, against dnstfo serve's server."""

from __future__ import annotations

import dataclasses
import errno
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.rdatatype
import pytest

from dnstfo.client.config import QueryConfig, TfoMethod
from dnstfo.client.message import build_query
from dnstfo.client.multiplex import Multiplexer, Outcome
from dnstfo.errors import NetworkError, PhaseTimeout, RemoteProtocolError
from dnstfo.server.config import Endpoint, Limits, ServerConfig
from tests.server.conftest import ZONE, ServerThread


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, int]]:
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "test.example.zone").write_text(ZONE)
    config = ServerConfig(
        zone_dir=zones,
        listen=(Endpoint("127.0.0.1", 0),),
        limits=Limits(max_connections=8192, max_per_client=8192),
    )
    server = ServerThread(config)
    try:
        yield server.address
    finally:
        server.stop()


def run_all(mux: Multiplexer, configs: list[QueryConfig], limit_s: float = 60.0) -> list[Outcome]:
    out: list[Outcome] = []
    for config in configs:
        mux.start(config, build_query(config), out.append)
    deadline = time.monotonic() + limit_s
    while len(mux) and time.monotonic() < deadline:
        mux.poll(1.0)
    assert not len(mux), "every exchange ends by itself"
    return out


@pytest.mark.parametrize("tfo", [TfoMethod.OFF, TfoMethod.SENDTO])
def test_hundreds_at_once_all_answered_and_checked(served: tuple[str, int], tfo: TfoMethod) -> None:
    host, port = served
    names = ["www.test.example.", "ns1.test.example.", "alias.test.example."]
    configs = [
        QueryConfig(qname=names[i % 3], server=host, port=port, tfo=tfo, timeout=20.0)
        for i in range(600)
    ]
    threads = threading.active_count()
    mux = Multiplexer()
    try:
        out = run_all(mux, configs)
        heap = len(mux._heap)
    finally:
        mux.close()
    assert threading.active_count() == threads, "no thread per exchange"
    assert heap <= 256, "finished exchanges leave the deadline heap"
    assert len(out) == 600
    assert [o.error for o in out if o.error] == []
    for o in out:
        assert o.response is not None
        assert o.response.question[0].name.to_text() == o.config.qname
        assert o.times.done is not None
        assert o.times.connected is not None
        assert o.info is not None
        assert o.at_connect is not None
        assert o.source is not None
        assert o.source[1] > 0
    answers = {o.config.qname: o.response.answer for o in out if o.response}
    www = answers["www.test.example."][0]
    assert www.rdtype == dns.rdatatype.A
    assert www[0].to_text() == "192.0.2.1"
    assert len({o.source for o in out}) == 600, "one connection each"


def test_refused_is_a_network_error_with_errno(served: tuple[str, int]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: SYNs are reset
        mux = Multiplexer()
        (out,) = run_all(mux, [QueryConfig(qname=".", server="127.0.0.1", port=port, timeout=5)])
        mux.close()
    assert isinstance(out.error, NetworkError)
    assert out.error.errno == errno.ECONNREFUSED
    assert out.response is None


def test_silent_server_times_out_in_the_first_byte_phase() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # the kernel completes the handshake; nobody ever answers
        addr = listener.getsockname()
        mux = Multiplexer()
        cfg = QueryConfig(qname=".", server=addr[0], port=addr[1], timeout=0.3)
        (out,) = run_all(mux, [cfg], limit_s=10)
        mux.close()
    assert isinstance(out.error, PhaseTimeout)
    assert out.error.phase == "first byte"
    assert out.times.connected is not None
    assert out.times.first_byte is None
    assert out.at_connect is not None


def test_a_reply_that_is_not_dns_is_a_protocol_error() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        addr = listener.getsockname()

        def garbage() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(512)
                conn.sendall(b"\x00\x04abcd")

        t = threading.Thread(target=garbage)
        t.start()
        mux = Multiplexer()
        cfg = QueryConfig(qname=".", server=addr[0], port=addr[1], timeout=5)
        (out,) = run_all(mux, [dataclasses.replace(cfg, tfo=TfoMethod.OFF)], limit_s=10)
        mux.close()
        t.join(5)
    assert isinstance(out.error, RemoteProtocolError)


def test_header_check_mode_gives_rcodes_without_parsing(served: tuple[str, int]) -> None:
    host, port = served
    names = ["www.test.example.", "nothere.test.example.", "example.org."]
    configs = [
        QueryConfig(qname=names[i % 3], server=host, port=port, timeout=20) for i in range(300)
    ]
    mux = Multiplexer(parse=False)
    try:
        out = run_all(mux, configs)
    finally:
        mux.close()
    assert [o.error for o in out if o.error] == []
    assert all(o.response is None for o in out)
    by_name = {o.config.qname: o.rcode for o in out}
    assert by_name == {"www.test.example.": 0, "nothere.test.example.": 3, "example.org.": 5}
