"""The server's configuration: frozen values built by the CLI (or a test) and passed down.

Default limits (RFC 9210 §4.2 asks that each be configurable; the values are this
project's choice, sized for a small authoritative server and documented in ``--help``):

- idle timeout 10 s: RFC 7766 §6.2.3 asks for an idle timeout "on the order of seconds";
- connection lifetime 120 s: long enough for any legitimate pipelined burst, short enough
  to rebalance clients;
- no limit on queries per connection (Knot DNS has none either): a limit only ever closes
  a connection in the middle of a client's pipeline, and RFC 9210 §4.2 asks for limits on
  resources, which the lifetime, the idle timeout, the write-stall timeout and the bounded
  output per connection already hold; when one is set, every query read is answered
  before the connection closes;
- write-stall timeout 5 s: output that the socket takes no byte of for that long means a
  client that does not read (a retransmitting path backs off to about 3 s first);
- 4096 connections in total, 256 per client (an address; an IPv6 /64): a busy resolver
  behind one address still fits, one client cannot take all connections; when all are
  taken, the idle timeout shrinks and the longest-idle connection makes room.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field, replace
from pathlib import Path

from dnstfo.answer.forward import ForwardConfig
from dnstfo.errors import UsageError
from dnstfo.kernel.sockets import DEFAULT_TFO_QUEUE
from dnstfo.server.rrl import RrlConfig
from dnstfo.wire.connection import NS_PER_S, ConnectionPolicy

DEFAULT_PORT = 5353
"""Unprivileged default port; use 53 as root."""
DEFAULT_LISTEN = ("127.0.0.1", DEFAULT_PORT)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class QueryLog(enum.Enum):
    """How each query is logged (logger ``dnstfo.query``)."""

    OFF = "off"
    TEXT = "text"
    JSON = "json"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An address to listen on (TCP and UDP)."""

    host: str
    """A literal IPv4 or IPv6 address."""
    port: int
    """The port; 0 picks a free one (tests)."""

    @classmethod
    def parse(cls, text: str, default_port: int = DEFAULT_PORT) -> Endpoint:
        """Parses ``ADDR``, ``ADDR:PORT``, ``[V6]`` or ``[V6]:PORT``.

        An IPv6 address always takes brackets: without them ``::1:5353`` is both the
        address ``::1`` with port 5353 and the address ``::1:5353``, so it is refused with
        the two ways to write it.

        Raises:
            UsageError: not an address, IPv6 without brackets, or a bad port.
        """
        host, port_text = text, ""
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise UsageError(f"bad address {text!r} (want [IPV6]:PORT)")
            port_text = rest[1:]
        elif text.count(":") == 1:
            host, port_text = text.split(":")
        elif ":" in text:
            raise UsageError(_bracket_hint(text, default_port))
        try:
            ipaddress.ip_address(host)
        except ValueError as exc:
            raise UsageError(f"not an IP address: {host!r}") from exc
        if not port_text:
            return cls(host, default_port)
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise UsageError(f"bad port in {text!r}")
        return cls(host, int(port_text))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _bracket_hint(text: str, default_port: int) -> str:
    """The error for an IPv6 address written without brackets, with the ways to write it."""
    head, _, tail = text.rpartition(":")
    ways = [f"[{text}] (port {default_port})"]
    try:
        if tail.isdigit() and int(tail) <= 65535:
            ipaddress.IPv6Address(head)
            ways.insert(0, f"[{head}]:{tail}")
    except ValueError:
        pass
    return f"IPv6 address {text!r} needs brackets: write " + " or ".join(ways)


@dataclass(frozen=True, slots=True)
class Limits:
    """Server-wide TCP limits (RFC 9210 §4.2) and the per-connection policy."""

    max_connections: int = 4096
    """TCP connections open at once, over all clients."""
    max_per_client: int = 256
    """TCP connections open at once from one client (an address; an IPv6 /64)."""
    connection: ConnectionPolicy = field(default_factory=ConnectionPolicy)
    """Idle timeout, lifetime and queries per connection."""

    @classmethod
    def from_seconds(
        cls,
        *,
        max_connections: int | None = None,
        max_per_client: int | None = None,
        idle_timeout: float | None = None,
        lifetime: float | None = None,
        max_queries: int | None = None,
        write_stall: float | None = None,
    ) -> Limits:
        """Builds limits from seconds; None keeps the default (0 lifetime or queries: none).

        Raises:
            UsageError: a value out of range.
        """
        base = cls()
        policy = base.connection
        changes: dict[str, int] = {}
        if idle_timeout is not None:
            changes["idle_timeout_ns"] = round(idle_timeout * NS_PER_S)
        if lifetime is not None:
            changes["lifetime_ns"] = round(lifetime * NS_PER_S)
        if max_queries is not None:
            changes["max_queries"] = max_queries
        if write_stall is not None:
            changes["write_stall_ns"] = round(write_stall * NS_PER_S)
        try:
            policy = replace(policy, **changes)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        limits = cls(
            base.max_connections if max_connections is None else max_connections,
            base.max_per_client if max_per_client is None else max_per_client,
            policy,
        )
        if limits.max_connections < 1 or limits.max_per_client < 1:
            raise UsageError("connection limits must be at least 1")
        return limits


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything ``dnstfo serve`` needs; change it with ``dataclasses.replace``."""

    zone_dir: Path
    """Directory of zone files (one zone per file)."""
    listen: tuple[Endpoint, ...] = (Endpoint(*DEFAULT_LISTEN),)
    """Addresses served over TCP and UDP."""
    tfo_queue: int = DEFAULT_TFO_QUEUE
    """TCP_FASTOPEN queue length of the listeners."""
    tfo_key_file: Path | None = None
    """Key file (kernel text form); None: the namespace's key, or one made for workers."""
    workers: int = 1
    """Processes sharing the port with SO_REUSEPORT."""
    metrics: Endpoint | None = None
    """Where to serve Prometheus metrics; None: not served."""
    query_log: QueryLog = QueryLog.OFF
    """Per-query log lines."""
    axfr_allow: tuple[IPNetwork, ...] = ()
    """Networks allowed to transfer zones (AXFR over TCP); empty: nobody."""
    limits: Limits = field(default_factory=Limits)
    """TCP limits."""
    udp_payload: int = 1232
    """Largest UDP response when the client's EDNS allows more (DNS flag day 2020)."""
    reuseport: bool = False
    """Set SO_REUSEPORT on the sockets (implied by workers > 1)."""
    pidfile: Path | None = None
    """File to write the server's process ID to once its sockets are bound."""
    rrl: RrlConfig = field(default_factory=RrlConfig)
    """UDP response rate limiting (off by default)."""
    forward: ForwardConfig = field(default_factory=ForwardConfig)
    """Names outside our zones sent upstream (off: no upstream given)."""
    tls_listen: tuple[Endpoint, ...] = ()
    """Addresses served with DNS over TLS (RFC 7858), TCP only, with TFO; empty: none."""
    tls_cert: Path | None = None
    """PEM certificate chain for ``tls_listen``."""
    tls_key: Path | None = None
    """PEM private key for ``tls_listen`` (mode 0600 or stricter)."""

    def __post_init__(self) -> None:
        if not self.listen:
            raise UsageError("at least one listen address is needed")
        if self.workers < 1:
            raise UsageError("--workers must be at least 1")
        if self.tfo_queue < 1:
            raise UsageError("--tfo-queue must be at least 1")
        if self.tls_listen and (self.tls_cert is None or self.tls_key is None):
            raise UsageError("--tls-listen needs --tls-cert FILE and --tls-key FILE")
        if not self.tls_listen and (self.tls_cert is not None or self.tls_key is not None):
            given = " and ".join(
                option
                for option, value in (("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key))
                if value is not None
            )
            raise UsageError(f"{given} given but no --tls-listen ADDR: nothing serves TLS")
        _check_overlaps(self.listen, self.tls_listen)
        _check_forward_loop(self.listen, self.forward)


def _overlap(a: Endpoint, b: Endpoint) -> bool:
    """Whether two listen addresses take the same port on a common address: equal, or one
    the wildcard of the other's family (IPv6 sockets are IPv6-only)."""
    if a.port != b.port or not a.port:
        return False
    x, y = ipaddress.ip_address(a.host), ipaddress.ip_address(b.host)
    return x.version == y.version and (x == y or x.is_unspecified or y.is_unspecified)


def _check_overlaps(listen: tuple[Endpoint, ...], tls_listen: tuple[Endpoint, ...]) -> None:
    """Refuses a listen address given twice, or covered by another's wildcard: the kernel
    would say only EADDRINUSE, as if another server held it."""
    named = [("--listen", e) for e in listen] + [("--tls-listen", e) for e in tls_listen]
    for i, (option, endpoint) in enumerate(named):
        for other_option, other in named[:i]:
            if not _overlap(endpoint, other):
                continue
            if other_option == option and endpoint == other:
                raise UsageError(f"{option} {endpoint} is given twice")
            if endpoint == other:
                raise UsageError(f"{option} {endpoint} is also a {other_option} address")
            raise UsageError(
                f"{option} {endpoint} overlaps {other_option} {other} (a wildcard address "
                f"takes the port on every address)"
            )


def _check_forward_loop(listen: tuple[Endpoint, ...], forward: ForwardConfig) -> None:
    """Refuses an upstream that is one of our own listen addresses (or a loopback address
    under our wildcard on its port): each forwarded query would come back to us, and again.
    An upstream on another local address under a wildcard is checked at start-up."""
    upstreams = [*forward.upstreams, *(a for zone in forward.zones for a in zone.upstreams)]
    for host, port in upstreams:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            continue
        for endpoint in listen:
            ours = ipaddress.ip_address(endpoint.host)
            if endpoint.port != port or ours.version != address.version:
                continue
            if address == ours or (
                ours.is_unspecified and (address.is_loopback or address.is_unspecified)
            ):
                raise UsageError(forward_loop_error(Endpoint(host, port), endpoint))


def forward_loop_error(upstream: Endpoint, endpoint: Endpoint) -> str:
    """The error for an upstream that is our own listen address."""
    return (
        f"upstream {upstream} is our own --listen {endpoint}: every forwarded query would "
        f"come back to us; forward to another server"
    )


def parse_network(text: str) -> IPNetwork:
    """Parses an address or network (``192.0.2.0/24``, ``::1``).

    Raises:
        UsageError: not a network.
    """
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise UsageError(f"not an address or network: {text!r}") from exc
