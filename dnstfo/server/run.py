"""Running the server: one process, or ``--workers N`` processes on one port.

With N workers every socket is made before forking: N listeners and N UDP sockets per
address, all with SO_REUSEPORT on the same port (port 0 resolves once, with the first),
each worker keeping its own set so the kernel spreads connections and datagrams over
them. All listeners get the same TFO key (from ``--tfo-key``, else one generated here),
so a cookie issued by one worker is accepted by all. The parent forwards SIGHUP, SIGTERM
and SIGINT to the workers and waits for them.

The supervisor serves the metrics: the sum of the workers' counters (each reports them every
second, see :mod:`~dnstfo.server.workerstats`) plus the namespace's kernel counters, and
logs their sum when the workers have stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable

from dnstfo.answer.authority import Authority
from dnstfo.errors import DnstfoError, NetworkError
from dnstfo.kernel.sockets import TfoKey
from dnstfo.kernel.sysctl import read_counters
from dnstfo.server.app import DnsServer, freeze_zones, load_authority, serve_until_signalled
from dnstfo.server.config import ServerConfig
from dnstfo.server.keys import generate_key, read_key_file
from dnstfo.server.listener import ListenerPair, open_listeners, warn_if_tfo_off
from dnstfo.server.stats import start_metrics_server
from dnstfo.server.workerstats import WorkerStats, report_periodically, write_snapshot

log = logging.getLogger(__name__)


def _serve(
    config: ServerConfig,
    listeners: list[ListenerPair],
    authority: Authority,
    *,
    on_ready: Callable[[DnsServer], None] | None,
    report_fd: int | None = None,
) -> None:
    """Serves on ``listeners``; a worker reports its counters on ``report_fd``, a single
    process serves the metrics itself."""
    server = DnsServer(config, listeners, authority)
    if report_fd is None and config.metrics is not None:
        try:
            start_metrics_server(server.stats, config.metrics.host, config.metrics.port)
        except OSError as exc:
            raise NetworkError.from_oserror(f"serving metrics on {config.metrics}", exc) from exc
        log.info("metrics on http://%s/metrics", config.metrics)

    async def serve() -> None:
        reporter = None
        if report_fd is not None:
            reporter = asyncio.create_task(report_periodically(server.stats, report_fd))
        try:
            await serve_until_signalled(server, on_ready=on_ready)
        finally:
            if reporter is not None:
                reporter.cancel()

    asyncio.run(serve())
    if report_fd is not None:  # the final counters
        os.set_blocking(report_fd, True)
        write_snapshot(server.stats, report_fd)
        os.close(report_fd)


def startup_key(config: ServerConfig) -> TfoKey | None:
    """The key every listener gets: the key file's, a fresh one for workers, or None."""
    if config.tfo_key_file is not None:
        return read_key_file(config.tfo_key_file)
    if config.workers > 1:
        log.info("no --tfo-key: generated one TFO key for all %d workers", config.workers)
        return generate_key()
    return None


def run(config: ServerConfig, *, on_ready: Callable[[DnsServer], None] | None = None) -> int:
    """Serves until SIGTERM or SIGINT; returns an exit status.

    Args:
        config: the configuration.
        on_ready: called (in each worker) once the server accepts queries.

    Raises:
        DnstfoError: the sockets or the key could not be set up.
    """
    # SIGHUP waits (pending) until the reload handler is installed: one sent while
    # starting must neither end the process nor be lost. Forked workers inherit the mask.
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        return _run(config, on_ready)
    finally:
        if signal.SIGHUP in signal.sigpending():  # came while stopping: nothing to reload
            signal.sigwait({signal.SIGHUP})
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)


def _run(config: ServerConfig, on_ready: Callable[[DnsServer], None] | None) -> int:
    key = startup_key(config)
    # Zones before sockets: a server that cannot serve never holds the port, and workers
    # inherit the zones loaded (and their errors reported) once.
    authority = load_authority(config)
    freeze_zones()  # never walked by the collector; shared copy-on-write by the workers
    warn_if_tfo_off()
    reuseport = config.reuseport or config.workers > 1
    sets: list[list[ListenerPair]] = []
    try:
        listen = config.listen
        for _ in range(config.workers):
            pairs = open_listeners(listen, tfo_queue=config.tfo_queue, key=key, reuseport=reuseport)
            listen = tuple(pair.endpoint for pair in pairs)  # later workers: the same ports
            sets.append(pairs)
    except DnstfoError:
        for pairs in sets:
            for pair in pairs:
                pair.close()
        raise
    if config.workers == 1:
        _serve(config, sets[0], authority, on_ready=on_ready)
        return 0
    return _supervise(config, sets, authority, on_ready)


def _die_with_parent() -> None:
    """Asks the kernel to SIGTERM this worker when the supervisor dies (PR_SET_PDEATHSIG)."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _supervise(
    config: ServerConfig,
    sets: list[list[ListenerPair]],
    authority: Authority,
    on_ready: Callable[[DnsServer], None] | None,
) -> int:
    """Forks one worker per socket set, serves their summed metrics and relays signals
    until they all exit."""
    pids: list[int] = []
    pipes = [os.pipe() for _ in sets]
    try:
        kernel = read_counters()
    except OSError:
        kernel = None

    def relay(signum: int, _frame: object) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    relayed = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, relay) for sig in relayed}
    for index, pairs in enumerate(sets):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                for sig in relayed:  # SIGHUP stays blocked until the worker's loop takes it
                    signal.signal(sig, signal.SIG_DFL)
                _die_with_parent()
                for other in sets:
                    if other is not pairs:
                        for pair in other:
                            pair.close()
                for i, (read_end, write_end) in enumerate(pipes):
                    os.close(read_end)
                    if i != index:
                        os.close(write_end)
                _serve(config, pairs, authority, on_ready=on_ready, report_fd=pipes[index][1])
            except BaseException:
                log.exception("worker %d failed", index)
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        pids.append(pid)
    for pairs in sets:
        for pair in pairs:
            pair.close()
    for _, write_end in pipes:
        os.close(write_end)
    counters = WorkerStats([read_end for read_end, _ in pipes], kernel)
    counters.start()
    log.info("started %d workers: %s", len(pids), " ".join(map(str, pids)))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # relay one sent meanwhile
    status = 0
    if config.metrics is not None:
        try:
            start_metrics_server(counters.total, config.metrics.host, config.metrics.port)
            log.info("metrics on http://%s/metrics", config.metrics)
        except OSError as exc:
            log.error("cannot serve metrics on %s: %s; stopping the workers", config.metrics, exc)
            relay(signal.SIGTERM, None)
            status = 1
    try:
        for pid in pids:
            _, wait_status = os.waitpid(pid, 0)
            if os.waitstatus_to_exitcode(wait_status) != 0:
                status = 1
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})  # nobody left to reload
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    counters.join(5.0)
    log.info("all %d workers stopped: %s", len(pids), counters.total().summary())
    return status
