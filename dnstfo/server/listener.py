"""Listening sockets: a TFO TCP listener and a UDP socket per listen address.

Sockets are made here, before any event loop (and before ``--workers`` forks, so each
worker gets its own SO_REUSEPORT set on the same port, and port 0 resolves once), then
handed to asyncio with ``sock=``.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass

from dnstfo.errors import KernelFeatureError, NetworkError
from dnstfo.kernel import sysctl
from dnstfo.kernel.sockets import TfoKey, family_of, tfo_listener
from dnstfo.server.config import Endpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ListenerPair:
    """The TCP listener and the UDP socket of one listen address."""

    endpoint: Endpoint
    """The address as bound (port 0 resolved)."""
    tcp: socket.socket
    """A listening TCP socket with TCP_FASTOPEN set."""
    udp: socket.socket
    """A bound UDP socket."""

    def close(self) -> None:
        """Closes both sockets."""
        self.tcp.close()
        self.udp.close()


def udp_socket(endpoint: Endpoint, *, reuseport: bool) -> socket.socket:
    """A UDP socket bound to ``endpoint``.

    Raises:
        NetworkError: bind failed (errno kept).
    """
    family = family_of(endpoint.host)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((endpoint.host, endpoint.port))
    except OSError as exc:
        sock.close()
        raise NetworkError.from_oserror(f"binding UDP {endpoint}", exc) from exc
    return sock


def open_listeners(
    endpoints: tuple[Endpoint, ...],
    *,
    tfo_queue: int,
    key: TfoKey | None,
    reuseport: bool,
) -> list[ListenerPair]:
    """Binds TCP (with TFO) and UDP on every endpoint; UDP takes the port TCP got.

    Raises:
        NetworkError: an address could not be bound; nothing stays open.
        KernelFeatureError: TCP_FASTOPEN (or the key option) is missing.
    """
    pairs: list[ListenerPair] = []
    try:
        for endpoint in endpoints:
            tcp = tfo_listener(
                (endpoint.host, endpoint.port), queue_len=tfo_queue, key=key, reuseport=reuseport
            )
            try:
                bound = Endpoint(endpoint.host, tcp.getsockname()[1])
                udp = udp_socket(bound, reuseport=reuseport)
            except BaseException:
                tcp.close()
                raise
            pairs.append(ListenerPair(bound, tcp, udp))
    except BaseException:
        for pair in pairs:
            pair.close()
        raise
    return pairs


def warn_if_tfo_off() -> None:
    """Logs a warning with the sysctl to set when this namespace refuses SYN data."""
    try:
        enabled = sysctl.server_enabled()
    except KernelFeatureError as exc:
        log.warning("TCP Fast Open unavailable: %s", exc)
        return
    if not enabled:
        log.warning(
            "the kernel does not accept SYN data on this namespace's listeners; "
            "serving without TCP Fast Open. Enable it with: %s",
            sysctl.enable_hint(sysctl.TfoMode.SERVER),
        )
