"""The asyncio driver of DNS over TCP: one Protocol per connection, a thin loop.

Everything DNS lives in :class:`~dnstfo.server.session.TcpSession`; this module owns the
transport, the clock and the timer. Per connection:

- accept: admission against the total and per-client limits (RFC 9210 §4.2; over the limit
  the connection is reset at once), then TCP_INFO: did the SYN carry data (SYN_DATA), was
  the connection accepted through Fast Open (TFO_CHILD)? Accepted sockets inherit
  TCP_NODELAY from the listener.
- read: the session answers the batch; all answers go out in one ``write``.
- flow control: when the client does not read, ``pause_writing`` stops reading its
  queries until the buffer drains (a client cannot make us buffer without bound).
- timer: one ``call_at`` handle per connection, armed at the session's deadline and
  re-armed lazily when it fires, so a busy connection costs no timer churn.
- close: on EOF, an error, a limit or shutdown; after the client closed, nothing more is
  written (queued transfer messages are dropped).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from dnstfo.answer.responder import Responder
from dnstfo.errors import NetworkError
from dnstfo.kernel.tcpinfo import TcpiOption, tcpi_options
from dnstfo.server.config import Limits
from dnstfo.server.querylog import QueryLogger
from dnstfo.server.session import TcpSession
from dnstfo.server.stats import Limit, ServerStats
from dnstfo.wire.connection import CloseReason

log = logging.getLogger(__name__)

_now = time.monotonic_ns
_SYN_DATA = int(TcpiOption.SYN_DATA)
_TFO = int(TcpiOption.SYN_DATA | TcpiOption.TFO_CHILD)


@dataclass(slots=True)
class TcpContext:
    """What all TCP connections of one server share."""

    responder: Responder
    """The answer engine."""
    limits: Limits
    """Connection limits."""
    stats: ServerStats
    """Counters."""
    query_log: QueryLogger
    """Per-query lines."""
    connections: set[TcpConnection] = field(default_factory=set)
    """Open connections."""
    per_client: Counter[str] = field(default_factory=Counter)
    """Open connections by client address."""
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set whenever the last connection closes (for shutdown)."""


class TcpConnection(asyncio.Protocol):
    """One client connection (made by the server for each accept).

    Args:
        ctx: the shared context.
    """

    def __init__(self, ctx: TcpContext) -> None:
        self.ctx = ctx
        self.session: TcpSession | None = None
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: int | None = None
        self._paused = False
        self._peer: tuple[str, int] = ("", 0)
        """The client's address and port."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # a TCP transport
        ctx = self.ctx
        stats = ctx.stats
        now = _now()
        peer = transport.get_extra_info("peername")
        client = peer[0]
        self._peer = (client, peer[1])
        limits = ctx.limits
        limit = None
        if len(ctx.connections) >= limits.max_connections:
            limit = Limit.TOTAL_CONNECTIONS
        elif ctx.per_client[client] >= limits.max_per_client:
            limit = Limit.PER_CLIENT
        if limit is not None:
            stats.limits[limit] += 1
            self._debug("refused: %s limit", limit.value)
            transport.abort()
            return
        stats.tcp_connections += 1
        try:
            options = tcpi_options(transport.get_extra_info("socket"))
        except NetworkError as exc:
            options = 0
            self._debug("no TCP_INFO: %s", exc)
        if options & _TFO:
            stats.tfo_connections += 1
        self.transport = transport
        ctx.connections.add(self)
        ctx.per_client[client] += 1
        self.session = TcpSession(
            ctx.responder,
            limits.connection,
            now,
            self._peer,
            bool(options & _SYN_DATA),
            stats,
            ctx.query_log,
        )
        self._arm()

    def data_received(self, data: bytes) -> None:
        session = self.session
        if session is None:
            return
        now = _now()
        out = session.receive(data, now)
        transport = self.transport
        assert transport is not None
        if out:
            transport.write(out)
        if session.transfers and not self._paused:
            self._write_transfers(now)
        if session.conn.closing:
            transport.pause_reading()
            if session.finished:
                self._close(session.conn.close_reason)

    def eof_received(self) -> bool:
        if self.session is not None:
            self.session.receive_eof(_now())
        return False  # close our side too: nothing is written after the client closed

    def pause_writing(self) -> None:
        self._paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        session = self.session
        if session is None or self.transport is None or self.transport.is_closing():
            return
        if session.transfers:
            self._write_transfers(_now())
        if session.finished:
            self._close(session.conn.close_reason)
        elif not session.conn.closing and not self._paused:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        session = self.session
        if session is None:
            return
        session.drop_transfers(_now())
        self.session = None
        ctx = self.ctx
        ctx.connections.discard(self)
        client = self._peer[0]
        left = ctx.per_client[client] - 1
        if left:
            ctx.per_client[client] = left
        else:
            del ctx.per_client[client]
        if not ctx.connections:
            ctx.closed.set()

    def shutdown(self) -> None:
        """Stops reading; closes as soon as queued answers are written."""
        session, transport = self.session, self.transport
        if session is None or transport is None:
            return
        session.conn.close(CloseReason.SHUTDOWN)
        transport.pause_reading()
        if session.finished:
            self._close(CloseReason.SHUTDOWN)

    def _write_transfers(self, now: int) -> None:
        session, transport = self.session, self.transport
        assert session is not None
        assert transport is not None
        while session.transfers and not self._paused:
            transport.write(session.next_transfer_chunk(now))  # may call pause_writing
        if not session.transfers:
            self._arm()

    def _close(self, reason: CloseReason | None) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._debug("closing: %s", reason.value if reason else "-")
            self.transport.close()  # flushes what was written

    def _debug(self, msg: str, *args: object) -> None:
        """Logs at DEBUG with the client's address in front (nothing is built when off)."""
        if log.isEnabledFor(logging.DEBUG):
            log.debug("[%s#%s] " + msg, *self._peer, *args)

    def _arm(self) -> None:
        session = self.session
        if session is None:
            return
        deadline = session.conn.deadline()
        if deadline is None or (self._timer is not None and self._timer_at == deadline):
            return
        if self._timer is not None:
            if self._timer_at is not None and self._timer_at <= deadline:
                return  # fires earlier and re-arms then
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer_at = deadline
        # The loop's clock is time.monotonic, the same clock as monotonic_ns.
        self._timer = loop.call_at(deadline / 1e9, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        session = self.session
        if session is None:
            return
        if session.handle_timer(_now()):
            self._close(session.conn.close_reason)
            return
        if session.conn.closing and self.transport is not None:
            self.transport.pause_reading()
        self._arm()
