"""The DNS server: zones, listeners, transports, reload and graceful stop.

:class:`DnsServer` runs inside an event loop it does not own (tests drive it from a
thread; :func:`serve_until_signalled` adds signal handling). TCP runs on the server's own
epoll beside the loop (:mod:`~dnstfo.server.tcp`), UDP on the loop's datagram transports. Signals:

- SIGHUP: reload zones (a zone whose file fails keeps its old version, and the error,
  with file and line, is logged) and the TFO key file (a changed key is installed with
  the previous one as backup, so cookies already issued stay valid). Zone files are
  parsed in a thread while the loop goes on answering from the current zones; the new
  generation replaces it in one assignment. Only files whose bytes changed are parsed.
- SIGTERM / SIGINT: stop listening, let connections finish the answers they owe, close
  them, and log the summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from dnstfo.answer.authority import Authority
from dnstfo.answer.responder import Responder, ResponderConfig
from dnstfo.answer.zones import LoadedZone
from dnstfo.errors import DnstfoError, UsageError, ZoneLoadError
from dnstfo.kernel.sockets import TfoKey, listener_key, set_listener_key
from dnstfo.kernel.sysctl import read_counters
from dnstfo.server.config import Endpoint, ServerConfig
from dnstfo.server.forwarding import Forwarding
from dnstfo.server.keys import read_key_file, rotated
from dnstfo.server.listener import ListenerPair, server_accepts_syn_data
from dnstfo.server.querylog import QueryLogger
from dnstfo.server.stats import ServerStats
from dnstfo.server.tcp import TcpServer
from dnstfo.server.tls import TlsServerContext
from dnstfo.server.udp import UdpServer

log = logging.getLogger(__name__)

_T = TypeVar("_T")

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


RELOAD_SWITCH_INTERVAL = 0.0005
"""Seconds the reload thread may hold the GIL while the loop waits (``sys.setswitchinterval``;
Python's default of 5 ms would add up to that to each of the loop's socket calls)."""


def load_authority(config: ServerConfig) -> Authority:
    """Loads the zone directory at start-up, naming each broken file once.

    A broken file does not stop the server while other zones load (a SIGHUP loads it
    once fixed), but a server without any zone would refuse every query: that is an error.

    Raises:
        ZoneLoadError: the directory cannot be read, holds no zone file, or none loads.
    """
    authority, errors = Authority.load(config.zone_dir)
    for error in errors:
        log.error("zone not loaded: %s", error)
    if not authority.zones:
        reason = (
            f"no zone loaded: all {len(errors)} zone files failed (each named above)"
            if errors
            else "no zone files in this directory (hidden files and backups are skipped)"
        )
        raise ZoneLoadError(str(config.zone_dir), None, reason)
    for zone in authority.zones.values():
        _log_zone(zone)
    failed = f", {len(errors)} files failed" if errors else ""
    log.info("%d zones loaded from %s%s", len(authority.zones), config.zone_dir, failed)
    return authority


def _log_zone(zone: LoadedZone) -> None:
    log.info(
        "zone %s serial %d, %d records, from %s", zone.origin, zone.serial, zone.records, zone.path
    )


async def _in_thread(fn: Callable[[], _T]) -> _T:
    """Runs ``fn`` in a daemon thread (a stop does not wait for it) and awaits its result.

    While it runs, the GIL switch interval is short, so the loop keeps answering promptly,
    and the cyclic garbage collector is off: a collection triggered by the parser's
    allocations would hold the GIL for as long as it takes to walk every new object
    (about a second with 150,000 records). What was made meanwhile is frozen before the
    collector is on again, for the same reason (see :func:`freeze_zones`).
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()

    def succeed(result: _T) -> None:
        if not future.done():  # done: cancelled, the server is stopping
            future.set_result(result)

    def fail(error: Exception) -> None:
        if not future.done():
            future.set_exception(error)

    def work() -> None:
        try:
            settle = functools.partial(succeed, fn())
        except Exception as exc:
            settle = functools.partial(fail, exc)
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle)

    previous = sys.getswitchinterval()
    collecting = gc.isenabled()
    sys.setswitchinterval(min(previous, RELOAD_SWITCH_INTERVAL))
    gc.disable()
    try:
        threading.Thread(target=work, name="zone-reload", daemon=True).start()
        return await future
    finally:
        sys.setswitchinterval(previous)
        freeze_zones()
        if collecting:
            gc.enable()


def _release_in_thread(zones: list[LoadedZone]) -> None:
    """Frees replaced zones in a thread, one name at a time.

    Freeing a 150,000-record zone in one go is one long deallocation in C that holds the
    GIL (about 0.2 s here). The zones' parts are moved to a list that a thread empties
    item by item, so the loop can take the GIL between items. Nothing is mutated: an
    answer or a transfer still holding a part keeps it alive as usual. ``zones`` is emptied.
    """
    parts: list[object] = []
    for zone in zones:
        parts.extend(zone.rrsets.values())
        parts.extend(zone.names)
    zones.clear()

    def release() -> None:
        while parts:
            parts.pop()

    threading.Thread(target=release, name="zone-release", daemon=True).start()


def freeze_zones() -> None:
    """Moves every object alive now (the zones above all) out of the collector's reach.

    Zone data lives until the next reload and holds no cycles to collect; walking it in
    every full collection would stall the loop. Objects freed later by reference counting
    are freed as usual.
    """
    gc.freeze()


class DnsServer:
    """Serves the zones on already-bound listeners.

    Args:
        config: the configuration.
        listeners: sockets from ``open_listeners`` (the server closes them).
        authority: the zones loaded at start-up.
    """

    def __init__(
        self,
        config: ServerConfig,
        listeners: list[ListenerPair],
        authority: Authority,
        tls_listeners: list[socket.socket] | None = None,
    ) -> None:
        self.config = config
        self.listeners = listeners
        self.tls_listeners = tls_listeners or []
        """DNS-over-TLS listeners (TCP only; the server closes them)."""
        self.tls = (
            TlsServerContext(str(config.tls_cert), str(config.tls_key))
            if config.tls_cert is not None and config.tls_key is not None and self.tls_listeners
            else None
        )
        """The certificate and key of the TLS listeners, and their counters."""
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
        self.forwarding = (
            Forwarding(config.forward, time.monotonic_ns, config.udp_payload)
            if config.forward.enabled
            else None
        )
        """Sends names outside our zones upstream (None: not configured)."""
        if self.forwarding is not None and config.forward.cache_size:
            self.responder.forwarded = self.forwarding.cached  # hits answered like local ones
        self._tcp: TcpServer | None = None
        self._udp: list[UdpServer] = []
        self._key: TfoKey | None = None
        self._reload_lock = asyncio.Lock()
        self._reload_queued = False
        self._tasks: set[asyncio.Task[None]] = set()
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
        forwarding = self.forwarding
        self._tcp = TcpServer(
            self.responder,
            self.config.limits,
            self.stats,
            self.query_log,
            defer=forwarding.defer_tcp if forwarding else None,
        )
        tls = self.tls
        self._tcp.start(
            [pair.tcp for pair in self.listeners],
            tls=[(sock, tls) for sock in self.tls_listeners] if tls is not None else (),
        )
        for pair in self.listeners:
            udp = UdpServer(
                pair.udp, self.responder, self.stats, self.query_log, self.config.rrl, forwarding
            )
            udp.start(loop)
            self._udp.append(udp)
        tcp = "TCP (Fast Open)" if server_accepts_syn_data() else "TCP without Fast Open"
        for pair in self.listeners:
            log.info("serving %s over %s and UDP", pair.endpoint, tcp)
        for sock in self.tls_listeners:
            host, port = sock.getsockname()[:2]
            log.info("serving %s port %d over TLS (%s)", host, port, tcp)

    def request_reload(self) -> None:
        """Schedules a reload (what SIGHUP does; call on the loop). One requested while a
        reload runs follows it, so the files as they are after the request are read."""
        if self._reload_queued:
            return
        self._reload_queued = True
        task = asyncio.get_running_loop().create_task(self._queued_reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _queued_reload(self) -> None:
        async with self._reload_lock:
            self._reload_queued = False
            if self.tls is not None:  # a bad pair keeps the old one (logged)
                self.tls.reload()
            await self._reload()

    async def reload(self) -> ReloadResult:
        """Reloads the zones and the key file; reloads run one at a time.

        The zone files are parsed in a thread; until the new zones are ready, queries are
        answered from the current ones.

        Returns:
            What changed; errors are also logged with file and line.
        """
        async with self._reload_lock:
            return await self._reload()

    async def _reload(self) -> ReloadResult:
        authority = self.responder.authority
        directory = self.config.zone_dir
        try:
            new, errors = await _in_thread(functools.partial(authority.reload, directory))
        except ZoneLoadError as exc:
            log.error("reload failed, keeping all zones: %s", exc)
            return ReloadResult(len(authority.zones), (exc,), self._reload_key())
        for error in errors:
            log.error("zone not reloaded: %s (a previous version stays)", error)
        if not new.zones:
            log.error("reload failed: no zone would be left; keeping all %d", len(authority.zones))
            return ReloadResult(len(authority.zones), tuple(errors), self._reload_key())
        changed = [
            zone for origin, zone in new.zones.items() if authority.zones.get(origin) is not zone
        ]
        for zone in changed:
            _log_zone(zone)
        for origin in authority.zones.keys() - new.zones.keys():
            log.info("zone %s removed (its file is gone)", origin)
        self.responder.use(new)
        replaced = [
            zone for origin, zone in authority.zones.items() if new.zones.get(origin) is not zone
        ]
        del authority
        _release_in_thread(replaced)
        log.info(
            "reloaded: %d zones, %d changed, %d files failed",
            len(new.zones),
            len(changed),
            len(errors),
        )
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
        if self.forwarding is not None:
            self.forwarding.close()
        for pair in self.listeners:
            pair.close()
        for sock in self.tls_listeners:
            sock.close()
        log.info("stopped: %s", self.stats.summary())


async def serve_until_signalled(
    server: DnsServer, *, on_ready: Callable[[DnsServer], None] | None = None
) -> None:
    """Runs ``server`` until SIGTERM or SIGINT; SIGHUP reloads. Main thread only.

    The handlers are installed before the server accepts anything, and the signals are
    then unblocked (``run`` blocks SIGHUP before binding; a worker also SIGTERM and
    SIGINT), so a SIGHUP sent at any time after start-up is a reload and a SIGTERM a
    graceful stop: one that came earlier is delivered now.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, server.request_reload)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP, signal.SIGTERM, signal.SIGINT})
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
