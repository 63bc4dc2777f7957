"""The TCP driver and session with the clock passed in: deadlines without sleeping.

The driver runs on real sockets on its own loop thread, with a :class:`FakeClock`; a test
moves the clock and calls ``tick`` (what the loop timer does), then sees the result on its
own socket. The session tests drive :class:`TcpSession` alone, bytes and time in.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.message
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnstfo.answer.authority import Authority
from dnstfo.answer.responder import Reply, Responder
from dnstfo.server.config import Limits, QueryLog
from dnstfo.server.querylog import QueryLogger
from dnstfo.server.session import MAX_BUFFERED, MAX_DEFERRED, TcpSession
from dnstfo.server.stats import Limit, ServerStats
from dnstfo.server.tcp import TcpServer, client_key
from dnstfo.timing import FakeClock
from dnstfo.wire.connection import NS_PER_S, CloseReason, ConnectionPolicy
from dnstfo.wire.framing import FrameDecoder
from tests.server.conftest import read_messages, tcp_connect
from tests.server.test_tcp_hardening import query, stalled_client, wait_for

START = 1_000 * NS_PER_S


class Driver:
    """A TcpServer with a fake clock on its own loop thread."""

    def __init__(
        self, zone_dir: Path, limits: Limits, sndbuf: int | None = None, defer: Any = None
    ) -> None:
        authority, errors = Authority.load(zone_dir)
        assert not errors
        self.clock = FakeClock(START)
        self.stats = ServerStats()
        self.tcp = TcpServer(
            Responder(authority),
            limits,
            self.stats,
            QueryLogger(QueryLog.OFF),
            self.clock.now_ns,
            defer,
        )
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        if sndbuf is not None:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.listener.listen(64)
        self.address = self.listener.getsockname()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self.tcp.start, [self.listener])

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        async def run() -> Any:
            result = fn(*args)
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def advance(self, ns: int) -> None:
        """Moves the clock and runs the deadlines due (the loop timer's job)."""

        def step() -> None:
            self.clock.advance(ns)
            self.tcp.tick()

        self.call(step)

    @property
    def connections(self) -> int:
        return int(self.call(lambda: self.tcp.connections))

    def close(self) -> None:
        self.call(self.tcp.stop, 1.0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()
        self.listener.close()


@pytest.fixture
def driver(zone_dir: Path) -> Iterator[Callable[..., Driver]]:
    made: list[Driver] = []

    def make(limits: Limits, sndbuf: int | None = None, defer: Any = None) -> Driver:
        made.append(Driver(zone_dir, limits, sndbuf, defer))
        return made[-1]

    yield make
    for d in made:
        d.close()


def closed(sock: socket.socket) -> bool:
    """The server closed the connection (EOF or reset), read without waiting."""
    sock.settimeout(2)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def test_idle_timeout_to_the_nanosecond(driver: Callable[..., Driver]) -> None:
    d = driver(Limits.from_seconds(idle_timeout=10))
    with tcp_connect(d.address) as sock:
        sock.sendall(query("www.test.example.", 1))
        assert len(read_messages(sock, 1)) == 1
        d.advance(10 * NS_PER_S - 1)
        assert d.connections == 1
        d.advance(1)
        assert d.connections == 0
        assert closed(sock)
    assert d.stats.limits[Limit.IDLE] == 1


def test_write_stall_to_the_nanosecond(driver: Callable[..., Driver]) -> None:
    d = driver(Limits.from_seconds(idle_timeout=10, write_stall=2), sndbuf=4096)
    with stalled_client(d.address) as sock:
        sock.sendall(b"".join(query("big.test.example.", i, "TXT") for i in range(300)))
        wait_for(lambda: bool(d.call(lambda: [s for s in d.tcp.sessions() if s.buffered])), 5)
        d.advance(60 * NS_PER_S)  # a minute with output waiting: never idle
        assert d.connections == 0  # ... but stalled for longer than 2 s
    assert d.stats.limits[Limit.WRITE_STALL] == 1
    assert d.stats.limits[Limit.IDLE] == 0


def test_lifetime_reached_by_a_non_reader_closes_and_the_timer_does_not_spin(
    driver: Callable[..., Driver],
) -> None:
    d = driver(Limits.from_seconds(idle_timeout=10, lifetime=1, write_stall=2), sndbuf=4096)
    with stalled_client(d.address) as sock:
        sock.sendall(b"".join(query("big.test.example.", i, "TXT") for i in range(300)))
        wait_for(lambda: bool(d.call(lambda: [s for s in d.tcp.sessions() if s.buffered])), 5)
        d.advance(NS_PER_S)
        (session,) = d.call(d.tcp.sessions)
        assert session.close_reason is CloseReason.LIFETIME
        # The next deadline is the write stall, in the future: no timer firing in a loop.
        assert d.call(session.get_timer) > d.clock.now_ns()
        d.advance(2 * NS_PER_S)
        assert d.connections == 0
    assert d.stats.limits[Limit.LIFETIME] == 1
    assert d.stats.limits[Limit.WRITE_STALL] == 1


def test_full_slots_evict_the_longest_idle(driver: Callable[..., Driver]) -> None:
    d = driver(Limits.from_seconds(max_connections=4, idle_timeout=100))
    hoard = [tcp_connect(d.address) for _ in range(4)]
    try:
        for i, sock in enumerate(hoard):
            sock.sendall(query("www.test.example.", i))
            assert len(read_messages(sock, 1)) == 1  # hoard[0] is now the longest idle
        with tcp_connect(d.address) as new:
            new.sendall(query("www.test.example.", 9))
            assert len(read_messages(new, 1)) == 1  # admitted
            assert closed(hoard[0])  # ... in the place of the longest idle
        assert d.stats.limits[Limit.EVICTED] == 1
        assert d.stats.limits[Limit.TOTAL_CONNECTIONS] == 0
    finally:
        for sock in hoard:
            sock.close()


def test_idle_timeout_shrinks_as_slots_fill(driver: Callable[..., Driver]) -> None:
    d = driver(Limits.from_seconds(max_connections=4, idle_timeout=100))
    socks = [tcp_connect(d.address) for _ in range(3)]
    try:
        for i, sock in enumerate(socks):
            sock.sendall(query("www.test.example.", i))
            assert len(read_messages(sock, 1)) == 1
        # 3 of 4 slots: half the idle timeout is left (100 s * 2 * (4 - 3) / 4).
        d.advance(50 * NS_PER_S)
        assert d.connections == 0
    finally:
        for sock in socks:
            sock.close()


def test_clients_are_counted_by_ipv6_slash_64() -> None:
    assert client_key("2001:db8::1") == client_key("2001:db8::ffff:2")
    assert client_key("2001:db8::1") != client_key("2001:db8:0:1::1")
    assert client_key("::ffff:192.0.2.1") == client_key("192.0.2.1") == "192.0.2.1"


# ---- the session alone: answers that come later, in any order ------------------------------


class Later:
    """A deferrer that keeps every forwardable query, as a forwarder would."""

    def __init__(self) -> None:
        self.taken: list[tuple[TcpSession, int, bytes]] = []

    def __call__(self, session: TcpSession, slot: int, query: bytes, reply: Reply) -> bool:
        self.taken.append((session, slot, query))
        return True


def make_session(zone_dir: Path, later: Later, **policy: int) -> TcpSession:
    authority, _ = Authority.load(zone_dir)
    return TcpSession(
        Responder(authority),
        ConnectionPolicy(**policy),
        0,
        ("192.0.2.9", 4000),
        False,
        ServerStats(),
        QueryLogger(QueryLog.OFF),
        defer=later,
    )


def answer_to(wire: bytes) -> bytes:
    q = dns.message.from_wire(wire)
    response = dns.message.make_response(q)
    return response.to_wire()


def flush(session: TcpSession, now: int) -> list[int]:
    """Takes all output as a socket that accepts everything; returns the answers' IDs."""
    out = bytes(session.data_to_send())
    session.data_sent(len(out), now)
    return [int.from_bytes(m[:2], "big") for m in FrameDecoder().feed(out)]


def test_deferred_answers_are_delivered_in_any_order(zone_dir: Path) -> None:
    later = Later()
    s = make_session(zone_dir, later, lifetime_ns=0)
    woken: list[bool] = []
    s.wake = lambda: woken.append(True)
    s.receive_data(
        query("a.elsewhere.", 1) + query("www.test.example.", 2) + query("b.elsewhere.", 3), 5
    )
    assert flush(s, 5) == [2]  # ours at once; the other two are owed
    assert s.get_timer() is None  # not idle while answers are owed
    (_, slot1, q1), (_, slot3, q3) = [(t[0], t[1], t[2]) for t in later.taken]
    s.deliver(slot3, answer_to(q3), 7)
    assert woken == [True]
    assert flush(s, 7) == [3]
    s.deliver(slot1, answer_to(q1), 8)
    assert flush(s, 8) == [1]
    assert s.get_timer() == 8 + s.conn.policy.idle_timeout_ns


def test_a_graceful_close_waits_for_owed_answers(zone_dir: Path) -> None:
    later = Later()
    s = make_session(zone_dir, later, max_queries=1)
    s.receive_data(query("a.elsewhere.", 1), 0)
    assert s.close_reason is CloseReason.QUERY_LIMIT
    assert not s.eof_to_send()  # an answer is owed
    (_, slot, q) = later.taken[0]
    s.deliver(slot, answer_to(q), 1)
    assert flush(s, 1) == [1]
    assert s.eof_to_send()
    s.eof_sent(1)
    s.receive_data(query("www.test.example.", 2), 2)  # after our FIN: counted, not answered
    assert s.stats.dropped == 1
    s.receive_eof(3)
    assert s.close_expected()


def test_nothing_is_written_after_the_client_closed(zone_dir: Path) -> None:
    later = Later()
    s = make_session(zone_dir, later)
    s.receive_data(query("a.elsewhere.", 1), 0)
    s.receive_eof(1)
    assert s.close_expected()
    (_, slot, q) = later.taken[0]
    s.deliver(slot, answer_to(q), 2)
    assert bytes(s.data_to_send()) == b""
    assert s.stats.dropped == 1  # the owed answer could not be given


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    cuts=st.lists(st.integers(1, 400), min_size=1, max_size=20),
    takes=st.lists(st.integers(0, 70_000), min_size=1, max_size=50).filter(any),
)
def test_any_chunking_and_partial_sends_give_every_answer_in_order(
    zone_dir: Path, cuts: list[int], takes: list[int]
) -> None:
    """Bytes in as any chunks, a socket that takes any amounts: every answer comes out
    whole and in order, and what the session holds never passes its bound."""
    s = make_session(zone_dir, Later(), lifetime_ns=0)
    names = ["www.test.example.", "big.test.example.", "nope.test.example."]
    data = b"".join(query(names[i % 3], i, "TXT" if i % 3 == 1 else "A") for i in range(120))
    pos, now, out = 0, 0, b""
    cut_iter, take_iter = itertools.cycle(cuts), itertools.cycle(takes)
    while pos < len(data) or s.wants_write():
        now += 1
        if pos < len(data) and s.wants_read():
            n = next(cut_iter)
            s.receive_data(data[pos : pos + n], now)
            pos += n
        pending = s.data_to_send()
        taken = min(len(pending), next(take_iter))
        out += bytes(pending[:taken])
        s.data_sent(taken, now)
        assert s.buffered <= MAX_BUFFERED
        assert not s.close_expected()
    ids = [int.from_bytes(m[:2], "big") for m in FrameDecoder().feed(out)]
    assert ids == list(range(120))


def test_answers_delivered_later_reach_the_client_in_any_order(
    driver: Callable[..., Driver],
) -> None:
    later = Later()
    d = driver(Limits.from_seconds(), defer=later)
    with tcp_connect(d.address) as sock:
        sock.sendall(query("a.elsewhere.", 1) + query("b.elsewhere.", 2))
        wait_for(lambda: len(later.taken) == 2, 5)
        for session, slot, q in reversed(later.taken):
            d.call(session.deliver, slot, answer_to(q), d.clock.now_ns())
        ids = [int.from_bytes(m[:2], "big") for m in read_messages(sock, 2)]
    assert ids == [2, 1]


def test_a_client_that_resets_while_only_owed_answers_is_closed(
    driver: Callable[..., Driver],
) -> None:
    """With every deferred slot taken the connection is neither read nor written: a reset
    must still close it (and not make epoll report it again and again)."""
    later = Later()
    d = driver(Limits.from_seconds(), defer=later)
    sock = tcp_connect(d.address)
    sock.sendall(b"".join(query(f"n{i}.elsewhere.", i) for i in range(MAX_DEFERRED)))
    wait_for(lambda: len(later.taken) == MAX_DEFERRED, 5)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # a reset
    wait_for(lambda: d.connections == 0, 5)
    assert d.stats.dropped == MAX_DEFERRED
