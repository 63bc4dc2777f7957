"""A whole lab from a declarative spec: client namespace, server namespace, delay line.

::

    client ns (dtfo-c-…)              relay process                 server ns (dtfo-s-…)
    dtfo0 198.18.0.1  <── TUN ──>  delay, loss, faults  <── TUN ──>  dtfo0 198.18.0.2
          fd00:d7f0::1                  packet log                         fd00:d7f0::2
                                                                           198.19.0.1 …
                                                    anycast: ──TUN──>  dtfo-s2-…, dtfo-s3-…

``server_addresses=N`` gives the server N more IPv4 addresses (198.19.0.1 onwards, also
in the RFC 2544 range), routed from the client through the delay line, so one server
listening on 0.0.0.0 is N targets. ``anycast=N`` puts N server namespaces behind the same
addresses: the delay line sends each flow to the instance it hashes to, as an ECMP router
would. Each instance is a whole network stack with its own TFO key (the namespace's
``net.ipv4.tcp_fastopen_key``, random per instance, or one for all with
``shared_key``) and its own counters, and any server program runs there unchanged. (One
namespace with several SO_REUSEPORT listeners, each with its own TCP_FASTOPEN_KEY, would
split flows too, but only for servers that set per-socket keys, and with shared counters.)

Use :func:`start_lab` as a context manager; everything it made is gone when the block ends,
also on an exception, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field

from dnstfo.errors import LabError, UsageError
from dnstfo.kernel.sockets import TfoKey
from dnstfo.lab import delay as _delay
from dnstfo.lab.delay import DelayConfig, DelayLine, Fault
from dnstfo.lab.netns import Namespace, fixed_name, namespace, signals_as_exceptions

log = logging.getLogger(__name__)

_IFA_F_NODAD = 0x02  # lab addresses are unique by construction: no duplicate detection wait

ADDRESS_BLOCK = ipaddress.IPv4Network("198.19.0.0/16")
"""Where the server's extra addresses come from (RFC 2544 benchmarking range)."""
MAX_SERVER_ADDRESSES = 256 * 254
"""Extra addresses the block holds without last octets 0 and 255."""
MAX_ANYCAST = 16
"""Most server instances in an anycast pool."""
TUN_QUEUE = 10_000
"""Packets each TUN device queues for the relay (txqueuelen)."""


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
    server_addresses: int = 0
    """Extra IPv4 addresses of the server (see :func:`server_address_block`)."""
    anycast: int = 1
    """Server instances behind the server's addresses (namespaces ``s``, ``s2``, ``s3``, …)."""
    shared_key: bool = False
    """All instances use one TFO key (the default gives each its own)."""

    def __post_init__(self) -> None:
        if self.rtt_ms < 0 or self.jitter_ms < 0:
            raise UsageError("rtt and jitter must not be negative")
        if not 0 <= self.loss <= 1:
            raise UsageError("loss is a probability between 0 and 1")
        if self.name is not None:
            fixed_name(self.name, "c")  # raises on a bad name
        if not 0 <= self.server_addresses <= MAX_SERVER_ADDRESSES:
            raise UsageError(f"server addresses: 0 to {MAX_SERVER_ADDRESSES}")
        if not 1 <= self.anycast <= MAX_ANYCAST:
            raise UsageError(f"anycast instances: 1 to {MAX_ANYCAST}")
        if self.shared_key and self.anycast < 2:
            raise UsageError("a shared key needs an anycast pool of 2 or more instances")

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
    servers: tuple[Namespace, ...] = ()
    """Every server instance, ``server`` first (one without an anycast pool)."""
    server_addresses: tuple[str, ...] = ()
    """The server's extra IPv4 addresses (on every instance)."""
    keys: tuple[TfoKey, ...] = ()
    """Each instance's TFO key, in ``servers`` order (empty: the namespace's own)."""

    def tun_drops(self) -> dict[str, int]:
        """Packets each namespace's kernel dropped at its TUN device, by namespace name.

        ``tx_dropped`` counts packets the kernel could not queue for the relay (the relay
        did not read fast enough); with :meth:`DelayLine.stats`' failed writes and
        lateness, it says whether the lab, not what runs in it, limits a measurement.
        """
        from pyroute2 import IPRoute

        drops = {}
        for ns in (self.client, *self.servers):
            with IPRoute(netns=ns.name) as ipr:
                (link,) = ipr.get_links(ifname=self.device)
                stats = link.get_attr("IFLA_STATS64") or {}
                drops[ns.name] = int(stats.get("tx_dropped", 0)) + int(stats.get("rx_dropped", 0))
        return drops


def server_address_block(count: int) -> tuple[str, ...]:
    """The first ``count`` extra server addresses: 198.19.0.1-254, 198.19.1.1-254, …

    Last octets 0 and 255 are skipped, so no address looks like a network or broadcast one.
    """
    base = int(ADDRESS_BLOCK.network_address)
    return tuple(
        str(ipaddress.IPv4Address(base + (i // 254) * 256 + i % 254 + 1)) for i in range(count)
    )


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
        keys = _instance_keys(spec)
        servers = []
        for i in range(spec.anycast):
            role = "s" if i == 0 else f"s{i + 1}"
            sysctls = {"net.ipv4.tcp_fastopen": str(spec.server_tcp_fastopen)}
            if keys:
                sysctls["net.ipv4.tcp_fastopen_key"] = keys[i].text()
            name = None if spec.name is None else fixed_name(spec.name, role)
            servers.append(stack.enter_context(namespace(role, sysctls=sysctls, name=name)))
        paths = [ns.path for ns in servers]
        line = stack.enter_context(_delay.delay_line(client.path, paths, spec.delay_config()))
        v6 = spec.ipv6
        extra = server_address_block(spec.server_addresses)
        _configure(client, _delay.CLIENT_V4, _delay.SERVER_V4, _delay.CLIENT_V6 if v6 else None)
        if extra:
            _route_block(client)
        for ns in servers:
            _configure(ns, _delay.SERVER_V4, _delay.CLIENT_V4, _delay.SERVER_V6 if v6 else None)
            _add_addresses(ns, extra)
        lab = Lab(
            spec=spec,
            client=client,
            server=servers[0],
            delay=line,
            client_v6=_delay.CLIENT_V6 if v6 else None,
            server_v6=_delay.SERVER_V6 if v6 else None,
            servers=tuple(servers),
            server_addresses=extra,
            keys=keys,
        )
        names = ", ".join(ns.name for ns in servers)
        log.info("lab up: %s <-> %s, %s", client.name, names, spec)
        yield lab


def _instance_keys(spec: LabSpec) -> tuple[TfoKey, ...]:
    """A random TFO key per instance, or one for all; none without an anycast pool."""
    if spec.anycast < 2:
        return ()
    if spec.shared_key:
        return (TfoKey(secrets.token_bytes(16)),) * spec.anycast
    return tuple(TfoKey(secrets.token_bytes(16)) for _ in range(spec.anycast))


def _route_block(ns: Namespace) -> None:
    """Routes the extra server addresses through the namespace's TUN device."""
    from pyroute2 import IPRoute

    with IPRoute(netns=ns.name) as ipr:
        (index,) = ipr.link_lookup(ifname=_delay.TUN_NAME)
        ipr.route("add", dst=str(ADDRESS_BLOCK), oif=index)


def _add_addresses(ns: Namespace, addresses: tuple[str, ...]) -> None:
    """Adds /32 addresses to the namespace's TUN device, in one ``ip -batch`` run.

    Raises:
        LabError: ``ip`` failed.
    """
    if not addresses:
        return
    device = _delay.TUN_NAME
    script = "".join(f"address add {a}/32 dev {device}\n" for a in addresses)
    argv = ["ip", "-n", ns.name, "-batch", "-"]
    try:
        done = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"adding {len(addresses)} addresses in {ns.name}: {exc}") from exc
    if done.returncode != 0:
        raise LabError(f"adding addresses in {ns.name}: {done.stderr.strip()}")


def _configure(
    ns: Namespace, local: str, peer: str, local_v6: str | None, device: str = _delay.TUN_NAME
) -> None:
    """Gives the namespace's TUN device its addresses and brings it up."""
    from pyroute2 import IPRoute

    with IPRoute(netns=ns.name) as ipr:
        (index,) = ipr.link_lookup(ifname=device)
        # Point-to-point: a /32 with the peer's address installs the route to the peer.
        ipr.addr("add", index=index, local=local, address=peer, prefixlen=32)
        if local_v6 is not None:
            ipr.addr("add", index=index, address=local_v6, prefixlen=64, flags=_IFA_F_NODAD)
        # A long queue to the relay: a thousand SYNs sent at once must wait, not be dropped
        # (the default 500 drops some when a probe opens a thousand connections).
        ipr.link("set", index=index, state="up", txqlen=TUN_QUEUE)
