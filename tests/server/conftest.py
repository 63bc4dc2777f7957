"""Fixtures: an in-process server on 127.0.0.1 port 0, run by its own event loop thread."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dnstfo.kernel.sockets import TfoKey
from dnstfo.server.app import DnsServer, load_authority
from dnstfo.server.config import Endpoint, ServerConfig
from dnstfo.server.listener import open_listeners

ZONE = """\
$ORIGIN test.example.
$TTL 300
@       IN SOA ns1 hostmaster 1 7200 900 1209600 60
        IN NS  ns1
ns1     IN A   192.0.2.53
www     IN A   192.0.2.1
www     IN AAAA 2001:db8::1
alias   IN CNAME www
"""


def big_txt(n: int = 40) -> str:
    """A TXT RRset far larger than 512 bytes (for truncation over UDP)."""
    return "".join(f'big IN TXT "{i:03d} {"x" * 60}"\n' for i in range(n))


@pytest.fixture
def zone_dir(tmp_path: Path) -> Path:
    """A directory with one zone, test.example., including a big TXT RRset."""
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "test.example.zone").write_text(ZONE + big_txt())
    return zones


class ServerThread:
    """A DnsServer on its own event loop in a daemon thread."""

    def __init__(
        self, config: ServerConfig, *, key: TfoKey | None = None, netns: Any = None
    ) -> None:
        """Binds the listeners (inside ``netns``, a lab Namespace, if given) and starts."""
        self.config = config
        self.loop = asyncio.new_event_loop()
        opener = functools.partial(
            open_listeners, config.listen, tfo_queue=config.tfo_queue, key=key, reuseport=False
        )
        listeners = opener() if netns is None else netns.in_thread(opener)
        self.server = DnsServer(config, listeners, load_authority(config))
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.call(self.server.start)

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) of the first listener."""
        endpoint = self.server.endpoints[0]
        return endpoint.host, endpoint.port

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 10.0) -> Any:
        """Runs a coroutine function, or a plain function, on the server's loop."""

        async def wrapper() -> Any:
            result = fn(*args)
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout)

    def stop(self) -> None:
        """Stops the server and its loop."""
        try:
            self.call(self.server.stop, 2.0)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
            self.loop.close()


@pytest.fixture
def make_server(zone_dir: Path) -> Iterator[Callable[..., ServerThread]]:
    """Starts servers with config overrides; stops them all at the end."""
    started: list[ServerThread] = []

    def make(**overrides: Any) -> ServerThread:
        config = ServerConfig(zone_dir=zone_dir, listen=(Endpoint("127.0.0.1", 0),))
        server = ServerThread(dataclasses.replace(config, **overrides))
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def server(make_server: Callable[..., ServerThread]) -> ServerThread:
    """A server with the default configuration."""
    return make_server()


def tcp_connect(address: tuple[str, int], timeout: float = 5.0) -> socket.socket:
    """A blocking TCP connection to the server."""
    sock = socket.create_connection(address, timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_messages(sock: socket.socket, count: int) -> list[bytes]:
    """Reads ``count`` framed messages (bounded by the socket timeout)."""
    from dnstfo.wire.framing import FrameDecoder

    decoder = FrameDecoder()
    messages: list[bytes] = []
    while len(messages) < count:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        messages += decoder.feed(data)
    return messages
