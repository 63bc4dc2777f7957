"""A delay line's log of one exchange, split between the link and the programs at its ends."""

from __future__ import annotations

import pytest

from dnstfo.errors import LabError
from dnstfo.lab.delay import Action, Direction, PacketRecord
from dnstfo.lab.linktimes import ExchangeTimes, exchange_times
from dnstfo.lab.packet import TcpFlags

_FLAGS = {"S": TcpFlags.SYN, ".": TcpFlags.ACK, "F": TcpFlags.FIN}


def _packet(
    direction: str, ms: tuple[float, float], ports: tuple[int, int], flags: str, payload: int
) -> PacketRecord:
    """A logged TCP segment: read at ms[0], written at ms[1]."""
    bits = TcpFlags(0)
    for letter in flags:
        bits |= _FLAGS[letter]
    received, sent = (round(t * 1e6) for t in ms)
    return PacketRecord(0, Direction(direction), received, sent, Action.FORWARDED, 4, 40 + payload,
                        True, *ports, bits, False, None, False, payload)  # fmt: skip


CLIENT, OTHER = 40000, 39998


def test_a_handshake_then_the_query_leaves_out_both_programs() -> None:
    packets = [
        _packet("c2s", (0, 25), (CLIENT, 53), "S", 0),
        _packet("s2c", (10, 35), (53, OTHER), "F.", 0),  # the last query's connection closing
        _packet("s2c", (25, 50), (53, CLIENT), "S.", 0),
        _packet("c2s", (50.1, 75.1), (CLIENT, 53), ".", 0),  # the kernel's ACK
        _packet("c2s", (50.4, 75.4), (CLIENT, 53), ".", 2),  # the program: a query in two
        _packet("c2s", (50.5, 75.5), (CLIENT, 53), ".", 40),
        _packet("s2c", (76, 101), (53, CLIENT), ".", 0),  # the server's ACK
        _packet("s2c", (277.5, 302.5), (53, CLIENT), ".", 1400),  # an answer in two
        _packet("s2c", (277.6, 302.6), (53, CLIENT), ".", 200),
        _packet("c2s", (303, 328), (CLIENT, 53), "F.", 0),
    ]
    times = exchange_times(packets, CLIENT)
    assert times == ExchangeTimes(
        span_ns=302_600_000, far_ns=202_000_000, near_ns=400_000, opened=True
    )
    assert times.link_ns == 100_200_000  # two round trips of 50 ms, the rest of the answer


def test_the_query_in_the_syn_leaves_out_the_server_alone() -> None:
    packets = [
        _packet("c2s", (0, 25), (CLIENT, 53), "S", 42),
        _packet("s2c", (25.02, 50.02), (53, CLIENT), "S.", 0),
        _packet("s2c", (26, 51), (53, CLIENT), ".", 58),
    ]
    times = exchange_times(packets, CLIENT)
    assert times == ExchangeTimes(span_ns=51_000_000, far_ns=1_000_000, near_ns=0, opened=True)


def test_an_open_connection_starts_at_the_query_and_finds_its_port() -> None:
    up = 50000
    packets = [
        _packet("c2s", (0, 50), (up, 53), ".", 0),  # a late ACK of the last answer
        _packet("c2s", (5, 55), (up, 53), ".", 44),  # the query, on the same connection
        _packet("s2c", (55.1, 105.1), (53, up), ".", 0),
        _packet("s2c", (55.3, 105.3), (53, up), ".", 64),
    ]
    times = exchange_times(packets)
    assert times == ExchangeTimes(span_ns=100_300_000, far_ns=300_000, near_ns=0, opened=False)
    assert times.link_ns == 100_000_000


def test_nothing_sent_is_none_and_a_missing_answer_is_an_error() -> None:
    ack = _packet("c2s", (0, 50), (CLIENT, 53), ".", 0)
    assert exchange_times([ack]) is None
    with pytest.raises(LabError, match="nothing from port"):
        exchange_times([ack], CLIENT)
    with pytest.raises(LabError, match="no answer"):
        exchange_times([_packet("c2s", (0, 25), (CLIENT, 53), "S", 42)])
