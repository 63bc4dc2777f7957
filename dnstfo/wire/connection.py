"""One server-side DNS-over-TCP connection: framing plus the connection policy (sans-I/O).

Theory of operation. The driver feeds received bytes with the time (``now``, monotonic ns)
and gets back whole query messages; it tells the connection when it starts and finishes
a response, asks for the next deadline, and calls :meth:`ServerConnection.handle_timer`
when that deadline passes. Nothing here reads a clock or touches a socket.

- Pipelining (RFC 7766 §6.2.1): any number of queries may arrive in one read; all are
  returned in order, and the driver may answer them in any order.
- Idle timer (RFC 7766 §6.2.3): the connection is idle when no response is in progress
  and no output waits; the timer restarts only when a *whole* message arrives or the last
  response is written, so a client that drips a byte at a time cannot keep the connection
  open. The driver may shorten the timeout under load (``idle_timeout_ns``; the RFC allows
  zero).
- Write stall: while output waits, the idle timer is replaced by the write-stall timer,
  restarted whenever the socket takes a byte: a client that does not read is closed after
  ``write_stall_ns`` whatever else is going on (a transfer, a lifetime reached), so every
  close reason ends in a close.
- Limits (RFC 9210 §4.2, each one configurable): queries per connection and connection
  lifetime. When the read that reaches the query limit is in, or once the lifetime is over,
  the connection stops reading, finishes the responses owed to every query it read, sends
  FIN and closes when the client closes its side (at most ``drain_ns`` later), so answers
  in flight are not lost to a reset.
- edns-tcp-keepalive (RFC 7828 §3.3.2): :meth:`ServerConnection.keepalive` is the
  TIMEOUT to advertise, in units of 100 ms: the idle timeout, shortened by what is left of
  the lifetime, and 0 when the connection is about to close (the client should not send
  more queries).
- Bad framing (RFC 7766 §8): a zero-length frame, an oversized frame, or end of stream in
  the middle of a frame is a protocol error; the connection closes without an answer.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from dnstfo.errors import RemoteProtocolError
from dnstfo.wire.framing import MAX_MESSAGE, FrameDecoder

NS_PER_S = 1_000_000_000
KEEPALIVE_UNIT_NS = 100_000_000
"""RFC 7828 §3.1: the TIMEOUT field counts units of 100 milliseconds."""
MAX_KEEPALIVE = 0xFFFF
"""The largest TIMEOUT the two-byte field holds (about 109 minutes)."""


class CloseReason(enum.Enum):
    """Why a connection is closing or closed."""

    IDLE = "idle timeout"
    """No whole message and no response for the idle timeout."""
    LIFETIME = "lifetime"
    """The connection reached its maximum lifetime."""
    QUERY_LIMIT = "query limit"
    """The connection received its maximum number of queries."""
    PEER_CLOSED = "peer closed"
    """The client ended the stream."""
    PROTOCOL_ERROR = "protocol error"
    """Bad framing: zero length, too large, or a frame cut short."""
    SHUTDOWN = "shutdown"
    """The server is stopping."""
    WRITE_STALL = "write stall"
    """Output was waiting and the socket took no byte of it for the write-stall timeout."""
    EVICTED = "evicted"
    """Idle while the server ran out of connection slots (RFC 7766 §6.2.3)."""
    SERVER_ERROR = "server error"
    """A response could not be produced (a bug, logged); the stream cannot go on."""


GRACEFUL = frozenset(
    (
        CloseReason.QUERY_LIMIT,
        CloseReason.LIFETIME,
        CloseReason.SHUTDOWN,
        CloseReason.PROTOCOL_ERROR,
    )
)
"""Reasons that finish the answers owed and send FIN before closing; the others close at
once (nothing is written after the client closed, an idle or stalled client reads
nothing, a failed response cannot be resumed)."""


@dataclass(frozen=True, slots=True)
class ConnectionPolicy:
    """Per-connection limits; all durations in nanoseconds."""

    idle_timeout_ns: int = 10 * NS_PER_S
    """Close after this long without a whole message or a response in progress."""
    lifetime_ns: int = 120 * NS_PER_S
    """Stop reading and close this long after the connection opened (0: no limit)."""
    max_queries: int = 0
    """Queries accepted on one connection (0: no limit)."""
    max_message: int = MAX_MESSAGE
    """Largest query accepted; a bigger frame is a protocol error."""
    write_stall_ns: int = 5 * NS_PER_S
    """Close when output waits this long with no byte taken by the socket."""
    drain_ns: int = NS_PER_S
    """After our FIN (graceful close), wait this long for the client's before closing."""

    def __post_init__(self) -> None:
        if self.idle_timeout_ns <= 0 or self.write_stall_ns <= 0 or self.drain_ns <= 0:
            raise ValueError("the idle and write-stall timeouts must be positive")
        if self.lifetime_ns < 0 or self.max_queries < 0:
            raise ValueError("limits are zero (none) or positive")


class ServerConnection:
    """The policy state of one accepted DNS-over-TCP connection.

    Args:
        policy: the limits.
        now: when the connection was accepted (monotonic ns).
    """

    __slots__ = (
        "_busy",
        "_decoder",
        "_drain_until",
        "_idle_since",
        "_stall_since",
        "close_reason",
        "closing",
        "idle_timeout_ns",
        "opened",
        "policy",
        "queries",
    )

    def __init__(self, policy: ConnectionPolicy, now: int) -> None:
        self.policy = policy
        self.opened = now
        self.queries = 0
        """Queries accepted so far."""
        self.closing = False
        """True once no more queries will be read; close when responses are done."""
        self.close_reason: CloseReason | None = None
        """Why the connection is closing (set together with ``closing``)."""
        self.idle_timeout_ns = policy.idle_timeout_ns
        """The idle timeout in force: the driver shortens it under load (RFC 7766 §6.2.3)."""
        self._decoder = FrameDecoder(policy.max_message)
        self._idle_since = now
        self._busy = 0
        self._stall_since: int | None = None
        self._drain_until: int | None = None

    def receive_data(self, data: bytes, now: int) -> list[bytes]:
        """Feeds received bytes; returns the whole queries they completed, in order.

        After the call, check ``closing``: when set, read no more and close once the
        responses to the returned queries are written (after a bad frame too). Every
        query of the read that reaches the query limit is returned: a query that was read
        is answered.

        Args:
            data: bytes as received.
            now: the time of receipt.

        Returns:
            Queries to answer (none once ``closing``).
        """
        if self.closing:
            return []
        try:
            messages = self._decoder.feed(data)
        except RemoteProtocolError:
            self._close(CloseReason.PROTOCOL_ERROR)
            return []
        if self._decoder.error is not None:  # whole queries, then a bad frame
            self._close(CloseReason.PROTOCOL_ERROR)
        if not messages:
            return messages
        self._idle_since = now
        self.queries += len(messages)
        limit = self.policy.max_queries
        if limit and self.queries >= limit:
            self._close(CloseReason.QUERY_LIMIT)
        return messages

    def discard(self, data: bytes) -> int:
        """Counts the whole queries in bytes read after the connection began closing.

        Returns:
            How many queries ``data`` completed (they are not answered).
        """
        try:
            return len(self._decoder.feed(data))
        except RemoteProtocolError:
            return 0

    def receive_eof(self) -> bool:
        """Notes the end of the client's stream.

        Returns:
            True when the stream ended inside a frame (a protocol error), else False.
        """
        cut = True
        try:
            self._decoder.feed_eof()
            cut = False
        except RemoteProtocolError:
            pass
        self.closing = True
        self.close_reason = CloseReason.PROTOCOL_ERROR if cut else CloseReason.PEER_CLOSED
        return cut

    def response_started(self) -> None:
        """Notes work that will take time (a transfer, a deferred answer): not idle."""
        self._busy += 1

    def response_done(self, now: int) -> None:
        """Notes that work started with :meth:`response_started` is done."""
        self._busy -= 1
        if not self._busy:
            self._idle_since = now

    def output_waiting(self, now: int) -> None:
        """Notes that output is queued for the socket (the write-stall clock starts)."""
        if self._stall_since is None:
            self._stall_since = now

    def output_progress(self, now: int, *, done: bool) -> None:
        """Notes that the socket took bytes; ``done``: no output is left.

        The write-stall clock restarts; when done, so does the idle timer (the last
        response completed).
        """
        if done:
            self._stall_since = None
            self._idle_since = now
        else:
            self._stall_since = now

    def eof_sent(self, now: int) -> None:
        """Notes our FIN: the client gets ``drain_ns`` to close its side."""
        self._drain_until = now + self.policy.drain_ns

    @property
    def idle(self) -> bool:
        """Nothing in progress: no output waiting and no pending work."""
        return not self._busy and self._stall_since is None and not self.closing

    @property
    def idle_since(self) -> int:
        """When the connection last had a whole message or finished a response."""
        return self._idle_since

    def deadline(self) -> int | None:
        """The next time :meth:`handle_timer` must be called (absolute ns), or None."""
        if self._drain_until is not None:
            return self._drain_until
        if self._stall_since is not None:
            at: int | None = self._stall_since + self.policy.write_stall_ns
        elif self._busy:
            at = None
        else:
            at = self._idle_since + self.idle_timeout_ns
        lifetime = self.policy.lifetime_ns
        if not lifetime or self.closing:
            return at
        end = self.opened + lifetime
        return end if at is None or end < at else at

    def handle_timer(self, now: int) -> CloseReason | None:
        """Applies the deadlines at ``now``.

        Returns:
            Why the connection must close now (idle, write stall, or the client did not
            close after our FIN), or None to keep it. A lifetime reached sets ``closing``
            and returns None: finish the answers owed, then close.
        """
        if self._drain_until is not None:
            return self.close_reason if now >= self._drain_until else None
        stall = self._stall_since
        if stall is not None:
            if now >= stall + self.policy.write_stall_ns:
                self.closing = True
                self.close_reason = CloseReason.WRITE_STALL
                return self.close_reason
        elif not self._busy and now >= self._idle_since + self.idle_timeout_ns:
            self.closing = True
            if self.close_reason is None:
                self.close_reason = CloseReason.IDLE
            return self.close_reason
        lifetime = self.policy.lifetime_ns
        if lifetime and now >= self.opened + lifetime:
            self._close(CloseReason.LIFETIME)
        return None

    def keepalive(self, now: int) -> int:
        """The edns-tcp-keepalive TIMEOUT to advertise now, in units of 100 ms.

        Zero when the connection is closing (RFC 7828 §3.3.2: the client should close).
        """
        if self.closing:
            return 0
        timeout = self.idle_timeout_ns
        if self.policy.lifetime_ns:
            timeout = min(timeout, self.opened + self.policy.lifetime_ns - now)
        return max(0, min(MAX_KEEPALIVE, timeout // KEEPALIVE_UNIT_NS))

    def close(self, reason: CloseReason) -> None:
        """Marks the connection as closing for ``reason`` (shutdown, eviction, an error)."""
        self._close(reason)

    def _close(self, reason: CloseReason) -> None:
        if not self.closing:
            self.closing = True
            self.close_reason = reason
