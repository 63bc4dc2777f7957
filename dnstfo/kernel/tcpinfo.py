"""TCP_INFO (``struct tcp_info``, include/uapi/linux/tcp.h) as a frozen dataclass.

The layout is declared once, in ``_LAYOUT``. Older kernels return a shorter struct:
fields past the returned length read as None. The bitfield byte after
``tcpi_options`` holds ``tcpi_delivery_rate_app_limited:1`` and
``tcpi_fastopen_client_fail:2`` (Linux 5.5+), low bits first on little-endian ABIs.
"""

from __future__ import annotations

import enum
import socket
import struct
from dataclasses import dataclass

from dnstfo.errors import NetworkError


class TcpiOption(enum.IntFlag):
    """``tcpi_options`` flags."""

    TIMESTAMPS = 0x1
    SACK = 0x2
    WSCALE = 0x4
    ECN = 0x8
    ECN_SEEN = 0x10
    SYN_DATA = 0x20
    """Client: data in our SYN was acked. Server: the SYN carried data."""
    USEC_TS = 0x40
    TFO_CHILD = 0x80
    """Server side: the connection was accepted through Fast Open (newer kernels only)."""


class FastOpenClientFail(enum.IntEnum):
    """``tcpi_fastopen_client_fail``: why the client's Fast Open attempt failed."""

    UNSPEC = 0
    """No failure recorded (or TFO not attempted)."""
    COOKIE_UNAVAILABLE = 1
    """No cookie was cached: the SYN carried a cookie request instead of data."""
    DATA_NOT_ACKED = 2
    """The SYN-ACK did not acknowledge the data sent in the SYN."""
    SYN_RETRANSMITTED = 3
    """The SYN with data was lost and retransmitted without data."""


class TcpState(enum.IntEnum):
    """``tcpi_state`` (include/net/tcp_states.h)."""

    ESTABLISHED = 1
    SYN_SENT = 2
    SYN_RECV = 3
    FIN_WAIT1 = 4
    FIN_WAIT2 = 5
    TIME_WAIT = 6
    CLOSE = 7
    CLOSE_WAIT = 8
    LAST_ACK = 9
    LISTEN = 10
    CLOSING = 11
    NEW_SYN_RECV = 12


# (field, struct code), in kernel order. "x" entries are bytes handled by hand.
_LAYOUT: tuple[tuple[str, str], ...] = (
    ("state", "B"), ("ca_state", "B"), ("retransmits", "B"), ("probes", "B"),
    ("backoff", "B"), ("options", "B"), ("wscale", "B"), ("bitfield", "B"),
    ("rto_us", "I"), ("ato_us", "I"), ("snd_mss", "I"), ("rcv_mss", "I"),
    ("unacked", "I"), ("sacked", "I"), ("lost", "I"), ("retrans", "I"), ("fackets", "I"),
    ("last_data_sent_ms", "I"), ("last_ack_sent_ms", "I"), ("last_data_recv_ms", "I"),
    ("last_ack_recv_ms", "I"),
    ("pmtu", "I"), ("rcv_ssthresh", "I"), ("rtt_us", "I"), ("rttvar_us", "I"),
    ("snd_ssthresh", "I"), ("snd_cwnd", "I"), ("advmss", "I"), ("reordering", "I"),
    ("rcv_rtt_us", "I"), ("rcv_space", "I"), ("total_retrans", "I"),
    ("pacing_rate", "Q"), ("max_pacing_rate", "Q"), ("bytes_acked", "Q"),
    ("bytes_received", "Q"), ("segs_out", "I"), ("segs_in", "I"),
    ("notsent_bytes", "I"), ("min_rtt_us", "I"), ("data_segs_in", "I"), ("data_segs_out", "I"),
    ("delivery_rate", "Q"), ("busy_time_us", "Q"), ("rwnd_limited_us", "Q"),
    ("sndbuf_limited_us", "Q"), ("delivered", "I"), ("delivered_ce", "I"),
    ("bytes_sent", "Q"), ("bytes_retrans", "Q"), ("dsack_dups", "I"), ("reord_seen", "I"),
    ("rcv_ooopack", "I"), ("snd_wnd", "I"), ("rcv_wnd", "I"),
)  # fmt: skip

_STRUCT = struct.Struct("=" + "".join(code for _, code in _LAYOUT))
_NAMES = tuple(name for name, _ in _LAYOUT)


def _prefix_struct(length: int) -> tuple[struct.Struct, int]:
    """Returns the struct covering as many whole fields as fit in ``length`` bytes."""
    fmt = "="
    count = 0
    for _, code in _LAYOUT:
        if struct.calcsize(fmt + code) > length:
            break
        fmt += code
        count += 1
    return struct.Struct(fmt), count


@dataclass(frozen=True, slots=True)
class TcpInfo:
    """What the kernel says about one TCP connection (times in µs unless named _ms)."""

    state: TcpState | int
    """Connection state."""
    options: TcpiOption
    """Negotiated options and Fast Open flags (SYN_DATA, TFO_CHILD)."""
    fastopen_client_fail: FastOpenClientFail
    """Why a client Fast Open attempt failed (UNSPEC when it did not, or on old kernels)."""
    retransmits: int
    """Retransmissions of the current segment (SYN retransmits during the handshake)."""
    total_retrans: int
    """Retransmitted segments over the connection's life."""
    rtt_us: int
    """Smoothed round-trip time."""
    rttvar_us: int
    """Round-trip time variance."""
    min_rtt_us: int | None
    """Smallest RTT seen (None on old kernels)."""
    rto_us: int
    """Current retransmission timeout."""
    segs_out: int | None
    """Segments sent, including the SYN."""
    segs_in: int | None
    """Segments received."""
    data_segs_out: int | None
    """Segments sent that carried data."""
    data_segs_in: int | None
    """Segments received that carried data."""
    bytes_acked: int | None
    """Bytes acknowledged by the peer."""
    bytes_received: int | None
    """Bytes received from the peer."""
    bytes_sent: int | None
    """Bytes sent, including retransmissions."""
    bytes_retrans: int | None
    """Bytes retransmitted."""

    @property
    def syn_data(self) -> bool:
        """Client: our SYN data was acked. Server: the SYN carried data."""
        return TcpiOption.SYN_DATA in self.options

    @property
    def tfo_child(self) -> bool:
        """Server: the connection was accepted through Fast Open (newer kernels only)."""
        return TcpiOption.TFO_CHILD in self.options


_I_STATE, _I_OPTIONS, _I_BITFIELD = (_NAMES.index(n) for n in ("state", "options", "bitfield"))
_I_RETRANSMITS, _I_TOTAL_RETRANS = _NAMES.index("retransmits"), _NAMES.index("total_retrans")
_I_RTT, _I_RTTVAR, _I_MIN_RTT, _I_RTO = (
    _NAMES.index(n) for n in ("rtt_us", "rttvar_us", "min_rtt_us", "rto_us")
)
_I_SEGS_OUT, _I_SEGS_IN, _I_DATA_SEGS_OUT, _I_DATA_SEGS_IN = (
    _NAMES.index(n) for n in ("segs_out", "segs_in", "data_segs_out", "data_segs_in")
)
_I_BYTES_ACKED, _I_BYTES_RECEIVED, _I_BYTES_SENT, _I_BYTES_RETRANS = (
    _NAMES.index(n) for n in ("bytes_acked", "bytes_received", "bytes_sent", "bytes_retrans")
)
_STATES: dict[int, TcpState] = {int(s): s for s in TcpState}
_CLIENT_FAILS: tuple[FastOpenClientFail, ...] = tuple(FastOpenClientFail)


def parse_tcp_info(raw: bytes) -> TcpInfo:
    """Parses the bytes ``getsockopt(TCP_INFO)`` returned, short structs included.

    Raises:
        ValueError: fewer bytes than the oldest kernel's struct (up to total_retrans).
    """
    if len(raw) >= _STRUCT.size:
        values = _STRUCT.unpack_from(raw)
    else:
        prefix, count = _prefix_struct(len(raw))
        if count <= _NAMES.index("total_retrans"):
            raise ValueError(f"TCP_INFO of {len(raw)} bytes is too short")
        values = prefix.unpack_from(raw) + (None,) * (len(_NAMES) - count)
    # Indexed reads (no per-call dict): the probe parses this twice per connection.
    state = values[_I_STATE]
    return TcpInfo(
        state=_STATES.get(state, state),
        options=TcpiOption(values[_I_OPTIONS]),
        fastopen_client_fail=_CLIENT_FAILS[(values[_I_BITFIELD] >> 1) & 0x3],
        retransmits=values[_I_RETRANSMITS],
        total_retrans=values[_I_TOTAL_RETRANS],
        rtt_us=values[_I_RTT],
        rttvar_us=values[_I_RTTVAR],
        min_rtt_us=values[_I_MIN_RTT],
        rto_us=values[_I_RTO],
        segs_out=values[_I_SEGS_OUT],
        segs_in=values[_I_SEGS_IN],
        data_segs_out=values[_I_DATA_SEGS_OUT],
        data_segs_in=values[_I_DATA_SEGS_IN],
        bytes_acked=values[_I_BYTES_ACKED],
        bytes_received=values[_I_BYTES_RECEIVED],
        bytes_sent=values[_I_BYTES_SENT],
        bytes_retrans=values[_I_BYTES_RETRANS],
    )


def tcp_info(sock: socket.socket) -> TcpInfo:
    """Reads TCP_INFO of a connected (or connecting, or accepted) TCP socket.

    Raises:
        NetworkError: the socket is not a TCP socket or is closed (errno kept).
    """
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _STRUCT.size)
    except OSError as exc:
        raise NetworkError.from_oserror("reading TCP_INFO", exc) from exc
    return parse_tcp_info(raw)


_OPTIONS_END = struct.calcsize(
    "=" + "".join(code for _, code in _LAYOUT[: _NAMES.index("options") + 1])
)


def tcpi_options(sock: socket.socket) -> int:
    """Reads only ``tcpi_options`` (:class:`TcpiOption` bits) of a TCP socket's TCP_INFO.

    For a per-connection path that needs the Fast Open flags and not the whole struct: the
    kernel copies just the first bytes, and nothing is parsed.

    Raises:
        NetworkError: the socket is not a TCP socket or is closed (errno kept).
    """
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _OPTIONS_END)
    except OSError as exc:
        raise NetworkError.from_oserror("reading TCP_INFO", exc) from exc
    return raw[_OPTIONS_END - 1]
