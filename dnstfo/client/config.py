"""What one query asks for: a frozen configuration, changed with ``dataclasses.replace``."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class TfoMethod(enum.Enum):
    """How the client asks the kernel to put the query in the SYN."""

    OFF = "off"
    """Plain TCP: connect, then write (the baseline)."""
    SENDTO = "sendto"
    """``sendto(..., MSG_FASTOPEN)``: connect and send in one call (Linux 3.7+)."""
    CONNECT = "connect"
    """``TCP_FASTOPEN_CONNECT``: ``connect()`` returns at once, the first write rides in the
    SYN (Linux 4.11+)."""


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """DNS over TLS (RFC 7858): how the server's certificate is checked."""

    ca_file: str | None = None
    """PEM file of trusted CAs (None: the system's store)."""
    hostname: str | None = None
    """Name the certificate must hold (None: the server as given on the command line)."""
    insecure: bool = False
    """Skip verification altogether (the output says so)."""


@dataclass(frozen=True, slots=True)
class QueryConfig:
    """One DNS query over TCP to one server address."""

    qname: str
    """Name to look up (absolute or relative to the root)."""
    server: str
    """Server IP address literal (names are resolved before this point)."""
    rdtype: str = "A"
    """Query type mnemonic (``A``, ``AAAA``, ``MX``...)."""
    rdclass: str = "IN"
    """Query class mnemonic."""
    port: int = 53
    """Server TCP port."""
    source: str | None = None
    """Source address to bind, or None to let the kernel choose."""
    tfo: TfoMethod = TfoMethod.SENDTO
    """How to try TCP Fast Open (``OFF`` for plain TCP)."""
    no_cookie: bool = False
    """Send SYN data without a cookie (``TCP_FASTOPEN_NO_COOKIE``), for servers that accept it."""
    dnssec: bool = False
    """Set the DNSSEC OK bit (EDNS DO)."""
    recurse: bool = True
    """Set Recursion Desired."""
    timeout: float = 5.0
    """Seconds allowed for the whole exchange of one try (connect, first byte, response)."""
    tries: int = 1
    """Tries in all: a try that times out is repeated on a new connection, up to this many."""
    edns_payload: int = 1232
    """EDNS0 payload size advertised (0 or less: no EDNS)."""
    tls: TlsOptions | None = None
    """DNS over TLS with these options (None: plain DNS over TCP)."""

    @property
    def tfo_requested(self) -> bool:
        """Whether this query tries to send in the SYN."""
        return self.tfo is not TfoMethod.OFF
