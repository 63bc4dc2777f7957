"""Listening sockets: a TFO TCP listener and a UDP socket per listen address.

Sockets are made here, before any event loop (and before ``--workers`` forks, so each
worker gets its own SO_REUSEPORT set on the same port, and port 0 resolves once), then
handed to asyncio with ``sock=``.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from dataclasses import dataclass

from dnstfo.errors import (
    DnstfoError,
    KernelFeatureError,
    NetworkError,
    PermissionNeeded,
    UsageError,
)
from dnstfo.kernel import sysctl
from dnstfo.kernel.sockets import TfoKey, family_of, tfo_listener
from dnstfo.server.config import Endpoint, ServerConfig, forward_loop_error

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
        PermissionNeeded: the port is privileged and this process may not bind it.
        KernelFeatureError: TCP_FASTOPEN (or the key option) is missing.
    """
    pairs: list[ListenerPair] = []
    try:
        for endpoint in endpoints:
            try:
                tcp = tfo_listener(
                    (endpoint.host, endpoint.port),
                    queue_len=tfo_queue,
                    key=key,
                    reuseport=reuseport,
                )
            except NetworkError as exc:
                if exc.errno == errno.EACCES:
                    raise _privileged_port(endpoint, exc) from exc
                raise
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


def check_ports_free(endpoints: tuple[Endpoint, ...]) -> None:
    """Refuses endpoints whose TCP or UDP port another socket holds, as a single process
    would: SO_REUSEPORT (``--workers``) lets any process of the same user that sets it too
    join a port's group, so a second server would silently take a share of the traffic.
    A plain bind (SO_REUSEADDR for TCP: an earlier run's TIME_WAIT does not count) fails
    on a port that any listener or bound UDP socket holds. Other errors are left to the
    real bind, which explains them.

    Raises:
        NetworkError: EADDRINUSE, naming the address.
    """
    for endpoint in endpoints:
        if not endpoint.port:
            continue
        family = family_of(endpoint.host)
        for kind, name in ((socket.SOCK_STREAM, "TCP"), (socket.SOCK_DGRAM, "UDP")):
            with socket.socket(family, kind) as sock:
                if kind == socket.SOCK_STREAM:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    sock.bind((endpoint.host, endpoint.port))
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE:
                        continue
                    raise NetworkError(
                        f"binding {name} {endpoint}: the port is in use by another process "
                        f"(another server?)",
                        exc.errno,
                    ) from exc


def check_forward_not_local(config: ServerConfig) -> None:
    """Refuses an upstream on one of this host's addresses under a wildcard listen
    address with its port (the loopback and exact cases are refused by the config).

    Raises:
        UsageError: the upstream is us.
    """
    forward = config.forward
    upstreams = [*forward.upstreams, *(a for zone in forward.zones for a in zone.upstreams)]
    for host, port in upstreams:
        for endpoint in config.listen:
            ours = ipaddress.ip_address(endpoint.host)
            if endpoint.port != port or not ours.is_unspecified:
                continue
            if (":" in host) != (ours.version == 6):
                continue
            if _is_local(host):
                raise UsageError(forward_loop_error(Endpoint(host, port), endpoint))


def _is_local(host: str) -> bool:
    """Whether ``host`` is one of this namespace's addresses (a bind to it succeeds)."""
    try:
        with socket.socket(family_of(host), socket.SOCK_DGRAM) as sock:
            sock.bind((host, 0))
    except OSError:
        return False
    return True


def _privileged_port(endpoint: Endpoint, exc: NetworkError) -> DnstfoError:
    """The error for EACCES on bind: ports below ``ip_unprivileged_port_start`` need
    CAP_NET_BIND_SERVICE (root has it)."""
    try:
        first = int(sysctl.read_sysctl("net.ipv4.ip_unprivileged_port_start"))
    except (KernelFeatureError, OSError, ValueError):
        first = 1024
    if endpoint.port >= first:
        return exc
    return PermissionNeeded(
        f"{exc}: port {endpoint.port} is privileged (below {first}); run as root or with "
        f"CAP_NET_BIND_SERVICE (contrib/dnstfo.service grants it), or listen on a port "
        f"from {first} up"
    )


def server_accepts_syn_data() -> bool:
    """Whether this namespace's kernel accepts data in the SYN on our listeners."""
    try:
        return sysctl.server_enabled()
    except (KernelFeatureError, OSError):
        return False


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
