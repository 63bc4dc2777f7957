"""The counters of ``--workers N`` processes, summed in the supervisor.

Each worker writes a snapshot of its counters (one JSON line) to its own pipe every
``REPORT_INTERVAL_S`` and once more when it stops. The supervisor keeps each worker's
latest line and sums them when Prometheus scrapes and for the summary at exit, so the
metrics are at most one interval behind. A line is at most a few hundred bytes, well under
PIPE_BUF, so each write is atomic; when the pipe is full the snapshot is skipped (the next
one carries the same counters and more).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import selectors
import threading
from typing import Any

from dnstfo.kernel.sysctl import FastOpenCounters
from dnstfo.server.stats import ServerStats

log = logging.getLogger(__name__)

REPORT_INTERVAL_S = 1.0
"""How often a worker reports its counters."""


def write_snapshot(stats: ServerStats, fd: int) -> None:
    """Writes one snapshot line to the supervisor (skipped when the pipe is full)."""
    line = json.dumps(stats.snapshot(), separators=(",", ":")).encode() + b"\n"
    with contextlib.suppress(BlockingIOError, BrokenPipeError):
        os.write(fd, line)


async def report_periodically(stats: ServerStats, fd: int) -> None:
    """Reports ``stats`` on ``fd`` every ``REPORT_INTERVAL_S`` until cancelled."""
    os.set_blocking(fd, False)
    while True:
        write_snapshot(stats, fd)
        await asyncio.sleep(REPORT_INTERVAL_S)


class WorkerStats:
    """Reads the workers' snapshot lines in a thread; :meth:`total` sums the latest ones.

    Args:
        fds: the read ends of the workers' pipes (closed when their workers exit).
        kernel_at_start: the namespace's TFO counters when the workers started.
    """

    def __init__(self, fds: list[int], kernel_at_start: FastOpenCounters | None) -> None:
        self._kernel_at_start = kernel_at_start
        self._latest: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._fds = fds
        self._thread = threading.Thread(target=self._read, name="worker-stats", daemon=True)

    def start(self) -> None:
        """Starts reading."""
        self._thread.start()

    def join(self, timeout: float) -> None:
        """Waits until every pipe has ended (the workers exited), at most ``timeout`` s."""
        self._thread.join(timeout)

    def total(self) -> ServerStats:
        """The sum of every worker's latest counters."""
        total = ServerStats(kernel_at_start=self._kernel_at_start)
        with self._lock:
            latest = list(self._latest.values())
        for snapshot in latest:
            total.add(snapshot)
        return total

    def _read(self) -> None:
        buffers = dict.fromkeys(self._fds, b"")
        with selectors.DefaultSelector() as selector:
            for fd in self._fds:
                selector.register(fd, selectors.EVENT_READ)
            while buffers:
                for key, _ in selector.select():
                    fd = int(key.fd)
                    data = os.read(fd, 65536)
                    if not data:
                        selector.unregister(fd)
                        os.close(fd)
                        del buffers[fd]
                        continue
                    *lines, buffers[fd] = (buffers[fd] + data).split(b"\n")
                    self._keep_latest(fd, lines)

    def _keep_latest(self, fd: int, lines: list[bytes]) -> None:
        """Keeps the last good snapshot among ``lines``."""
        for line in reversed(lines):
            try:
                snapshot = json.loads(line)
                ServerStats().add(snapshot)  # check it before keeping it
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("bad counters from a worker: %s", exc)
                continue
            with self._lock:
                self._latest[fd] = snapshot
            return
