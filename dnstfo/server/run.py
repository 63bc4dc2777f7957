"""Running the server: one process, or ``--workers N`` processes on one port.

With N workers every socket is made before forking: N listeners and N UDP sockets per
address, all with SO_REUSEPORT on the same port (port 0 resolves once, with the first),
each worker keeping its own set so the kernel spreads connections and datagrams over
them. All listeners get the same TFO key (from ``--tfo-key``, else one generated here),
so a cookie issued by one worker is accepted by all. The parent forwards SIGHUP, SIGTERM
and SIGINT to the workers and waits for them.

Metrics are served by the first worker only: its own counters plus the namespace's
kernel counters (shared by all workers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable

from dnstfo.errors import DnstfoError
from dnstfo.kernel.sockets import TfoKey
from dnstfo.server.app import DnsServer, load_authority, serve_until_signalled
from dnstfo.server.config import ServerConfig
from dnstfo.server.keys import generate_key, read_key_file
from dnstfo.server.listener import ListenerPair, open_listeners, warn_if_tfo_off
from dnstfo.server.stats import start_metrics_server

log = logging.getLogger(__name__)


def _serve(
    config: ServerConfig,
    listeners: list[ListenerPair],
    *,
    metrics: bool,
    on_ready: Callable[[DnsServer], None] | None,
) -> None:
    # A SIGHUP before the loop's handler is installed must not end the process.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    authority = load_authority(config)
    server = DnsServer(config, listeners, authority)
    if metrics and config.metrics is not None:
        start_metrics_server(server.stats, config.metrics.host, config.metrics.port)
        log.info("metrics on http://%s/metrics", config.metrics)
    asyncio.run(serve_until_signalled(server, on_ready=on_ready))


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
    warn_if_tfo_off()
    key = startup_key(config)
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
        _serve(config, sets[0], metrics=True, on_ready=on_ready)
        return 0
    return _supervise(config, sets, on_ready)


def _die_with_parent() -> None:
    """Asks the kernel to SIGTERM this worker when the supervisor dies (PR_SET_PDEATHSIG)."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _supervise(
    config: ServerConfig,
    sets: list[list[ListenerPair]],
    on_ready: Callable[[DnsServer], None] | None,
) -> int:
    """Forks one worker per socket set and relays signals until they all exit."""
    pids: list[int] = []

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
                for sig in relayed:
                    signal.signal(sig, signal.SIG_IGN if sig == signal.SIGHUP else signal.SIG_DFL)
                _die_with_parent()
                for other in sets:
                    if other is not pairs:
                        for pair in other:
                            pair.close()
                _serve(config, pairs, metrics=index == 0, on_ready=on_ready)
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
    log.info("started %d workers: %s", len(pids), " ".join(map(str, pids)))
    status = 0
    try:
        for pid in pids:
            _, wait_status = os.waitpid(pid, 0)
            if os.waitstatus_to_exitcode(wait_status) != 0:
                status = 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status
