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
:class:`~dnstfo.server.session.TcpSession`, whose contract (bytes, EOF, timer, bytes taken
and deferred answers in, each with ``now``; bytes to send, FIN, close, what to wait for and
the next deadline out) the driver follows in one place, ``_service``, after every input.
The clock is passed in, so tests drive the deadlines without sleeping. Per connection:

- accept: admission against the per-client limit (by address; an IPv6 /64 counts as one
  client) and the total (RFC 9210 §4.2). When every slot is taken, the longest-idle
  connection is closed to make room (RFC 7766 §6.2.3), and from half the slots on, the
  idle timeout shrinks with the slots left. Then TCP_INFO: did the SYN carry data
  (SYN_DATA), was the connection accepted through Fast Open (TFO_CHILD)? Accepted sockets
  inherit TCP_NODELAY from the listener. The socket stays in blocking mode; every recv
  and send passes MSG_DONTWAIT, which saves a syscall per connection.
- read, then service: one send of what the session has (all answers of a read in one
  write); the session makes its output lazily within a bound, and reading waits while it
  is above it. One send per wake-up and connection: a connection with more (a zone
  transfer, a long pipeline) waits for writability again, after the others.
- deadlines: idle, lifetime, write-stall and drain deadlines sit in one heap with one loop
  timer, which re-arms no sooner than ``TIMER_GRAIN_NS`` after it fires. An entry is
  pushed only when a connection's deadline moves earlier than its queued one; later
  deadlines are found when the entry fires.
- close: what the session asks for (see its module); a graceful close sends FIN first and
  reads (and counts) what the client still sends until it closes, so answers in flight
  are not destroyed by a reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import heapq
import logging
import select
import socket
import struct
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence

from dnstfo.answer.responder import Responder
from dnstfo.errors import NetworkError
from dnstfo.kernel.tcpinfo import TcpiOption, tcpi_options
from dnstfo.server.config import Limits
from dnstfo.server.querylog import QueryLogger
from dnstfo.server.session import RECV_SIZE, Deferrer, TcpSession
from dnstfo.server.stats import Limit, ServerStats
from dnstfo.server.tls import TlsServerContext, TlsSession
from dnstfo.wire.connection import CloseReason

log = logging.getLogger(__name__)

_INET = socket.AF_INET
_SYN_DATA = int(TcpiOption.SYN_DATA)
_TFO = int(TcpiOption.SYN_DATA | TcpiOption.TFO_CHILD)
_RECV_FLAGS = socket.MSG_DONTWAIT
_SEND_FLAGS = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL
_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_GONE = select.EPOLLHUP | select.EPOLLERR
_RESET = struct.pack("ii", 1, 0)
"""SO_LINGER on, 0 s: close() sends RST and frees what was queued to send."""

ACCEPT_BATCH = 64
"""Connections accepted per wake-up, so a flood of SYNs cannot starve open connections."""
TIMER_GRAIN_NS = 10_000_000
"""The deadline timer fires at most this often; deadlines are kept to within it."""
ACCEPT_RETRY_S = 0.5
"""Pause before accepting again when the process is out of descriptors or memory."""
PER_CLIENT_LOG_NS = 10_000_000_000
"""At most one warning per this long about connections refused for the per-client limit."""
MIN_IDLE_NS = 1_000_000_000
"""The idle timeout when every slot is taken (RFC 7766 §6.2.3 allows zero; a second
still lets a client that just got its answer send the next query)."""
PRODUCE_SLICE_NS = 2_000_000
"""Time given to making transfer messages before the loop polls again (one message takes
about 1.5 ms for 16 kB here)."""
EVICT_SCAN = 64
"""Least recently active connections looked at for an idle one to evict when full."""
_ACCEPT_RETRY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class _Connection:
    """One accepted connection: its socket and its session."""

    __slots__ = ("client", "events", "fd", "key", "producing", "session", "sock", "timer_at")

    def __init__(
        self,
        sock: socket.socket,
        client: tuple[str, int],
        key: object,
        session: TcpSession | TlsSession,
    ):
        self.sock: socket.socket | None = sock
        """None once closed."""
        self.fd = sock.fileno()
        self.client = client
        self.key = key
        """What the per-client limit counts by (the address; an IPv6 /64)."""
        self.session = session
        self.events = -1
        """The epoll events registered (-1: not registered yet)."""
        self.timer_at: int | None = None
        """The deadline of this connection's live heap entry."""
        self.producing = False
        """Queued for its session's next transfer message."""


def client_key(address: str) -> object:
    """What one client is counted by: an IPv4 address, or an IPv6 address's /64 (one
    host or site usually holds a whole /64, so counting addresses would let it take every
    slot); IPv4-mapped IPv6 counts as IPv4."""
    if ":" not in address:
        return address
    if address.startswith("::ffff:") and "." in address:
        return address[7:]
    try:
        return socket.inet_pton(socket.AF_INET6, address.split("%", 1)[0])[:8]
    except OSError:
        return address


class TcpServer:
    """Serves DNS over TCP on listening sockets (call :meth:`start` inside the loop).

    Args:
        responder: the answer engine.
        limits: connection limits.
        stats: counters to add to.
        query_log: per-query lines.
        clock: monotonic ns (tests may drive the driver with another).
        defer: takes forwardable queries to answer later (see :class:`TcpSession`).
    """

    def __init__(
        self,
        responder: Responder,
        limits: Limits,
        stats: ServerStats,
        query_log: QueryLogger,
        clock: Callable[[], int] = time.monotonic_ns,
        defer: Deferrer | None = None,
    ) -> None:
        self.responder = responder
        self.limits = limits
        self.stats = stats
        self.query_log = query_log
        self.clock = clock
        self.defer = defer
        self.per_client: dict[object, int] = {}
        """Open connections by client (see :func:`client_key`)."""
        self._per_client_logged_ns: int | None = None
        """When a per-client refusal was last logged (one warning per 10 s at most)."""
        self._per_client_unlogged = 0
        """Per-client refusals since that warning."""
        self._epoll = select.epoll()
        self._listeners: dict[int, socket.socket] = {}
        self._tls: dict[int, TlsServerContext] = {}
        """TLS listeners' contexts by descriptor (DNS over TLS, RFC 7858)."""
        self._conns: dict[int, _Connection] = {}
        self._lru: OrderedDict[int, _Connection] = OrderedDict()
        """Connections by last activity, least recent first (eviction candidates)."""
        self._idle_ns = limits.connection.idle_timeout_ns
        """The idle timeout in force (shorter under load)."""
        self._swept_ns = self._idle_ns
        """The idle timeout every connection was last given at once."""
        self._producers: deque[_Connection] = deque()
        """Connections waiting to make their next transfer message, in turn."""
        self._producing: asyncio.Handle | None = None
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

    def sessions(self) -> list[TcpSession | TlsSession]:
        """The sessions of the open connections (for tests and diagnostics)."""
        return [conn.session for conn in self._conns.values()]

    def start(
        self,
        listeners: list[socket.socket],
        tls: Sequence[tuple[socket.socket, TlsServerContext]] = (),
    ) -> None:
        """Accepts connections on ``listeners`` (already listening) from now on, and DNS
        over TLS on the ``tls`` listeners with their contexts."""
        loop = self._loop = asyncio.get_running_loop()
        for sock, context in tls:
            self._tls[sock.fileno()] = context
        for sock in [*listeners, *(sock for sock, _ in tls)]:
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
            now = self.clock()
            for conn in conns:
                conn.session.close(CloseReason.SHUTDOWN, now)
                self._step(conn, self._service)
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
        if self._producing is not None:
            self._producing.cancel()
            self._producing = None
        self._epoll.close()

    # ---- events --------------------------------------------------------------------------

    def _on_ready(self) -> None:
        conns, listeners = self._conns, self._listeners
        for fd, events in self._epoll.poll(0):
            conn = conns.get(fd)
            if conn is not None:
                if events & _IN:
                    self._step(conn, self._read)
                elif events & _GONE:  # reset or hung up while not reading: nothing to do
                    self._close(conn)
                else:
                    self._step(conn, self._service)
            elif fd in listeners:
                self._accept(listeners[fd])

    def _step(self, conn: _Connection, step: Callable[[_Connection], None]) -> None:
        """Runs one step of a connection; a bug costs that connection, never the server."""
        try:
            step(conn)
        except Exception:
            log.exception("TCP connection from %s#%s failed; closing it", *conn.client)
            self._close(conn)

    def _log_per_client(self, client: str) -> None:
        """Warns of a per-client refusal, at most once per 10 s, with the count since."""
        self._per_client_unlogged += 1
        now, last = self.clock(), self._per_client_logged_ns
        if last is not None and now - last < PER_CLIENT_LOG_NS:
            return
        log.warning(
            "refused a TCP connection from %s: it has %d open (--max-per-client); "
            "%d refused for this limit since the last such warning",
            client,
            self.limits.max_per_client,
            self._per_client_unlogged,
        )
        self._per_client_logged_ns, self._per_client_unlogged = now, 0

    def _accept(self, listener: socket.socket) -> None:
        stats, limits, per_client = self.stats, self.limits, self.per_client
        family = listener.family  # once per wake-up, not per connection
        log_queries = self.query_log.enabled
        tls = self._tls.get(listener.fileno())
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
            key = client if family == _INET else client_key(client)
            limit = None
            if per_client.get(key, 0) >= limits.max_per_client:
                limit = Limit.PER_CLIENT
            elif len(self._conns) >= limits.max_connections and not self._evict():
                limit = Limit.TOTAL_CONNECTIONS
            if limit is not None:
                stats.limits[limit] += 1
                _debug(address, "refused: %s limit", limit.value)
                if limit is Limit.PER_CLIENT:
                    self._log_per_client(client)
                sock.close()
                continue
            now = self.clock()
            stats.tcp_connections += 1
            try:
                options = tcpi_options(sock)
            except NetworkError as exc:
                options = 0
                _debug(address, "no TCP_INFO: %s", exc)
            if options & _TFO:
                stats.tfo_connections += 1
            inner = TcpSession(
                self.responder,
                limits.connection,
                now,
                address,
                bool(options & _SYN_DATA),
                stats,
                self.query_log,
                self.clock,
                self.defer,
                local=sock.getsockname()[:2] if log_queries else None,  # one syscall: log only
            )
            session = inner if tls is None else tls.wrap(inner, now)
            conn = _Connection(sock, address, key, session)
            if self.defer is not None:  # answers can come later: deliver() wakes the driver
                session.wake = functools.partial(self._step, conn, self._service)
            self._conns[fd] = conn
            self._lru[fd] = conn
            per_client[key] = per_client.get(key, 0) + 1
            if 2 * len(self._conns) > limits.max_connections:
                self._load_changed()
            self._step(conn, self._read)  # Fast Open: the SYN's query is already here

    def _read(self, conn: _Connection) -> None:
        sock = conn.sock
        assert sock is not None
        session = conn.session
        try:
            data = sock.recv(RECV_SIZE, _RECV_FLAGS)
        except (BlockingIOError, InterruptedError):
            data = None
        except OSError as exc:  # reset by the client
            _debug(conn.client, "read failed: %s", exc)
            self._close(conn)
            return
        now = self.clock()
        if data:
            session.receive_data(data, now)
            self._lru.move_to_end(conn.fd)
        elif data is not None:
            session.receive_eof(now)
        self._service(conn, now)

    def tick(self) -> None:
        """Handles the deadlines due at the clock's time now (what the timer does; tests
        with an injected clock call it after moving the clock)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._on_timer()

    def _service(self, conn: _Connection, now: int | None = None) -> None:
        """After every input, the one place that acts on the session's outputs: writes
        what it has to send (once: big work continues on the next wake-up, after the other
        connections), closes, sends FIN, sets what to wait for and re-arms the timer."""
        sock = conn.sock
        if sock is None:
            return
        session = conn.session
        if now is None:
            now = self.clock()
        data = session.data_to_send()
        if data:
            try:
                sent = sock.send(data, _SEND_FLAGS)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:  # the client is gone
                _debug(conn.client, "write failed: %s", exc)
                self._close(conn)
                return
            session.data_sent(sent, now)
        if session.close_expected():
            self._close(conn)
            return
        if session.eof_to_send():
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            session.eof_sent(now)
        events = (_IN if session.wants_read() else 0) | (_OUT if session.wants_write() else 0)
        if events != conn.events:
            if conn.events < 0:
                self._epoll.register(conn.fd, events)
            else:
                self._epoll.modify(conn.fd, events)
            conn.events = events
        if session.wants_produce() and not conn.producing:
            conn.producing = True
            self._producers.append(conn)
            if self._producing is None and self._loop is not None:
                self._producing = self._loop.call_soon(self._produce)
        session.set_idle_timeout(self._idle_ns)
        self._arm(conn)

    def _produce(self) -> None:
        """Makes transfer messages in turn for ``PRODUCE_SLICE_NS`` at most (each waiting
        connection at most once), then lets the loop poll for other work before going on."""
        self._producing = None
        producers = self._producers
        clock = self.clock
        end = clock() + PRODUCE_SLICE_NS
        for _ in range(len(producers)):
            conn = producers.popleft()
            conn.producing = False
            if conn.sock is None or not conn.session.wants_produce():
                continue
            now = clock()
            conn.session.produce(now)
            self._step(conn, self._service)
            if clock() >= end:
                break
        if producers and self._producing is None and self._loop is not None:
            self._producing = self._loop.call_soon(self._produce)

    def _close(self, conn: _Connection) -> None:
        sock = conn.sock
        if sock is None:
            return
        conn.sock = None
        del self._conns[conn.fd]
        del self._lru[conn.fd]
        session = conn.session
        if session.reset_expected():
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        sock.close()  # the epoll set forgets the descriptor with it
        session.abort()  # (when the driver closes on its own: a failure, or the grace ran out)
        reason = session.close_reason
        _debug(conn.client, "closed: %s", reason.value if reason else "-")
        left = self.per_client.get(conn.key, 1) - 1
        if left:
            self.per_client[conn.key] = left
        else:
            del self.per_client[conn.key]
        if self._idle_ns < self.limits.connection.idle_timeout_ns:
            self._load_changed()
        if not self._conns:
            self._closed.set()

    # ---- load ----------------------------------------------------------------------------

    def _load_changed(self) -> None:
        """Sets the idle timeout for the slots in use; when it has halved since every
        connection last got it, gives it to all of them now (a few sweeps as the server
        fills up), else each gets it when next serviced."""
        idle = self._idle_ns = self._idle_for_load()
        if 2 * idle <= self._swept_ns:
            self._swept_ns = idle
            for conn in list(self._conns.values()):
                conn.session.set_idle_timeout(idle)
                self._arm(conn)
        elif idle > self._swept_ns:
            self._swept_ns = idle

    def _idle_for_load(self) -> int:
        """The idle timeout for the slots in use: the configured one up to half of the
        connection limit, then shrinking linearly to ``MIN_IDLE_NS`` when full (RFC 7766
        §6.2.3: under load a server may close idle connections even at once)."""
        full = self.limits.max_connections
        used = len(self._conns)
        idle = self.limits.connection.idle_timeout_ns
        if 2 * used <= full:
            return idle
        return max(MIN_IDLE_NS, idle * 2 * (full - used) // full)

    def _evict(self) -> bool:
        """Makes room for one connection by closing the longest-idle one (of the
        ``EVICT_SCAN`` least recently active); False when none of them is idle."""
        now = self.clock()
        for _, conn in zip(range(EVICT_SCAN), self._lru.values(), strict=False):
            if conn.session.idle:
                _debug(conn.client, "evicted to admit a new connection")
                conn.session.close(CloseReason.EVICTED, now)
                self._close(conn)
                return True
        return False

    # ---- deadlines -----------------------------------------------------------------------

    def _arm(self, conn: _Connection) -> None:
        """Queues the connection's deadline unless an earlier entry will fire first."""
        deadline = conn.session.get_timer()
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
        self._timer = self._loop.call_later((at - self.clock()) / 1e9, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self.clock()
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
            self._timer = self._loop.call_later((self._timer_at - now) / 1e9, self._on_timer)

    def _expire(self, conn: _Connection) -> None:
        now = self.clock()
        conn.session.handle_timer(now)
        self._service(conn, now)

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
