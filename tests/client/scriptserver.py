"""A loopback server whose every connection follows a script the test writes.

``serving(handle)`` accepts connections one at a time and calls ``handle(n, conn, query)``
for the n-th (from 0) with its first query: answer, stay silent, or close early. Every
connection is kept open until the server stops, so silence looks like a slow server.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

import dns.message
import dns.rrset

from dnstfo.wire.framing import FrameDecoder, frame


@contextlib.contextmanager
def serving(handle: Callable[[int, socket.socket, dns.message.Message], None]) -> Iterator[int]:
    """Accepts connections on loopback; ``handle(n, conn, query)`` for the n-th (from 0)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()
    held: list[socket.socket] = []

    def run() -> None:
        n = 0
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            held.append(conn)
            conn.settimeout(5)
            decoder = FrameDecoder()
            messages: list[bytes] = []
            while not messages:
                data = conn.recv(65536)
                if not data:
                    break
                messages = decoder.feed(data)
            if messages:
                handle(n, conn, dns.message.from_wire(messages[0]))
            n += 1

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()


def answer_a(conn: socket.socket, query: dns.message.Message, address: str = "192.0.2.9") -> None:
    """Sends one A record for the query's name."""
    response = dns.message.make_response(query)
    response.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A", address))
    conn.sendall(frame(response.to_wire()))
