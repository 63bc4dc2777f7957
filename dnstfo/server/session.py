"""One TCP client session: received bytes -> framed answers, with no sockets or clock.

Theory of operation. :class:`TcpSession` glues the connection policy
(:class:`~dnstfo.wire.connection.ServerConnection`), the answer engine
(:class:`~dnstfo.answer.responder.Responder`) and the edns-tcp-keepalive option together.
Each call to :meth:`TcpSession.receive` answers every whole query the bytes completed and
returns all of their answers as *one* buffer, each with its length prefix (RFC 7766 §8:
length and message in one write; one write per read batch keeps pipelined answers from
waiting behind the client's delayed ACK). Answers come back in the order the queries
came; each carries its query's ID, so clients match them as RFC 7766 §6.2.1.1 requires.

Only the first batch of a connection whose SYN carried data is marked ``from_syn_data``:
the responder then refuses anything but QUERY (RFC 7413 §6, SYN data may be replayed).
Marking the whole first batch errs on the safe side when more than the SYN's bytes
arrived in that first read.

The rest of a zone transfer (``Reply.more``) is queued in ``transfers`` for the driver to
write as the socket drains, so one transfer does not hold back other answers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from time import monotonic_ns

import dns.message
import dns.rcode

from dnstfo.answer.responder import Responder, Transport
from dnstfo.server.querylog import QueryLogger
from dnstfo.server.stats import Limit, ServerStats
from dnstfo.wire.connection import CloseReason, ConnectionPolicy, ServerConnection
from dnstfo.wire.framing import frame
from dnstfo.wire.keepalive import KeepaliveRequest, add_keepalive, keepalive_request

_TCP = Transport.TCP
_EMPTY = KeepaliveRequest.EMPTY
_AXFR = 252
_TIMER_LIMITS: dict[CloseReason | None, Limit] = {
    CloseReason.IDLE: Limit.IDLE,
    CloseReason.LIFETIME: Limit.LIFETIME,
}


def _formerr(query: bytes, fallback: bytes) -> bytes:
    """A FORMERR response to a query that broke an option's rules (``fallback`` if the
    query does not parse: the responder has then answered it already)."""
    try:
        response = dns.message.make_response(dns.message.from_wire(query), pad=0)
    except Exception:  # remote bytes: any parser failure
        return fallback
    response.set_rcode(dns.rcode.FORMERR)
    return response.to_wire()


class TcpSession:
    """Answers the queries of one TCP connection.

    Args:
        responder: the answer engine (shared by all sessions; reloads swap its zones).
        policy: idle timeout, lifetime and query limit.
        now: when the connection was accepted (monotonic ns).
        client: the client's address and port.
        syn_data: the kernel says the SYN carried data (TCP_INFO SYN_DATA).
        stats: counters to add to.
        query_log: per-query log lines (skipped entirely when off).
        clock: monotonic ns, read only to log each query's latency.
    """

    __slots__ = (
        "_clock",
        "_from_syn",
        "client",
        "conn",
        "port",
        "query_log",
        "responder",
        "stats",
        "transfers",
    )

    def __init__(
        self,
        responder: Responder,
        policy: ConnectionPolicy,
        now: int,
        client: tuple[str, int],
        syn_data: bool,
        stats: ServerStats,
        query_log: QueryLogger,
        clock: Callable[[], int] = monotonic_ns,
    ) -> None:
        self._clock = clock
        self.responder = responder
        self.conn = ServerConnection(policy, now)
        self.client, self.port = client[0], client[1]
        self.stats = stats
        self.query_log = query_log
        self.transfers: deque[bytes] = deque()
        """Framed messages of zone transfers still to write, in order."""
        self._from_syn = syn_data
        """The next batch is the SYN's: only the first, when the SYN carried data."""

    def receive(self, data: bytes, now: int) -> bytes:
        """Answers the queries that ``data`` completed.

        Afterwards check ``conn.closing`` (stop reading; close when ``transfers`` is
        empty) and ``transfers`` (more to write as the socket drains).

        Args:
            data: bytes as received.
            now: time of receipt (monotonic ns).

        Returns:
            The framed answers, concatenated (empty when there is nothing to send).
        """
        conn = self.conn
        messages = conn.receive_data(data, now)
        stats = self.stats
        if conn.closing:
            reason = conn.close_reason
            if reason is CloseReason.PROTOCOL_ERROR:
                stats.protocol_errors += 1
            elif reason is CloseReason.QUERY_LIMIT:
                stats.limits[Limit.QUERIES] += 1
        if not messages:
            return b""
        from_syn = self._from_syn
        self._from_syn = False
        respond = self.responder.respond
        client = self.client
        counts = stats.queries
        log = self.query_log if self.query_log.enabled else None
        out: list[bytes] = []
        for message in messages:
            reply = respond(message, transport=_TCP, from_syn_data=from_syn, client=client)
            wire = reply.wire
            if wire is None:
                stats.dropped += 1
                continue
            rcode: int | None = reply.rcode
            assert rcode is not None  # a reply with a message has an RCODE
            if message[11] or message[10]:  # ARCOUNT > 0: maybe an OPT with keepalive
                wire, rcode = self._keepalive(message, wire, rcode, now)
            out.append(frame(wire))
            if reply.qtype == _AXFR and rcode == 0:
                stats.axfr += 1
            if reply.more:
                if not self.transfers:
                    conn.response_started()
                self.transfers.extend(map(frame, reply.more))
            counts["tcp", rcode] += 1
            if from_syn:
                stats.syn_data_queries += 1
            if log is not None:
                log.record(
                    client=client,
                    port=self.port,
                    qname=reply.qname,
                    qtype=reply.qtype,
                    rcode=rcode,
                    transport="tcp",
                    syn_data=from_syn,
                    latency_ns=self._clock() - now,
                )
        return b"".join(out)

    def _keepalive(self, query: bytes, wire: bytes, rcode: int, now: int) -> tuple[bytes, int]:
        """RFC 7828: advertise our TIMEOUT when asked; FORMERR for a non-empty option."""
        request = keepalive_request(query)
        if request is _EMPTY:
            return add_keepalive(wire, self.conn.keepalive(now)), rcode
        if request is KeepaliveRequest.MALFORMED and rcode != dns.rcode.FORMERR:
            return _formerr(query, wire), dns.rcode.FORMERR
        return wire, rcode

    def handle_timer(self, now: int) -> bool:
        """Applies the connection's deadlines at ``now``, counting an idle or lifetime close
        when it is decided (a lifetime reached mid-transfer closes only after it).

        Returns:
            True when the driver should close now; otherwise re-arm the timer (and stop
            reading if ``conn.closing``).
        """
        conn = self.conn
        was_closing = conn.closing
        due = conn.handle_timer(now) is not None
        if conn.closing and not was_closing:
            limit = _TIMER_LIMITS.get(conn.close_reason)
            if limit is not None:
                self.stats.limits[limit] += 1
        return due or self.finished

    def receive_eof(self, now: int) -> None:
        """Notes the client's end of stream (counted as a protocol error inside a frame),
        and forgets unsent transfer messages: nothing is written after the client closed."""
        if self.conn.receive_eof():
            self.stats.protocol_errors += 1
        self.drop_transfers(now)

    def next_transfer_chunk(self, now: int, budget: int = 65536) -> bytes:
        """Takes queued transfer messages worth about ``budget`` bytes, for one write.

        Marks the response done when the queue empties (the idle timer restarts).
        """
        chunks: list[bytes] = []
        size = 0
        transfers = self.transfers
        while transfers and size < budget:
            chunk = transfers.popleft()
            chunks.append(chunk)
            size += len(chunk)
        if not transfers and chunks:
            self.conn.response_done(now)
        return b"".join(chunks)

    def drop_transfers(self, now: int) -> None:
        """Forgets unsent transfer messages (the client went away)."""
        if self.transfers:
            self.transfers.clear()
            self.conn.response_done(now)

    @property
    def finished(self) -> bool:
        """Closing, with nothing left to write: the driver should close now."""
        return self.conn.closing and not self.transfers
