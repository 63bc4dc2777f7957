"""Workers' counters: a snapshot survives the pipe as JSON and sums in the supervisor."""

from __future__ import annotations

import os

from dnstfo.server.stats import Limit, ServerStats
from dnstfo.server.workerstats import WorkerStats, write_snapshot


def _stats(queries: int, limit_hits: int) -> ServerStats:
    stats = ServerStats()
    stats.queries["tcp", 0] += queries
    stats.queries["udp", 3] += 1
    stats.tcp_connections = queries
    stats.tfo_connections = queries - 1
    stats.limits[Limit.IDLE] += limit_hits
    return stats


def test_latest_snapshots_of_each_worker_are_summed() -> None:
    pipes = [os.pipe() for _ in range(2)]
    counters = WorkerStats([r for r, _ in pipes], kernel_at_start=None)
    counters.start()
    (_, first), (_, second) = pipes
    write_snapshot(_stats(5, 1), first)
    write_snapshot(_stats(7, 0), first)  # replaces the worker's earlier report
    write_snapshot(_stats(3, 2), second)
    os.write(second, b'{"not": "counters"}\n')  # ignored, the last good report stays
    for _, w in pipes:
        os.close(w)
    counters.join(5)
    total = counters.total()
    assert total.queries == {("tcp", 0): 10, ("udp", 3): 2}
    assert (total.tcp_connections, total.tfo_connections) == (10, 8)
    assert total.limits == {Limit.IDLE: 2}
    assert total.summary().startswith("12 queries, tcp 10, udp 2")
