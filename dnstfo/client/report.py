"""The TFO report: what the kernel knew before a query, what it did, and how long it took.

Every field is an observation: tcp_metrics (the cookie cache), the sysctls and TcpExt
counters, TCP_INFO of the connection, and the client's own monotonic clock. The verdict
(:mod:`dnstfo.client.verdict`) is computed from these alone.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from dnstfo.kernel.tcpinfo import FastOpenClientFail


class CookieChange(enum.Enum):
    """How the cached cookie for the server changed across the exchange."""

    NEW = "new"
    """None was cached before; one is cached now (the server sent one)."""
    SAME = "same"
    """The same cookie before and after."""
    CHANGED = "changed"
    """A different cookie now (the server rotated its key, or a new source address)."""
    NONE = "none"
    """No cookie cached after the exchange."""

    @classmethod
    def between(cls, before: bytes | None, after: bytes | None) -> CookieChange:
        """Classifies the change from ``before`` to ``after`` (None: no cookie)."""
        if after is None:
            return cls.NONE
        if before is None:
            return cls.NEW
        return cls.SAME if before == after else cls.CHANGED


class Fallback(enum.Enum):
    """Why the query did not even try to ride in the SYN."""

    NONE = "none"
    """TFO was tried (or not requested)."""
    CLIENT_OFF = "client-off"
    """The client bit of net.ipv4.tcp_fastopen is off: plain connect instead."""
    FEATURE_MISSING = "feature-missing"
    """The kernel lacks the socket option asked for: plain connect instead."""


@dataclass(frozen=True, slots=True)
class TfoBefore:
    """The host's Fast Open state just before the connection was opened."""

    cookie: bytes | None
    """The cookie cached for this server (tcp_metrics), or None."""
    client_enabled: bool
    """Whether the client bit (0x1) of net.ipv4.tcp_fastopen is set."""
    sysctl: int | None
    """The whole net.ipv4.tcp_fastopen value (None: unreadable)."""
    blackhole_timeout_s: int | None
    """net.ipv4.tcp_fastopen_blackhole_timeout_sec (0: detection off; None: absent)."""
    blackhole_count: int
    """TCPFastOpenBlackhole: times the kernel disabled active TFO after a suspected blackhole."""


@dataclass(frozen=True, slots=True)
class TfoAfter:
    """What the kernel did with this connection (TCP_INFO, tcp_metrics)."""

    attempted: bool
    """The query was placed in the SYN (the send returned bytes before the handshake)."""
    syn_data_acked: bool
    """TCP_INFO SYN_DATA: the server acknowledged the data in our SYN."""
    client_fail: FastOpenClientFail
    """``tcpi_fastopen_client_fail``: the kernel's reason a TFO attempt failed."""
    syn_retransmits: int
    """SYN retransmissions during the handshake (TCP_INFO total_retrans when established,
    less the resend of SYN data that was not acked)."""
    cookie: bytes | None
    """The cookie cached for this server after the exchange, or None."""
    cookie_change: CookieChange
    """How the cached cookie changed."""
    fallback: Fallback
    """Why TFO was not tried, if it was requested and not tried."""
    fallback_reason: str | None
    """The error text behind ``fallback``, with the fix, or None."""
    blackhole_delta: int
    """TCPFastOpenBlackhole increase during the exchange."""


SHORT_PATH_MS = 1.0
"""Below this path RTT, rounds measure the hosts' own overhead, not round trips."""


def short_path(rtts: Iterable[float | None]) -> bool:
    """Whether any of ``rtts`` (ms; None: unknown) is under ``SHORT_PATH_MS``: rounds and
    savings on such a path are not round trips and are not shown as such."""
    return any(r is not None and r < SHORT_PATH_MS for r in rtts)


@dataclass(frozen=True, slots=True)
class Timings:
    """Durations of one exchange (milliseconds) and the path's round-trip time.

    ``rounds`` divides the answer time by ``rtt_ms``. ``rtt_ms`` is TCP_INFO's ``min_rtt``
    when the kernel has one: it is measured in the kernel from acknowledged segments and
    skips retransmitted ones (Karn), so a lost SYN (a 1 s timeout inside the handshake)
    does not make the path look slow. Without ``min_rtt`` (old kernels) the measured
    handshake stands in; both agree within a fraction of a millisecond on a clean path.
    """

    handshake_ms: float | None
    """From the socket call to the connection being established."""
    first_byte_ms: float | None
    """From the socket call to the first byte of the response."""
    total_ms: float | None
    """From the socket call to the whole response read."""
    tcpi_rtt_ms: float | None
    """TCP_INFO smoothed RTT at the end of the exchange."""
    tcpi_min_rtt_ms: float | None
    """TCP_INFO minimum RTT (None on old kernels)."""
    rtt_ms: float | None
    """The RTT used for ``rounds``: ``tcpi_min_rtt_ms``, else ``handshake_ms``."""
    rounds: float | None
    """``total_ms / rtt_ms`` rounded to one decimal: round trips the answer took."""

    @classmethod
    def measure(
        cls,
        handshake_ms: float | None,
        first_byte_ms: float | None,
        total_ms: float | None,
        tcpi_rtt_us: int | None,
        tcpi_min_rtt_us: int | None,
    ) -> Timings:
        """Builds the timings and derives ``rtt_ms`` and ``rounds`` (see the class doc)."""
        min_rtt = tcpi_min_rtt_us / 1000 if tcpi_min_rtt_us else None
        rtt = min_rtt if min_rtt else handshake_ms
        rounds = round(total_ms / rtt, 1) if rtt and total_ms is not None else None
        return cls(
            handshake_ms=handshake_ms,
            first_byte_ms=first_byte_ms,
            total_ms=total_ms,
            tcpi_rtt_ms=None if tcpi_rtt_us is None else tcpi_rtt_us / 1000,
            tcpi_min_rtt_ms=min_rtt,
            rtt_ms=rtt,
            rounds=rounds,
        )
