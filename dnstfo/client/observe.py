"""Observation of one connection, as its own step: TCP_INFO of its socket, its cookie.

What the kernel did is read from the connection's own socket (TCP_INFO) and from the
cookie cache entry of its own (source, destination) pair (a tcp_metrics GET), never
from a dump of the whole cache. Host-wide counters belong to a run, not to a connection.
"""

from __future__ import annotations

import contextlib
import logging
import socket

from dnstfo.errors import DnstfoError, KernelFeatureError
from dnstfo.kernel import tcp_metrics
from dnstfo.kernel.sockets import family_of
from dnstfo.kernel.tcpinfo import FastOpenClientFail, TcpInfo

log = logging.getLogger(__name__)


def syn_retransmits(at_connect: TcpInfo, attempted: bool) -> int:
    """SYN retransmissions, from TCP_INFO read when the connection was established.

    ``total_retrans`` then counts the SYN's retransmissions, plus one when SYN data was
    not acked: the kernel resends that data as soon as the SYN-ACK arrives
    (``tcp_rcv_fastopen_synack``), and the same function records in
    ``fastopen_client_fail`` which of the two happened.
    """
    total = at_connect.total_retrans
    if not attempted or at_connect.syn_data:
        return total
    if at_connect.fastopen_client_fail is FastOpenClientFail.DATA_NOT_ACKED:
        return 0
    return max(total - 1, 1)


def route_source(daddr: str, port: int) -> str | None:
    """The source address the kernel would use towards ``daddr`` (no packet is sent).

    A connected UDP socket takes the route's preferred source; the cookie cache is
    keyed by (source, destination), so this names the entry a connection will use.
    """
    try:
        with socket.socket(family_of(daddr), socket.SOCK_DGRAM) as s:
            s.connect((daddr, port))
            return str(s.getsockname()[0])
    except (OSError, DnstfoError):
        return None


class CookieReader:
    """Reads cached cookies by address pair over one netlink socket (None when unreadable).

    Args:
        cache: an open cache to use (the caller closes it); None opens one lazily.
    """

    def __init__(self, cache: tcp_metrics.Cache | None = None) -> None:
        self._cache = cache
        self._own = cache is None
        self._broken = False

    def cookie(self, daddr: str, saddr: str | None) -> bytes | None:
        """The cookie cached for (source, destination), or None (none, or unreadable)."""
        return self.entry(daddr, saddr)[1]

    def entry(self, daddr: str, saddr: str | None) -> tuple[bool | None, bytes | None]:
        """Whether the pair has an entry (None: unreadable), and its cookie."""
        if self._broken:
            return None, None
        try:
            if self._cache is None:
                self._cache = tcp_metrics.Cache()
            return self._cache.cookie_entry(daddr, saddr)
        except (DnstfoError, OSError) as exc:
            log.debug("cannot read tcp_metrics: %s", exc)
            self._broken = isinstance(exc, KernelFeatureError)  # no such family: stop asking
            return None, None

    def close(self) -> None:
        """Closes the netlink socket if this reader opened it."""
        if self._own and self._cache is not None:
            with contextlib.suppress(OSError):
                self._cache.close()
            self._cache = None
