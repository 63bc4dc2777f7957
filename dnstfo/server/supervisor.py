"""Supervising ``--workers N``: start the workers, relay signals, restart the dead, stop.

Theory of operation. Each worker has a slot (its index) and its own set of SO_REUSEPORT
sockets on the shared port. The supervisor runs one loop, a selector over each worker's
report pipe (its counters, which double as a heartbeat, see
:mod:`~dnstfo.server.workerstats`) and a wake-up pipe that the signal handlers write to
(``signal.set_wakeup_fd``), and wakes at least once per report interval to:

- reap exited workers (``waitpid`` with WNOHANG). While serving, the exit is logged and a
  restart is due after a back-off: ``RESTART_BACKOFF_S`` doubled on each death of a
  worker that ran less than ``STABLE_S``, at most ``MAX_BACKOFF_S``. The dead worker's
  sockets closed with it, so meanwhile the kernel spreads its share over the others.
- kill (SIGKILL) a worker that has sent no report for ``HUNG_AFTER_S``: its loop is stuck
  or the process is stopped, and the kernel would go on handing it its share of clients.
- start the workers whose back-off has passed, on fresh sockets. If the zones were
  reloaded since start-up, the new worker is sent a SIGHUP so it serves them too.

SIGHUP is relayed to the running workers. SIGTERM and SIGINT are relayed, and the loop
ends once every worker has exited and its pipe is drained (a worker still running
``STOP_TIMEOUT_S`` later is killed).

Signals that arrive while a worker is being forked are blocked around the fork, so the
child never runs the supervisor's handlers; it keeps SIGHUP, SIGTERM and SIGINT blocked
until its own event loop handles them (see :func:`~dnstfo.server.app.serve_until_signalled`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dnstfo.errors import DnstfoError, NetworkError
from dnstfo.kernel.sockets import TfoKey
from dnstfo.kernel.sysctl import read_counters
from dnstfo.server.config import Endpoint, ServerConfig
from dnstfo.server.forwardmetrics import ForwardCollector
from dnstfo.server.listener import ListenerPair, open_listeners
from dnstfo.server.stats import start_metrics_server
from dnstfo.server.workerstats import REPORT_INTERVAL_S, WorkerReports

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

RESTART_BACKOFF_S = 1.0
"""Delay before restarting a worker that died; doubled on each quick death."""
MAX_BACKOFF_S = 30.0
"""Longest delay before a restart."""
STABLE_S = 30.0
"""A worker that ran this long before dying is restarted after the shortest delay."""
HUNG_AFTER_S = 5.0
"""A worker silent this long (five missed reports) is killed and restarted."""
STOP_TIMEOUT_S = 15.0
"""Seconds workers get to stop after SIGTERM (they allow 5 s to in-flight answers)."""

_RELAYED = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
_HANDLED = (*_RELAYED, signal.SIGCHLD)

WorkerMain = Callable[[list[ListenerPair], int], None]
"""What a forked worker runs: serve on these sockets, report counters on this fd."""


@dataclass(slots=True)
class _Slot:
    """One worker's state in the supervisor (mutable: it follows the process)."""

    index: int
    """The worker's number, stable across restarts."""
    pid: int | None = None
    """The running process, or None while it is down."""
    fd: int | None = None
    """The read end of its report pipe, until drained."""
    started_at: float = 0.0
    """When the running process was started (monotonic seconds)."""
    heard_at: float = 0.0
    """When its last report arrived (or it started)."""
    restart_at: float | None = None
    """When to start it again, while it is down."""
    quick_deaths: int = 0
    """Deaths in a row, each after less than ``STABLE_S``: the back-off's exponent."""


class Supervisor:
    """Runs ``config.workers`` worker processes until SIGTERM or SIGINT.

    Args:
        config: the configuration.
        endpoints: the addresses as bound (port 0 resolved), for restarts.
        key: the TFO key every listener gets.
        worker_main: what each forked worker runs; it must not return before stopping.
    """

    def __init__(
        self,
        config: ServerConfig,
        endpoints: tuple[Endpoint, ...],
        key: TfoKey | None,
        worker_main: WorkerMain,
    ) -> None:
        self.config = config
        self.endpoints = endpoints
        self.key = key
        self.worker_main = worker_main
        try:
            kernel = read_counters()
        except OSError:
            kernel = None
        self.reports = WorkerReports(config.workers, kernel)
        self._slots = [_Slot(index) for index in range(config.workers)]
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        self._pending: list[int] = []
        self._stopping = False
        self._stop_deadline = 0.0
        self._reloads = 0
        self._status = 0

    def run(self, sets: list[list[ListenerPair]]) -> int:
        """Starts a worker on each socket set and supervises until they have stopped.

        Args:
            sets: one socket set per worker (closed here once handed over).

        Returns:
            0, or 1 if a worker failed to stop cleanly.

        Raises:
            NetworkError: the metrics address cannot be bound (no worker started).
        """
        try:
            if self.config.metrics is not None:
                self._serve_metrics()
            self._install_handlers()
            for slot, pairs in zip(self._slots, sets, strict=True):
                self._spawn(slot, pairs, restart=False)
            log.info("started %d workers: %s", len(self._slots), self._pids())
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # relay one sent meanwhile
            self._loop()
        finally:
            for pairs in sets:
                for pair in pairs:
                    pair.close()
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})  # nobody left to reload
            self._restore_handlers()
            self._selector.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
        log.info("all %d workers stopped: %s", len(self._slots), self.reports.total().summary())
        return self._status

    def _serve_metrics(self) -> None:
        metrics = self.config.metrics
        assert metrics is not None
        try:
            extra: list[Collector] = [self.reports.collector()]
            if self.config.forward.enabled:
                extra.append(ForwardCollector(self.reports.forward_total))
            start_metrics_server(self.reports.total, metrics.host, metrics.port, extra)
        except OSError as exc:
            raise NetworkError.from_oserror(f"serving metrics on {metrics}", exc) from exc
        log.info("metrics on http://%s/metrics", metrics)

    def _pids(self) -> str:
        return " ".join(str(slot.pid) for slot in self._slots if slot.pid is not None)

    # Signals ------------------------------------------------------------------------------

    def _install_handlers(self) -> None:
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._previous_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in _HANDLED}

    def _restore_handlers(self) -> None:
        with contextlib.suppress(AttributeError):
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(self._previous_wakeup)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._pending.append(signum)  # handled by the loop, which the wake-up fd woke

    def _handle_signals(self, now: float) -> None:
        pending, self._pending = self._pending, []
        for signum in pending:
            if signum == signal.SIGHUP and not self._stopping:
                self._reloads += 1
                self._relay(signal.SIGHUP)
            elif signum in (signal.SIGTERM, signal.SIGINT) and not self._stopping:
                log.info("stopping the workers (%s)", signal.Signals(signum).name)
                self._stopping = True
                self._stop_deadline = now + STOP_TIMEOUT_S
                self._relay(signal.SIGTERM)

    def _relay(self, signum: int) -> None:
        for slot in self._slots:
            if slot.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signum)

    # Workers ------------------------------------------------------------------------------

    def _spawn(self, slot: _Slot, pairs: list[ListenerPair], *, restart: bool) -> None:
        """Forks a worker for ``slot`` on ``pairs`` (closed here in the supervisor)."""
        read_end, write_end = os.pipe()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, set(_HANDLED))
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                self._become_worker(read_end, mask)
                self.worker_main(pairs, write_end)
            except BaseException:
                log.exception("worker %d failed", slot.index)
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(write_end)
        for pair in pairs:
            pair.close()
        now = time.monotonic()
        slot.pid, slot.fd = pid, read_end
        slot.started_at = slot.heard_at = now
        slot.restart_at = None
        self._selector.register(read_end, selectors.EVENT_READ, slot)
        self.reports.started(slot.index, restart=restart)
        if restart:
            log.info("worker %d restarted: pid %d", slot.index, pid)
            if self._reloads:  # serve the zones as reloaded, not as at start-up
                os.kill(pid, signal.SIGHUP)

    def _become_worker(self, own_read_end: int, mask: set[int | signal.Signals]) -> None:
        """In the forked child: drop the supervisor's descriptors and signal handlers."""
        signal.set_wakeup_fd(-1)
        for sig in _HANDLED:
            signal.signal(sig, signal.SIG_DFL)
        # SIGHUP, SIGTERM and SIGINT stay blocked until the worker's event loop takes them:
        # a stop asked for while the worker starts is then a graceful one.
        signal.pthread_sigmask(signal.SIG_SETMASK, {*mask, *_RELAYED})
        _die_with_parent()
        self._selector.close()
        for fd in (own_read_end, self._wake_r, self._wake_w):
            os.close(fd)
        for other in self._slots:
            if other.fd is not None:
                os.close(other.fd)

    def _loop(self) -> None:
        while True:
            now = time.monotonic()
            for key, _ in self._selector.select(self._timeout(now)):
                if key.data is None:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self._wake_r, 512):
                            pass
                else:
                    self._read_report(key.data)
            now = time.monotonic()
            self._handle_signals(now)
            self._reap(now)
            if self._stopping:
                if all(slot.pid is None and slot.fd is None for slot in self._slots):
                    return
                if now > self._stop_deadline:
                    self._kill_all("did not stop in time")
            else:
                self._kill_hung(now)
                self._restart_due(now)

    def _timeout(self, now: float) -> float:
        due = [slot.restart_at for slot in self._slots if slot.restart_at is not None]
        return max(0.0, min([now + REPORT_INTERVAL_S, *due]) - now)

    def _read_report(self, slot: _Slot) -> None:
        assert slot.fd is not None
        try:
            data = os.read(slot.fd, 65536)
        except BlockingIOError:
            return
        if not data:
            self._close_pipe(slot)
            return
        if self.reports.feed(slot.index, data):
            slot.heard_at = time.monotonic()

    def _close_pipe(self, slot: _Slot) -> None:
        """Drains a dead or finished worker's pipe to its end, then retires its counters."""
        assert slot.fd is not None
        while data := os.read(slot.fd, 65536):  # the writer has exited: this ends
            self.reports.feed(slot.index, data)
        self._selector.unregister(slot.fd)
        os.close(slot.fd)
        slot.fd = None
        self.reports.ended(slot.index)

    def _reap(self, now: float) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self._slots if s.pid == pid), None)
            if slot is None:
                continue
            slot.pid = None
            if slot.fd is not None:
                self._close_pipe(slot)
            if self._stopping:
                if os.waitstatus_to_exitcode(status) != 0:
                    self._status = 1
                continue
            ran = now - slot.started_at
            if ran >= STABLE_S:
                slot.quick_deaths = 0
            delay = _back_off(slot, now)
            log.error(
                "worker %d (pid %d) %s after %.1f s; restarting it in %.0f s",
                slot.index,
                pid,
                _exit_words(status),
                ran,
                delay,
            )

    def _kill_hung(self, now: float) -> None:
        for slot in self._slots:
            if slot.pid is not None and now - slot.heard_at > HUNG_AFTER_S:
                log.error(
                    "worker %d (pid %d) sent no report for %.0f s (stuck or stopped): killing it",
                    slot.index,
                    slot.pid,
                    now - slot.heard_at,
                )
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGKILL)
                slot.heard_at = now  # reaped on the next round

    def _kill_all(self, why: str) -> None:
        for slot in self._slots:
            if slot.pid is not None:
                log.error("worker %d (pid %d) %s: killing it", slot.index, slot.pid, why)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGKILL)
        self._stop_deadline = float("inf")
        self._status = 1

    def _restart_due(self, now: float) -> None:
        for slot in self._slots:
            if slot.pid is not None or slot.restart_at is None or slot.restart_at > now:
                continue
            try:
                pairs = open_listeners(
                    self.endpoints,
                    tfo_queue=self.config.tfo_queue,
                    key=self.key,
                    reuseport=True,
                )
            except DnstfoError as exc:
                delay = _back_off(slot, now)
                log.error("worker %d: %s; trying again in %.0f s", slot.index, exc, delay)
                continue
            self._spawn(slot, pairs, restart=True)


def _back_off(slot: _Slot, now: float) -> float:
    """Schedules ``slot``'s next start after a delay doubled per quick death; returns it."""
    delay: float = min(MAX_BACKOFF_S, RESTART_BACKOFF_S * 2**slot.quick_deaths)
    slot.quick_deaths += 1
    slot.restart_at = now + delay
    return delay


def _exit_words(status: int) -> str:
    """A wait status in words: ``killed by SIGKILL``, ``exited with status 1``."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        return f"was killed by {name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _die_with_parent() -> None:
    """Asks the kernel to SIGTERM this worker when the supervisor dies (PR_SET_PDEATHSIG)."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
