"""The delay line on its own: delay per direction, accuracy, jitter order, loss, the log."""

from __future__ import annotations

import inspect
import os
import statistics
from dataclasses import replace

import pytest

from dnstfo.lab.delay import Action, Direction, PacketRecord
from dnstfo.lab.netns import WIRE_PRIORITY, realtime_priority
from dnstfo.lab.ping import ping_exchange
from dnstfo.lab.topology import Lab
from tests.lab.conftest import requires_lab

pytestmark = [pytest.mark.lab, pytest.mark.netadmin, requires_lab]


def _delays(records: list[PacketRecord], direction: Direction) -> list[float]:
    return [r.delay_ms for r in records if r.direction is direction and r.delay_ms is not None]


def test_one_way_delays_are_accurate_per_direction(fresh_lab: Lab, target: tuple[str, int]) -> None:
    fresh_lab.delay.configure(replace(fresh_lab.delay.config, c2s_delay_ms=20, s2c_delay_ms=60))
    # The timed client runs at real-time priority, as the server and the relay do: a busy
    # machine must not add its scheduling delay to the path's.
    first = fresh_lab.client.run(ping_exchange, target, realtime=True)
    assert 160 <= first.ms < 180  # no cookie yet: handshake, then request, each 20 + 60 ms
    later = [fresh_lab.client.run(ping_exchange, target, realtime=True).ms for _ in range(5)]
    assert min(later) >= 80  # request in the SYN: one round trip
    assert statistics.median(later) < 84
    records = [r for r in fresh_lab.delay.packets() if r.tcp]
    c2s, s2c = _delays(records, Direction.C2S), _delays(records, Direction.S2C)
    assert len(c2s) >= 10
    assert len(s2c) >= 10
    # A packet can never leave early; the median must be within 1 ms of the target.
    assert min(c2s) >= 20
    assert min(s2c) >= 60
    assert statistics.median(c2s) - 20 < 1.0
    assert statistics.median(s2c) - 60 < 1.0


def test_jitter_varies_the_delay_without_reordering(
    fresh_lab: Lab, target: tuple[str, int]
) -> None:
    fresh_lab.delay.configure(replace(fresh_lab.delay.config, jitter_ms=20, seed=7))
    for _ in range(3):
        fresh_lab.client.run(ping_exchange, target)
    records = fresh_lab.delay.packets()
    for direction in Direction:
        sent = [r.sent_ns for r in records if r.direction is direction and r.sent_ns]
        assert sent == sorted(sent)
    delays = _delays(records, Direction.C2S) + _delays(records, Direction.S2C)
    assert max(delays) - min(delays) > 5  # the spread is real
    assert min(delays) >= 30


def test_total_loss_drops_everything_and_says_so(fresh_lab: Lab) -> None:
    import socket

    fresh_lab.delay.configure(replace(fresh_lab.delay.config, loss=1.0))

    with fresh_lab.client.in_thread(socket.socket) as sock:
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.connect((fresh_lab.server_v4, 9))
    # Only this connection's packets: the previous test's connections may still be closing.
    records = [r for r in fresh_lab.delay.packets() if r.tcp and 9 in (r.sport, r.dport)]
    assert records
    lost = [r.action is Action.LOST and r.sent_ns is None for r in records]
    assert all(lost), [r.describe() for r in records]


def test_clear_empties_the_log_but_indexes_keep_counting(
    fresh_lab: Lab, target: tuple[str, int]
) -> None:
    fresh_lab.client.run(ping_exchange, target)
    first = fresh_lab.delay.packets()
    assert first
    fresh_lab.delay.clear()
    assert [r for r in fresh_lab.delay.packets() if r.tcp] == []
    fresh_lab.client.run(ping_exchange, target)
    assert min(r.index for r in fresh_lab.delay.packets()) > max(r.index for r in first)


def test_ipv6_path_works(fresh_lab: Lab) -> None:
    from dnstfo.lab.ping import ping_server

    assert fresh_lab.server_v6 is not None
    with ping_server(fresh_lab.server, fresh_lab.server_v6) as address:
        first = fresh_lab.client.run(ping_exchange, address)
        second = fresh_lab.client.run(ping_exchange, address)
    assert first.cookie_after is not None
    assert second.syn_data_acked
    assert any(r.version == 6 and r.tcp for r in fresh_lab.delay.packets())


def test_stats_count_what_the_log_shows_and_the_relay_keeps_time(
    fresh_lab: Lab, target: tuple[str, int]
) -> None:
    from dnstfo.lab.delay import Fault

    before = fresh_lab.delay.stats()
    for _ in range(3):
        fresh_lab.client.run(ping_exchange, target)
    fresh_lab.delay.configure(
        replace(fresh_lab.delay.config, faults=frozenset({Fault.DROP_SYN_TFO}))
    )
    fresh_lab.client.run(ping_exchange, target)  # its SYN carries a cookie: dropped
    after = fresh_lab.delay.stats()
    # The log since the first snapshot: record indexes count packets as the stats do.
    log = [r for r in fresh_lab.delay.packets() if before.packets <= r.index < after.packets]
    for action in Action:
        assert after.actions[action] - before.actions[action] == sum(
            r.action is action for r in log
        ), action
    assert after.actions[Action.DROPPED] - before.actions[Action.DROPPED] == 1
    assert after.packets - before.packets == len(log)
    assert after.write_failures == before.write_failures
    assert after.late_ms_p50 is not None
    assert after.late_ms_p50 < 1.0  # packets leave on time
    assert set(fresh_lab.tun_drops()) == {fresh_lab.client.name, fresh_lab.server.name}
    assert all(v == 0 for v in fresh_lab.tun_drops().values())


def test_relay_runs_above_the_timed_processes(fresh_lab: Lab) -> None:
    # Real-time processes of equal priority do not preempt each other: a timed server's
    # burst of work on the relay's CPU would hold packets that are due. The relay is the
    # wire, so it runs above what the lab times (realtime_priority's default).
    timed = inspect.signature(realtime_priority).parameters["priority"].default
    assert os.sched_getscheduler(fresh_lab.delay.pid) == os.SCHED_FIFO
    assert os.sched_getparam(fresh_lab.delay.pid).sched_priority == WIRE_PRIORITY > timed
