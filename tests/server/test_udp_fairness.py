"""A client with one query is not answered behind another client's flood."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable

import dns.message
import pytest

from dnstfo.server.config import QueryLog
from tests.server.conftest import ServerThread


def test_lone_query_is_answered_before_a_queued_flood(
    make_server: Callable[..., ServerThread], caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server(query_log=QueryLog.TEXT)
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:  # keeps the server's loop busy while the datagrams queue up
        entered.set()
        release.wait(10)

    with (
        caplog.at_level(logging.INFO, logger="dnstfo.query"),
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flood,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as lone,
    ):
        flood.bind(("127.0.0.1", 0))
        lone.bind(("127.0.1.1", 0))
        server.loop.call_soon_threadsafe(hold)
        assert entered.wait(10)
        try:
            for i in range(100):  # random names: every one a cache miss
                query = dns.message.make_query(f"r{i}.test.example.", "A")
                flood.sendto(query.to_wire(), server.address)
            lone.sendto(dns.message.make_query("www.test.example.", "A").to_wire(), server.address)
        finally:
            release.set()
        lone.settimeout(10)
        assert dns.message.from_wire(lone.recv(65535)).answer
        server.call(lambda: None)  # every datagram of the batch has been answered
    lines = [r.getMessage() for r in caplog.records if r.name == "dnstfo.query"]
    assert len(lines) == 101
    assert " 127.0.1.1#" in lines[0]  # the lone query first, not 101st
    assert all(" 127.0.0.1#" in line for line in lines[1:])
