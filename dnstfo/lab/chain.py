"""A forwarding chain: client — forwarder — upstream, each link its own delay line.

Three namespaces (``c``, ``f``, ``u``) and two delay lines. The client link joins ``c``
(198.18.0.1) and ``f`` (198.18.0.2) through TUN devices named ``dtfo0``; the upstream link
joins ``f`` (198.18.1.1) and ``u`` (198.18.1.2) through devices named ``dtfo1``, so the
forwarder's namespace holds one device per link. Each link has its own RTT, and each
delay line its own packet log, so a forwarded query's round trips can be counted per link.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from dnstfo.errors import UsageError
from dnstfo.lab import delay as _delay
from dnstfo.lab.delay import DelayConfig, DelayLine
from dnstfo.lab.netns import Namespace, namespace, signals_as_exceptions
from dnstfo.lab.topology import _configure

log = logging.getLogger(__name__)

CLIENT_V4, FORWARDER_V4 = _delay.CLIENT_V4, _delay.SERVER_V4
"""The client link's addresses (client side, forwarder side)."""
FORWARDER_UP_V4, UPSTREAM_V4 = "198.18.1.1", "198.18.1.2"
"""The upstream link's addresses (forwarder side, upstream side)."""
CLIENT_DEVICE, UPSTREAM_DEVICE = _delay.TUN_NAME, "dtfo1"


@dataclass(frozen=True, slots=True)
class ChainSpec:
    """What chain to build."""

    rtt_ms: float = 50.0
    """Round-trip time of the client link."""
    upstream_rtt_ms: float = 100.0
    """Round-trip time of the upstream link."""
    tcp_fastopen: int = 3
    """``net.ipv4.tcp_fastopen`` in every namespace (the forwarder is client and server)."""

    def __post_init__(self) -> None:
        if self.rtt_ms < 0 or self.upstream_rtt_ms < 0:
            raise UsageError("rtt must not be negative")


@dataclass(frozen=True, slots=True)
class Chain:
    """A running chain, valid inside the :func:`start_chain` block."""

    spec: ChainSpec
    """What was asked for."""
    client: Namespace
    """The client namespace."""
    forwarder: Namespace
    """The forwarder's namespace (on both links)."""
    upstream: Namespace
    """The upstream server's namespace."""
    client_link: DelayLine
    """The delay line between client and forwarder."""
    upstream_link: DelayLine
    """The delay line between forwarder and upstream."""

    @property
    def namespaces(self) -> tuple[Namespace, ...]:
        """Client, forwarder, upstream."""
        return (self.client, self.forwarder, self.upstream)


def _line(rtt_ms: float) -> DelayConfig:
    return DelayConfig(c2s_delay_ms=rtt_ms / 2, s2c_delay_ms=rtt_ms / 2)


@contextlib.contextmanager
def start_chain(spec: ChainSpec) -> Iterator[Chain]:
    """Builds the chain, yields it, and always tears it down.

    Raises:
        PermissionNeeded: not root, or no ``/dev/net/tun``.
        LabError: a step failed (the steps already done are undone).
    """
    sysctls = {"net.ipv4.tcp_fastopen": str(spec.tcp_fastopen)}
    with contextlib.ExitStack() as stack:
        stack.enter_context(signals_as_exceptions())
        client, forwarder, upstream = (
            stack.enter_context(namespace(role, sysctls=sysctls)) for role in ("c", "f", "u")
        )
        first = stack.enter_context(
            _delay.delay_line(client.path, forwarder.path, _line(spec.rtt_ms))
        )
        second = stack.enter_context(
            _delay.delay_line(
                forwarder.path,
                upstream.path,
                _line(spec.upstream_rtt_ms),
                device=UPSTREAM_DEVICE,
            )
        )
        _configure(client, CLIENT_V4, FORWARDER_V4, None)
        _configure(forwarder, FORWARDER_V4, CLIENT_V4, None)
        _configure(forwarder, FORWARDER_UP_V4, UPSTREAM_V4, None, UPSTREAM_DEVICE)
        _configure(upstream, UPSTREAM_V4, FORWARDER_UP_V4, None, UPSTREAM_DEVICE)
        chain = Chain(spec, client, forwarder, upstream, first, second)
        log.info("chain up: %s", ", ".join(ns.name for ns in chain.namespaces))
        yield chain
