"""DNS over TLS (RFC 7858) on the server: a TLS layer around one TCP session.

Theory of operation. :class:`TlsSession` keeps the session contract of
:class:`~dnstfo.server.session.TcpSession` (bytes and ``now`` in; bytes to send, a close
and a deadline out) and wraps one: ciphertext read from the socket goes through an
``ssl.SSLObject`` on two ``ssl.MemoryBIO`` buffers, the plaintext to the inner session,
and the inner session's output back through the TLS layer. The epoll driver therefore
only chooses which session to make for a connection of a TLS listener; Fast Open works
as for plain TCP (the ClientHello arrives with the SYN and is answered at once).

The handshake has its own deadline (``handshake_timeout_ns``): a client that stalls or
sends garbage costs its own connection only, counted by reason in :class:`TlsStats`.
The inner session sees no bytes until the handshake is done.

Output stays bounded: the inner session's output is moved into TLS only when the
ciphertext of the previous move was all written (handshake records and tickets may wait
with it: they go out in the same write), and the inner session hears that its
bytes were sent only then (partial writes are reported as progress, so its write-stall
deadline works as over TCP).

:class:`TlsServerContext` holds the certificate and key; :meth:`TlsServerContext.reload`
(SIGHUP) swaps them for new connections, and keeps the old pair when the new one is bad.
"""

from __future__ import annotations

import logging
import os
import ssl
import stat
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dnstfo.errors import UsageError
from dnstfo.server.querylog import QueryLogger
from dnstfo.wire.connection import CloseReason

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from dnstfo.server.session import TcpSession
    from dnstfo.wire.connection import ServerConnection

log = logging.getLogger(__name__)

ALPN = "dot"
"""ALPN protocol ID of DNS over TLS (RFC 8310 §8.1)."""
DEFAULT_PORT = 853
"""The DoT port (RFC 7858 §3.1)."""
HANDSHAKE_TIMEOUT_S = 5.0
"""Seconds a client has to finish the handshake."""
_READ_SIZE = 65536


@dataclass(slots=True)
class TlsStats:
    """TLS counters of one server process; mutated in place by the sessions."""

    handshakes: int = 0
    """Handshakes completed."""
    resumptions: int = 0
    """Completed handshakes that resumed a session (a ticket)."""
    failures: Counter[str] = field(default_factory=Counter)
    """Handshakes failed, by reason (``timeout``, ``closed``, ``not-tls``, ``alert``...)."""
    versions: Counter[str] = field(default_factory=Counter)
    """Completed handshakes by protocol version."""


class TlsQueryLog(QueryLogger):
    """The query log of a TLS connection: its lines say ``tls`` where TCP's say ``tcp``."""

    __slots__ = ("_base",)

    def __init__(self, base: QueryLogger) -> None:
        super().__init__(base.mode)
        self._base = base

    def record(self, **fields: Any) -> None:
        """Logs one query through the server's log, marked ``tls``."""
        self._base.record(**{**fields, "transport": "tls"})


class TlsMetrics:
    """A Prometheus collector of :class:`TlsStats`."""

    def __init__(self, stats: TlsStats) -> None:
        self._stats = stats

    def describe(self) -> list[object]:
        return []  # unchecked: label sets are known at scrape time only

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily

        s = self._stats
        done = CounterMetricFamily(
            "dnstfo_tls_handshakes", "TLS handshakes completed", labels=["version"]
        )
        for version, n in sorted(s.versions.items()):
            done.add_metric([version], n)
        yield done
        yield CounterMetricFamily(
            "dnstfo_tls_resumptions", "TLS handshakes that resumed a session", s.resumptions
        )
        failed = CounterMetricFamily(
            "dnstfo_tls_handshake_failures", "TLS handshakes failed", labels=["reason"]
        )
        for reason, n in sorted(s.failures.items()):
            failed.add_metric([reason], n)
        yield failed


def check_key_file(path: str) -> None:
    """Refuses a private key that others may read.

    Raises:
        UsageError: the file is missing, or readable by group or others.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise UsageError(f"--tls-key {path}: {exc.strerror}") from exc
    if mode & (stat.S_IRGRP | stat.S_IROTH | stat.S_IWGRP | stat.S_IWOTH):
        raise UsageError(
            f"--tls-key {path} is readable by others (mode {stat.S_IMODE(mode):o}): "
            f"chmod 600 {path}"
        )


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context: TLS 1.2 and 1.3, ALPN ``dot``, the certificate chain and key.

    Raises:
        UsageError: a file is missing, unreadable by others' rule, or not a matching pair.
    """
    check_key_file(key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols([ALPN])
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:  # before OSError, its base
        raise UsageError(
            f"--tls-cert {cert} / --tls-key {key}: not a PEM certificate and its key "
            f"({exc.reason or exc})"
        ) from exc
    except OSError as exc:
        raise UsageError(f"--tls-cert {cert}: {exc.strerror or exc}") from exc
    return ctx


class TlsServerContext:
    """The certificate and key in force, shared by the TLS sessions of one server.

    Args:
        cert: PEM certificate chain file.
        key: PEM private key file (mode 0600 or stricter).
        stats: counters to add to.
        handshake_timeout: seconds allowed for a handshake.

    Raises:
        UsageError: the pair cannot be loaded (see :func:`server_context`).
    """

    def __init__(
        self,
        cert: str,
        key: str,
        stats: TlsStats | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT_S,
    ) -> None:
        self.cert, self.key = cert, key
        self.context = server_context(cert, key)
        self.stats = stats or TlsStats()
        self.handshake_timeout_ns = int(handshake_timeout * 1e9)

    def reload(self) -> str | None:
        """Loads the pair again (SIGHUP); returns why it was kept (None: reloaded).

        New connections use the new pair; open ones keep theirs.
        """
        try:
            self.context = server_context(self.cert, self.key)
        except UsageError as exc:
            log.error("TLS certificate not reloaded, the old one stays: %s", exc)
            return str(exc)
        log.info("TLS certificate reloaded from %s", self.cert)
        return None

    def wrap(self, inner: TcpSession, now: int) -> TlsSession:
        """A TLS session around ``inner`` for a connection accepted at ``now``."""
        return TlsSession(inner, self.context, self.stats, now + self.handshake_timeout_ns)


class TlsSession:
    """One TLS connection in the session contract, around the DNS session inside.

    Args:
        inner: the DNS-over-TCP session that gets the plaintext.
        context: the server context.
        stats: TLS counters.
        handshake_deadline: when the handshake must be done (monotonic ns).
    """

    __slots__ = (
        "_bio",
        "_deadline",
        "_failed",
        "_in",
        "_moved",
        "_obj",
        "_out",
        "_sent",
        "inner",
        "stats",
    )

    def __init__(
        self, inner: TcpSession, context: ssl.SSLContext, stats: TlsStats, handshake_deadline: int
    ) -> None:
        self.inner = inner
        self.stats = stats
        if inner.query_log.enabled:
            inner.query_log = TlsQueryLog(inner.query_log)
        self._in = ssl.MemoryBIO()
        self._bio = ssl.MemoryBIO()
        """Ciphertext the TLS layer made, not yet in ``_out``."""
        self._obj = context.wrap_bio(self._in, self._bio, server_side=True)
        self._out = b""
        """Ciphertext to write."""
        self._sent = 0
        """Bytes of ``_out`` the socket took."""
        self._moved = 0
        """Plaintext bytes of the inner session's output inside ``_out``."""
        self._deadline: int | None = handshake_deadline
        """The handshake's deadline (None once done)."""
        self._failed = False

    # ---- the inner session's attributes the driver uses ------------------------------------

    @property
    def conn(self) -> ServerConnection:
        """The inner session's connection policy state."""
        return self.inner.conn

    @property
    def wake(self) -> Callable[[], None] | None:
        """Called after an answer owed later is delivered (the inner session's)."""
        return self.inner.wake

    @wake.setter
    def wake(self, value: Callable[[], None] | None) -> None:
        self.inner.wake = value

    @property
    def close_reason(self) -> CloseReason | None:
        """Why the session is closing or closed."""
        return CloseReason.PROTOCOL_ERROR if self._failed else self.inner.close_reason

    def set_idle_timeout(self, ns: int) -> None:
        """The inner session's idle timeout (see :meth:`TcpSession.set_idle_timeout`)."""
        self.inner.set_idle_timeout(ns)

    @property
    def buffered(self) -> int:
        """Bytes held in user space: ciphertext and the inner session's."""
        return len(self._out) - self._sent + self.inner.buffered

    @property
    def idle(self) -> bool:
        """Nothing owed or waiting (a handshake in progress is not idle)."""
        return self._deadline is None and not self._out and self.inner.idle

    # ---- inputs ----------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: int) -> None:
        """Feeds ciphertext read at ``now``."""
        if self._failed:
            return
        self._in.write(data)
        if self._deadline is not None and not self._handshake():
            return
        plain = self._read()
        if plain:
            self.inner.receive_data(plain, now)

    def receive_eof(self, now: int) -> None:
        """The client's end of stream."""
        if self._deadline is not None:
            self._fail("closed")
            return
        self.inner.receive_eof(now)

    def handle_timer(self, now: int) -> None:
        """Applies the handshake deadline and the inner session's."""
        if self._deadline is not None and now >= self._deadline:
            self._fail("timeout")
            return
        self.inner.handle_timer(now)

    def data_sent(self, sent: int, now: int) -> None:
        """Notes that the socket took ``sent`` bytes of :meth:`data_to_send`."""
        if self._failed:
            return
        self._sent += sent
        if self._sent < len(self._out):
            if sent and self._moved:
                self.inner.conn.output_progress(now, done=False)
            return
        self._out, self._sent = b"", 0
        moved, self._moved = self._moved, 0
        self.inner.data_sent(moved, now)

    def produce(self, now: int) -> None:
        """Makes the inner session's next transfer message."""
        self.inner.produce(now)

    def eof_sent(self, now: int) -> None:
        """The driver sent FIN."""
        self.inner.eof_sent(now)

    def deliver(self, slot: int, wire: bytes | None, now: int) -> None:
        """An answer owed later (see :meth:`TcpSession.deliver`)."""
        self.inner.deliver(slot, wire, now)

    def close(self, reason: CloseReason, now: int) -> None:
        """Closes for ``reason``; during the handshake at once."""
        if self._deadline is not None:
            self._failed = True
            return
        self.inner.close(reason, now)

    def abort(self) -> None:
        """Forgets everything (the driver closed the socket)."""
        self.inner.abort()

    # ---- outputs ---------------------------------------------------------------------------

    def data_to_send(self) -> bytes | memoryview:
        """Ciphertext to write now; the inner session's output is encrypted when none of
        its previous output waits."""
        if not self._moved and not self._failed and self._deadline is None:
            plain = self.inner.data_to_send()
            if plain:  # after the tickets, if any: one write, or Nagle holds the answer
                self._obj.write(plain)
                self._moved = len(plain)
                self._out += self._obj_out()
        return memoryview(self._out)[self._sent :] if self._sent else self._out

    def wants_write(self) -> bool:
        """Ciphertext, or the inner session's output, waits for the socket."""
        if self._failed:
            return False
        return bool(self._out) or (self._deadline is None and self.inner.wants_write())

    def wants_produce(self) -> bool:
        """The inner session has transfer work and all output was written."""
        return not self._out and self._deadline is None and self.inner.wants_produce()

    def wants_read(self) -> bool:
        """Read during the handshake, then when the inner session would."""
        if self._failed:
            return False
        return self._deadline is not None or (not self._out and self.inner.wants_read())

    def eof_to_send(self) -> bool:
        """Send FIN: the inner session is done and every record was written."""
        return not self._failed and not self._out and self.inner.eof_to_send()

    def close_expected(self) -> bool:
        """Close the socket now."""
        return self._failed or self.inner.close_expected()

    def reset_expected(self) -> bool:
        """Close with a reset: the client stopped reading (a write stall), as over TCP."""
        inner = self.inner
        return inner.close_expected() and inner.close_reason is CloseReason.WRITE_STALL

    def get_timer(self) -> int | None:
        """The handshake deadline, or the inner session's."""
        if self._failed:
            return None
        inner = self.inner.get_timer()
        if self._deadline is None:
            return inner
        return self._deadline if inner is None else min(inner, self._deadline)

    # ---- TLS -------------------------------------------------------------------------------

    def _obj_out(self) -> bytes:
        return self._bio.read()

    def _handshake(self) -> bool:
        """Runs the handshake on what arrived; True once it is done."""
        try:
            self._obj.do_handshake()
        except ssl.SSLWantReadError:
            self._out += self._obj_out()
            return False
        except ssl.SSLError as exc:
            self._out += self._obj_out()  # the alert, if any (best effort)
            self._fail(_failure_reason(exc))
            return False
        self._deadline = None
        stats = self.stats
        stats.handshakes += 1
        stats.versions[self._obj.version() or "?"] += 1
        if self._obj.session_reused:
            stats.resumptions += 1
        self._out += self._obj_out()
        return True

    def _read(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            try:
                chunk = self._obj.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLError:
                break  # close_notify or a bad record: the client's EOF follows
            if not chunk:
                break
            chunks.append(chunk)
        self._out += self._obj_out()  # tickets after the client's Finished
        return b"".join(chunks)

    def _fail(self, reason: str) -> None:
        if not self._failed:
            self._failed = True
            self.stats.failures[reason] += 1
            inner = self.inner
            log.debug("TLS handshake from %s#%s failed: %s", inner.client, inner.port, reason)


def _failure_reason(exc: ssl.SSLError) -> str:
    """A short label for a handshake failure (the metrics' ``reason``)."""
    reason = str(exc.reason or "other")
    if reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "PACKET_LENGTH_TOO_LONG") or (
        reason in ("UNEXPECTED_RECORD", "RECORD_LAYER_FAILURE", "UNKNOWN_PROTOCOL")
    ):
        return "not-tls"
    if "ALERT" in reason:
        return "alert"  # the client refused our certificate (or what we offered)
    if reason in ("NO_SHARED_CIPHER", "UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS_AVAILABLE"):
        return "no-common-version"
    return reason.lower().replace("_", "-")
