"""One server-side DNS-over-TCP connection: framing plus the connection policy (sans-I/O).

Theory of operation. The driver feeds received bytes with the time (``now``, monotonic ns)
and gets back whole query messages; it tells the connection when it starts and finishes
a response, asks for the next deadline, and calls :meth:`ServerConnection.handle_timer`
when that deadline passes. Nothing here reads a clock or touches a socket.

- Pipelining (RFC 7766 §6.2.1): any number of queries may arrive in one read; all are
  returned in order, and the driver may answer them in any order.
- Idle timer (RFC 7766 §6.2.3): the connection is idle when no response is in progress;
  the timer restarts only when a *whole* message arrives or the last response completes,
  so a client that drips a byte at a time cannot keep the connection open.
- Limits (RFC 9210 §4.2, each one configurable): queries per connection and connection
  lifetime. On the last query allowed, or once the lifetime is over, the connection stops
  reading, finishes its responses and closes (``closing``); queries past the limit are
  dropped, not answered.
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


@dataclass(frozen=True, slots=True)
class ConnectionPolicy:
    """Per-connection limits; all durations in nanoseconds."""

    idle_timeout_ns: int = 10 * NS_PER_S
    """Close after this long without a whole message or a response in progress."""
    lifetime_ns: int = 120 * NS_PER_S
    """Stop reading and close this long after the connection opened (0: no limit)."""
    max_queries: int = 10_000
    """Queries accepted on one connection (0: no limit)."""
    max_message: int = MAX_MESSAGE
    """Largest query accepted; a bigger frame is a protocol error."""

    def __post_init__(self) -> None:
        if self.idle_timeout_ns <= 0:
            raise ValueError("the idle timeout must be positive")
        if self.lifetime_ns < 0 or self.max_queries < 0:
            raise ValueError("limits are zero (none) or positive")


class ServerConnection:
    """The policy state of one accepted DNS-over-TCP connection.

    Args:
        policy: the limits.
        now: when the connection was accepted (monotonic ns).
    """

    __slots__ = (
        "_decoder",
        "_idle_since",
        "_in_flight",
        "close_reason",
        "closing",
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
        self._decoder = FrameDecoder(policy.max_message)
        self._idle_since = now
        self._in_flight = 0

    def receive_data(self, data: bytes, now: int) -> list[bytes]:
        """Feeds received bytes; returns the whole queries they completed, in order.

        After the call, check ``closing``: when set, read no more and close once the
        responses to the returned queries are written (after a bad frame too).

        Args:
            data: bytes as received.
            now: the time of receipt.

        Returns:
            Queries to answer, at most as many as the query limit still allows.
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
        limit = self.policy.max_queries
        if limit:
            room = limit - self.queries
            if len(messages) >= room:
                messages = messages[:room]
                self._close(CloseReason.QUERY_LIMIT)
        self.queries += len(messages)
        return messages

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
        self._close(CloseReason.PROTOCOL_ERROR if cut else CloseReason.PEER_CLOSED)
        return cut

    def response_started(self) -> None:
        """Notes a response that will take time (a zone transfer): the connection is busy."""
        self._in_flight += 1

    def response_done(self, now: int) -> None:
        """Notes that a response started with :meth:`response_started` is written."""
        self._in_flight -= 1
        if not self._in_flight:
            self._idle_since = now

    def deadline(self) -> int | None:
        """The next time :meth:`handle_timer` must be called (absolute ns), or None."""
        policy = self.policy
        idle = None if self._in_flight else self._idle_since + policy.idle_timeout_ns
        if not policy.lifetime_ns or self.closing:
            return idle
        end = self.opened + policy.lifetime_ns
        return end if idle is None or end < idle else idle

    def handle_timer(self, now: int) -> CloseReason | None:
        """Applies the deadlines at ``now``.

        Returns:
            Why the connection must close now, or None to keep it. A lifetime reached
            while a response is in progress sets ``closing`` and returns None: close when
            it is done.
        """
        if not self._in_flight and now >= self._idle_since + self.policy.idle_timeout_ns:
            self._close(CloseReason.IDLE)
            return self.close_reason
        lifetime = self.policy.lifetime_ns
        if lifetime and now >= self.opened + lifetime:
            self._close(CloseReason.LIFETIME)
            return None if self._in_flight else self.close_reason
        return None

    def keepalive(self, now: int) -> int:
        """The edns-tcp-keepalive TIMEOUT to advertise now, in units of 100 ms.

        Zero when the connection is closing (RFC 7828 §3.3.2: the client should close).
        """
        if self.closing:
            return 0
        timeout = self.policy.idle_timeout_ns
        if self.policy.lifetime_ns:
            timeout = min(timeout, self.opened + self.policy.lifetime_ns - now)
        return max(0, min(MAX_KEEPALIVE, timeout // KEEPALIVE_UNIT_NS))

    def close(self, reason: CloseReason) -> None:
        """Marks the connection as closing for ``reason`` (e.g. server shutdown)."""
        self._close(reason)

    def _close(self, reason: CloseReason) -> None:
        if not self.closing:
            self.closing = True
            self.close_reason = reason
