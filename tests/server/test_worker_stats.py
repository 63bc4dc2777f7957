"""Workers' counters: a snapshot survives the pipe as JSON and sums in the supervisor."""

from __future__ import annotations

import json
import os

from dnstfo.server.stats import Limit, ServerStats
from dnstfo.server.workerstats import ReportWriter, WorkerReports, snapshot_line


def _stats(queries: int, limit_hits: int) -> ServerStats:
    stats = ServerStats()
    stats.queries["tcp", 0] += queries
    stats.queries["udp", 3] += 1
    stats.tcp_connections = queries
    stats.tfo_connections = queries - 1
    stats.limits[Limit.IDLE] += limit_hits
    return stats


def test_latest_snapshots_of_each_worker_are_summed() -> None:
    reports = WorkerReports(2, kernel_at_start=None)
    reports.started(0, restart=False)
    reports.started(1, restart=False)
    read_end, write_end = os.pipe()
    writer = ReportWriter(write_end)
    writer.write(snapshot_line(_stats(5, 1)))
    writer.write(snapshot_line(_stats(7, 0)))  # replaces the worker's earlier report
    os.close(write_end)
    data = os.read(read_end, 65536)
    os.close(read_end)
    assert reports.feed(0, data[:10]) is False  # a line arrives in pieces
    assert reports.feed(0, data[10:])
    second = json.dumps(_stats(3, 2).snapshot()).encode() + b"\n"
    assert reports.feed(1, second)
    assert not reports.feed(1, b'{"not": "counters"}\n')  # ignored, the last good one stays
    total = reports.total()
    assert total.queries == {("tcp", 0): 10, ("udp", 3): 2}
    assert (total.tcp_connections, total.tfo_connections) == (10, 8)
    assert total.limits == {Limit.IDLE: 2}
    assert total.summary().startswith("12 queries, tcp 10, udp 2")


def test_a_dead_workers_counters_stay_in_the_sum() -> None:
    reports = WorkerReports(1, kernel_at_start=None)
    reports.started(0, restart=False)
    reports.feed(0, json.dumps(_stats(5, 0).snapshot()).encode() + b"\n")
    reports.ended(0)
    assert not reports.up(0)
    reports.started(0, restart=True)
    reports.feed(0, json.dumps(_stats(2, 0).snapshot()).encode() + b"\n")
    assert reports.up(0)
    assert reports.restarts[0] == 1
    assert reports.total().total_queries() == 5 + 1 + 2 + 1
