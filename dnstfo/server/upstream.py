"""Forwarding I/O: upstream connections on the server's asyncio loop (RFC 7766 as a client).

Theory of operation. :class:`Forwarder.forward` takes a query the authority refused only
because its name is outside our zones and calls ``done`` exactly once, later (never
inside the call), with the response to send: the upstream's answer with the client's ID
and question restored, a cached copy, or SERVFAIL when every upstream failed or the
client's budget ran out.

- Connections (TCP mode). Each upstream has at most ``connections`` sockets, kept open
  while they have queries in flight and for the upstream's edns-tcp-keepalive TIMEOUT
  (else ``idle_timeout``) after. Sockets are made with TCP_FASTOPEN_CONNECT: ``connect``
  returns at once and the first write goes out in the SYN when the kernel has a cookie
  (RFC 7413), so a fresh connection costs one upstream round trip and a reused one none.
  Queries are pipelined: each gets an ID unique on its connection, and answers are matched
  by ID and question in any order (RFC 7766 §7). A new connection opens when every open
  one holds ``pipeline`` queries.
- Failures. A connection that closes or resets after it has answered before (the
  upstream's idle close racing our reuse) is reopened and its unanswered queries sent
  again, once. A connection that sends garbage, an unknown ID or a mismatched question,
  or fails before answering, is closed and its queries move on to the next upstream; so
  does a query whose upstream does not answer within ``timeout``. Three failures in a row
  set an upstream aside for ``SET_ASIDE_S``; it is tried last meanwhile, and first again
  after. The client's ``budget`` bounds everything: at its end the answer is SERVFAIL.
- UDP mode sends each query in its own connected datagram socket and retries over TCP to
  the same upstream when the answer has TC set.

Everything runs in loop callbacks (``add_reader``/``add_writer``/``call_later``): no
thread, no task per query.
"""

from __future__ import annotations

import asyncio
import bisect
import errno
import heapq
import logging
import random
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from dnstfo.answer.forward import (
    Address,
    ForwardConfig,
    ForwardTransport,
    ResponseScan,
    add_opt,
    scan_response,
    set_keepalive,
    strip_options,
    strip_options_at,
)
from dnstfo.answer.forward import question_end as _question_end
from dnstfo.errors import DnstfoError
from dnstfo.kernel.sockets import client_socket
from dnstfo.kernel.tcpinfo import TcpiOption, TcpState, tcp_info
from dnstfo.server.forwardcache import ForwardCache, cache_key
from dnstfo.wire.framing import FrameDecoder, frame

log = logging.getLogger(__name__)

SET_ASIDE_S = 10.0
"""Seconds an upstream that failed ``FAILURES_TO_SET_ASIDE`` times in a row is tried last."""
FAILURES_TO_SET_ASIDE = 3
FLUSH_BYTES = 512
"""Queries waiting for one write to an upstream are sent once they fill this many bytes,
so the upstream works on the first of a long pipeline while the rest are read."""
MAX_ABANDONED = 256
"""Queries given up on that one connection may hold (their IDs stay reserved for a late
answer); past it the connection is closed."""
LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
"""Upper bounds of the upstream latency histogram."""
_RECV = 65536
_ONE = b"\x00\x01"
_COMPACT_SLACK = 256
"""Ended attempts' deadlines kept in the heap, beyond twice the queries in flight."""
_SERVFAIL = 2
_NOT_AA = tuple(bytes((b & ~0x04,)) for b in range(256))
"""The third header byte with AA cleared, by its value."""


@dataclass(slots=True)
class UpstreamStats:
    """Counters of one upstream (mutated in place)."""

    queries: int = 0
    """Queries sent (retries included)."""
    answers: Counter[int] = field(default_factory=Counter)
    """Answers by RCODE."""
    timeouts: int = 0
    """Queries that got no answer in time."""
    failures: int = 0
    """Connections that failed, closed early or sent something wrong."""
    connections: int = 0
    """TCP connections opened."""
    syn_data_sent: int = 0
    """Connections whose SYN carried queries (a cookie was cached)."""
    syn_data_acked: int = 0
    """Connections whose SYN data the upstream acknowledged."""
    reused: int = 0
    """Queries sent on a connection that had answered before."""
    latency: Counter[int] = field(default_factory=Counter)
    """Answers by latency bucket (index into ``LATENCY_BUCKETS_MS``; past the end: more)."""
    latency_ns: int = 0
    """The answers' latencies added up."""


class ForwardTrace(NamedTuple):
    """How one forwarded query went, for the query log (a NamedTuple: one per answer)."""

    upstream: str | None
    """The upstream that answered (None: none did, or a cache hit)."""
    fresh: bool = False
    """Sent on a connection opened for it (False: reused, or UDP)."""
    in_syn: bool = False
    """The query went in the connection's SYN."""
    syn_acked: bool = False
    """The upstream acknowledged the SYN's data."""
    upstream_ns: int = 0
    """From sending to the upstream to its answer."""
    cached: bool = False
    """Served from the forwarder's cache."""
    failure: str = ""
    """Why no upstream answered (SERVFAIL): ``malformed``, ``overloaded``, ``budget`` (the
    client's time ran out), ``shutdown``, ``upstreams`` (every one tried failed) or ``error``
    (a bug, logged)."""
    tried: tuple[str, ...] = ()
    """The upstreams tried, in order, when none answered."""
    udp: bool = False
    """The answer came in a datagram (``--forward-transport udp``): no connection."""


Done = Callable[[bytes, ForwardTrace], None]
"""Takes the response (the client's ID) and how it was obtained."""


def servfail(query: bytes, payload: int = 1232) -> bytes:
    """A SERVFAIL response echoing the query's ID, RD and question, with an OPT record
    (our UDP ``payload``) when the query had one."""
    try:
        end = _question_end(query)
        question, qdcount = query[12:end], 1
    except ValueError:
        question, qdcount = b"", 0
    flags = 0x8080 | (query[2] & 0x79) << 8 | (query[3] & 0x10) | _SERVFAIL
    head = query[:2] + flags.to_bytes(2, "big") + qdcount.to_bytes(2, "big") + bytes(6)
    return add_opt(head + question, query, payload)


class _Query:
    """One client query on its way through the upstreams."""

    __slots__ = (
        "attempt_at",
        "conn",
        "deadline",
        "done",
        "finished",
        "key",
        "qend",
        "qid",
        "retried",
        "route",
        "timer",
        "tried",
        "udp",
        "wire",
    )

    def __init__(self, wire: bytes, qend: int, route: list[_Upstream], deadline: float) -> None:
        self.wire = wire
        self.qend = qend
        self.route = route
        """The upstreams still to try, best first."""
        self.deadline = deadline
        """The client's budget ends (loop time)."""
        self.done: Done | None = None
        self.key: bytes | None = None
        self.finished = False
        self.conn: _Connection | None = None
        self.qid = 0
        self.retried = False
        self.timer: int | None = None
        """The token of the armed attempt deadline (None: none armed)."""
        self.tried = 0
        self.attempt_at = 0
        self.udp: socket.socket | None = None


class _Upstream:
    __slots__ = ("address", "aside_until", "conns", "failures", "label", "stats")

    def __init__(self, address: Address) -> None:
        self.address = address
        host, port = address
        self.label = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.conns: list[_Connection] = []
        self.failures = 0
        self.aside_until = 0.0
        self.stats = UpstreamStats()


class _Connection:
    __slots__ = (
        "abandoned",
        "answered",
        "connected",
        "decoder",
        "flushing",
        "idle_timer",
        "in_syn",
        "keepalive_s",
        "out",
        "pending",
        "sock",
        "syn_acked",
        "tfo",
        "upstream",
        "writing",
    )

    def __init__(self, sock: socket.socket, upstream: _Upstream, tfo: bool) -> None:
        self.sock: socket.socket | None = sock
        self.upstream = upstream
        self.tfo = tfo
        self.decoder = FrameDecoder()
        self.out = bytearray()
        self.pending: dict[int, _Query] = {}
        self.abandoned: set[int] = set()
        """IDs of queries given up on (a late answer to one is dropped quietly)."""
        self.connected = False
        self.answered = False
        self.in_syn = False
        self.syn_acked = False
        self.writing = False
        self.flushing = False
        """A write of what ``out`` holds is scheduled."""
        self.keepalive_s: float | None = None
        self.idle_timer: asyncio.TimerHandle | None = None


class Forwarder:
    """Sends queries upstream and hands back answers; create and use on the loop.

    Args:
        config: upstreams, routes, timeouts and the cache size.
        clock: monotonic ns (for latencies and the cache).
    """

    def __init__(self, config: ForwardConfig, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.config = config
        self.clock = clock
        self.cache = ForwardCache(config.cache_size)
        self.upstreams: dict[Address, _Upstream] = {}
        for address in config.upstreams + tuple(a for z in config.zones for a in z.upstreams):
            self.upstreams.setdefault(address, _Upstream(address))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deadlines: list[tuple[float, int, _Query]] = []
        """Attempt deadlines (loop time, token, query); stale ones are skipped."""
        self._seq = 0
        self._wake: asyncio.TimerHandle | None = None
        self._wake_at: float | None = None
        self._closing = False
        self.in_flight = 0
        """Queries waiting for an upstream now."""
        self._timeout = config.timeout
        self._over_udp = config.transport is ForwardTransport.UDP
        self._routes: dict[tuple[Address, ...], list[_Upstream]] = {}
        """The upstreams of each route, in configured order (shared: never changed)."""
        self._aside_until = 0.0
        """The latest time any upstream is set aside until (loop time)."""
        self.overloaded = 0
        """Queries answered SERVFAIL at once: ``max_in_flight`` were waiting."""
        self._missed: tuple[bytes, bytes] | None = None
        """The query :meth:`cached` last missed, and its key (until :meth:`forward`)."""

    def stats(self) -> dict[str, UpstreamStats]:
        """Counters per upstream (by ``ADDR:PORT``)."""
        return {u.label: u.stats for u in self.upstreams.values()}

    def connections(self) -> int:
        """Upstream connections open now."""
        return sum(len(u.conns) for u in self.upstreams.values())

    def cached(self, query: bytes) -> bytes | None:
        """The cached answer to ``query`` (its ID and question, TTLs counted down), now;
        None: a miss (counted). The server asks this first, synchronously, then forwards
        a miss: :meth:`forward` of this very ``query`` reuses the lookup's key and does
        not look it up (count the miss) again."""
        if not self.cache.size:
            return None
        key = cache_key(query)
        if key is None:
            return None
        hit = self.cache.get(key, query, self.clock())
        if hit is None:
            self._missed = (query, key)
        return hit

    def forward(self, query: bytes, qname: str, done: Done) -> None:
        """Sends ``query`` (any ID) upstream; ``done`` is called once, later, with the
        response carrying the query's ID. The cache is asked first unless :meth:`cached`
        just missed this very ``query`` (the miss is counted once, its key computed once)."""
        loop = self._loop = self._loop or asyncio.get_running_loop()
        missed, self._missed = self._missed, None
        # The client's cookie and padding are for its hop to us: the upstream gets none
        # (we send no cookies of our own, RFC 7873 §5.1 allows that), so its answer holds
        # none either and serves every client that asks the same question.
        wire = strip_options(query) if query[10:12] != b"\x00\x00" else query
        try:
            qend = _question_end(wire)
        except ValueError:
            loop.call_soon(done, servfail(wire), ForwardTrace(None, failure="malformed"))
            return
        if missed is not None and missed[0] is query:
            key: bytes | None = missed[1]  # (the key leaves out what strip_options took)
        else:
            key = cache_key(wire) if self.cache.size else None
            hit = None if key is None else self.cache.get(key, wire, self.clock())
            if hit is not None:
                loop.call_soon(done, hit, ForwardTrace(None, cached=True))
                return
        if self.in_flight >= self.config.max_in_flight:
            self.overloaded += 1
            loop.call_soon(done, servfail(wire), ForwardTrace(None, failure="overloaded"))
            return
        now = loop.time()
        route = self._routes.get(addresses := self.config.route(qname))
        if route is None:
            route = self._routes[addresses] = [self.upstreams[a] for a in addresses]
        if self._aside_until > now:  # some upstream is set aside: it is tried last
            route = sorted(route, key=lambda u: u.aside_until > now)
        q = _Query(wire, qend, route, now + self.config.budget)
        q.done, q.key = done, key
        self.in_flight += 1
        try:
            self._attempt(q)
        except Exception:  # a bug must cost this query, never the client's connection
            log.exception("forwarding failed")
            loop.call_soon(self._finish, q, None, ForwardTrace(None, failure="error"))

    def close(self) -> None:
        """Closes every upstream connection; queries in flight get SERVFAIL."""
        self._closing = True
        for upstream in self.upstreams.values():
            for conn in list(upstream.conns):
                self._drop(conn, retry=False)

    # ---- attempts ------------------------------------------------------------------------

    def _attempt(self, q: _Query) -> None:
        """Sends ``q`` to its next upstream, or answers SERVFAIL when none is left."""
        loop = self._loop
        assert loop is not None
        now = loop.time()
        if q.tried >= len(q.route) or now >= q.deadline or self._closing:
            why = "shutdown" if self._closing else "budget" if now >= q.deadline else "upstreams"
            tried = tuple(u.label for u in q.route[: q.tried])
            self._finish(q, None, ForwardTrace(None, failure=why, tried=tried))
            return
        upstream = q.route[q.tried]
        q.tried += 1
        q.attempt_at = self.clock()
        self._arm(q, min(now + self._timeout, q.deadline))
        upstream.stats.queries += 1
        if self._over_udp:
            self._send_udp(q, upstream)
        else:
            self._send_tcp(q, upstream)

    def _arm(self, q: _Query, when: float) -> None:
        """Sets the deadline of ``q``'s attempt (loop time); one loop timer serves all."""
        self._seq += 1
        q.timer = self._seq
        heap = self._deadlines
        if len(heap) > 2 * self.in_flight + _COMPACT_SLACK:
            # Deadlines of attempts that ended wait in the heap until their time: without
            # this, a timeout's worth of queries (and their messages) would stay alive and
            # make each full garbage collection walk them.
            heap[:] = [entry for entry in heap if entry[2].timer == entry[1]]
            heapq.heapify(heap)
        heapq.heappush(heap, (when, self._seq, q))
        if self._wake_at is None or when < self._wake_at:
            assert self._loop is not None
            if self._wake is not None:
                self._wake.cancel()
            self._wake_at = when
            self._wake = self._loop.call_at(when, self._expire)

    def _expire(self) -> None:
        """Times out the attempts whose deadline passed, then re-arms the loop timer."""
        assert self._loop is not None
        self._wake = self._wake_at = None
        heap = self._deadlines
        now = self._loop.time()
        while heap and heap[0][0] <= now:
            _, token, q = heapq.heappop(heap)
            if q.timer == token:
                self._timed_out(q)
        while heap and heap[0][2].timer != heap[0][1]:
            heapq.heappop(heap)  # deadlines of attempts that ended
        if heap and (self._wake_at is None or heap[0][0] < self._wake_at):
            if self._wake is not None:  # armed above for a later deadline
                self._wake.cancel()
            self._wake_at = heap[0][0]
            self._wake = self._loop.call_at(self._wake_at, self._expire)

    def _timed_out(self, q: _Query) -> None:
        q.timer = None
        conn = q.conn
        upstream = self._forget(q)
        if upstream is not None:
            upstream.stats.timeouts += 1
            self._failed(upstream)
        if conn is not None and len(conn.abandoned) > MAX_ABANDONED:
            self._drop(conn, retry=False)  # IDs given up on pile up: start afresh
        self._attempt(q)

    def _forget(self, q: _Query) -> _Upstream | None:
        """Detaches ``q`` from its current attempt; returns that attempt's upstream."""
        q.timer = None
        conn, q.conn = q.conn, None
        if conn is not None:
            if conn.pending.pop(q.qid, None) is not None:
                conn.abandoned.add(q.qid)
            self._maybe_idle(conn)
            return conn.upstream
        if q.udp is not None:
            self._close_udp(q)
            return q.route[q.tried - 1]
        return None

    def _finish(self, q: _Query, wire: bytes | None, trace: ForwardTrace | None) -> None:
        if q.finished:
            return
        q.finished = True
        self.in_flight -= 1
        self._forget(q)
        done, q.done = q.done, None
        assert done is not None
        if wire is None:
            wire = servfail(q.wire)
        try:
            done(wire, trace or ForwardTrace(None))
        except Exception:  # the taker's bug must not break the upstream connection
            log.exception("delivering a forwarded answer failed")

    def _failed(self, upstream: _Upstream) -> None:
        upstream.failures += 1
        if upstream.failures >= FAILURES_TO_SET_ASIDE:
            assert self._loop is not None
            if upstream.aside_until <= self._loop.time():
                log.warning("upstream %s keeps failing; set aside", upstream.label)
            upstream.aside_until = self._loop.time() + SET_ASIDE_S
            self._aside_until = max(self._aside_until, upstream.aside_until)

    def _answered(
        self, q: _Query, upstream: _Upstream, wire: bytes, scan: ResponseScan, trace: ForwardTrace
    ) -> None:
        """Delivers an upstream's answer to ``q`` (its ID is ours; its question matched)."""
        stats = upstream.stats
        stats.answers[scan.rcode] += 1
        stats.latency[bisect.bisect_left(LATENCY_BUCKETS_MS, trace.upstream_ns / 1e6)] += 1
        stats.latency_ns += trace.upstream_ns
        upstream.failures = 0
        upstream.aside_until = 0.0
        if scan.rcode == _SERVFAIL and q.tried < len(q.route):
            self._forget(q)
            self._attempt(q)
            return
        if scan.options is not None:  # hop-by-hop options: ours are the client's business
            stripped = strip_options_at(wire, scan.options)
            if stripped is not wire:
                moved = scan.options[1] != len(wire)  # records after the OPT moved
                wire = stripped
                if moved:
                    scan = scan_response(wire, ttls=q.key is not None)
        # The client's ID and question (its case); AA cleared: we are not the authority of
        # a forwarded name (RFC 1035 §4.1.1), and what the cache serves is never
        # authoritative (RFC 2181 §5.4.1). RA stays as sent.
        qend = q.qend
        query = q.wire
        wire = query[:2] + _NOT_AA[wire[2]] + wire[3:12] + query[12:qend] + wire[qend:]
        if q.key is not None:
            self.cache.put(q.key, wire, scan, self.clock())
        self._finish(q, wire, trace)

    def _move_on(self, q: _Query, upstream: _Upstream) -> None:
        """``upstream`` failed ``q`` (no connection, a failed read, an answer that does not
        parse): the failure is counted and the query moves on."""
        upstream.stats.failures += 1
        self._failed(upstream)
        self._forget(q)
        self._attempt(q)

    def _scan(self, q: _Query, upstream: _Upstream, message: bytes) -> ResponseScan | None:
        """Reads an answer whose question matched ``q``'s; None: it does not parse (the
        query moved on)."""
        q.timer = None
        try:  # the question was compared: the scan starts after it
            start = q.qend if message[4:6] == _ONE else 0
            return scan_response(message, start, ttls=q.key is not None)
        except ValueError:
            self._move_on(q, upstream)
            return None

    # ---- TCP -----------------------------------------------------------------------------

    def _send_tcp(self, q: _Query, upstream: _Upstream) -> None:
        conn = self._connection(upstream)
        if conn is None:
            self._move_on(q, upstream)
            return
        pending = conn.pending
        qid = random.getrandbits(16)
        while qid in pending or qid in conn.abandoned:
            qid = random.getrandbits(16)
        pending[qid] = q
        q.conn, q.qid = conn, qid
        if conn.answered:
            upstream.stats.reused += 1
        if conn.idle_timer is not None:
            conn.idle_timer.cancel()
            conn.idle_timer = None
        wire = q.wire
        if wire[11] or wire[10]:  # an OPT: ask for the upstream's keepalive timeout
            wire = set_keepalive(wire, ask=True)
        conn.out += frame(qid.to_bytes(2, "big") + wire[2:])
        if len(conn.out) >= FLUSH_BYTES and conn.connected:
            self._flush(conn)  # the upstream starts on these while we read the rest
        elif not conn.flushing:  # the queries of one read go out in one write
            conn.flushing = True
            assert self._loop is not None
            self._loop.call_soon(self._flush_soon, conn)

    def _connection(self, upstream: _Upstream) -> _Connection | None:
        """The connection to send on: the least busy one under ``pipeline``, else a new
        one while fewer than ``connections`` are open, else the least busy."""
        conns = upstream.conns
        if len(conns) == 1:  # the usual case, without the min()
            best: _Connection | None = conns[0]
        else:
            best = min(conns, key=lambda c: len(c.pending), default=None)
        if best is not None and len(best.pending) < self.config.pipeline:
            return best
        if len(conns) < self.config.connections:
            conn = self._open(upstream)
            if conn is not None:
                return conn
        return best

    def _open(self, upstream: _Upstream) -> _Connection | None:
        host, port = upstream.address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            try:
                sock, tfo = client_socket(family, fastopen_connect=True), True
            except DnstfoError:  # Fast Open off or missing: a plain handshake
                sock, tfo = client_socket(family), False
            sock.setblocking(False)
            code = sock.connect_ex((host, port))
        except (OSError, DnstfoError) as exc:
            log.debug("cannot connect to upstream %s: %s", upstream.label, exc)
            return None
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            log.debug("cannot connect to upstream %s: %s", upstream.label, errno.errorcode[code])
            return None
        conn = _Connection(sock, upstream, tfo)
        upstream.conns.append(conn)
        upstream.stats.connections += 1
        assert self._loop is not None
        self._loop.add_reader(sock.fileno(), self._readable, conn)
        return conn

    def _flush_soon(self, conn: _Connection) -> None:
        conn.flushing = False
        self._flush(conn)

    def _flush(self, conn: _Connection) -> None:
        sock = conn.sock
        if sock is None or not conn.out:
            return
        first = not conn.connected and not conn.in_syn
        if first and conn.tfo:
            # Without a cookie the kernel sent a plain SYN, and on a short path (loopback)
            # the handshake may be over already: then this write is not SYN data.
            self._established(conn)
            first = not conn.connected
        try:
            sent = sock.send(conn.out, socket.MSG_NOSIGNAL)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            log.debug("upstream %s write failed: %s", conn.upstream.label, exc)
            self._drop(conn, retry=True)
            return
        if first and sent and conn.tfo and not conn.connected:
            conn.in_syn = True
            conn.upstream.stats.syn_data_sent += 1
        del conn.out[:sent]
        want = bool(conn.out) or not conn.connected
        if want != conn.writing:
            assert self._loop is not None
            if want:
                self._loop.add_writer(sock.fileno(), self._writable, conn)
            else:
                self._loop.remove_writer(sock.fileno())
            conn.writing = want

    def _established(self, conn: _Connection) -> None:
        """The handshake is over: note whether the SYN's data was acknowledged."""
        sock = conn.sock
        assert sock is not None
        try:
            info = tcp_info(sock)
        except DnstfoError:
            conn.connected = True
            return
        if info.state == TcpState.SYN_SENT:
            return
        conn.connected = True
        if conn.in_syn and info.options & TcpiOption.SYN_DATA:
            conn.syn_acked = True
            conn.upstream.stats.syn_data_acked += 1

    def _writable(self, conn: _Connection) -> None:
        sock = conn.sock
        if sock is None:
            return
        if not conn.connected:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self._drop(conn, retry=True)
                return
            self._established(conn)
        self._flush(conn)

    def _readable(self, conn: _Connection) -> None:
        sock = conn.sock
        if sock is None:
            return
        try:
            data = sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.debug("upstream %s read failed: %s", conn.upstream.label, exc)
            self._drop(conn, retry=True)
            return
        if not data:
            self._drop(conn, retry=True)
            return
        if not conn.connected:
            self._established(conn)
        try:
            messages = conn.decoder.feed(data)
        except DnstfoError:
            self._bad(conn, "a bad frame")
            return
        now = self.clock()
        pending, upstream = conn.pending, conn.upstream
        fresh = not conn.answered  # (the same for every answer of this read)
        in_syn, syn_acked = conn.in_syn and fresh, conn.syn_acked and fresh
        for message in messages:
            if len(message) < 12 or not message[2] & 0x80:
                self._bad(conn, "a message that is not a response")
                return
            qid = message[0] << 8 | message[1]
            q = pending.get(qid)
            if q is None:
                if qid in conn.abandoned:
                    conn.abandoned.discard(qid)
                    continue
                self._bad(conn, f"an answer with an unknown ID {qid}")
                return
            qend = q.qend
            question = message[12:qend]
            if (
                question != q.wire[12:qend] and question.lower() != q.wire[12:qend].lower()
            ) or qend > len(message):
                self._bad(conn, "an answer whose question does not match")
                return
            trace = ForwardTrace(upstream.label, fresh, in_syn, syn_acked, now - q.attempt_at)
            del pending[qid]
            q.conn = None
            scan = self._scan(q, upstream, message)
            if scan is None:
                continue
            if scan.keepalive is not None:
                conn.keepalive_s = scan.keepalive / 10
            self._answered(q, upstream, message, scan, trace)
        if messages:
            conn.answered = True
        self._maybe_idle(conn)

    def _bad(self, conn: _Connection, what: str) -> None:
        log.debug("upstream %s sent %s; closing", conn.upstream.label, what)
        conn.upstream.stats.failures += 1
        self._failed(conn.upstream)
        self._drop(conn, retry=False)

    def _maybe_idle(self, conn: _Connection) -> None:
        """Arms the idle close of a connection with nothing in flight."""
        if conn.pending or conn.sock is None or conn.idle_timer is not None:
            return
        idle = conn.keepalive_s if conn.keepalive_s is not None else self.config.idle_timeout
        assert self._loop is not None
        conn.idle_timer = self._loop.call_later(idle, self._idle_close, conn)

    def _idle_close(self, conn: _Connection) -> None:
        conn.idle_timer = None
        if not conn.pending:
            self._drop(conn, retry=False)

    def _drop(self, conn: _Connection, *, retry: bool) -> None:
        """Closes ``conn``. Its queries are sent again on a new connection once if it had
        answered before and ``retry``; otherwise they move on to the next upstream."""
        sock = conn.sock
        if sock is None:
            return
        conn.sock = None
        assert self._loop is not None
        self._loop.remove_reader(sock.fileno())
        if conn.writing:
            self._loop.remove_writer(sock.fileno())
        sock.close()
        if conn.idle_timer is not None:
            conn.idle_timer.cancel()
            conn.idle_timer = None
        upstream = conn.upstream
        upstream.conns.remove(conn)
        pending = list(conn.pending.values())
        conn.pending.clear()
        again = retry and conn.answered
        if pending and not again and retry:
            upstream.stats.failures += 1
            self._failed(upstream)
        for q in pending:
            q.conn = None
            if again and not q.retried:
                q.retried = True
                upstream.stats.queries += 1
                self._send_tcp(q, upstream)
            else:
                q.timer = None
                self._attempt(q)

    # ---- UDP -----------------------------------------------------------------------------

    def _send_udp(self, q: _Query, upstream: _Upstream) -> None:
        host, port = upstream.address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_DGRAM)
        except OSError as exc:  # out of descriptors
            log.debug("upstream %s: no UDP socket: %s", upstream.label, exc)
            self._forget(q)
            self._attempt(q)
            return
        q.qid = random.getrandbits(16)
        try:
            sock.setblocking(False)
            sock.connect((host, port))
            sock.send(q.qid.to_bytes(2, "big") + q.wire[2:])
        except OSError as exc:
            sock.close()
            log.debug("upstream %s: UDP send failed: %s", upstream.label, exc)
            self._forget(q)
            upstream.stats.failures += 1
            self._attempt(q)
            return
        q.udp = sock
        assert self._loop is not None
        self._loop.add_reader(sock.fileno(), self._udp_readable, q, upstream)

    def _close_udp(self, q: _Query) -> None:
        sock, q.udp = q.udp, None
        if sock is not None:
            assert self._loop is not None
            self._loop.remove_reader(sock.fileno())
            sock.close()

    def _udp_readable(self, q: _Query, upstream: _Upstream) -> None:
        sock = q.udp
        if sock is None:
            return
        try:
            message = sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # ICMP port unreachable and kin
            self._move_on(q, upstream)
            return
        qend = q.qend
        if (
            len(message) < qend
            or message[:2] != q.qid.to_bytes(2, "big")
            or not message[2] & 0x80
            or message[12:qend].lower() != q.wire[12:qend].lower()
        ):
            return  # not the answer (spoofed or stray): keep waiting
        now = self.clock()
        self._close_udp(q)
        if message[2] & 0x02:  # TC: the same upstream over TCP
            assert self._loop is not None
            self._arm(q, min(self._loop.time() + self.config.timeout, q.deadline))
            self._send_tcp(q, upstream)
            return
        scan = self._scan(q, upstream, message)
        if scan is not None:
            trace = ForwardTrace(upstream.label, upstream_ns=now - q.attempt_at, udp=True)
            self._answered(q, upstream, message, scan, trace)
