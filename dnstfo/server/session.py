"""One TCP client session: bytes and time in; bytes to send, a close and a deadline out.

Theory of operation. :class:`TcpSession` glues the connection policy
(:class:`~dnstfo.wire.connection.ServerConnection`), the answer engine
(:class:`~dnstfo.answer.responder.Responder`) and the edns-tcp-keepalive option together,
in the shape of websockets' protocol objects and aioquic's connection: it has no socket
and no clock, and every entry point takes ``now`` (monotonic ns).

Inputs: :meth:`~TcpSession.receive_data`, :meth:`~TcpSession.receive_eof`,
:meth:`~TcpSession.handle_timer` (at :meth:`~TcpSession.get_timer`),
:meth:`~TcpSession.data_sent` (how many bytes the socket took), :meth:`~TcpSession.deliver`
(an answer that was not ready when its query was read) and :meth:`~TcpSession.close`.
After *every* input the driver does the same thing, in one place: write
:meth:`~TcpSession.data_to_send` and report what the socket took, close the socket if
:meth:`~TcpSession.close_expected` (with a reset if :meth:`~TcpSession.reset_expected`),
send FIN if :meth:`~TcpSession.eof_to_send`, wait for reading if
:meth:`~TcpSession.wants_read` and for writing if :meth:`~TcpSession.wants_write`, queue
the session for :meth:`~TcpSession.produce` if it :meth:`~TcpSession.wants_produce`, and
re-arm its timer at :meth:`~TcpSession.get_timer`.

Output is produced lazily. Whole queries wait in a backlog; answers are made from it only
while less than ``OUTPUT_HIGH`` bytes wait for the socket, at most ``PRODUCE_BUDGET``
bytes per input. A zone transfer's messages (about 1.5 ms of rendering each for 16 kB
here) are made one at a time when the driver calls :meth:`~TcpSession.produce`, after all
output was written, so the driver shares that work out between wake-ups and one
connection's big work is interleaved with every other connection's. The driver reads no
more while the backlog is not empty or the output is above the mark. What one connection
holds in user space is therefore bounded by a constant (``MAX_BUFFERED``), whatever the client
sends and however slowly it reads. Answers of one batch go out in one write (RFC 7766 §8;
one write per read keeps pipelined answers from waiting behind the client's delayed ACK),
in the order of the queries, each with its query's ID (RFC 7766 §6.2.1.1); answers given
later through :meth:`~TcpSession.deliver` go out as they come, in any order.

Only the first batch of a connection whose SYN carried data is marked ``from_syn_data``:
the responder then refuses anything but QUERY (RFC 7413 §6, SYN data may be replayed).

Closing: the idle timeout, a write stall, eviction, the client's EOF and a failure close
at once (nothing is written after the client closed). The query limit, the lifetime, a
bad frame and shutdown stop reading, finish every answer owed to a query already read,
send FIN and close when the client closes its side or ``drain_ns`` later; queries read
after that are counted as dropped, never silently lost.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from time import monotonic_ns
from typing import Protocol

import dns.message
import dns.rcode

from dnstfo.answer.responder import Reply, Responder, Transport
from dnstfo.server.querylog import QueryLogger
from dnstfo.server.stats import Limit, ServerStats
from dnstfo.wire.connection import GRACEFUL, CloseReason, ConnectionPolicy, ServerConnection
from dnstfo.wire.framing import MAX_MESSAGE, frame
from dnstfo.wire.keepalive import KeepaliveRequest, add_keepalive, keepalive_request

log = logging.getLogger(__name__)

OUTPUT_HIGH = 256 * 1024
"""Answers are made only while less output than this waits for the socket; above it the
connection is not read either."""
PRODUCE_BUDGET = 64 * 1024
"""Output made per input at most, so one connection's big work yields to the others."""
MAX_DEFERRED = 64
"""Answers owed later (forwarded queries) per connection; reading stops at this many."""
RECV_SIZE = 65536
"""Bytes the driver reads at once: the backlog holds the queries of at most one read."""
MAX_BUFFERED = OUTPUT_HIGH + PRODUCE_BUDGET + 2 * (MAX_MESSAGE + 2) + RECV_SIZE
"""Bytes one connection holds in user space at most (output waiting, one answer over the
mark, a partly received frame and one read of queries), besides Python's per-object
overhead on the backlog: about 0.5 MiB."""

_TCP = Transport.TCP
_EMPTY = KeepaliveRequest.EMPTY
_AXFR = 252
_COUNTED: dict[CloseReason, Limit] = {
    CloseReason.IDLE: Limit.IDLE,
    CloseReason.LIFETIME: Limit.LIFETIME,
    CloseReason.QUERY_LIMIT: Limit.QUERIES,
    CloseReason.WRITE_STALL: Limit.WRITE_STALL,
    CloseReason.EVICTED: Limit.EVICTED,
}


class Deferrer(Protocol):
    """Takes a query whose answer comes later (a forwarder)."""

    def __call__(self, session: TcpSession, slot: int, query: bytes, reply: Reply) -> bool:
        """Offers ``query`` (whose local ``reply`` is forwardable); True: taken, and the
        taker must call ``session.deliver(slot, ...)`` exactly once; False: ``reply`` is
        sent now."""
        ...


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
        policy: idle timeout, lifetime, query limit, write-stall and drain times.
        now: when the connection was accepted (monotonic ns).
        client: the client's address and port.
        syn_data: the kernel says the SYN carried data (TCP_INFO SYN_DATA).
        stats: counters to add to.
        query_log: per-query log lines (skipped entirely when off).
        clock: monotonic ns, read only to log each query's latency.
        defer: takes forwardable queries to answer later (None: answer all now).
        wake: called after :meth:`deliver` (the driver then services this session, as
            after any input); the driver may also set it later.
        local: our address and port on this connection, for the query log (None: not
            known).
    """

    __slots__ = (
        "_backlog",
        "_clock",
        "_defer",
        "_eof_sent",
        "_from_syn",
        "_hard",
        "_next_slot",
        "_off",
        "_out",
        "_slots",
        "_transfers",
        "client",
        "conn",
        "local",
        "port",
        "query_log",
        "responder",
        "stats",
        "wake",
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
        defer: Deferrer | None = None,
        wake: Callable[[], None] | None = None,
        local: tuple[str, int] | None = None,
    ) -> None:
        self._clock = clock
        self.responder = responder
        self.conn = ServerConnection(policy, now)
        self.client, self.port = client[0], client[1]
        self.stats = stats
        self.query_log = query_log
        self.wake = wake
        self.local = local
        self._defer = defer
        self._from_syn = syn_data
        """The next batch is the SYN's: only the first, when the SYN carried data."""
        self._backlog: deque[tuple[bytes, int, bool]] = deque()
        """Queries read and not answered yet: (message, time read, from SYN data)."""
        self._transfers: deque[Iterator[bytes]] = deque()
        """Zone transfers in progress: their messages not yet made, in order."""
        self._slots: dict[int, tuple[bytes, int, bool]] = {}
        """Answers owed later, by slot: (query, time read, from SYN data)."""
        self._next_slot = 0
        self._out = b""
        self._off = 0
        """Bytes of ``_out`` the socket took already."""
        self._hard = False
        """Closed: the driver closes the socket, nothing more is written."""
        self._eof_sent = False

    # ---- inputs --------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: int) -> None:
        """Feeds bytes as received at ``now``; answers are made up to the output bound."""
        conn = self.conn
        if conn.closing:
            if not self._hard:
                self.stats.dropped += conn.discard(data)
            return
        messages = conn.receive_data(data, now)
        if conn.closing:
            reason = conn.close_reason
            if reason is CloseReason.PROTOCOL_ERROR:
                self.stats.protocol_errors += 1
            else:
                self._count(reason)
        if not messages:
            return
        from_syn = self._from_syn
        self._from_syn = False
        backlog = self._backlog
        if backlog:  # (the driver reads only once the backlog is empty)
            backlog.extend([(m, now, from_syn) for m in messages])
            self._produce(now)
            return
        # The usual case, without the backlog: answer the read's queries within the bounds.
        room = min(PRODUCE_BUDGET, OUTPUT_HIGH - (len(self._out) - self._off))
        answer = self._answer
        chunks: list[bytes] = []
        made = 0
        for index, message in enumerate(messages):
            if made >= room:
                backlog.extend([(m, now, from_syn) for m in messages[index:]])
                break
            wire = answer(message, now, from_syn)
            if wire:
                chunks.append(wire)
                made += len(wire)
        if chunks:
            self._append(chunks[0] if len(chunks) == 1 else b"".join(chunks), now)

    def receive_eof(self, now: int) -> None:
        """Notes the client's end of stream: the session closes at once (counted as a
        protocol error inside a frame); unsent output and owed answers are dropped."""
        if self._hard:
            return
        if not self.conn.closing and self.conn.receive_eof():
            self.stats.protocol_errors += 1
        self._close_now()

    def handle_timer(self, now: int) -> None:
        """Applies the deadlines at ``now`` (call at :meth:`get_timer` or later)."""
        if self._hard:
            return
        conn = self.conn
        was_closing = conn.closing
        reason = conn.handle_timer(now)
        if reason is not None:
            if reason is not CloseReason.PROTOCOL_ERROR and (
                not was_closing or reason is CloseReason.WRITE_STALL
            ):
                self._count(reason)
            self._close_now()
        elif conn.closing and not was_closing:
            self._count(conn.close_reason)

    def data_sent(self, sent: int, now: int) -> None:
        """Notes that the socket took ``sent`` bytes of :meth:`data_to_send` (0: none),
        and makes more output if it fell below the bound."""
        if self._hard:
            return
        conn = self.conn
        if sent:
            self._off += sent
            if self._off >= len(self._out):
                self._out, self._off = b"", 0
                conn.output_progress(now, done=True)
            else:
                conn.output_progress(now, done=False)
        if self._backlog:
            self._produce(now)

    def produce(self, now: int) -> None:
        """Makes the next message of the zone transfer in progress (when
        :meth:`wants_produce`): big work is done only when the driver asks, one message
        at a time, so the driver decides how much of it runs per wake-up."""
        while self._transfers and not self._hard:
            message = self._transfer_message(now)
            if message:
                self._append(message, now)
                return

    def eof_sent(self, now: int) -> None:
        """Notes that the driver sent FIN (after :meth:`eof_to_send`)."""
        self._eof_sent = True
        self.conn.eof_sent(now)

    def deliver(
        self,
        slot: int,
        wire: bytes | None,
        now: int,
        qname: str | None = None,
        qtype: int | None = None,
        note: str | None = None,
        wake: bool = True,
    ) -> None:
        """Gives the answer owed for ``slot`` (a :class:`Deferrer` took its query).

        Args:
            slot: the slot the deferrer was given.
            wire: the response message (its ID is the query's), or None: no answer (the
                query is counted as dropped).
            now: the time.
            qname: the question name, for the query log.
            qtype: the question type, for the query log.
            note: how the answer was obtained, appended to the query log line.
            wake: call ``wake`` now; False: the caller calls it once after a batch of
                answers (one write for all of them).

        Nothing is written if the connection closed meanwhile (RFC 7766 §6.2.4). Calls
        ``wake`` so that the driver sends it.
        """
        entry = self._slots.pop(slot, None)
        if entry is None or self._hard:
            return
        self.conn.response_done(now)
        query, read_at, from_syn = entry
        if wire is None:
            self.stats.dropped += 1
        else:
            rcode = wire[3] & 0xF
            if query[11] or query[10]:
                wire, rcode = self._keepalive(query, wire, rcode, now)
            self._append(frame(wire), now)
            self.stats.queries["tcp", rcode] += 1
            if from_syn:
                self.stats.syn_data_queries += 1
            if self.query_log.enabled:
                self._log(qname, qtype, rcode, from_syn, read_at, note)
        if wake and self.wake is not None:
            self.wake()

    def close(self, reason: CloseReason, now: int) -> None:
        """Closes for ``reason``: shutdown finishes the answers owed (an idle connection
        closes at once); eviction and failures close at once."""
        if self._hard:
            return
        conn = self.conn
        idle = conn.idle and not self._backlog and not self._slots
        conn.close(reason)
        if reason in GRACEFUL and not idle:
            return
        self._count(reason)
        self._close_now()

    def set_idle_timeout(self, ns: int) -> None:
        """Uses ``ns`` as the idle timeout from now on (the driver shortens it under load,
        RFC 7766 §6.2.3); the next :meth:`get_timer` reflects it."""
        self.conn.idle_timeout_ns = ns

    def abort(self) -> None:
        """Forgets everything at once: the driver closed the socket on its own (a failure,
        or shutdown's grace ran out). Owed answers are counted as dropped."""
        if not self._hard:
            self.conn.close(CloseReason.SERVER_ERROR)
            self._close_now()

    # ---- outputs -------------------------------------------------------------------------

    def data_to_send(self) -> bytes | memoryview:
        """The bytes to write now (empty when none); report what was taken with
        :meth:`data_sent`."""
        return memoryview(self._out)[self._off :] if self._off else self._out

    def wants_write(self) -> bool:
        """Output is waiting for the socket."""
        return bool(self._out) and not self._hard

    def wants_produce(self) -> bool:
        """A transfer has more messages and all output was written: call :meth:`produce`
        when there is time."""
        return bool(self._transfers) and not self._out and not self._hard

    def wants_read(self) -> bool:
        """The driver should read: open and under every bound, or draining after FIN."""
        if self._hard:
            return False
        if self.conn.closing:
            return self._eof_sent
        return (
            not self._backlog
            and len(self._out) - self._off < OUTPUT_HIGH
            and len(self._slots) < MAX_DEFERRED
        )

    def eof_to_send(self) -> bool:
        """Closing gracefully with every answer written: send FIN now."""
        return (
            self.conn.closing
            and not self._hard
            and not self._eof_sent
            and not self._out
            and not self._backlog
            and not self._transfers
            and not self._slots
        )

    def close_expected(self) -> bool:
        """The driver should close the socket now (nothing more is written)."""
        return self._hard

    def reset_expected(self) -> bool:
        """Close with a reset, dropping what the kernel still holds to send: the client
        stopped reading (a plain close would leave that data, and the FIN behind it, in
        the kernel until the client's window opens, which it may never do)."""
        return self._hard and self.conn.close_reason is CloseReason.WRITE_STALL

    def get_timer(self) -> int | None:
        """When to call :meth:`handle_timer` next (absolute monotonic ns), or None."""
        return None if self._hard else self.conn.deadline()

    @property
    def close_reason(self) -> CloseReason | None:
        """Why the session is closing or closed (None while open)."""
        return self.conn.close_reason

    @property
    def buffered(self) -> int:
        """Bytes held for this connection in user space: output and backlog."""
        return len(self._out) - self._off + sum(len(q) for q, _, _ in self._backlog)

    @property
    def idle(self) -> bool:
        """Nothing owed and nothing waiting: a candidate for eviction."""
        return self.conn.idle and not self._backlog and not self._slots and not self._hard

    # ---- making output -------------------------------------------------------------------

    def _produce(self, now: int) -> None:
        """Makes answers from the backlog, within the bounds."""
        backlog = self._backlog
        room = min(PRODUCE_BUDGET, OUTPUT_HIGH - (len(self._out) - self._off))
        chunks: list[bytes] = []
        made = 0
        while made < room and backlog:
            wire = self._answer(*backlog.popleft())
            if wire:
                chunks.append(wire)
                made += len(wire)
        if chunks:
            self._append(chunks[0] if len(chunks) == 1 else b"".join(chunks), now)

    def _append(self, data: bytes, now: int) -> None:
        if self._out:
            self._out = self._out[self._off :] + data
            self._off = 0
        else:
            self._out = data
            self.conn.output_waiting(now)

    def _answer(self, message: bytes, now: int, from_syn: bool) -> bytes | None:
        """The framed answer to one query (None: dropped, or owed later)."""
        stats = self.stats
        reply = self.responder.respond(
            message, transport=_TCP, from_syn_data=from_syn, client=self.client
        )
        wire = reply.wire
        if wire is None:
            stats.dropped += 1
            return None
        if reply.forwardable and self._defer is not None:
            slot = self._next_slot
            self._next_slot += 1
            self._slots[slot] = (message, now, from_syn)
            self.conn.response_started()
            if self._defer(self, slot, message, reply):
                return None
            del self._slots[slot]
            self.conn.response_done(now)
        rcode: int | None = reply.rcode
        assert rcode is not None  # a reply with a message has an RCODE
        if message[11] or message[10]:  # ARCOUNT > 0: maybe an OPT with keepalive
            wire, rcode = self._keepalive(message, wire, rcode, now)
        if reply.more:
            if reply.qtype == _AXFR and rcode == 0:
                stats.axfr += 1
            self._transfers.append(iter(reply.more))
            self.conn.response_started()
        stats.queries["tcp", rcode] += 1
        if from_syn:
            stats.syn_data_queries += 1
        if self.query_log.enabled:
            self._log(reply.qname, reply.qtype, rcode, from_syn, now, reply.note)
        return frame(wire)

    def _transfer_message(self, now: int) -> bytes | None:
        """The next framed message of the current transfer (None when it just ended)."""
        transfers = self._transfers
        try:
            message = next(transfers[0], None)
        except Exception:  # a bug or an unrenderable record: the stream cannot go on
            log.exception("zone transfer to %s#%s failed; closing", self.client, self.port)
            self.conn.close(CloseReason.SERVER_ERROR)
            self._close_now()
            return None
        if message is None:
            transfers.popleft()
            self.conn.response_done(now)
            return None
        return frame(message)

    def _keepalive(self, query: bytes, wire: bytes, rcode: int, now: int) -> tuple[bytes, int]:
        """RFC 7828: advertise our TIMEOUT when asked; FORMERR for a non-empty option."""
        request = keepalive_request(query)
        if request is _EMPTY:
            return add_keepalive(wire, self.conn.keepalive(now)), rcode
        if request is KeepaliveRequest.MALFORMED and rcode != dns.rcode.FORMERR:
            return _formerr(query, wire), dns.rcode.FORMERR
        return wire, rcode

    def _log(
        self,
        qname: str | None,
        qtype: int | None,
        rcode: int,
        from_syn: bool,
        read_at: int,
        note: str | None = None,
    ) -> None:
        self.query_log.record(
            client=self.client,
            port=self.port,
            qname=qname,
            qtype=qtype,
            rcode=rcode,
            transport="tcp",
            syn_data=from_syn,
            latency_ns=self._clock() - read_at,
            local=self.local[0] if self.local else None,
            local_port=self.local[1] if self.local else None,
            note=note,
        )

    # ---- closing -------------------------------------------------------------------------

    def _count(self, reason: CloseReason | None) -> None:
        limit = _COUNTED.get(reason) if reason is not None else None
        if limit is not None:
            self.stats.limits[limit] += 1

    def _close_now(self) -> None:
        """Closes at once: owed answers are counted as dropped, output is forgotten."""
        self._hard = True
        self.stats.dropped += len(self._backlog) + len(self._slots)
        self._backlog.clear()
        self._slots.clear()
        self._transfers.clear()
        self._out, self._off = b"", 0
