"""The DNS server: zones, listeners, transports, reload and graceful stop.

:class:`DnsServer` runs inside an event loop it does not own (tests drive it from a
thread; :func:`serve_until_signalled` adds signal handling). TCP runs on the server's own
epoll beside the loop (:mod:`~dnstfo.server.tcp`), UDP on the loop's datagram transports. Signals:

- SIGHUP: reload zones (a zone whose file fails keeps its old version, and the error,
  with file and line, is logged) and the TFO key file (a changed key is installed with
  the previous one as backup, so cookies already issued stay valid).
- SIGTERM / SIGINT: stop listening, let connections finish the answers they owe, close
  them, and log the summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass

from dnstfo.answer.authority import Authority
from dnstfo.answer.responder import Responder, ResponderConfig
from dnstfo.errors import DnstfoError, UsageError, ZoneLoadError
from dnstfo.kernel.sockets import TfoKey, listener_key, set_listener_key
from dnstfo.kernel.sysctl import read_counters
from dnstfo.server.config import Endpoint, ServerConfig
from dnstfo.server.keys import read_key_file, rotated
from dnstfo.server.listener import ListenerPair
from dnstfo.server.querylog import QueryLogger
from dnstfo.server.stats import ServerStats
from dnstfo.server.tcp import TcpServer
from dnstfo.server.udp import UdpServer

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 5.0
"""Seconds connections get to finish their answers at shutdown."""


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a reload did."""

    zones: int
    """Zones served after the reload."""
    errors: tuple[ZoneLoadError, ...]
    """Files that failed (their old version, if any, is still served)."""
    key_rotated: bool
    """A new TFO key was installed (the old one kept as backup)."""


def load_authority(config: ServerConfig) -> Authority:
    """Loads the zone directory at start-up, logging each broken file.

    A broken file does not stop the server (a later SIGHUP can load it once fixed).

    Raises:
        ZoneLoadError: the directory cannot be read.
    """
    authority, errors = Authority.load(config.zone_dir)
    for error in errors:
        log.error("zone file not loaded: %s", error)
    if not authority.zones:
        log.warning("no zone loaded from %s: every query gets REFUSED", config.zone_dir)
    return authority


class DnsServer:
    """Serves the zones on already-bound listeners.

    Args:
        config: the configuration.
        listeners: sockets from ``open_listeners`` (the server closes them).
        authority: the zones loaded at start-up.
    """

    def __init__(
        self, config: ServerConfig, listeners: list[ListenerPair], authority: Authority
    ) -> None:
        self.config = config
        self.listeners = listeners
        self.responder = Responder(
            authority,
            ResponderConfig(udp_payload=config.udp_payload, axfr_allow=config.axfr_allow),
        )
        try:
            kernel = read_counters()
        except OSError:
            kernel = None
        self.stats = ServerStats(kernel_at_start=kernel)
        self.query_log = QueryLogger(config.query_log)
        self._tcp: TcpServer | None = None
        self._udp: list[UdpServer] = []
        self._key: TfoKey | None = None
        if config.tfo_key_file is not None and listeners:
            with contextlib.suppress(DnstfoError):
                self._key = listener_key(listeners[0].tcp)

    @property
    def endpoints(self) -> list[Endpoint]:
        """The addresses served (ports resolved)."""
        return [pair.endpoint for pair in self.listeners]

    @property
    def connections(self) -> int:
        """TCP connections open now."""
        return self._tcp.connections if self._tcp else 0

    async def start(self) -> None:
        """Starts accepting TCP connections and UDP datagrams on every listener."""
        loop = asyncio.get_running_loop()
        self._tcp = TcpServer(self.responder, self.config.limits, self.stats, self.query_log)
        self._tcp.start([pair.tcp for pair in self.listeners])
        for pair in self.listeners:
            udp = UdpServer(pair.udp, self.responder, self.stats, self.query_log, self.config.rrl)
            udp.start(loop)
            self._udp.append(udp)
            log.info("serving %s over TCP (Fast Open) and UDP", pair.endpoint)
        log.info("%d zones loaded", len(self.responder.authority.zones))

    def reload(self) -> ReloadResult:
        """Reloads the zones and the key file (what SIGHUP does).

        Returns:
            What changed; errors are also logged with file and line.
        """
        authority = self.responder.authority
        try:
            new, errors = authority.reload(self.config.zone_dir)
        except ZoneLoadError as exc:
            log.error("reload failed, keeping all zones: %s", exc)
            return ReloadResult(len(authority.zones), (exc,), False)
        for error in errors:
            log.error("zone file not reloaded: %s (the previous version stays)", error)
        self.responder.use(new)
        log.info("reloaded: %d zones, %d files failed", len(new.zones), len(errors))
        return ReloadResult(len(new.zones), tuple(errors), self._reload_key())

    def _reload_key(self) -> bool:
        path = self.config.tfo_key_file
        if path is None or self._key is None:
            return False
        try:
            new = read_key_file(path)
        except UsageError as exc:
            log.error("TFO key not reloaded: %s", exc)
            return False
        if new == self._key:
            return False
        key = rotated(self._key, new)
        try:
            for pair in self.listeners:
                set_listener_key(pair.tcp, key)
        except DnstfoError as exc:
            log.error("cannot install the new TFO key: %s", exc)
            return False
        log.info("TFO key rotated (the previous key is kept as backup)")
        self._key = key
        return True

    async def stop(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Stops listening, lets connections finish their answers, then closes them."""
        for udp in self._udp:
            udp.close()
        if self._tcp is not None:
            await self._tcp.stop(grace)
        for pair in self.listeners:
            pair.close()
        log.info("stopped: %s", self.stats.summary())


async def serve_until_signalled(
    server: DnsServer, *, on_ready: Callable[[DnsServer], None] | None = None
) -> None:
    """Runs ``server`` until SIGTERM or SIGINT; SIGHUP reloads. Main thread only.

    The handlers are installed before the server accepts anything, and SIGHUP is then
    unblocked (``run`` blocks it before binding), so a SIGHUP sent at any time after
    start-up is a reload: one that came earlier is delivered now.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    try:
        await server.start()
        if on_ready is not None:
            on_ready(server)
        await stop.wait()
    finally:
        # Stopping: a late SIGHUP stays pending instead of killing the process.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await server.stop()
