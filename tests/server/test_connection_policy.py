"""The sans-I/O connection policy, driven by a fake clock."""

from __future__ import annotations

import pytest

from dnstfo.timing import FakeClock
from dnstfo.wire.connection import (
    NS_PER_S,
    CloseReason,
    ConnectionPolicy,
    ServerConnection,
)
from dnstfo.wire.framing import frame

Q = b"\x12\x34" + bytes(10)  # a 12-byte "message": the policy does not parse DNS


def conn(clock: FakeClock, **policy: int) -> ServerConnection:
    return ServerConnection(ConnectionPolicy(**policy), clock.now_ns())


def test_pipelined_messages_in_one_read_all_returned() -> None:
    clock = FakeClock()
    c = conn(clock)
    assert c.receive_data(frame(Q) * 5, clock.now_ns()) == [Q] * 5
    assert c.queries == 5
    assert not c.closing


def test_byte_at_a_time_gives_the_same_messages() -> None:
    clock = FakeClock()
    c = conn(clock)
    got = []
    for byte in frame(Q) * 3:
        got += c.receive_data(bytes([byte]), clock.now_ns())
    assert got == [Q] * 3


def test_idle_timer_resets_on_whole_messages_only() -> None:
    clock = FakeClock()
    c = conn(clock, idle_timeout_ns=10 * NS_PER_S)
    assert c.deadline() == 10 * NS_PER_S
    clock.advance(6 * NS_PER_S)
    c.receive_data(frame(Q)[:5], clock.now_ns())  # half a message: no reset
    assert c.deadline() == 10 * NS_PER_S
    clock.advance(3 * NS_PER_S)
    c.receive_data(frame(Q)[5:], clock.now_ns())  # completes it: reset
    assert c.deadline() == 19 * NS_PER_S
    clock.advance(9 * NS_PER_S)
    assert c.handle_timer(clock.now_ns()) is None
    clock.advance(1 * NS_PER_S)
    assert c.handle_timer(clock.now_ns()) is CloseReason.IDLE
    assert c.closing


def test_drip_is_closed_at_the_idle_deadline() -> None:
    clock = FakeClock()
    c = conn(clock, idle_timeout_ns=2 * NS_PER_S, lifetime_ns=0)
    data = frame(b"x" * 200)
    for i in range(40):  # one byte every 100 ms: never a whole message
        c.receive_data(data[i : i + 1], clock.now_ns())
        clock.advance(NS_PER_S // 10)
        if c.handle_timer(clock.now_ns()):
            break
    assert c.close_reason is CloseReason.IDLE
    assert clock.now_ns() == 2 * NS_PER_S


def test_query_limit_returns_every_query_of_the_read_that_reaches_it() -> None:
    clock = FakeClock()
    c = conn(clock, max_queries=3)
    assert c.receive_data(frame(Q) * 2, 0) == [Q] * 2
    assert c.keepalive(0) > 0
    assert c.receive_data(frame(Q) * 4, 0) == [Q] * 4  # read, so answered
    assert c.close_reason is CloseReason.QUERY_LIMIT
    assert c.keepalive(0) == 0  # RFC 7828: tell the client to go
    assert c.receive_data(frame(Q), 0) == []
    assert c.discard(frame(Q) * 2) == 2  # what comes after is counted, not answered


def test_write_stall_replaces_the_idle_timer_while_output_waits() -> None:
    clock = FakeClock()
    c = conn(clock, idle_timeout_ns=10 * NS_PER_S, write_stall_ns=2 * NS_PER_S, lifetime_ns=0)
    c.output_waiting(0)
    assert c.deadline() == 2 * NS_PER_S
    clock.advance(NS_PER_S)
    c.output_progress(clock.now_ns(), done=False)  # a byte taken: the stall clock restarts
    assert c.deadline() == 3 * NS_PER_S
    clock.advance(2 * NS_PER_S)
    assert c.handle_timer(clock.now_ns()) is CloseReason.WRITE_STALL


def test_a_lifetime_reached_with_output_waiting_leaves_a_future_deadline() -> None:
    c = ServerConnection(ConnectionPolicy(lifetime_ns=5, write_stall_ns=100), 0)
    c.output_waiting(1)
    assert c.handle_timer(5) is None
    assert c.closing
    assert c.deadline() == 101  # the write stall, never a deadline in the past
    assert c.handle_timer(101) is CloseReason.WRITE_STALL


def test_after_our_fin_the_client_gets_the_drain_time() -> None:
    c = ServerConnection(ConnectionPolicy(max_queries=1, drain_ns=7), 0)
    c.receive_data(frame(Q), 0)
    c.eof_sent(3)
    assert c.deadline() == 10
    assert c.handle_timer(9) is None
    assert c.handle_timer(10) is CloseReason.QUERY_LIMIT


def test_lifetime_waits_for_a_response_in_progress() -> None:
    clock = FakeClock()
    c = conn(clock, idle_timeout_ns=10 * NS_PER_S, lifetime_ns=5 * NS_PER_S)
    assert c.deadline() == 5 * NS_PER_S
    c.response_started()
    clock.advance(5 * NS_PER_S)
    assert c.handle_timer(clock.now_ns()) is None  # busy: close when done
    assert c.closing
    assert c.close_reason is CloseReason.LIFETIME
    c.response_done(clock.now_ns())
    assert c.deadline() == 15 * NS_PER_S


def test_no_idle_deadline_while_busy() -> None:
    clock = FakeClock()
    c = conn(clock, lifetime_ns=0)
    c.response_started()
    assert c.deadline() is None
    clock.advance(100 * NS_PER_S)
    assert c.handle_timer(clock.now_ns()) is None
    c.response_done(clock.now_ns())
    assert c.deadline() == 110 * NS_PER_S


@pytest.mark.parametrize(
    ("idle_s", "lifetime_s", "elapsed_s", "expected"),
    [
        (10, 0, 0, 100),  # 10 s in units of 100 ms (RFC 7828 §3.1)
        (10, 120, 115, 50),  # the lifetime left is shorter than the idle timeout
        (10_000, 0, 0, 0xFFFF),  # capped at the field's maximum
    ],
)
def test_keepalive_value(idle_s: int, lifetime_s: int, elapsed_s: int, expected: int) -> None:
    clock = FakeClock()
    c = conn(clock, idle_timeout_ns=idle_s * NS_PER_S, lifetime_ns=lifetime_s * NS_PER_S)
    assert c.keepalive(elapsed_s * NS_PER_S) == expected


@pytest.mark.parametrize("data", [b"\x00\x00", b"\xff\xff" + bytes(10)])
def test_bad_framing_closes(data: bytes) -> None:
    c = ServerConnection(ConnectionPolicy(max_message=512), 0)
    assert c.receive_data(data, 0) == []
    assert c.close_reason is CloseReason.PROTOCOL_ERROR


def test_queries_before_bad_framing_are_answered_then_closed() -> None:
    c = ServerConnection(ConnectionPolicy(max_message=512), 0)
    assert c.receive_data(frame(b"q1") + frame(b"q2") + b"\x00\x00", 0) == [b"q1", b"q2"]
    assert c.closing
    assert c.close_reason is CloseReason.PROTOCOL_ERROR
    assert c.receive_data(frame(b"q3"), 0) == []


def test_eof_inside_a_frame_is_a_protocol_error() -> None:
    c = ServerConnection(ConnectionPolicy(), 0)
    c.receive_data(frame(Q)[:7], 0)
    assert c.receive_eof() is True
    assert c.close_reason is CloseReason.PROTOCOL_ERROR
    clean = ServerConnection(ConnectionPolicy(), 0)
    clean.receive_data(frame(Q), 0)
    assert clean.receive_eof() is False
    assert clean.close_reason is CloseReason.PEER_CLOSED
