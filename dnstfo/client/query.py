"""The exchange: one DNS query over one fresh TCP connection, with TFO when asked.

Theory of operation (RFC 7766 §8, RFC 7413 §3, Linux ``tcp_sendmsg_fastopen``):

1. Before: read the cookie cached for the server (tcp_metrics), the tcp_fastopen sysctl
   and the TcpExt counters. None of this is timed.
2. Open: a non-blocking socket. Length + query are one buffer, written once. With
   ``sendto(MSG_FASTOPEN)`` the kernel puts it in the SYN when it holds a cookie and
   returns its length; without a cookie it sends a SYN with a cookie request and fails
   with EINPROGRESS having sent nothing, so the query follows the handshake. With
   ``TCP_FASTOPEN_CONNECT`` ``connect()`` returns at once when a cookie is cached and the
   first ``send`` plays the same part. When the client bit of the sysctl is off the
   kernel says EOPNOTSUPP: we fall back to a plain connect and keep the reason.
3. Wait until established (POLLOUT), send what the SYN did not carry, then read with the
   wire ``FrameDecoder`` until one whole message; check its ID and question. An AXFR goes
   on reading until the SOA that closes the zone (RFC 5936 §2.2), each message within a
   fresh ``timeout``; the TFO report is about the first message.
4. After: TCP_INFO (SYN_DATA acked, ``fastopen_client_fail``, RTTs, retransmits) and the
   cookie now cached.

Deadlines are absolute on the injected monotonic clock; a phase that runs out raises
``PhaseTimeout`` naming it (``connect``, ``first byte``, ``response``, ``transfer``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import time
from typing import TYPE_CHECKING

from dnstfo.client.config import QueryConfig, TfoMethod
from dnstfo.client.message import build_query, is_transfer, parse_response, transfer_soas
from dnstfo.client.report import CookieChange, Fallback, TfoAfter, TfoBefore, Timings
from dnstfo.client.result import QueryResult, TfoReport, Transfer
from dnstfo.client.verdict import judge
from dnstfo.errors import (
    DnstfoError,
    FastOpenDisabled,
    KernelFeatureError,
    NetworkError,
    PhaseTimeout,
    RemoteProtocolError,
)
from dnstfo.kernel import sysctl, tcp_metrics
from dnstfo.kernel.sockets import client_socket, family_of, send_in_syn
from dnstfo.kernel.tcpinfo import FastOpenClientFail, TcpInfo, tcp_info
from dnstfo.timing import Clock, MonotonicClock, PhaseTimes
from dnstfo.wire.framing import FrameDecoder, frame

if TYPE_CHECKING:
    import dns.message

log = logging.getLogger(__name__)

_RECV_SIZE = 65536


def exchange(config: QueryConfig, *, clock: Clock | None = None) -> QueryResult:
    """Sends one query and returns the checked response with its TFO report.

    A try that times out is repeated, on a new connection, up to ``config.tries`` times.

    Args:
        config: what to ask, where, and how.
        clock: the monotonic clock for timings and deadlines (tests inject one).

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
    for attempt in range(1, max(config.tries, 1) + 1):
        try:
            return _one_try(config, query, wire, clock, attempt, first_started)
        except PhaseTimeout as exc:
            log.info("try %d of %d: %s", attempt, config.tries, exc)
            last = exc
    assert last is not None
    raise last


def _read_before(server: str, source: str | None) -> TfoBefore:
    """Reads the host's TFO state for ``server`` (cookie, sysctl, blackhole)."""
    try:
        mode: sysctl.TfoMode | None = sysctl.fastopen_mode()
    except (DnstfoError, ValueError):
        mode = None
    return TfoBefore(
        cookie=_cached_cookie(server, source),
        client_enabled=mode is not None and sysctl.client_enabled(mode),
        sysctl=None if mode is None else int(mode),
        blackhole_timeout_s=sysctl.blackhole_timeout(),
        blackhole_count=_blackhole_count(),
    )


def _cached_cookie(server: str, source: str | None) -> bytes | None:
    """The cookie tcp_metrics holds for ``server`` (None also when it cannot be read)."""
    try:
        return tcp_metrics.cookie_for(server, source)
    except (DnstfoError, OSError) as exc:
        log.debug("cannot read tcp_metrics: %s", exc)
        return None


def _blackhole_count() -> int:
    try:
        return sysctl.read_counters().blackhole
    except OSError:
        return 0


class _Connection:
    """One non-blocking TCP connection driven with poll against an absolute deadline."""

    def __init__(self, sock: socket.socket, clock: Clock, deadline_ns: int, seconds: float):
        self.sock = sock
        self.clock = clock
        self.deadline_ns = deadline_ns
        self.seconds = seconds
        self.poller = select.poll()
        self.poller.register(sock, select.POLLIN)

    def wait(self, events: int, phase: str) -> int:
        """Waits until ``events`` (or an error) on the socket; raises at the deadline."""
        self.poller.modify(self.sock, events)
        while True:
            left_ms = (self.deadline_ns - self.clock.now_ns()) / 1e6
            if left_ms <= 0:
                raise PhaseTimeout(phase, self.seconds)
            ready = self.poller.poll(max(1, int(left_ms + 0.999)))
            if ready:
                return ready[0][1]

    def check_error(self, doing: str) -> None:
        """Raises the socket's pending error (SO_ERROR), if any, as a NetworkError."""
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise NetworkError.from_oserror(doing, OSError(err, os.strerror(err)))


def _open(
    config: QueryConfig, sock: socket.socket, data: bytes, addr: tuple[str, int]
) -> tuple[int, Fallback, str | None]:
    """Starts the connection; returns (bytes sent in the SYN, fallback, its reason)."""
    fallback, reason = Fallback.NONE, None
    if config.tfo is TfoMethod.SENDTO:
        try:
            return send_in_syn(sock, data, addr), fallback, reason
        except BlockingIOError:
            return 0, fallback, reason  # no cookie: the SYN asks for one
        except FastOpenDisabled as exc:
            fallback, reason = Fallback.CLIENT_OFF, str(exc)
    code = sock.connect_ex(addr)
    if code == 0 and config.tfo is TfoMethod.CONNECT:  # deferred: the first write sends the SYN
        try:
            return sock.send(data), fallback, reason
        except BlockingIOError:
            return 0, fallback, reason
        except OSError as exc:
            raise NetworkError.from_oserror(_connecting(addr), exc) from exc
    if code not in (0, errno.EINPROGRESS):
        raise NetworkError.from_oserror(_connecting(addr), OSError(code, os.strerror(code)))
    return 0, fallback, reason


def _connecting(addr: tuple[str, int]) -> str:
    return f"connecting to {addr[0]} port {addr[1]}"


def _make_socket(config: QueryConfig) -> tuple[socket.socket, Fallback, str | None]:
    family = family_of(config.server)
    source = None if config.source is None else (config.source, 0)
    if config.tfo is TfoMethod.CONNECT:
        try:
            sock = client_socket(
                family, fastopen_connect=True, no_cookie=config.no_cookie, source=source
            )
            return sock, Fallback.NONE, None
        except FastOpenDisabled as exc:
            fallback, reason = Fallback.CLIENT_OFF, str(exc)
        except KernelFeatureError as exc:
            fallback, reason = Fallback.FEATURE_MISSING, str(exc)
        sock = client_socket(family, source=source)
        return sock, fallback, reason
    no_cookie = config.no_cookie and config.tfo_requested
    return client_socket(family, no_cookie=no_cookie, source=source), Fallback.NONE, None


def _one_try(
    config: QueryConfig,
    query: dns.message.Message,
    wire: bytes,
    clock: Clock,
    attempt: int,
    first_started: int,
) -> QueryResult:
    data = frame(wire)
    addr = (config.server, config.port)
    before = _read_before(config.server, config.source)
    wall = time.time()
    started = clock.now_ns()
    deadline = started + int(config.timeout * 1e9)
    sock, fallback, reason = _make_socket(config)
    with contextlib.closing(sock):
        sock.setblocking(False)
        conn = _Connection(sock, clock, deadline, config.timeout)
        log.debug("connect.started %s port %d tfo=%s", *addr, config.tfo.value)
        in_syn, open_fallback, open_reason = _open(config, sock, data, addr)
        if open_fallback is not Fallback.NONE:
            fallback, reason = open_fallback, open_reason
        conn.wait(select.POLLOUT, "connect")
        conn.check_error(_connecting(addr))
        connected = clock.now_ns()
        at_connect = tcp_info(sock)
        log.debug("connect.complete, %d bytes went in the SYN", in_syn)
        _send_rest(conn, data, in_syn)
        decoder = FrameDecoder()
        messages, first_byte = _read_messages(conn, decoder)
        done = clock.now_ns()
        info = tcp_info(sock)
        local = sock.getsockname()[:2]
        message = messages[0]
        response = parse_response(query, message)
        transfer = None
        if is_transfer(query):
            transfer = _read_transfer(conn, decoder, query, response, messages)
        ended = clock.now_ns()
    after = _read_after(config.server, before, at_connect, info, local[0], in_syn, fallback, reason)
    times = PhaseTimes(started, connected, first_byte, done)
    timings = Timings.measure(
        times.ms(connected), times.ms(first_byte), times.ms(done), info.rtt_us, info.min_rtt_us
    )
    verdict = judge(config.tfo_requested, config.no_cookie, before, after, timings)
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
        response_size=len(message),
        server=addr,
        source=(local[0], local[1]),
        times=times,
        tcp_info=info,
        tfo=report,
        wall_time=wall,
        tries=attempt,
        elapsed_ms=(ended - first_started) / 1e6,
        transfer=transfer,
    )


def _send_rest(conn: _Connection, data: bytes, sent: int) -> None:
    view = memoryview(data)
    while sent < len(data):
        try:
            sent += conn.sock.send(view[sent:])
        except BlockingIOError:
            conn.wait(select.POLLOUT, "connect")
        except OSError as exc:
            raise NetworkError.from_oserror("sending the query", exc) from exc


def _read_messages(
    conn: _Connection, decoder: FrameDecoder, phase: str | None = None
) -> tuple[list[bytes], int]:
    """Reads until at least one whole DNS message; returns those and when the first byte came.

    ``phase`` names a timeout; by default ``first byte``, then ``response``.
    """
    first_byte: int | None = None
    while True:
        conn.wait(select.POLLIN, phase or ("first byte" if first_byte is None else "response"))
        try:
            chunk = conn.sock.recv(_RECV_SIZE)
        except BlockingIOError:
            continue
        except OSError as exc:
            raise NetworkError.from_oserror("reading the response", exc) from exc
        if first_byte is None:
            first_byte = conn.clock.now_ns()
        if not chunk:
            decoder.feed_eof()
            raise RemoteProtocolError("the server closed the connection without answering")
        messages = decoder.feed(chunk)
        if messages:
            return messages, first_byte


def _read_transfer(
    conn: _Connection,
    decoder: FrameDecoder,
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
            conn.deadline_ns = conn.clock.now_ns() + int(conn.seconds * 1e9)
            try:
                pending, _ = _read_messages(conn, decoder, "transfer")
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


def _syn_retransmits(at_connect: TcpInfo, attempted: bool) -> int:
    """SYN retransmissions, from TCP_INFO read when the connection was established.

    ``total_retrans`` then counts the SYN's retransmissions, plus one when SYN data was
    not acked: the kernel resends that data as soon as the SYN-ACK arrives
    (``tcp_rcv_fastopen_synack``), and the same function records in
    ``fastopen_client_fail`` which of the two happened.
    """
    total = at_connect.total_retrans
    if not attempted or at_connect.syn_data:
        return total
    if at_connect.fastopen_client_fail is FastOpenClientFail.DATA_NOT_ACKED:
        return 0
    return max(total - 1, 1)


def _read_after(
    server: str,
    before: TfoBefore,
    at_connect: TcpInfo,
    info: TcpInfo,
    local: str,
    in_syn: int,
    fallback: Fallback,
    reason: str | None,
) -> TfoAfter:
    cookie = _cached_cookie(server, local)
    return TfoAfter(
        attempted=in_syn > 0,
        syn_data_acked=info.syn_data,
        client_fail=info.fastopen_client_fail,
        syn_retransmits=_syn_retransmits(at_connect, in_syn > 0),
        cookie=cookie,
        cookie_change=CookieChange.between(before.cookie, cookie),
        fallback=fallback,
        fallback_reason=reason,
        blackhole_delta=max(_blackhole_count() - before.blackhole_count, 0),
    )
