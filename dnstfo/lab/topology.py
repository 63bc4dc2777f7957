"""A whole lab from a declarative spec: client namespace, server namespace, delay line.

::

    client ns (dtfo-c-…)              relay process                 server ns (dtfo-s-…)
    dtfo0 198.18.0.1  <── TUN ──>  delay, loss, faults  <── TUN ──>  dtfo0 198.18.0.2
          fd00:d7f0::1                  packet log                         fd00:d7f0::2

Use :func:`start_lab` as a context manager; everything it made is gone when the block ends,
also on an exception, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from dnstfo.errors import UsageError
from dnstfo.lab import delay as _delay
from dnstfo.lab.delay import DelayConfig, DelayLine, Fault
from dnstfo.lab.netns import Namespace, fixed_name, namespace, signals_as_exceptions

log = logging.getLogger(__name__)

_IFA_F_NODAD = 0x02  # lab addresses are unique by construction: no duplicate detection wait


@dataclass(frozen=True, slots=True)
class LabSpec:
    """What lab to build. Change it with ``dataclasses.replace``."""

    rtt_ms: float = 100.0
    """Round-trip time added by the delay line, split evenly between the two directions."""
    jitter_ms: float = 0.0
    """Per-packet delay variation, uniform, up to this much either way."""
    loss: float = 0.0
    """Packet loss probability per direction (0..1)."""
    faults: frozenset[Fault] = field(default_factory=frozenset)
    """Middlebox faults the delay line plays."""
    client_tcp_fastopen: int = 3
    """``net.ipv4.tcp_fastopen`` in the client namespace (1 client, 2 server, 3 both)."""
    server_tcp_fastopen: int = 3
    """``net.ipv4.tcp_fastopen`` in the server namespace."""
    seed: int = 0
    """Seed for jitter and loss."""
    ipv6: bool = True
    """Also give the lab IPv6 addresses."""
    name: str | None = None
    """Fixed namespace names ``dtfo-NAME-c`` and ``dtfo-NAME-s`` (None: random ones)."""

    def __post_init__(self) -> None:
        if self.rtt_ms < 0 or self.jitter_ms < 0:
            raise UsageError("rtt and jitter must not be negative")
        if not 0 <= self.loss <= 1:
            raise UsageError("loss is a probability between 0 and 1")
        if self.name is not None:
            fixed_name(self.name, "c")  # raises on a bad name

    def delay_config(self) -> DelayConfig:
        """The delay line configuration this spec asks for."""
        return DelayConfig(
            c2s_delay_ms=self.rtt_ms / 2,
            s2c_delay_ms=self.rtt_ms / 2,
            jitter_ms=self.jitter_ms,
            loss=self.loss,
            faults=self.faults,
            seed=self.seed,
        )


@dataclass(frozen=True, slots=True)
class Lab:
    """A running lab, valid inside the :func:`start_lab` block."""

    spec: LabSpec
    """What was asked for."""
    client: Namespace
    """The client namespace."""
    server: Namespace
    """The server namespace."""
    delay: DelayLine
    """The delay line between them (packet log, faults on the fly)."""
    client_v4: str = _delay.CLIENT_V4
    """The client's IPv4 address."""
    server_v4: str = _delay.SERVER_V4
    """The server's IPv4 address."""
    client_v6: str | None = None
    """The client's IPv6 address, when the spec asked for IPv6."""
    server_v6: str | None = None
    """The server's IPv6 address, when the spec asked for IPv6."""
    device: str = _delay.TUN_NAME
    """The TUN device's name in each namespace."""


@contextlib.contextmanager
def start_lab(spec: LabSpec) -> Iterator[Lab]:
    """Builds the lab, yields it, and always tears it down.

    Args:
        spec: what to build.

    Yields:
        The running lab: addresses are configured and the delay line is forwarding.

    Raises:
        PermissionNeeded: not root, or no ``/dev/net/tun``.
        LabError: a step failed (the steps already done are undone).
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(signals_as_exceptions())
        client = stack.enter_context(
            namespace(
                "c",
                sysctls={"net.ipv4.tcp_fastopen": str(spec.client_tcp_fastopen)},
                name=None if spec.name is None else fixed_name(spec.name, "c"),
            )
        )
        server = stack.enter_context(
            namespace(
                "s",
                sysctls={"net.ipv4.tcp_fastopen": str(spec.server_tcp_fastopen)},
                name=None if spec.name is None else fixed_name(spec.name, "s"),
            )
        )
        line = stack.enter_context(_delay.delay_line(client.path, server.path, spec.delay_config()))
        v6 = spec.ipv6
        _configure(client, _delay.CLIENT_V4, _delay.SERVER_V4, _delay.CLIENT_V6 if v6 else None)
        _configure(server, _delay.SERVER_V4, _delay.CLIENT_V4, _delay.SERVER_V6 if v6 else None)
        lab = Lab(
            spec=spec,
            client=client,
            server=server,
            delay=line,
            client_v6=_delay.CLIENT_V6 if v6 else None,
            server_v6=_delay.SERVER_V6 if v6 else None,
        )
        log.info("lab up: %s <-> %s, %s", client.name, server.name, spec)
        yield lab


def _configure(ns: Namespace, local: str, peer: str, local_v6: str | None) -> None:
    """Gives the namespace's TUN device its addresses and brings it up."""
    from pyroute2 import IPRoute

    with IPRoute(netns=ns.name) as ipr:
        (index,) = ipr.link_lookup(ifname=_delay.TUN_NAME)
        # Point-to-point: a /32 with the peer's address installs the route to the peer.
        ipr.addr("add", index=index, local=local, address=peer, prefixlen=32)
        if local_v6 is not None:
            ipr.addr("add", index=index, address=local_v6, prefixlen=64, flags=_IFA_F_NODAD)
        ipr.link("set", index=index, state="up")
