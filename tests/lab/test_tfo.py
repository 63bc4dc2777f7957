"""TCP Fast Open through the lab at 100 ms RTT: round trips, TCP_INFO, cookies and faults.

Each claim is checked three ways that must agree: the time from the socket call to the last
byte of the answer, the kernel's own view (TCP_INFO on both sides, tcp_metrics), and the
delay line's packet log.
"""

from __future__ import annotations

import statistics
from dataclasses import replace

import pytest

from dnstfo.kernel import tcp_metrics
from dnstfo.kernel.tcpinfo import FastOpenClientFail
from dnstfo.lab.delay import Action, Direction, Fault, PacketRecord
from dnstfo.lab.ping import PingExchange, ping_exchange
from dnstfo.lab.topology import Lab
from tests.lab.conftest import RTT_MS, requires_lab

pytestmark = [pytest.mark.lab, pytest.mark.netadmin, pytest.mark.linux, requires_lab]

TOLERANCE = 0.05
SYN_RTO_MS = 1000  # the kernel's initial SYN retransmission timeout (TCP_TIMEOUT_INIT)


def exchange(lab: Lab, target: tuple[str, int]) -> PingExchange:
    return lab.client.run(ping_exchange, target, realtime=True)


def forget_cookie(lab: Lab, target: tuple[str, int]) -> None:
    lab.client.run(tcp_metrics.delete, target[0])


def assert_rounds(samples_ms: list[float], rounds: int) -> None:
    """The median of the samples is ``rounds`` RTTs, within 5 %; none is faster."""
    expected = rounds * RTT_MS
    assert min(samples_ms) >= expected * 0.99, samples_ms  # the delay line never hurries
    assert abs(statistics.median(samples_ms) - expected) <= expected * TOLERANCE, samples_ms


def packets_of(lab: Lab, x: PingExchange) -> list[PacketRecord]:
    """The exchange's TCP packets from the delay line's log."""
    port = x.local_port
    return [
        r
        for r in lab.delay.packets()
        if r.tcp and port == (r.sport if r.direction is Direction.C2S else r.dport)
    ]


def syns(records: list[PacketRecord]) -> list[PacketRecord]:
    return [r for r in records if r.is_syn]


def synacks(records: list[PacketRecord]) -> list[PacketRecord]:
    return [r for r in records if r.is_synack]


def get_cookie(lab: Lab, target: tuple[str, int]) -> bytes:
    x = exchange(lab, target)
    assert x.cookie_after is not None
    return x.cookie_after


def test_first_contact_takes_two_round_trips_then_one(
    fresh_lab: Lab, target: tuple[str, int]
) -> None:
    lab = fresh_lab
    first = exchange(lab, target)
    later = [exchange(lab, target) for _ in range(3)]

    assert first.cookie_before is None
    assert first.client_fail is FastOpenClientFail.COOKIE_UNAVAILABLE
    assert not first.syn_data_acked
    assert not first.server_syn_data
    assert first.cookie_after is not None
    for x in later:
        assert x.cookie_before == first.cookie_after
        assert x.syn_data_acked  # client TCP_INFO: tcpi_options & SYN_DATA
        assert x.server_syn_data  # server TCP_INFO: the request came in the SYN
        assert x.client_fail is FastOpenClientFail.UNSPEC
        assert x.total_retrans == 0
    assert_rounds([x.ms for x in later], 1)

    # The kernel's cookie cache holds what the server gave, for the server's address.
    (entry,) = [e for e in lab.client.run(tcp_metrics.lookup, target[0]) if e.cookie]
    assert entry.cookie == first.cookie_after

    # The packet log tells the same story: cookie request, then cookie plus data in the SYN.
    (syn,) = syns(packets_of(lab, first))
    assert (syn.cookie_len, syn.payload_len) == (0, 0)
    (synack,) = synacks(packets_of(lab, first))
    assert synack.cookie_len == len(first.cookie_after)
    for x in later:
        (syn,) = syns(packets_of(lab, x))
        assert syn.cookie_len == len(first.cookie_after)
        assert syn.payload_len == len(b"PING\n")
        assert syn.action is Action.FORWARDED


def test_without_the_cookie_it_takes_two_round_trips_again(
    fresh_lab: Lab, target: tuple[str, int]
) -> None:
    get_cookie(fresh_lab, target)
    samples = []
    for _ in range(3):
        forget_cookie(fresh_lab, target)
        assert fresh_lab.client.run(tcp_metrics.cookie_for, target[0]) is None
        x = exchange(fresh_lab, target)
        assert x.cookie_before is None
        assert not x.syn_data_acked
        samples.append(x.ms)
    assert_rounds(samples, 2)
    first_try = [exchange(fresh_lab, target).ms for _ in range(3)]
    assert_rounds(first_try, 1)


def test_server_bit_off_with_a_cached_cookie_leaves_syn_data_unacked(
    fresh_lab: Lab, target: tuple[str, int]
) -> None:
    get_cookie(fresh_lab, target)
    fresh_lab.server.write_sysctls({"net.ipv4.tcp_fastopen": "1"})
    tries = [exchange(fresh_lab, target) for _ in range(3)]
    for x in tries:  # the cookie stays cached, so every try sends data in the SYN
        assert x.cookie_before is not None
        assert not x.syn_data_acked
        assert not x.server_syn_data
        assert x.client_fail is FastOpenClientFail.DATA_NOT_ACKED
        assert x.total_retrans == 1  # the data went again after the handshake
        (syn,) = syns(packets_of(fresh_lab, x))
        assert syn.payload_len > 0  # the data was in the SYN; the server ignored it
        (synack,) = synacks(packets_of(fresh_lab, x))
        assert synack.cookie_len is None
    assert_rounds([x.ms for x in tries], 2)


def test_server_bit_off_gives_no_cookie(fresh_lab: Lab, target: tuple[str, int]) -> None:
    fresh_lab.server.write_sysctls({"net.ipv4.tcp_fastopen": "1"})
    tries = [exchange(fresh_lab, target) for _ in range(3)]
    for x in tries:
        assert x.client_fail is FastOpenClientFail.COOKIE_UNAVAILABLE
        assert not x.syn_data_acked
        assert x.cookie_after is None
    assert_rounds([x.ms for x in tries], 2)


@pytest.mark.parametrize("fault", [Fault.STRIP_TFO_SYN, Fault.STRIP_TFO_SYNACK])
def test_stripped_option_means_no_cookie(
    fresh_lab: Lab, target: tuple[str, int], fault: Fault
) -> None:
    fresh_lab.delay.configure(replace(fresh_lab.delay.config, faults=frozenset({fault})))
    first, second, third = (exchange(fresh_lab, target) for _ in range(3))
    for x in (first, second, third):
        assert x.cookie_after is None
        assert not x.syn_data_acked
        assert x.client_fail is FastOpenClientFail.COOKIE_UNAVAILABLE
    assert fresh_lab.client.run(tcp_metrics.cookie_for, target[0]) is None
    assert_rounds([first.ms, second.ms, third.ms], 2)

    stripped = syns if fault is Fault.STRIP_TFO_SYN else synacks
    (record,) = stripped(packets_of(fresh_lab, first))
    assert record.action is Action.STRIPPED
    # With no answer to its kind-34 request, Linux asks again in the experimental
    # kind-254 form (try_exp); the middlebox strips that one too.
    (retry,) = syns(packets_of(fresh_lab, second))
    if fault is Fault.STRIP_TFO_SYN:
        assert retry.tfo_experimental
        assert retry.action is Action.STRIPPED
    else:
        assert retry.tfo_option
        (synack,) = synacks(packets_of(fresh_lab, second))
        assert synack.action is Action.STRIPPED


def test_strip_in_syn_with_a_cached_cookie_costs_a_retransmission(
    fresh_lab: Lab, target: tuple[str, int]
) -> None:
    get_cookie(fresh_lab, target)
    fresh_lab.delay.configure(
        replace(fresh_lab.delay.config, faults=frozenset({Fault.STRIP_TFO_SYN}))
    )
    tries = [exchange(fresh_lab, target) for _ in range(3)]
    for x in tries:
        assert not x.syn_data_acked  # the server saw data in a SYN without a cookie
        assert not x.server_syn_data
        assert x.client_fail is FastOpenClientFail.DATA_NOT_ACKED
        (syn,) = syns(packets_of(fresh_lab, x))
        assert syn.action is Action.STRIPPED
        assert syn.payload_len > 0
    assert_rounds([x.ms for x in tries], 2)


def test_dropped_syn_data_goes_after_a_retransmitted_syn(
    fresh_lab: Lab, target: tuple[str, int]
) -> None:
    get_cookie(fresh_lab, target)
    fresh_lab.delay.configure(
        replace(fresh_lab.delay.config, faults=frozenset({Fault.DROP_SYN_DATA}))
    )
    x = exchange(fresh_lab, target)
    assert not x.syn_data_acked
    assert not x.server_syn_data
    assert x.client_fail is FastOpenClientFail.SYN_RETRANSMITTED
    assert x.total_retrans >= 1
    assert x.ms >= SYN_RTO_MS + 2 * RTT_MS * 0.99  # one SYN timeout, then 2 round trips

    records = packets_of(fresh_lab, x)
    first, retry = syns(records)
    assert (first.action, first.payload_len > 0) == (Action.DROPPED, True)
    assert (retry.action, retry.payload_len, retry.tfo_option) == (Action.FORWARDED, 0, False)
    data = [r for r in records if r.direction is Direction.C2S and r.payload_len and not r.is_syn]
    assert data
    assert data[0].action is Action.FORWARDED
    assert data[0].received_ns > retry.received_ns
    # The cookie survives one loss: the kernel backs off only after repeated drops.
    assert x.cookie_after == x.cookie_before


def test_dropped_tfo_syn_falls_back_to_a_plain_syn(fresh_lab: Lab, target: tuple[str, int]) -> None:
    fresh_lab.delay.configure(
        replace(fresh_lab.delay.config, faults=frozenset({Fault.DROP_SYN_TFO}))
    )
    x = exchange(fresh_lab, target)  # no cookie: the SYN carries a cookie request
    assert x.cookie_after is None
    assert not x.syn_data_acked
    assert x.client_fail is FastOpenClientFail.COOKIE_UNAVAILABLE
    assert x.ms >= SYN_RTO_MS + 2 * RTT_MS * 0.99
    first, retry = syns(packets_of(fresh_lab, x))
    assert (first.action, first.cookie_len) == (Action.DROPPED, 0)
    assert (retry.action, retry.tfo_option) == (Action.FORWARDED, False)
