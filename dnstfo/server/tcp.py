"""DNS over TCP on the server's own epoll: the hot path, beside the asyncio loop.

A fresh Fast Open connection carries one query and lives for one answer, so what a
connection costs to set up is what a query costs. asyncio's transports spend more there
than the DNS work does (a transport, a protocol, a selector key and handles per
connection, and syscalls for peer name, socket name, TCP_NODELAY and non-blocking mode).
This driver takes the shortest path the kernel allows:

    accept -> TCP_INFO options byte -> recv (the SYN's data is already queued) -> answer
    -> send -> register for reading ... client's FIN reads as EOF -> close

Its epoll descriptor is watched by the asyncio loop (``add_reader``), so UDP, metrics,
signals and shutdown stay on asyncio. Everything DNS lives in
:class:`~dnstfo.server.session.TcpSession`. Per connection:

- accept: admission against the total and per-client limits (RFC 9210 §4.2; over the
  limit the connection is closed at once), then TCP_INFO: did the SYN carry data
  (SYN_DATA), was the connection accepted through Fast Open (TFO_CHILD)? Accepted sockets
  inherit TCP_NODELAY from the listener. The socket stays in blocking mode; every recv
  and send passes MSG_DONTWAIT, which saves a syscall per connection.
- read: the session answers the batch; all answers go out in one send.
- flow control: while a send is incomplete the connection is not read, only written as it
  drains (a client that does not read cannot make us buffer without bound); zone
  transfer messages are written as the socket drains.
- deadlines: idle and lifetime deadlines sit in one heap with one loop timer, which
  re-arms no sooner than ``TIMER_GRAIN_NS`` after it fires. An entry is pushed only when
  a connection's deadline moves earlier than its queued one; later deadlines are found
  when the entry fires.
- close: on EOF, an error, a limit or shutdown; after the client closed, nothing more is
  written (queued transfer messages are dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import heapq
import logging
import select
import socket
import time
from collections.abc import Callable

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
_RECV_FLAGS = socket.MSG_DONTWAIT
_SEND_FLAGS = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL
_IN = select.EPOLLIN
_OUT = select.EPOLLOUT

RECV_SIZE = 65536
"""Bytes read per readiness event (pipelined queries beyond it are read on the next)."""
ACCEPT_BATCH = 64
"""Connections accepted per wake-up, so a flood of SYNs cannot starve open connections."""
TIMER_GRAIN_NS = 10_000_000
"""The deadline timer fires at most this often; deadlines are kept to within it."""
ACCEPT_RETRY_S = 0.5
"""Pause before accepting again when the process is out of descriptors or memory."""
_ACCEPT_RETRY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class _Connection:
    """One accepted connection: its socket, its session and what is left to send."""

    __slots__ = ("client", "events", "fd", "pending", "session", "sock", "timer_at")

    def __init__(self, sock: socket.socket, client: tuple[str, int], session: TcpSession):
        self.sock: socket.socket | None = sock
        """None once closed."""
        self.fd = sock.fileno()
        self.client = client
        self.session = session
        self.pending: memoryview | None = None
        """Bytes a send could not take yet (reading stops until they are written)."""
        self.events = 0
        """The epoll events registered (0: not registered yet)."""
        self.timer_at: int | None = None
        """The deadline of this connection's live heap entry."""


class TcpServer:
    """Serves DNS over TCP on listening sockets (call :meth:`start` inside the loop).

    Args:
        responder: the answer engine.
        limits: connection limits.
        stats: counters to add to.
        query_log: per-query lines.
    """

    def __init__(
        self, responder: Responder, limits: Limits, stats: ServerStats, query_log: QueryLogger
    ) -> None:
        self.responder = responder
        self.limits = limits
        self.stats = stats
        self.query_log = query_log
        self.per_client: dict[str, int] = {}
        """Open connections by client address."""
        self._epoll = select.epoll()
        self._listeners: dict[int, socket.socket] = {}
        self._conns: dict[int, _Connection] = {}
        self._heap: list[tuple[int, int, _Connection]] = []
        self._seq = 0
        """Tie-breaker for heap entries with the same deadline."""
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = asyncio.Event()
        """Set whenever the last connection closes (for shutdown)."""

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._conns)

    def start(self, listeners: list[socket.socket]) -> None:
        """Accepts connections on ``listeners`` (already listening) from now on."""
        loop = self._loop = asyncio.get_running_loop()
        for sock in listeners:
            sock.setblocking(False)
            self._listeners[sock.fileno()] = sock
            self._epoll.register(sock.fileno(), _IN)
        loop.add_reader(self._epoll.fileno(), self._on_ready)

    async def stop(self, grace: float) -> None:
        """Stops accepting; lets connections finish their answers for ``grace`` seconds,
        then closes the rest. The listening sockets stay open (their owner closes them)."""
        if self._epoll.closed:
            return
        for fd in list(self._listeners):
            self._stop_accepting(fd)
        self._listeners.clear()
        conns = list(self._conns.values())
        if conns:
            self._closed.clear()
            for conn in conns:
                conn.session.conn.close(CloseReason.SHUTDOWN)
                self._settle(conn)
            if self._conns:
                try:
                    await asyncio.wait_for(self._closed.wait(), grace)
                except TimeoutError:
                    for conn in list(self._conns.values()):
                        self._close(conn)
        if self._loop is not None:
            self._loop.remove_reader(self._epoll.fileno())
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._epoll.close()

    # ---- events --------------------------------------------------------------------------

    def _on_ready(self) -> None:
        conns, listeners = self._conns, self._listeners
        for fd, _events in self._epoll.poll(0):
            conn = conns.get(fd)
            if conn is not None:
                self._step(conn, self._read if conn.pending is None else self._flush)
            elif fd in listeners:
                self._accept(listeners[fd])

    def _step(self, conn: _Connection, step: Callable[[_Connection], None]) -> None:
        """Runs one step of a connection; a bug costs that connection, never the server."""
        try:
            step(conn)
        except Exception:
            log.exception("TCP connection from %s#%s failed; closing it", *conn.client)
            self._close(conn)

    def _accept(self, listener: socket.socket) -> None:
        stats, limits, per_client = self.stats, self.limits, self.per_client
        family = listener.family  # once per wake-up, not per connection
        # What socket.accept calls, without its two enum conversions per connection.
        accept = listener._accept  # type: ignore[attr-defined]
        for _ in range(ACCEPT_BATCH):
            try:
                fd, peer = accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _ACCEPT_RETRY_ERRNOS:
                    log.error("cannot accept (%s); pausing for %s s", exc, ACCEPT_RETRY_S)
                    self._pause_accepting(listener)
                    return
                continue  # the client gave up before we accepted (ECONNABORTED and kin)
            sock = socket.socket(family, socket.SOCK_STREAM, 0, fd)
            client = peer[0]
            address = (client, peer[1])  # an IPv6 peer also has flow info and scope
            limit = None
            if len(self._conns) >= limits.max_connections:
                limit = Limit.TOTAL_CONNECTIONS
            elif per_client.get(client, 0) >= limits.max_per_client:
                limit = Limit.PER_CLIENT
            if limit is not None:
                stats.limits[limit] += 1
                _debug(address, "refused: %s limit", limit.value)
                sock.close()
                continue
            now = _now()
            stats.tcp_connections += 1
            try:
                options = tcpi_options(sock)
            except NetworkError as exc:
                options = 0
                _debug(address, "no TCP_INFO: %s", exc)
            if options & _TFO:
                stats.tfo_connections += 1
            session = TcpSession(
                self.responder,
                limits.connection,
                now,
                address,
                bool(options & _SYN_DATA),
                stats,
                self.query_log,
            )
            conn = _Connection(sock, address, session)
            self._conns[fd] = conn
            per_client[client] = per_client.get(client, 0) + 1
            self._step(conn, self._read)  # Fast Open: the SYN's query is already here
            if conn.sock is not None and conn.timer_at is None:
                self._arm(conn)

    def _read(self, conn: _Connection) -> None:
        sock = conn.sock
        assert sock is not None
        try:
            data = sock.recv(RECV_SIZE, _RECV_FLAGS)
        except (BlockingIOError, InterruptedError):
            self._watch(conn, _IN)
            return
        except OSError as exc:  # reset by the client
            _debug(conn.client, "read failed: %s", exc)
            self._close(conn)
            return
        session = conn.session
        now = _now()
        if not data:
            session.receive_eof(now)
            self._close(conn)  # nothing is written after the client closed
            return
        out = session.receive(data, now)
        if out:
            self._send(conn, out)
        self._settle(conn)
        if conn.sock is not None and (out or session.conn.closing):
            self._arm(conn)

    def _flush(self, conn: _Connection) -> None:
        pending = conn.pending
        assert pending is not None
        conn.pending = None
        self._send(conn, pending)
        self._settle(conn)

    def _send(self, conn: _Connection, data: bytes | memoryview) -> None:
        """Sends ``data``, keeping what the socket does not take (call with none pending)."""
        sock = conn.sock
        if sock is None:
            return
        try:
            sent = sock.send(data, _SEND_FLAGS)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:  # the client is gone
            _debug(conn.client, "write failed: %s", exc)
            self._close(conn)
            return
        if sent < len(data):
            conn.pending = memoryview(data)[sent:]  # a view: no copy of the rest per send

    def _settle(self, conn: _Connection) -> None:
        """After a read or a write: writes transfer messages the socket can take, closes a
        finished connection, and sets what to wait for (write while anything is pending,
        else read)."""
        session = conn.session
        if session.transfers and conn.pending is None:
            now = _now()
            while session.transfers and conn.pending is None and conn.sock is not None:
                self._send(conn, session.next_transfer_chunk(now))
            if not session.transfers:
                self._arm(conn)  # the response is done: the idle timer restarts
        if conn.sock is None:
            return
        if conn.pending is not None:
            self._watch(conn, _OUT)
        elif session.finished:
            self._close(conn)
        else:  # (a closing session has a transfer left, hence pending bytes)
            self._watch(conn, _IN)

    def _watch(self, conn: _Connection, events: int) -> None:
        """Waits for ``events`` (EPOLLIN or EPOLLOUT) on the connection from now on."""
        if events == conn.events:
            return
        if conn.events:
            self._epoll.modify(conn.fd, events)
        else:
            self._epoll.register(conn.fd, events)
        conn.events = events

    def _close(self, conn: _Connection) -> None:
        sock = conn.sock
        if sock is None:
            return
        conn.sock = None
        conn.pending = None
        del self._conns[conn.fd]
        sock.close()  # the epoll set forgets the descriptor with it
        session = conn.session
        session.drop_transfers(_now())
        reason = session.conn.close_reason
        _debug(conn.client, "closed: %s", reason.value if reason else "-")
        client = conn.client[0]
        left = self.per_client.get(client, 1) - 1
        if left:
            self.per_client[client] = left
        else:
            del self.per_client[client]
        if not self._conns:
            self._closed.set()

    # ---- deadlines -----------------------------------------------------------------------

    def _arm(self, conn: _Connection) -> None:
        """Queues the connection's deadline unless an earlier entry will fire first."""
        deadline = conn.session.conn.deadline()
        if deadline is None or (conn.timer_at is not None and conn.timer_at <= deadline):
            return
        conn.timer_at = deadline
        heap = self._heap
        self._seq += 1
        heapq.heappush(heap, (deadline, self._seq, conn))
        if len(heap) > 2 * len(self._conns) + 1024:
            self._compact()
        self._schedule()

    def _compact(self) -> None:
        """Drops the entries of closed connections and superseded deadlines."""
        self._heap = [e for e in self._heap if e[2].sock is not None and e[2].timer_at == e[0]]
        heapq.heapify(self._heap)

    def _schedule(self) -> None:
        """Arms the loop timer for the earliest entry (no earlier than the timer grain)."""
        if not self._heap or self._loop is None:
            return
        at = self._heap[0][0]
        if self._timer is not None:
            if self._timer_at <= at:
                return  # fires first, and reschedules then
            self._timer.cancel()
        self._timer_at = at
        # The loop's clock is time.monotonic, the same clock as monotonic_ns.
        self._timer = self._loop.call_at(at / 1e9, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = _now()
        heap = self._heap
        due: list[_Connection] = []
        while heap and heap[0][0] <= now:
            deadline, _, conn = heapq.heappop(heap)
            if conn.sock is not None and conn.timer_at == deadline:
                conn.timer_at = None
                due.append(conn)
        for conn in due:
            self._step(conn, self._expire)
        if self._timer is not None:  # armed by a re-queued connection above
            self._timer.cancel()
            self._timer = None
        heap = self._heap  # re-queuing may have compacted it into a new list
        if heap:
            self._timer_at = max(heap[0][0], now + TIMER_GRAIN_NS)
            assert self._loop is not None
            self._timer = self._loop.call_at(self._timer_at / 1e9, self._on_timer)

    def _expire(self, conn: _Connection) -> None:
        session = conn.session
        due = session.handle_timer(_now())
        # An idle close drops what the client has not read for the whole idle timeout;
        # any other close first writes what is pending.
        if due and (conn.pending is None or session.conn.close_reason is CloseReason.IDLE):
            self._close(conn)
            return
        self._settle(conn)  # closing (lifetime) mid-transfer: write the rest, read no more
        if conn.sock is not None:
            self._arm(conn)

    # ---- accepting -----------------------------------------------------------------------

    def _stop_accepting(self, fd: int) -> None:
        with contextlib.suppress(OSError, ValueError):  # paused (unregistered) already
            self._epoll.unregister(fd)

    def _pause_accepting(self, listener: socket.socket) -> None:
        fd = listener.fileno()
        self._stop_accepting(fd)
        assert self._loop is not None

        def resume() -> None:
            if self._listeners.get(fd) is listener:
                self._epoll.register(fd, _IN)

        self._loop.call_later(ACCEPT_RETRY_S, resume)


def _debug(peer: tuple[str, int], msg: str, *args: object) -> None:
    """Logs at DEBUG with the client's address in front (nothing is built when off)."""
    if log.isEnabledFor(logging.DEBUG):
        log.debug("[%s#%s] " + msg, peer[0], peer[1], *args)
