"""What the probe observed: per connection, per target, on the wire and of this host.

Every field is an observation (TCP_INFO of the connection's socket, a tcp_metrics GET for
its (source, destination) pair, the monotonic clock, the DNS answer; optionally the wire
as captured with ``--pcap`` or a crafted SYN with ``--syn-only``). The verdict
(:mod:`dnstfo.probe.classify`) is a pure function of these types.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from dnstfo.kernel.tcpinfo import FastOpenClientFail


class Step(enum.Enum):
    """The part a connection plays in a target's plan."""

    BASELINE = "baseline"
    """Plain TCP, no TFO: does the server answer at all (retried once)."""
    PRIMING = "priming"
    """First TFO connection: the SYN asks for a cookie (none is cached)."""
    TFO = "tfo"
    """A TFO connection that should carry the query in the SYN."""


class Failure(enum.Enum):
    """Why a connection got no checked answer."""

    TIMEOUT = "timeout"
    """A phase ran out of time (the phase is in ``ConnectionObservation.error``)."""
    REFUSED = "refused"
    """The server reset the SYN (nothing listening)."""
    RESET = "reset"
    """The connection was reset after it was established."""
    UNREACHABLE = "unreachable"
    """No route, or an ICMP error."""
    CLOSED = "closed"
    """The server closed the connection before any byte of a reply."""
    BAD_REPLY = "bad-reply"
    """Bytes came back, but not a matching DNS response."""
    TLS_REFUSED = "tls-refused"
    """The server answered the TLS handshake, but its certificate failed our check."""
    LOCAL = "local"
    """This host could not open the connection (socket options, source address)."""


class OptionKind(enum.IntEnum):
    """TCP option kinds that carry a Fast Open cookie (RFC 7413 §4.1.1)."""

    FASTOPEN = 34
    """The assigned option."""
    EXPERIMENTAL = 254
    """The experimental option with magic 0xF989 (RFC 6994), used before 34 was assigned."""


@dataclass(frozen=True, slots=True)
class WireEvidence:
    """What the capture showed for one connection's SYN and SYN-ACK (PATHspider's fields).

    Filled from ``--pcap`` by the evidence module; None where the packet was not seen.
    """

    syn_kind: OptionKind | None
    """``tfo_synkind``: the Fast Open option kind in our first SYN (None: no option)."""
    syn_cookie_len: int | None
    """``tfo_synclen``: cookie length in that SYN (0: a cookie request)."""
    synack_kind: OptionKind | None
    """``tfo_ackkind``: the option kind in the SYN-ACK (None: no option)."""
    synack_cookie_len: int | None
    """``tfo_ackclen``: cookie length in the SYN-ACK (the cookie the server gave)."""
    syn_data_len: int
    """``tfo_dlen``: payload bytes in our first SYN."""
    syn_data_acked: bool | None
    """The SYN-ACK acknowledged the SYN's payload (ack = seq + 1 + dlen, dlen > 0; a SYN
    without payload has nothing acknowledged); None: no SYN-ACK."""
    syn_count: int
    """SYNs we sent for this connection (more than one: retransmitted)."""
    retransmitted_syn_kind: OptionKind | None
    """Option kind in the last retransmitted SYN (None: none, or no retransmission)."""
    retransmitted_syn_data_len: int
    """Payload bytes in the last retransmitted SYN (0 when none)."""


@dataclass(frozen=True, slots=True)
class SynOnlyObservation:
    """``--syn-only``: a crafted SYN with an empty Fast Open option, and what came back."""

    answered: bool
    """A SYN-ACK came back (the half-open connection was then reset)."""
    option_kind: OptionKind | None
    """The Fast Open option kind in the SYN-ACK (None: no option)."""
    cookie_len: int | None
    """Cookie length in the SYN-ACK (None: no option)."""
    rtt_ms: float | None
    """SYN to SYN-ACK, in milliseconds (None: no answer)."""
    error: str | None
    """Why no answer (timeout, RST), or None."""


@dataclass(frozen=True, slots=True)
class ConnectionObservation:
    """One connection of a target's plan."""

    step: Step
    """Its part in the plan."""
    source: str | None
    """Local address (None: the socket never got one)."""
    source_port: int | None
    """Local port (PATHspider's ``sp``)."""
    tfo_requested: bool
    """The connection asked the kernel for TFO (MSG_FASTOPEN)."""
    syn_data_sent: bool
    """The query was placed in the SYN."""
    syn_data_acked: bool
    """TCP_INFO SYN_DATA: the SYN-ACK acknowledged the query in the SYN."""
    client_fail: FastOpenClientFail
    """``tcpi_fastopen_client_fail``: the kernel's reason a TFO attempt failed."""
    cookie_before: bytes | None
    """Cookie cached for (source, target) before the connection (tcp_metrics GET)."""
    cookie_after: bytes | None
    """Cookie cached after it."""
    syn_retransmits: int
    """SYNs resent during the handshake (without the resend of unacked SYN data)."""
    fallback_reason: str | None
    """Why TFO was requested but not tried (the client bit is off), or None."""
    handshake_ms: float | None
    """Socket call to established (None: never established)."""
    total_ms: float | None
    """Socket call to the whole answer (None: no answer)."""
    rtt_ms: float | None
    """The path's RTT (TCP_INFO min_rtt, else the handshake)."""
    rounds: float | None
    """``total_ms / rtt_ms``, one decimal."""
    rcode: str | None
    """The answer's RCODE name (None: no checked answer)."""
    failure: Failure | None
    """Why there is no answer, or None."""
    error: str | None
    """The error in words (names the phase of a timeout), or None."""
    started: float
    """Wall-clock start (``time.time()``), for the record's ``time``."""
    finished: float
    """Wall-clock end."""
    wire: WireEvidence | None = None
    """What the capture showed, with ``--pcap`` (None otherwise)."""
    evicted: bool = False
    """A TFO connection that got its SYN-ACK left no tcp_metrics entry for its pair: the
    kernel reclaimed it for another destination (too many at once), so a missing cookie
    says nothing about the server."""

    @property
    def answered(self) -> bool:
        """A checked DNS answer arrived."""
        return self.rcode is not None

    @property
    def syn_retransmitted(self) -> bool:
        """The handshake needed a SYN retransmission (by TCP_INFO or the kernel's reason)."""
        return self.syn_retransmits > 0 or self.client_fail is FastOpenClientFail.SYN_RETRANSMITTED

    @property
    def tfo_worked(self) -> bool:
        """The query rode in the SYN, was acknowledged and answered, with no retransmission."""
        return (
            self.syn_data_sent
            and self.syn_data_acked
            and self.answered
            and not self.syn_retransmitted
        )


@dataclass(frozen=True, slots=True)
class LocalState:
    """This host's preconditions for the run (read once per run, never per connection)."""

    sysctl: int | None
    """net.ipv4.tcp_fastopen (None: unreadable)."""
    client_enabled: bool
    """Its client bit (0x1) is set: queries can ride in the SYN."""
    blackhole_timeout_s: int | None
    """net.ipv4.tcp_fastopen_blackhole_timeout_sec (0: detection off)."""
    blackhole_count: int
    """TcpExt TCPFastOpenBlackhole when the run started."""
    blackhole_delta: int
    """Its increase during the run (so far): the kernel suspected a blackhole."""
    cookie_clearable: bool
    """The cookie cache can be edited (root), so each target is primed from scratch."""

    @property
    def blackhole_active(self) -> bool:
        """Active TFO may be paused host-wide: a blackhole was suspected and detection is on."""
        return bool(self.blackhole_timeout_s) and (self.blackhole_count + self.blackhole_delta) > 0


@dataclass(frozen=True, slots=True)
class TargetObservations:
    """Everything the plan observed for one target: the input of ``classify``."""

    local: LocalState
    """This host's preconditions."""
    connections: tuple[ConnectionObservation, ...]
    """Every connection, in the order made."""
    cookie_deleted: bool
    """The cookie for (source, target) was deleted before priming."""
    syn_only: SynOnlyObservation | None = None
    """The crafted-SYN check, with ``--syn-only`` (None otherwise)."""

    def of(self, step: Step) -> tuple[ConnectionObservation, ...]:
        """The connections of one step, in order."""
        return tuple(c for c in self.connections if c.step is step)
