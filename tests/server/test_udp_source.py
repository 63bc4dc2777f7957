"""UDP replies leave from the address the query was sent to, on a wildcard listener.

Inside a namespace of the test's own with two addresses per family on its loopback: the
client sends from the first address to the second, so without IP_PKTINFO the kernel would
pick the first as the reply's source (RFC 6724 rule 1 for IPv6, the local route for IPv4).
The query log names the address and port the query came in on.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import pytest

from dnstfo.server.config import Endpoint, QueryLog, ServerConfig
from tests.server.conftest import ServerThread

pytestmark = [
    pytest.mark.netadmin,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a network namespace"),
]

QUERY = dns.message.make_query("www.test.example.", "A").to_wire()
ADDRESSES = {
    socket.AF_INET: ("127.0.0.1", "127.0.0.2"),
    socket.AF_INET6: ("fd00:db8::1", "fd00:db8::2"),
}


@pytest.fixture
def ns() -> Iterator[Any]:
    from dnstfo.lab.netns import namespace

    with namespace("u") as space:
        for command in (
            ["ip", "addr", "add", "127.0.0.2/8", "dev", "lo"],
            ["ip", "addr", "add", "fd00:db8::1/128", "dev", "lo", "nodad"],
            ["ip", "addr", "add", "fd00:db8::2/128", "dev", "lo", "nodad"],
        ):
            done = space.exec(command)
            assert done.returncode == 0, done.stderr
        yield space


def ask(family: socket.AddressFamily, port: int) -> tuple[bytes, str]:
    """Sends from the first address to the second; returns the reply and its source."""
    first, second = ADDRESSES[family]
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.bind((first, 0))
        sock.sendto(QUERY, (second, port))
        data, source = sock.recvfrom(65535)
        return data, source[0]


@pytest.mark.parametrize(
    ("family", "wildcard"), [(socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")]
)
def test_reply_comes_from_the_queried_address(
    ns: Any, zone_dir: Path, caplog: pytest.LogCaptureFixture, family: int, wildcard: str
) -> None:
    config = ServerConfig(
        zone_dir=zone_dir, listen=(Endpoint(wildcard, 0),), query_log=QueryLog.TEXT
    )
    server = ServerThread(config, netns=ns)
    with caplog.at_level(logging.INFO, logger="dnstfo.query"):
        try:
            data, source = ns.in_thread(ask, family, server.address[1])
        finally:
            server.stop()  # after the line that follows the reply is written
    second = ADDRESSES[socket.AddressFamily(family)][1]
    assert source == second
    assert dns.message.from_wire(data).rcode() == dns.rcode.NOERROR
    [line] = [r.getMessage() for r in caplog.records if r.name == "dnstfo.query"]
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    assert re.match(rf"{stamp} \S+#\d+ -> {re.escape(second)}#{server.address[1]} ", line)


def test_json_query_log_has_time_and_local_address(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    server.server.query_log.mode = QueryLog.JSON
    server.server.query_log.enabled = True
    host, port = server.address
    with (
        caplog.at_level(logging.INFO, logger="dnstfo.query"),
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
    ):
        sock.settimeout(5)
        sock.sendto(QUERY, (host, port))
        sock.recv(65535)
        server.call(lambda: None)  # the server's loop is past the line after the reply
    [line] = [r.getMessage() for r in caplog.records if r.name == "dnstfo.query"]
    record = json.loads(line)
    assert record["local"] == host
    assert record["local_port"] == port
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
