"""A minimal TFO exchange for the lab: one line in the SYN, one line back.

The client sends ``PING\\n`` with ``MSG_FASTOPEN``; the server answers
``PONG syn_data=<0|1>\\n``, telling what its side of TCP_INFO said about the SYN. It is the
smallest exchange that shows the round trips TFO saves (RFC 7413 §1): without a cookie the
answer takes two round trips (handshake, then request), with one it takes one.

:func:`ping_exchange` runs in the client namespace (``Namespace.run``), so that its clock,
its socket and its view of the kernel's cookie cache all belong there.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

from dnstfo.kernel import tcp_metrics
from dnstfo.kernel.sockets import client_socket, family_of, send_in_syn, tfo_listener
from dnstfo.kernel.tcpinfo import FastOpenClientFail, tcp_info
from dnstfo.lab.netns import Namespace

log = logging.getLogger(__name__)

REQUEST = b"PING\n"


@dataclass(frozen=True, slots=True)
class PingExchange:
    """What one exchange took and what the kernel did, on both sides."""

    elapsed_ns: int
    """From the socket call to the last byte of the answer (monotonic)."""
    syn_data_acked: bool
    """Client TCP_INFO: the server acknowledged the data in our SYN."""
    server_syn_data: bool
    """Server TCP_INFO (reported in the answer): the request arrived in the SYN."""
    client_fail: FastOpenClientFail
    """Client TCP_INFO ``tcpi_fastopen_client_fail``: why TFO did not work, if it did not."""
    cookie_before: bytes | None
    """The cookie cached for the server before the exchange."""
    cookie_after: bytes | None
    """The cookie cached for the server after the exchange."""
    total_retrans: int
    """Client segments retransmitted (a dropped SYN shows here)."""
    local_port: int
    """The client's port, to find the exchange in the delay line's packet log."""

    @property
    def ms(self) -> float:
        """``elapsed_ns`` in milliseconds."""
        return self.elapsed_ns / 1e6


def ping_exchange(
    address: tuple[str, int], *, timeout: float = 10.0, source_port: int = 0
) -> PingExchange:
    """Sends ``PING`` in the SYN (when a cookie allows) and reads the answer.

    Call it inside the client namespace; the cookie cache it reads is the caller's.

    Args:
        address: the ping server's (host, port).
        timeout: seconds before the socket gives up.
        source_port: the client's port (0: the kernel picks one), to choose the instance
            of an anycast pool a flow hashes to.

    Returns:
        The timing and the kernel's view of the exchange.

    Raises:
        NetworkError: the exchange failed.
        KernelFeatureError: client TFO is off in this namespace.
    """
    host = address[0]
    cookie_before = tcp_metrics.cookie_for(host)
    started = time.monotonic_ns()
    family = family_of(host)
    source = (
        None if not source_port else ("::" if family == socket.AF_INET6 else "0.0.0.0", source_port)
    )
    sock = client_socket(family, source=source)
    with sock:
        # Blocking, so that sendto waits for the handshake when there is no cookie (with a
        # timeout set, Python makes the socket non-blocking and MSG_FASTOPEN then returns
        # EINPROGRESS). The caller bounds the whole exchange (``Namespace.run(timeout=)``).
        send_in_syn(sock, REQUEST, address)
        sock.settimeout(timeout)
        reply = _read_line(sock)
        done = time.monotonic_ns()
        info = tcp_info(sock)
        local_port = sock.getsockname()[1]
    return PingExchange(
        elapsed_ns=done - started,
        syn_data_acked=info.syn_data,
        server_syn_data=b"syn_data=1" in reply,
        client_fail=info.fastopen_client_fail,
        cookie_before=cookie_before,
        cookie_after=tcp_metrics.cookie_for(host),
        total_retrans=info.total_retrans,
        local_port=local_port,
    )


def serve_ping(listener: socket.socket, *, timeout: float = 10.0) -> None:
    """Answers pings on ``listener`` one connection at a time, until killed.

    Args:
        listener: a listening TFO socket (see :func:`ping_server`).
        timeout: seconds to wait for a request on an accepted connection.
    """
    while True:
        conn, peer = listener.accept()
        with conn:
            conn.settimeout(timeout)
            # Read TCP_INFO before anything else: SYN_DATA says the request rode in the SYN.
            syn_data = tcp_info(conn).syn_data
            try:
                _read_line(conn)
                conn.sendall(b"PONG syn_data=%d\n" % syn_data)
            except OSError as exc:
                log.debug("ping from %s failed: %s", peer, exc)


@contextlib.contextmanager
def ping_server(ns: Namespace, host: str, port: int = 0) -> Iterator[tuple[str, int]]:
    """Runs a ping server in a namespace for the duration of the block.

    The listener is made (and listening) before the block starts, so there is nothing to
    wait for: connections queue in its backlog.

    Args:
        ns: the server namespace.
        host: an address of that namespace to listen on.
        port: the port (0: any free one).

    Yields:
        The (host, port) the server listens on.
    """
    listener = ns.in_thread(tfo_listener, (host, port))
    address = listener.getsockname()[:2]
    try:
        child = ns.spawn(serve_ping, listener, realtime=True)
    finally:
        listener.close()  # the child has its own copy
    try:
        yield address
    finally:
        child.stop()


def _read_line(sock: socket.socket, limit: int = 1024) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(limit - len(data))
        if not chunk:
            break
        data += chunk
        if len(data) >= limit:
            break
    return data
