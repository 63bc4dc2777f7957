"""The blocking driver: one DNS query over one fresh TCP connection, with TFO when asked.

Theory of operation (RFC 7766 §8, RFC 7413 §3, Linux ``tcp_sendmsg_fastopen``):

1. Before: read the cookie cached for (source, server) (one tcp_metrics GET), the
   tcp_fastopen sysctl and the TcpExt counters. None of this is timed.
2. Open (``client.exchange.open_connection``): a non-blocking socket. Length + query are
   one buffer, written once. With ``sendto(MSG_FASTOPEN)`` the kernel puts it in the SYN
   when it holds a cookie and returns its length; without a cookie it sends a SYN with a
   cookie request and fails with EINPROGRESS having sent nothing, so the query follows
   the handshake. With ``TCP_FASTOPEN_CONNECT`` ``connect()`` returns at once when a
   cookie is cached and the first ``send`` plays the same part. When the client bit of
   the sysctl is off the kernel says EOPNOTSUPP: we fall back to a plain connect and
   keep the reason.
3. Wait until established (POLLOUT), send what the SYN did not carry, then read with the
   exchange's decoder until one whole message; check its ID and question. An AXFR goes
   on reading until the SOA that closes the zone (RFC 5936 §2.2), each message within a
   fresh ``timeout``; the TFO report is about the first message.
4. After (``client.observe``): TCP_INFO (SYN_DATA acked, ``fastopen_client_fail``, RTTs,
   retransmits) and the cookie now cached for the connection's own address pair.

The exchange's state (``client.exchange.Exchange``) is shared with the multiplexed driver
(``client.multiplex``); this module only waits with poll. Deadlines are absolute on the
injected monotonic clock; a phase that runs out raises ``PhaseTimeout`` naming it
(``connect``, ``first byte``, ``response``, ``transfer``).
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import time
from typing import TYPE_CHECKING

from dnstfo.client.config import QueryConfig
from dnstfo.client.exchange import Exchange, Opening, open_connection, pending_error
from dnstfo.client.message import build_query, is_transfer, parse_response, transfer_soas
from dnstfo.client.observe import CookieReader, route_source, syn_retransmits
from dnstfo.client.report import CookieChange, TfoAfter, TfoBefore, Timings
from dnstfo.client.result import QueryResult, TfoReport, Transfer
from dnstfo.client.verdict import judge
from dnstfo.errors import DnstfoError, NetworkError, PhaseTimeout, RemoteProtocolError
from dnstfo.kernel import sysctl
from dnstfo.kernel.tcpinfo import TcpInfo, tcp_info
from dnstfo.timing import Clock, MonotonicClock

if TYPE_CHECKING:
    import dns.message

    from dnstfo.client.tls import TlsClient, TlsSessions  # imports ssl: only for DoT

log = logging.getLogger(__name__)

_RECV_SIZE = 65536


def exchange(
    config: QueryConfig, *, clock: Clock | None = None, tls_sessions: TlsSessions | None = None
) -> QueryResult:
    """Sends one query and returns the checked response with its TFO report.

    A try that times out is repeated, on a new connection, up to ``config.tries`` times.

    Args:
        config: what to ask, where, and how.
        clock: the monotonic clock for timings and deadlines (tests inject one).
        tls_sessions: TLS contexts and sessions kept across a run's queries (DoT resumes
            the last session); None keeps them for this call's tries only.

    Returns:
        The result; ``result.tfo.verdict.text`` says what TFO did.

    Raises:
        PhaseTimeout: every try ran out of time (the last phase is named).
        NetworkError: the connection failed (refused, reset, unreachable; errno kept).
        RemoteProtocolError: the server's bytes were not a matching DNS response.
        UsageError: the query cannot be built (bad name, type or class).
    """
    clock = clock or MonotonicClock()
    query = build_query(config)
    wire = query.to_wire()
    first_started = clock.now_ns()
    last: PhaseTimeout | None = None
    cookies = CookieReader()
    sessions = tls_sessions
    if sessions is None and config.tls is not None:
        from dnstfo.client.tls import TlsSessions

        sessions = TlsSessions()
    try:
        for attempt in range(1, max(config.tries, 1) + 1):
            try:
                return _one_try(
                    config, query, wire, clock, attempt, first_started, cookies, sessions
                )
            except PhaseTimeout as exc:
                log.info("try %d of %d: %s", attempt, config.tries, exc)
                last = exc
    finally:
        cookies.close()
    assert last is not None
    raise last


def _read_before(config: QueryConfig, cookies: CookieReader) -> TfoBefore:
    """Reads the host's TFO state for the server (cookie, sysctl, blackhole)."""
    try:
        mode: sysctl.TfoMode | None = sysctl.fastopen_mode()
    except (DnstfoError, ValueError):
        mode = None
    source = config.source or route_source(config.server, config.port)
    return TfoBefore(
        cookie=cookies.cookie(config.server, source),
        client_enabled=mode is not None and sysctl.client_enabled(mode),
        sysctl=None if mode is None else int(mode),
        blackhole_timeout_s=sysctl.blackhole_timeout(),
        blackhole_count=_blackhole_count(),
    )


def _blackhole_count() -> int:
    try:
        return sysctl.read_counters().blackhole
    except OSError:
        return 0


class _Connection:
    """One non-blocking socket, waited on with poll against the exchange's deadline."""

    def __init__(
        self, sock: socket.socket, clock: Clock, ex: Exchange, tls: TlsClient | None = None
    ) -> None:
        self.sock = sock
        self.clock = clock
        self.ex = ex
        self.tls = tls
        self.pending = b""  # TLS ciphertext still to write
        if tls is not None:
            # Nagle would hold the client's Finished and query behind the server's
            # delayed ACK: two more round trips.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.poller = select.poll()
        self.poller.register(sock, select.POLLIN)

    def wait(self, events: int, phase: str | None = None) -> int:
        """Waits until ``events`` (or an error); raises at the deadline, naming the phase."""
        self.poller.modify(self.sock, events)
        while True:
            left_ms = (self.ex.deadline_ns - self.clock.now_ns()) / 1e6
            if left_ms <= 0:
                raise PhaseTimeout(phase or self.ex.phase, self.ex.timeout)
            ready = self.poller.poll(max(1, int(left_ms + 0.999)))
            if ready:
                return ready[0][1]


def _one_try(
    config: QueryConfig,
    query: dns.message.Message,
    wire: bytes,
    clock: Clock,
    attempt: int,
    first_started: int,
    cookies: CookieReader,
    sessions: TlsSessions | None,
) -> QueryResult:
    addr = (config.server, config.port)
    before = _read_before(config, cookies)
    wall = time.time()
    # The TLS context (CA loading) is made before the clock starts; the ClientHello after.
    tls = None if config.tls is None or sessions is None else sessions.client(config.tls, *addr)
    ex = Exchange(query, wire, config.timeout, clock.now_ns())
    first = ex.data if tls is None else tls.start()  # the ClientHello goes in the SYN
    log.debug("connect.started %s port %d tfo=%s", *addr, config.tfo.value)
    opening = open_connection(config, first)
    sock = opening.sock
    with contextlib.closing(sock):
        conn = _Connection(sock, clock, ex, tls)
        if tls is not None:
            conn.pending = first[opening.in_syn :]
        else:
            ex.on_sent(opening.in_syn)
        conn.wait(select.POLLOUT)
        error = pending_error(sock, addr)
        if error is not None:
            raise error
        ex.on_connected(clock.now_ns())
        at_connect = tcp_info(sock)
        log.debug("connect.complete, %d bytes went in the SYN", opening.in_syn)
        if tls is not None:
            _tls_handshake(conn, tls)
        _send_rest(conn)
        messages = _read_messages(conn)
        info = tcp_info(sock)
        local = sock.getsockname()[:2]
        response = ex.check(messages[0])
        transfer = None
        if is_transfer(query):
            transfer = _read_transfer(conn, query, response, messages)
        ended = clock.now_ns()
        if tls is not None and sessions is not None:
            sessions.keep(tls, *addr)
    after = _read_after(config, cookies, before, at_connect, info, local[0], opening)
    times = ex.times()
    timings = Timings.measure(
        times.ms(times.connected),
        times.ms(times.first_byte),
        times.ms(times.done),
        info.rtt_us,
        info.min_rtt_us,
    )
    verdict = judge(
        config.tfo_requested, config.no_cookie, before, after, timings, tls=tls is not None
    )
    log.debug("exchange.complete: %s", verdict.text)
    report = TfoReport(
        requested=config.tfo_requested,
        method=config.tfo.value,
        no_cookie=config.no_cookie,
        before=before,
        after=after,
        timings=timings,
        verdict=verdict,
    )
    return QueryResult(
        config=config,
        query=query,
        response=response,
        query_size=len(wire),
        response_size=len(messages[0]),
        server=addr,
        source=(local[0], local[1]),
        times=times,
        tcp_info=info,
        tfo=report,
        tls=None if tls is None else tls.info(),
        wall_time=wall,
        tries=attempt,
        elapsed_ms=(ended - first_started) / 1e6,
        transfer=transfer,
    )


def _tls_handshake(conn: _Connection, tls: TlsClient) -> None:
    """Writes the rest of the ClientHello and pumps records until the handshake is done."""
    from dnstfo.client.tls import HANDSHAKE

    while not tls.established:
        _flush(conn, HANDSHAKE)
        conn.wait(select.POLLIN, HANDSHAKE)
        chunk = _recv(conn, "TLS handshake")
        if chunk is None:
            continue
        tls.receive(chunk)
        conn.pending += tls.data_to_send()


def _flush(conn: _Connection, phase: str) -> None:
    """Writes ``conn.pending`` (TLS ciphertext) whole."""
    while conn.pending:
        try:
            n = conn.sock.send(conn.pending)
        except BlockingIOError:
            conn.wait(select.POLLOUT, phase)
            continue
        except OSError as exc:
            raise NetworkError.from_oserror("sending the query", exc) from exc
        conn.pending = conn.pending[n:]


def _recv(conn: _Connection, doing: str) -> bytes | None:
    """One read (None: nothing yet)."""
    try:
        return conn.sock.recv(_RECV_SIZE)
    except BlockingIOError:
        return None
    except OSError as exc:
        raise NetworkError.from_oserror(f"reading the {doing}", exc) from exc


def _send_rest(conn: _Connection) -> None:
    ex = conn.ex
    if conn.tls is not None:
        conn.tls.send(bytes(ex.unsent))
        ex.on_sent(len(ex.unsent))
        conn.pending += conn.tls.data_to_send()
        _flush(conn, "connect")
        return
    while ex.unsent:
        try:
            ex.on_sent(conn.sock.send(ex.unsent))
        except BlockingIOError:
            conn.wait(select.POLLOUT, "connect")
        except OSError as exc:
            raise NetworkError.from_oserror("sending the query", exc) from exc


def _read_messages(conn: _Connection, phase: str | None = None) -> list[bytes]:
    """Reads until at least one whole DNS message; returns those.

    ``phase`` names a timeout; by default the exchange's (``first byte``, ``response``).
    """
    while True:
        conn.wait(select.POLLIN, phase)
        chunk = _recv(conn, "response")
        if chunk is None:
            continue
        if conn.tls is not None:
            chunk = conn.tls.receive(chunk)
            conn.pending += conn.tls.data_to_send()
            _flush(conn, phase or conn.ex.phase)
            if not chunk:
                continue
        messages = conn.ex.on_data(chunk, conn.clock.now_ns())
        if messages:
            return messages


def _read_transfer(
    conn: _Connection,
    query: dns.message.Message,
    first: dns.message.Message,
    wires: list[bytes],
) -> Transfer | None:
    """Reads an AXFR to its closing SOA; ``wires`` are the messages read so far.

    Returns:
        None when the first message begins no transfer (refused, or empty).

    Raises:
        RemoteProtocolError: the server closed (or failed) before the closing SOA.
        PhaseTimeout: no whole message within the timeout (``transfer``).
    """
    soas = transfer_soas(first, first=True)
    if soas == 0:
        return None
    messages, size, pending = [first], len(wires[0]), wires[1:]
    while soas < 2:
        if not pending:
            conn.ex.extend(conn.clock.now_ns())
            try:
                pending = _read_messages(conn, "transfer")
            except RemoteProtocolError as exc:
                records = sum(len(r) for m in messages for r in m.answer)
                raise RemoteProtocolError(
                    f"the transfer was cut: the connection closed after {records} records "
                    f"in {len(messages)} messages, before the closing SOA"
                ) from exc
        wire = pending.pop(0)
        message = parse_response(query, wire, continuation=True)
        soas += transfer_soas(message, first=False)
        messages.append(message)
        size += len(wire)
    return Transfer(messages=tuple(messages), size=size)


def _read_after(
    config: QueryConfig,
    cookies: CookieReader,
    before: TfoBefore,
    at_connect: TcpInfo,
    info: TcpInfo,
    local: str,
    opening: Opening,
) -> TfoAfter:
    in_syn = opening.in_syn
    cookie = cookies.cookie(config.server, local)
    return TfoAfter(
        attempted=in_syn > 0,
        syn_data_acked=info.syn_data,
        client_fail=info.fastopen_client_fail,
        syn_retransmits=syn_retransmits(at_connect, in_syn > 0),
        cookie=cookie,
        cookie_change=CookieChange.between(before.cookie, cookie),
        fallback=opening.fallback,
        fallback_reason=opening.fallback_reason,
        blackhole_delta=max(_blackhole_count() - before.blackhole_count, 0),
    )
