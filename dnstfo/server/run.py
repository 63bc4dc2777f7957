"""Running the server: one process, or ``--workers N`` processes on one port.

With N workers every socket is made before forking: N listeners and N UDP sockets per
address, all with SO_REUSEPORT on the same port (port 0 resolves once, with the first),
each worker keeping its own set so the kernel spreads connections and datagrams over
them. All listeners get the same TFO key (from ``--tfo-key``, else one generated here),
so a cookie issued by one worker is accepted by all. The parent supervises them (see
:mod:`~dnstfo.server.supervisor`): it relays SIGHUP, SIGTERM and SIGINT, restarts a worker
that dies or hangs, and serves the metrics: the sum of the workers' counters (each reports
them every second, see :mod:`~dnstfo.server.workerstats`), their liveness, and the
namespace's kernel counters.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from dnstfo.answer.authority import Authority
from dnstfo.errors import DnstfoError, NetworkError, UsageError
from dnstfo.kernel.sockets import TfoKey, tfo_listener
from dnstfo.server.app import DnsServer, freeze_zones, load_authority, serve_until_signalled
from dnstfo.server.config import ServerConfig
from dnstfo.server.forwardmetrics import ForwardCollector
from dnstfo.server.keys import generate_key, read_key_file
from dnstfo.server.listener import (
    ListenerPair,
    check_forward_not_local,
    check_ports_free,
    open_listeners,
    warn_if_tfo_off,
)
from dnstfo.server.pidfile import remove_pidfile, write_pidfile
from dnstfo.server.stats import start_metrics_server
from dnstfo.server.supervisor import Supervisor
from dnstfo.server.tls import TlsMetrics, server_context
from dnstfo.server.workerstats import ReportWriter, report_periodically, snapshot_line

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


def _serve(
    config: ServerConfig,
    listeners: list[ListenerPair],
    authority: Authority,
    *,
    on_ready: Callable[[DnsServer], None] | None,
    report_fd: int | None = None,
    tls_listeners: list[socket.socket] | None = None,
) -> None:
    """Serves on ``listeners``; a worker reports its counters on ``report_fd``, a single
    process serves the metrics itself."""
    server = DnsServer(config, listeners, authority, tls_listeners)
    if report_fd is None and config.metrics is not None:
        extra: list[Collector] = [] if server.tls is None else [TlsMetrics(server.tls.stats)]
        if server.forwarding is not None:
            extra.append(ForwardCollector(server.forwarding.stats))
        try:
            start_metrics_server(server.stats, config.metrics.host, config.metrics.port, extra)
        except OSError as exc:
            raise NetworkError.from_oserror(f"serving metrics on {config.metrics}", exc) from exc
        log.info("metrics on http://%s/metrics", config.metrics)

    writer = ReportWriter(report_fd) if report_fd is not None else None
    forward = server.forwarding.stats if server.forwarding is not None else None

    async def serve() -> None:
        reporter = None
        if writer is not None:
            reporter = asyncio.create_task(report_periodically(server.stats, writer, forward))
        try:
            await serve_until_signalled(server, on_ready=on_ready)
        finally:
            if reporter is not None:
                reporter.cancel()

    asyncio.run(serve())
    if writer is not None:  # the final counters
        writer.close(snapshot_line(server.stats, forward() if forward is not None else None))


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
    # What the arguments alone decide is checked before the zones load: a bad start is
    # one error line, not a normal start then the error.
    if config.tls_listen and config.workers > 1:
        raise UsageError("--tls-listen serves in one process for now: leave out --workers")
    check_forward_not_local(config)
    if config.tls_cert is not None and config.tls_key is not None:
        server_context(str(config.tls_cert), str(config.tls_key))  # fail before binding
    reuseport = config.reuseport or config.workers > 1
    if reuseport:
        check_ports_free(config.listen)
    key = startup_key(config)
    # Zones before sockets: a server that cannot serve never holds the port, and workers
    # inherit the zones loaded (and their errors reported) once.
    authority = load_authority(config)
    freeze_zones()  # never walked by the collector; shared copy-on-write by the workers
    warn_if_tfo_off()
    sets: list[list[ListenerPair]] = []
    tls: list[socket.socket] = []
    try:
        if reuseport:  # again, just before binding: a server started while ours loaded
            check_ports_free(config.listen)
        listen = config.listen
        for _ in range(config.workers):
            pairs = open_listeners(listen, tfo_queue=config.tfo_queue, key=key, reuseport=reuseport)
            listen = tuple(pair.endpoint for pair in pairs)  # later workers: the same ports
            sets.append(pairs)
        for endpoint in config.tls_listen:
            tls.append(
                tfo_listener((endpoint.host, endpoint.port), queue_len=config.tfo_queue, key=key)
            )
    except DnstfoError:
        for pairs in sets:
            for pair in pairs:
                pair.close()
        for sock in tls:
            sock.close()
        raise
    try:
        if config.pidfile is not None:
            write_pidfile(config.pidfile)
        if config.workers == 1:
            _serve(config, sets[0], authority, on_ready=on_ready, tls_listeners=tls)
            return 0

        def worker_main(pairs: list[ListenerPair], report_fd: int) -> None:
            _serve(config, pairs, authority, on_ready=on_ready, report_fd=report_fd)

        return Supervisor(config, listen, key, worker_main).run(sets)
    finally:
        if config.pidfile is not None:  # not in workers: they leave with os._exit
            remove_pidfile(config.pidfile)
