"""What one exchange returns: the response, the timings and the TFO report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dnstfo.client.config import QueryConfig
from dnstfo.client.report import TfoAfter, TfoBefore, Timings
from dnstfo.client.verdict import Verdict
from dnstfo.errors import (
    DnstfoError,
    NetworkError,
    PeerClosed,
    PhaseTimeout,
    RemoteProtocolError,
)
from dnstfo.kernel.tcpinfo import TcpInfo
from dnstfo.timing import PhaseTimes

if TYPE_CHECKING:
    import dns.message

    from dnstfo.client.tls import TlsInfo  # imports ssl: only for DoT


@dataclass(frozen=True, slots=True)
class TfoReport:
    """Everything about TCP Fast Open for one exchange, and the verdict drawn from it."""

    requested: bool
    """Whether the query asked for TFO."""
    method: str
    """How TFO was asked for (``sendto``, ``connect``, ``off``)."""
    no_cookie: bool
    """Whether TCP_FASTOPEN_NO_COOKIE was set."""
    before: TfoBefore
    """The host's state before the connection."""
    after: TfoAfter
    """What the kernel did."""
    timings: Timings
    """Durations, path RTT and rounds."""
    verdict: Verdict
    """The judgement, a pure function of the fields above."""


@dataclass(frozen=True, slots=True)
class Transfer:
    """A whole zone transfer (AXFR, RFC 5936): every message, from the first SOA to the last."""

    messages: tuple[dns.message.Message, ...]
    """The messages in order; the first is also ``QueryResult.response``."""
    size: int
    """Bytes of all messages, without their length prefixes (as dig and kdig count them)."""

    @property
    def records(self) -> int:
        """Records in all answer sections, both SOAs included."""
        return sum(len(rrset) for m in self.messages for rrset in m.answer)


@dataclass(frozen=True, slots=True)
class QueryResult:
    """One completed exchange."""

    config: QueryConfig
    """What was asked."""
    query: dns.message.Message
    """The query sent."""
    response: dns.message.Message
    """The response received (ID and question checked)."""
    query_size: int
    """Query size in bytes, without the two-byte length prefix."""
    response_size: int
    """Response size in bytes, without the length prefix."""
    server: tuple[str, int]
    """Server address and port the connection went to."""
    source: tuple[str, int]
    """Local address and port the connection used."""
    times: PhaseTimes
    """Milestones on the monotonic clock."""
    tcp_info: TcpInfo
    """TCP_INFO read after the response arrived."""
    tfo: TfoReport
    """The TFO report."""
    wall_time: float
    """Wall-clock time the exchange started (``time.time()``), for display only."""
    tries: int
    """How many tries it took (1 unless earlier tries timed out)."""
    elapsed_ms: float
    """From the first try's start to the last byte read: every try, the whole transfer."""
    transfer: Transfer | None = None
    """The zone transfer, when the query was an AXFR that the server began (None otherwise)."""
    tls: TlsInfo | None = None
    """What the TLS handshake settled (None: plain DNS over TCP)."""


# What the driver was doing, from the start of a NetworkError's message (client/query.py).
_PHASES = (("connecting", "connect"), ("sending", "send"), ("reading", "response"))


@dataclass(frozen=True, slots=True)
class QueryFailure:
    """A query that got no usable answer: where it stopped and why."""

    phase: str | None
    """``connect``, ``send``, ``first byte``, ``response`` or ``transfer`` (None: unknown)."""
    errno: int | None
    """The socket error's errno (None for a timeout or a bad reply)."""
    message: str
    """The error in one line."""

    @property
    def errname(self) -> str | None:
        """The errno's symbolic name (``ECONNREFUSED``), or None."""
        import errno

        return None if self.errno is None else errno.errorcode.get(self.errno, str(self.errno))

    @classmethod
    def from_error(cls, exc: DnstfoError) -> QueryFailure:
        """Describes the error an exchange raised."""
        if isinstance(exc, PhaseTimeout | PeerClosed):
            return cls(phase=exc.phase, errno=None, message=str(exc))
        if isinstance(exc, NetworkError):
            text = str(exc)
            phase = next((p for start, p in _PHASES if text.startswith(start)), None)
            return cls(phase=phase, errno=exc.errno, message=text)
        if isinstance(exc, RemoteProtocolError):
            transfer = "transfer" in str(exc)
            return cls(phase="transfer" if transfer else "response", errno=None, message=str(exc))
        return cls(phase=None, errno=None, message=str(exc))
