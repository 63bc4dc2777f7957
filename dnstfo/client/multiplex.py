"""The multiplexed driver: thousands of exchanges at once on one selector, no threads.

Theory of operation: each exchange is an ``Exchange`` (plain state) plus its socket,
registered with one ``selectors.DefaultSelector`` (epoll on Linux). ``start`` opens the
connection at once (the query rides in the SYN when a cookie allows) and waits for
writability; once established the rest of the query is written and the socket waits for
readability until one whole message. Deadlines sit in one heap (lazily re-queued when an
exchange re-arms its per-phase deadline). Whatever the end (answer, error, deadline),
TCP_INFO is read from the socket before it is closed, and the caller's ``done`` gets an
``Outcome``. Nothing here blocks except the selector's wait in ``poll``.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import selectors
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dnstfo.client.config import QueryConfig, TlsOptions
from dnstfo.client.exchange import (
    Exchange,
    check_header,
    open_connection,
    pending_error,
    question_of,
)
from dnstfo.client.report import Fallback
from dnstfo.client.tls import TlsClient, TlsPump, client_context
from dnstfo.errors import DnstfoError, NetworkError
from dnstfo.kernel.tcpinfo import TcpInfo, tcp_info
from dnstfo.timing import Clock, MonotonicClock, PhaseTimes

if TYPE_CHECKING:
    import dns.message

log = logging.getLogger(__name__)

_RECV_SIZE = 65536


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one exchange came to: an answer or an error, with what the kernel showed."""

    config: QueryConfig
    """What was asked."""
    source: tuple[str, int] | None
    """Local address and port (None: the socket never got one)."""
    in_syn: int
    """Bytes of the query the kernel put in the SYN."""
    fallback: Fallback
    """Why TFO was requested but not tried, or ``NONE``."""
    fallback_reason: str | None
    """The error behind ``fallback``."""
    times: PhaseTimes
    """Milestones on the monotonic clock."""
    at_connect: TcpInfo | None
    """TCP_INFO when the handshake completed (None: it did not)."""
    info: TcpInfo | None
    """TCP_INFO at the end (answer or failure; None: no socket)."""
    response: dns.message.Message | None
    """The checked response, or None (also when only the header was checked)."""
    rcode: int | None
    """The response's RCODE (header bits), or None without a checked response."""
    response_size: int
    """Response size in bytes (0 without one)."""
    error: DnstfoError | None
    """Why there is no response, or None."""
    wall_started: float
    """Wall-clock start, for records."""
    wall_finished: float
    """Wall-clock end."""


Done = Callable[[Outcome], None]

_COMPACT_FACTOR = 4
_COMPACT_SLACK = 256
"""The deadline heap is compacted when it holds more than 4 entries per live exchange."""


class _Flight:
    __slots__ = (
        "at_connect",
        "config",
        "done",
        "ex",
        "fallback",
        "in_syn",
        "question",
        "reading",
        "reason",
        "sock",
        "tls",
        "wall",
    )

    def __init__(
        self, config: QueryConfig, ex: Exchange, sock: socket.socket, done: Done, wall: float
    ) -> None:
        self.config = config
        self.ex = ex
        self.sock = sock
        self.done = done
        self.wall = wall
        self.in_syn = 0
        self.fallback = Fallback.NONE
        self.reason: str | None = None
        self.at_connect: TcpInfo | None = None
        self.question = b""
        self.reading = False
        self.tls: TlsPump | None = None


class Multiplexer:
    """Runs many exchanges at once; the caller starts them and calls ``poll`` in a loop.

    Args:
        clock: the monotonic clock (tests inject one).
        per_phase: each phase gets the config's timeout (else the whole exchange does).
        parse: parse every response with dnspython (``Outcome.response``); False checks
            only its header and question (``check_header``), much cheaper per exchange.
    """

    def __init__(
        self, clock: Clock | None = None, *, per_phase: bool = True, parse: bool = True
    ) -> None:
        self._clock = clock or MonotonicClock()
        self._per_phase = per_phase
        self._parse = parse
        self._sel = selectors.DefaultSelector()
        self._heap: list[tuple[int, int, _Flight]] = []
        self._seq = itertools.count()
        self._live: set[_Flight] = set()
        self._contexts: dict[TlsOptions, ssl.SSLContext] = {}
        """One TLS context per set of options (loading CAs per connection would cost)."""

    def __len__(self) -> int:
        return len(self._live)

    def start(
        self,
        config: QueryConfig,
        query: dns.message.Message,
        done: Done,
        *,
        wire: bytes | None = None,
    ) -> None:
        """Opens a connection for ``query`` to ``config.server``; ``done`` gets its outcome.

        ``done`` is called from ``start`` itself when the connection fails at once, else
        from a later ``poll``. It may start further exchanges.

        Args:
            config: server, port, TFO method and timeout.
            query: the query.
            done: told the outcome.
            wire: ``query`` in wire form, when the caller already has it (saves rendering
                it again for every connection of the same query).
        """
        wall = time.time()
        now = self._clock.now_ns()
        wire = query.to_wire() if wire is None else wire
        ex = Exchange(query, wire, config.timeout, now, per_phase=self._per_phase)
        tls = hello = None
        try:
            if config.tls is not None:  # DoT: the ClientHello is the first write, in the SYN
                if config.tls not in self._contexts:
                    self._contexts[config.tls] = client_context(config.tls)
                tls = TlsClient(config.tls, config.server, self._contexts[config.tls])
                hello = tls.start()
            opening = open_connection(config, ex.data if hello is None else hello)
        except DnstfoError as exc:
            done(_failed(config, ex, exc, wall))
            return
        except OSError as exc:  # no socket at all: EMFILE, ENFILE, ENOBUFS
            done(_failed(config, ex, NetworkError.from_oserror("opening a socket", exc), wall))
            return
        flight = _Flight(config, ex, opening.sock, done, wall)
        if not self._parse:
            flight.question = question_of(wire)
        flight.in_syn, flight.fallback, flight.reason = (
            opening.in_syn,
            opening.fallback,
            opening.fallback_reason,
        )
        if tls is not None and hello is not None:
            flight.tls = TlsPump(tls, hello[opening.in_syn :], ex.data)
            opening.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # see query.py
        else:
            ex.on_sent(opening.in_syn)
        self._live.add(flight)
        self._sel.register(flight.sock, selectors.EVENT_WRITE, flight)
        heapq.heappush(self._heap, (ex.deadline_ns, next(self._seq), flight))
        if len(self._heap) > _COMPACT_FACTOR * len(self._live) + _COMPACT_SLACK:
            self._compact()

    def poll(self, timeout: float | None = None) -> None:
        """Waits up to ``timeout`` seconds (None: until the next deadline) and handles events.

        Returns at once when nothing is in flight.
        """
        if not self._live:
            return
        now = self._clock.now_ns()
        wait = max(self._heap[0][0] - now, 0) / 1e9 if self._heap else None
        if timeout is not None:
            wait = timeout if wait is None else min(wait, timeout)
        for key, _ in self._sel.select(wait):
            flight: _Flight = key.data
            if flight in self._live:
                self._on_ready(flight)
        self._expire(self._clock.now_ns())

    def close(self) -> None:
        """Abandons every exchange in flight (no callbacks) and closes the selector."""
        for flight in list(self._live):
            self._drop(flight)
        self._sel.close()

    def _on_ready(self, flight: _Flight) -> None:
        ex, sock = flight.ex, flight.sock
        try:
            if ex.connected is None:
                error = pending_error(sock, (flight.config.server, flight.config.port))
                if error is not None:
                    raise error
                ex.on_connected(self._clock.now_ns())
                flight.at_connect = tcp_info(sock)
                self._requeue(flight)
            if flight.tls is not None:
                self._tls_step(flight, flight.tls)
                return
            if ex.unsent:
                try:
                    ex.on_sent(sock.send(ex.unsent))
                except BlockingIOError:
                    return
                except OSError as exc:
                    raise NetworkError.from_oserror("sending the query", exc) from exc
                if ex.unsent:
                    return
            if not flight.reading:
                # All sent (in the SYN, or now): wait for reading only. A socket left
                # registered for writing would wake the loop on every pass.
                self._sel.modify(sock, selectors.EVENT_READ, flight)
                flight.reading = True
            self._read(flight)
        except DnstfoError as exc:
            self._finish(flight, None, None, 0, exc)

    def _read(self, flight: _Flight) -> None:
        sock = flight.sock
        while True:
            try:
                chunk = sock.recv(_RECV_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                raise NetworkError.from_oserror("reading the response", exc) from exc
            if self._received(flight, chunk):
                return

    def _tls_step(self, flight: _Flight, pump: TlsPump) -> None:
        """DoT: writes the handshake and the query as the TLS layer makes them, reads
        until the answer; the socket waits for writing only while ciphertext waits."""
        ex = flight.ex
        while True:
            flushed = pump.flush(flight.sock)
            events = selectors.EVENT_READ | (0 if flushed else selectors.EVENT_WRITE)
            self._sel.modify(flight.sock, events, flight)
            plain = pump.read(flight.sock)
            if plain is None:
                return
            if pump.query is None and ex.unsent:  # handed to TLS with the client's Finished
                ex.on_sent(len(ex.unsent))
            if plain and self._received(flight, plain):
                return

    def _received(self, flight: _Flight, data: bytes) -> bool:
        """Feeds response bytes to the exchange; True once the answer was handled."""
        ex = flight.ex
        first = ex.first_byte is None
        messages = ex.on_data(data, self._clock.now_ns())
        if first:
            self._requeue(flight)
        if messages:
            self._answered(flight, messages[0])
        return bool(messages)

    def _answered(self, flight: _Flight, message: bytes) -> None:
        ex = flight.ex
        if self._parse:
            response = ex.check(message)
            self._finish(flight, response, response.rcode(), len(message), None)
        else:
            rcode = check_header(ex.query.id, flight.question, message)
            self._finish(flight, None, rcode, len(message), None)

    def _requeue(self, flight: _Flight) -> None:
        if self._per_phase:
            heapq.heappush(self._heap, (flight.ex.deadline_ns, next(self._seq), flight))
            if len(self._heap) > _COMPACT_FACTOR * len(self._live) + _COMPACT_SLACK:
                self._compact()

    def _compact(self) -> None:
        """Drops heap entries of finished exchanges and of re-armed deadlines.

        Such entries are skipped when they come due; until then they would keep finished
        exchanges alive, so memory would follow the connection rate, not the concurrency.
        """
        self._heap = [
            entry
            for entry in self._heap
            if entry[2] in self._live and entry[0] == entry[2].ex.deadline_ns
        ]
        heapq.heapify(self._heap)

    def _expire(self, now: int) -> None:
        while self._heap and self._heap[0][0] <= now:
            deadline, _, flight = heapq.heappop(self._heap)
            if flight in self._live and deadline == flight.ex.deadline_ns:
                self._finish(flight, None, None, 0, flight.ex.timeout_error())

    def _drop(self, flight: _Flight) -> None:
        self._live.discard(flight)
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(flight.sock)
        flight.sock.close()

    def _finish(
        self,
        flight: _Flight,
        response: dns.message.Message | None,
        rcode: int | None,
        size: int,
        error: DnstfoError | None,
    ) -> None:
        try:
            info: TcpInfo | None = tcp_info(flight.sock)
            name = flight.sock.getsockname()
            source: tuple[str, int] | None = (str(name[0]), int(name[1])) if name[1] else None
        except OSError:
            info, source = None, None
        self._drop(flight)
        ex = flight.ex
        flight.done(
            Outcome(
                config=flight.config,
                source=source,
                in_syn=flight.in_syn,
                fallback=flight.fallback,
                fallback_reason=flight.reason,
                times=ex.times(),
                at_connect=flight.at_connect,
                info=info,
                response=response,
                rcode=rcode,
                response_size=size,
                error=error,
                wall_started=flight.wall,
                wall_finished=time.time(),
            )
        )


def _failed(config: QueryConfig, ex: Exchange, error: DnstfoError, wall: float) -> Outcome:
    return Outcome(
        config=config,
        source=None,
        in_syn=0,
        fallback=Fallback.NONE,
        fallback_reason=None,
        times=ex.times(),
        at_connect=None,
        info=None,
        response=None,
        rcode=None,
        response_size=0,
        error=error,
        wall_started=wall,
        wall_finished=time.time(),
    )
