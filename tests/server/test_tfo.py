"""TCP Fast Open end to end, inside a lab namespace with tcp_fastopen=3 (never the host's).

The server's sockets and the client's are made inside the namespace; the server runs on an
event loop thread of this process, so its stats and query log are checked directly.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.opcode
import dns.rcode
import pytest

from dnstfo.kernel.sockets import TfoKey, client_socket, listener_key, send_in_syn
from dnstfo.kernel.sysctl import read_counters
from dnstfo.kernel.tcpinfo import tcp_info
from dnstfo.server.config import Endpoint, QueryLog, ServerConfig
from dnstfo.server.keys import generate_key, read_key_file, write_key_file
from dnstfo.wire.framing import frame
from tests.server.conftest import ServerThread, read_messages

pytestmark = [
    pytest.mark.linux,
    pytest.mark.netadmin,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a network namespace"),
]

QUERY = dns.message.make_query("www.test.example.", "A").to_wire()


@pytest.fixture
def ns() -> Iterator[object]:
    from dnstfo.lab.netns import namespace

    with namespace("s", sysctls={"net.ipv4.tcp_fastopen": "3"}) as space:
        yield space


def exchange(address: tuple[str, int], query: bytes = QUERY) -> tuple[list[bytes], bool]:
    """One query sent with MSG_FASTOPEN; returns the answers and client SYN_DATA (acked)."""
    with client_socket(socket.AF_INET) as sock:
        send_in_syn(sock, frame(query), address)  # blocking: returns once connected
        sock.settimeout(5)
        answers = read_messages(sock, 1)
        return answers, tcp_info(sock).syn_data


def start(ns, zone_dir: Path, key: TfoKey | None = None, **kw: object) -> ServerThread:  # type: ignore[no-untyped-def]
    config = ServerConfig(zone_dir=zone_dir, listen=(Endpoint("127.0.0.1", 0),), **kw)  # type: ignore[arg-type]
    return ServerThread(config, key=key, netns=ns)


def test_query_in_syn_is_marked_tfo(ns, zone_dir: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    server = start(ns, zone_dir, query_log=QueryLog.TEXT)
    try:
        before = ns.run(read_counters)
        with caplog.at_level(logging.INFO, logger="dnstfo.query"):
            first, acked_first = ns.in_thread(exchange, server.address)
            second, acked_second = ns.in_thread(exchange, server.address)
        after = ns.run(read_counters)
    finally:
        server.stop()
    assert first
    assert second
    assert not acked_first  # no cookie yet: the first SYN asks for one
    assert acked_second  # the client's TCP_INFO: SYN data acked
    stats = server.server.stats
    assert stats.syn_data_queries == 1  # the server's TCP_INFO agrees
    assert stats.tfo_connections == 1
    assert stats.tcp_connections == 2
    lines = [r.getMessage() for r in caplog.records if r.name == "dnstfo.query"]
    assert len(lines) == 2
    assert " TFO " not in lines[0]
    assert " tcp TFO " in lines[1]
    assert after.delta(before).passive == 1  # the kernel counted one passive TFO


def test_update_in_syn_data_is_refused(ns, zone_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """RFC 7413 §6: only idempotent QUERY is answered from SYN data; the server's own
    TCP_INFO decides, so this holds only if the kernel's SYN_DATA flag reaches the session."""
    update = dns.message.make_query("www.test.example.", "A")
    update.set_opcode(dns.opcode.UPDATE)
    server = start(ns, zone_dir)
    try:
        (plain,), acked_plain = ns.in_thread(exchange, server.address, update.to_wire())
        (in_syn,), acked_in_syn = ns.in_thread(exchange, server.address, update.to_wire())
    finally:
        server.stop()
    assert not acked_plain  # no cookie yet: sent after the handshake
    assert acked_in_syn
    assert dns.message.from_wire(plain).rcode() == dns.rcode.NOTIMP
    assert dns.message.from_wire(in_syn).rcode() == dns.rcode.REFUSED
    assert server.server.stats.syn_data_queries == 1


def cookie_then(ns, zone_dir: Path, first_key: TfoKey, second_key: TfoKey) -> bool:  # type: ignore[no-untyped-def]
    """Gets a cookie from a server with ``first_key``; restarts with ``second_key``.

    Returns:
        Whether the restarted server accepted the old cookie (client SYN_DATA acked).
    """
    server = start(ns, zone_dir, key=first_key)
    try:
        ns.in_thread(exchange, server.address)  # fetch a cookie
    finally:
        server.stop()
    server = start(ns, zone_dir, key=second_key)
    try:
        answers, acked = ns.in_thread(exchange, server.address)
        assert answers
        return acked
    finally:
        server.stop()


def test_same_key_cookies_survive_restart(ns, zone_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "tfo.key"
    write_key_file(path, generate_key())
    key = read_key_file(path)
    assert cookie_then(ns, zone_dir, key, read_key_file(path))


def test_new_key_rejects_old_cookies(ns, zone_dir: Path) -> None:  # type: ignore[no-untyped-def]
    assert not cookie_then(ns, zone_dir, generate_key(), generate_key())


def test_old_key_as_backup_accepts_old_cookies(ns, zone_dir: Path) -> None:  # type: ignore[no-untyped-def]
    old = generate_key()
    assert cookie_then(ns, zone_dir, old, generate_key().with_backup(old))


def test_reload_rotates_key_file(ns, zone_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "tfo.key"
    old, new = generate_key(), generate_key()
    write_key_file(path, old)
    server = start(ns, zone_dir, key=old, tfo_key_file=path)
    try:
        ns.in_thread(exchange, server.address)  # a cookie made with the old key
        write_key_file(path, new)
        result = server.call(server.server.reload)
        assert result.key_rotated
        installed = listener_key(server.server.listeners[0].tcp)
        assert installed == TfoKey(new.primary, old.primary)
        _, acked = ns.in_thread(exchange, server.address)
        assert acked  # the old cookie is still good: accepted with the backup key
    finally:
        server.stop()
