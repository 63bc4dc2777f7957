"""The counters and liveness of ``--workers N`` processes, kept by the supervisor.

Each worker writes a snapshot of its counters (one JSON line: its :class:`ServerStats`,
and under ``forward`` its :class:`~dnstfo.server.forwardmetrics.ForwardStats` when it
forwards) to its own pipe every ``REPORT_INTERVAL_S`` and once more when it stops. The
supervisor feeds what it reads to :class:`WorkerReports`, which keeps each worker's latest
line and sums them when Prometheus scrapes and for the summary at exit, so the metrics are
at most one interval behind. A line is usually well under PIPE_BUF (4096 bytes: about 250
bytes of server counters and 100 to 400 per upstream), so the kernel writes it whole or
not at all; when the pipe is full the snapshot is skipped (the next one carries the same
counters and more). A longer line (past 8 upstreams with large counters) may be written
in part: :class:`ReportWriter` then finishes it before writing any other, so the
supervisor never reads a mixed line (each pipe has one writer: nothing else comes between
the parts). A worker that dies keeps its last report's counters in the sum, but not its
gauges: its successor starts from zero.

The reports double as a heartbeat: a worker whose loop is stuck (or stopped) falls
silent, and the supervisor restarts it (see :mod:`~dnstfo.server.supervisor`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from dnstfo.kernel.sysctl import FastOpenCounters
from dnstfo.server.forwardmetrics import ForwardStats
from dnstfo.server.stats import ServerStats

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

log = logging.getLogger(__name__)

REPORT_INTERVAL_S = 1.0
"""How often a worker reports its counters."""


def snapshot_line(stats: ServerStats, forward: ForwardStats | None = None) -> bytes:
    """One report: the counters as a JSON line."""
    counts = stats.snapshot()
    if forward is not None:
        counts["forward"] = forward.snapshot()
    return json.dumps(counts, separators=(",", ":")).encode() + b"\n"


class ReportWriter:
    """Writes report lines to the supervisor's pipe, whole, without blocking the loop.

    Args:
        fd: the pipe's write end (made non-blocking here).
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self._rest = b""
        """The end of a line the full pipe cut short, to write before any other."""

    def write(self, line: bytes) -> None:
        """Writes ``line``, or skips it when the pipe is full (or an earlier line's end
        still does not fit)."""
        if self._rest:
            self._rest = self._rest[self._send(self._rest) :]
            if self._rest:
                return
        sent = self._send(line)
        self._rest = line[sent:] if sent else b""

    def close(self, last: bytes) -> None:
        """Writes the rest of a cut line and the ``last`` one, waiting for room, then
        closes the pipe."""
        os.set_blocking(self.fd, True)
        data = self._rest + last
        with contextlib.suppress(BrokenPipeError):
            while data:
                data = data[os.write(self.fd, data) :]
        os.close(self.fd)

    def _send(self, data: bytes) -> int:
        try:
            return os.write(self.fd, data)
        except BlockingIOError:
            return 0
        except BrokenPipeError:  # the supervisor is gone: nobody reads
            return len(data)


async def report_periodically(
    stats: ServerStats, writer: ReportWriter, forward: Callable[[], ForwardStats] | None = None
) -> None:
    """Reports ``stats`` (and the ``forward`` counters) every ``REPORT_INTERVAL_S`` until
    cancelled."""
    while True:
        writer.write(snapshot_line(stats, forward() if forward is not None else None))
        await asyncio.sleep(REPORT_INTERVAL_S)


class WorkerReports:
    """Each worker's latest counters and whether it is up; safe to read from any thread.

    Args:
        workers: how many workers there are (indexes 0 to workers - 1).
        kernel_at_start: the namespace's TFO counters when the workers started.
    """

    def __init__(self, workers: int, kernel_at_start: FastOpenCounters | None) -> None:
        self.workers = workers
        self._kernel_at_start = kernel_at_start
        self._lock = threading.Lock()
        self._latest: dict[int, dict[str, Any]] = {}
        self._retired: list[dict[str, Any]] = []
        self._buffers: dict[int, bytes] = {}
        self._up = dict.fromkeys(range(workers), False)
        self.restarts: Counter[int] = Counter()
        """Restarts of each worker (by index)."""

    def started(self, index: int, *, restart: bool) -> None:
        """A worker (re)started: it is up, with no report yet."""
        with self._lock:
            self._up[index] = True
            self._buffers[index] = b""
            if restart:
                self.restarts[index] += 1

    def feed(self, index: int, data: bytes) -> bool:
        """Takes bytes read from a worker's pipe; returns whether a good report completed."""
        *lines, self._buffers[index] = (self._buffers.get(index, b"") + data).split(b"\n")
        for line in reversed(lines):
            try:
                snapshot = json.loads(line)
                ServerStats().add(snapshot)  # check it before keeping it
                if "forward" in snapshot:
                    ForwardStats().add(snapshot["forward"])
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                log.warning("bad counters from worker %d: %s", index, exc)
                continue
            with self._lock:
                self._latest[index] = snapshot
            return True
        return False

    def ended(self, index: int) -> None:
        """A worker exited: it is down, and its last report stays in the sum."""
        with self._lock:
            self._up[index] = False
            snapshot = self._latest.pop(index, None)
            if snapshot is not None:
                self._retired.append(snapshot)

    def up(self, index: int) -> bool:
        """Whether the worker is running now."""
        with self._lock:
            return self._up[index]

    def total(self) -> ServerStats:
        """The sum of every worker's latest counters, and of the workers that died."""
        total = ServerStats(kernel_at_start=self._kernel_at_start)
        with self._lock:
            snapshots = [*self._retired, *self._latest.values()]
        for snapshot in snapshots:
            total.add(snapshot)
        return total

    def forward_total(self) -> ForwardStats:
        """The sum of every worker's forwarding counters, as :meth:`total`; the gauges
        (cache size, queries in flight) of the running workers only."""
        total = ForwardStats()
        with self._lock:
            retired, latest = list(self._retired), list(self._latest.values())
        for snapshots, running in ((retired, False), (latest, True)):
            for snapshot in snapshots:
                if "forward" in snapshot:
                    total.add(snapshot["forward"], gauges=running)
        return total

    def collector(self) -> WorkerCollector:
        """A Prometheus collector of the workers' liveness and restarts."""
        return WorkerCollector(self)


class WorkerCollector:
    """``dnstfo_worker_up{worker="i"}`` (1 while running) and
    ``dnstfo_worker_restarts_total{worker="i"}``."""

    def __init__(self, reports: WorkerReports) -> None:
        self._reports = reports

    def collect(self) -> Iterator[Metric]:
        """Yields the metric families (called by prometheus_client on each scrape)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        up = GaugeMetricFamily(
            "dnstfo_worker_up",
            "1 while the worker process runs, 0 while restarting",
            labels=["worker"],
        )
        restarts = CounterMetricFamily(
            "dnstfo_worker_restarts", "Times the worker was restarted", labels=["worker"]
        )
        for index in range(self._reports.workers):
            up.add_metric([str(index)], 1.0 if self._reports.up(index) else 0.0)
            restarts.add_metric([str(index)], float(self._reports.restarts[index]))
        yield up
        yield restarts
