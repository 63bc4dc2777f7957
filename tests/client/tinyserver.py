"""A tiny DNS-over-TCP server with a TFO listener, for client tests (answers A 192.0.2.1)."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.rrset

from dnstfo.kernel.sockets import tfo_listener
from dnstfo.wire.framing import FrameDecoder, frame

ANSWER_TEXT = "192.0.2.1"


def answer(wire: bytes) -> bytes:
    """Answers any query with one A record (NOERROR, AA)."""
    query = dns.message.from_wire(wire)
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    q = query.question[0]
    response.answer.append(dns.rrset.from_text(q.name, 300, "IN", "A", ANSWER_TEXT))
    return response.to_wire()


def serve_connection(conn: socket.socket) -> None:
    """Answers every query on one connection until the peer closes it."""
    decoder = FrameDecoder()
    with conn:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            for message in decoder.feed(data):
                conn.sendall(frame(answer(message)))


def serve(listener: socket.socket, stop: threading.Event) -> None:
    """Accepts and serves connections one at a time until ``stop`` is set."""
    while not stop.is_set():
        readable, _, _ = select.select([listener], [], [], 0.05)
        if readable:
            conn, _ = listener.accept()
            with contextlib.suppress(OSError):
                serve_connection(conn)


@contextlib.contextmanager
def running(listener: socket.socket) -> Iterator[tuple[str, int]]:
    """Serves ``listener`` in a thread; yields its address; stops and closes it after."""
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(listener, stop), daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[:2]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def make_listener(host: str = "127.0.0.1", tfo: bool = True) -> socket.socket:
    """A listening socket on a free port, with TFO (queue 16) unless ``tfo`` is False."""
    if tfo:
        return tfo_listener((host, 0), queue_len=16)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(16)
    return sock
