"""The exchange as plain state: one framed query, its decoder, its phases and deadline.

Theory of operation (RFC 7766 §8, RFC 7413 §3, RFC 1035 §4.2.2): a query goes out as
one buffer (two-byte length + message), possibly in the SYN; the answer is read with the
wire ``FrameDecoder`` until one whole message, whose ID and question are checked. The
phases are ``connect`` (socket call to established), ``first byte`` and ``response``.

``Exchange`` holds no socket and reads no clock: drivers (the blocking one in
``client/query.py``, the multiplexed one in ``client/multiplex.py``) own the socket and
the waits, and tell the exchange what happened and when (``now`` in monotonic ns). The
deadline is absolute: for the whole exchange (``dnstfo query``), or re-armed at each
phase (the probe's per-phase timeout).

``open_connection`` makes the socket and starts the connection the way the config asks
(``sendto(MSG_FASTOPEN)``, ``TCP_FASTOPEN_CONNECT`` or plain connect), in one place for
both drivers.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dnstfo.client.config import QueryConfig, TfoMethod
from dnstfo.client.message import parse_response
from dnstfo.client.report import Fallback
from dnstfo.errors import (
    FastOpenDisabled,
    KernelFeatureError,
    NetworkError,
    PeerClosed,
    PhaseTimeout,
    RemoteProtocolError,
)
from dnstfo.kernel.sockets import client_socket, family_of, send_in_syn
from dnstfo.timing import PhaseTimes
from dnstfo.wire.framing import FrameDecoder, frame

if TYPE_CHECKING:
    import dns.message

CONNECT = "connect"
FIRST_BYTE = "first byte"
RESPONSE = "response"


class Exchange:
    """One query's progress over one connection, driven by a driver.

    Args:
        query: the query message (its ID and question check the answer).
        wire: the query in wire form (without the length prefix).
        timeout: seconds allowed (whole exchange, or each phase with ``per_phase``).
        started_ns: when the socket call that opens the connection is made.
        per_phase: re-arm the deadline at each phase instead of one for the whole.
    """

    __slots__ = (
        "_decoder",
        "connected",
        "data",
        "deadline_ns",
        "done",
        "first_byte",
        "per_phase",
        "query",
        "sent",
        "started",
        "timeout",
    )

    def __init__(
        self,
        query: dns.message.Message,
        wire: bytes,
        timeout: float,
        started_ns: int,
        *,
        per_phase: bool = False,
    ) -> None:
        self.query = query
        self.data = frame(wire)
        self.sent = 0
        self.timeout = timeout
        self.per_phase = per_phase
        self.started = started_ns
        self.connected: int | None = None
        self.first_byte: int | None = None
        self.done: int | None = None
        self.deadline_ns = started_ns + int(timeout * 1e9)
        self._decoder = FrameDecoder()

    @property
    def phase(self) -> str:
        """The phase now: ``connect``, ``first byte`` or ``response``."""
        if self.connected is None:
            return CONNECT
        return FIRST_BYTE if self.first_byte is None else RESPONSE

    @property
    def unsent(self) -> memoryview:
        """The part of the framed query still to write."""
        return memoryview(self.data)[self.sent :]

    def expired(self, now: int) -> bool:
        """Whether the deadline has passed."""
        return now >= self.deadline_ns

    def timeout_error(self) -> PhaseTimeout:
        """The error for the deadline passing in the current phase."""
        return PhaseTimeout(self.phase, self.timeout)

    def on_sent(self, n: int) -> None:
        """Counts ``n`` more bytes of the query written (in the SYN or after)."""
        self.sent += n

    def on_connected(self, now: int) -> None:
        """The handshake completed at ``now``."""
        self.connected = now
        self._rearm(now)

    def on_data(self, chunk: bytes, now: int) -> list[bytes]:
        """Feeds bytes read at ``now``; returns the whole messages they completed.

        The first whole message is the response (``done`` is set then); a zone transfer
        goes on with more (RFC 5936 §2.2), read through the same decoder.

        Raises:
            PeerClosed: end of stream before any byte of a reply (no reply: a network
                outcome, named with the phase).
            RemoteProtocolError: end of stream inside a message or after it, or bad framing.
        """
        if not chunk:
            if self.first_byte is None:
                raise PeerClosed(self.phase)
            self._decoder.feed_eof()
            raise RemoteProtocolError("the server closed the connection without answering")
        if self.first_byte is None:
            self.first_byte = now
            self._rearm(now)
        messages = self._decoder.feed(chunk)
        if messages and self.done is None:
            self.done = now
        return messages

    def extend(self, now: int) -> None:
        """Gives a further message (a transfer's next) a fresh ``timeout`` from ``now``."""
        self.deadline_ns = now + int(self.timeout * 1e9)

    def check(self, message: bytes) -> dns.message.Message:
        """Parses the response and checks it answers the query.

        Raises:
            RemoteProtocolError: malformed, not a response, or ID or question differ.
        """
        return parse_response(self.query, message)

    def times(self) -> PhaseTimes:
        """The milestones so far."""
        return PhaseTimes(self.started, self.connected, self.first_byte, self.done)

    def _rearm(self, now: int) -> None:
        if self.per_phase:
            self.deadline_ns = now + int(self.timeout * 1e9)


def question_of(wire: bytes) -> bytes:
    """The question section of a query we built (one question, uncompressed name).

    Raises:
        ValueError: ``wire`` holds no whole question.
    """
    pos = 12
    while True:
        if pos >= len(wire):
            raise ValueError("no whole question in the query")
        n = wire[pos]
        pos += 1 + n
        if n == 0:
            break
    if pos + 4 > len(wire):
        raise ValueError("no whole question in the query")
    return wire[12 : pos + 4]


def check_header(query_id: int, question: bytes, message: bytes) -> int:
    """Checks a response against its query without parsing the records; returns its RCODE.

    The light check for many exchanges: the ID, the QR bit and the question (name
    compared without case, RFC 4343; type and class exactly) must match. The records
    themselves are not parsed (``check`` does that, for ``dnstfo query``).

    Raises:
        RemoteProtocolError: too short, not a response, or ID or question differ.
    """
    if len(message) < 12:
        raise RemoteProtocolError(f"a {len(message)}-byte message is shorter than a DNS header")
    mid, flags, qdcount = struct.unpack_from("!HHH", message)
    if not flags & 0x8000:
        raise RemoteProtocolError("the server sent a query, not a response")
    if mid != query_id:
        raise RemoteProtocolError(f"response ID {mid} does not match query ID {query_id}")
    got = message[12 : 12 + len(question)]
    if qdcount != 1 or got[:-4].lower() != question[:-4].lower() or got[-4:] != question[-4:]:
        raise RemoteProtocolError("the response's question does not match the query's")
    return int(flags) & 0xF


@dataclass(frozen=True, slots=True)
class Opening:
    """A socket whose connection has been started."""

    sock: socket.socket
    """The non-blocking socket (the caller closes it)."""
    in_syn: int
    """Bytes of the query the kernel took before the handshake (in the SYN)."""
    fallback: Fallback
    """Why TFO was requested but not tried, or ``NONE``."""
    fallback_reason: str | None
    """The error behind ``fallback``, with its fix."""


def connecting(addr: tuple[str, int]) -> str:
    """What we were doing, for error messages."""
    return f"connecting to {addr[0]} port {addr[1]}"


def open_connection(config: QueryConfig, data: bytes) -> Opening:
    """Makes a non-blocking socket and starts connecting, with the query in the SYN if asked.

    Args:
        config: server, port, source and TFO method.
        data: the framed query (sent now when the kernel puts it in the SYN).

    Raises:
        NetworkError: the connection failed at once (errno kept).
        UsageError: the server is not an address literal.
    """
    sock, fallback, reason = _make_socket(config)
    try:
        sock.setblocking(False)
        in_syn, open_fallback, open_reason = _start(
            config, sock, data, (config.server, config.port)
        )
    except BaseException:
        sock.close()
        raise
    if open_fallback is not Fallback.NONE:
        fallback, reason = open_fallback, open_reason
    return Opening(sock, in_syn, fallback, reason)


def pending_error(sock: socket.socket, addr: tuple[str, int]) -> NetworkError | None:
    """The socket's pending error (SO_ERROR) as a NetworkError, or None."""
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if not err:
        return None
    return NetworkError.from_oserror(connecting(addr), OSError(err, os.strerror(err)))


def _make_socket(config: QueryConfig) -> tuple[socket.socket, Fallback, str | None]:
    family = family_of(config.server)
    source = None if config.source is None else (config.source, 0)
    if config.tfo is TfoMethod.CONNECT:
        try:
            sock = client_socket(
                family, fastopen_connect=True, no_cookie=config.no_cookie, source=source
            )
            return sock, Fallback.NONE, None
        except FastOpenDisabled as exc:
            fallback, reason = Fallback.CLIENT_OFF, str(exc)
        except KernelFeatureError as exc:
            fallback, reason = Fallback.FEATURE_MISSING, str(exc)
        return client_socket(family, source=source), fallback, reason
    no_cookie = config.no_cookie and config.tfo_requested
    return client_socket(family, no_cookie=no_cookie, source=source), Fallback.NONE, None


def _start(
    config: QueryConfig, sock: socket.socket, data: bytes, addr: tuple[str, int]
) -> tuple[int, Fallback, str | None]:
    """Starts the connection; returns (bytes sent in the SYN, fallback, its reason)."""
    fallback, reason = Fallback.NONE, None
    if config.tfo is TfoMethod.SENDTO:
        try:
            return send_in_syn(sock, data, addr), fallback, reason
        except BlockingIOError:
            return 0, fallback, reason  # no cookie: the SYN asks for one
        except FastOpenDisabled as exc:
            fallback, reason = Fallback.CLIENT_OFF, str(exc)
    code = sock.connect_ex(addr)
    if code == 0 and config.tfo is TfoMethod.CONNECT:  # deferred: the first write sends the SYN
        try:
            return sock.send(data), fallback, reason
        except BlockingIOError:
            return 0, fallback, reason
        except OSError as exc:
            raise NetworkError.from_oserror(connecting(addr), exc) from exc
    if code not in (0, errno.EINPROGRESS):
        raise NetworkError.from_oserror(connecting(addr), OSError(code, os.strerror(code)))
    return 0, fallback, reason
