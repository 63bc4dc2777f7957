"""Server statistics: plain integers on the hot path, Prometheus at scrape time.

The per-query path only adds to ints and dict entries of :class:`ServerStats`; the
collectors below turn them into Prometheus metrics when scraped, together with the kernel's
TcpExt ``TCPFastOpen*`` counters of the server's network namespace (``/proc/self/net``
follows the namespace of the process, so each namespace reports its own).
"""

from __future__ import annotations

import enum
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from dnstfo.kernel.sysctl import KERNEL_NAMES, FastOpenCounters, read_counters
from dnstfo.server.querylog import rcode_name

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


class Limit(enum.Enum):
    """A limit that turned a client away or closed its connection."""

    TOTAL_CONNECTIONS = "total_connections"
    PER_CLIENT = "per_client"
    QUERIES = "queries_per_connection"
    LIFETIME = "lifetime"
    IDLE = "idle_timeout"
    WRITE_STALL = "write_stall"
    EVICTED = "evicted_idle"


@dataclass(slots=True)
class ServerStats:
    """Counters of one server process; mutated in place by the transports."""

    queries: Counter[tuple[str, int]] = field(default_factory=Counter)
    """Queries answered by (transport name, rcode)."""
    dropped: int = 0
    """Queries not answered (unparseable beyond a header, or past a limit)."""
    syn_data_queries: int = 0
    """Queries that arrived in the SYN (TCP Fast Open)."""
    tcp_connections: int = 0
    """TCP connections accepted."""
    tfo_connections: int = 0
    """TCP connections whose SYN carried data, or accepted as TFO children."""
    protocol_errors: int = 0
    """TCP connections closed for bad framing."""
    limits: Counter[Limit] = field(default_factory=Counter)
    """Times each limit was hit."""
    axfr: int = 0
    """Zone transfers served."""
    rrl_dropped: int = 0
    """UDP responses not sent: over the rate limit (RRL)."""
    rrl_slipped: int = 0
    """UDP responses over the rate limit sent truncated instead (RRL slip)."""
    kernel_at_start: FastOpenCounters | None = None
    """The namespace's TFO counters when the server started."""

    def snapshot(self) -> dict[str, Any]:
        """The counters as JSON values (a worker's report to its supervisor)."""
        counts: dict[str, Any] = {name: getattr(self, name) for name in _SCALARS}
        counts["queries"] = [[t, rcode, n] for (t, rcode), n in self.queries.items()]
        counts["limits"] = {limit.value: n for limit, n in self.limits.items()}
        return counts

    def add(self, snapshot: dict[str, Any]) -> None:
        """Adds the counters of a :meth:`snapshot` to these.

        Raises:
            KeyError, TypeError, ValueError: not a snapshot.
        """
        for name in _SCALARS:
            setattr(self, name, getattr(self, name) + int(snapshot[name]))
        for transport, rcode, n in snapshot["queries"]:
            self.queries[str(transport), int(rcode)] += int(n)
        for limit, n in snapshot["limits"].items():
            self.limits[Limit(limit)] += int(n)

    def total_queries(self) -> int:
        """All answered queries."""
        return sum(self.queries.values())

    def summary(self) -> str:
        """One line for the log at exit."""
        by_transport: Counter[str] = Counter()
        for (transport, _), n in self.queries.items():
            by_transport[transport] += n
        parts = [f"{self.total_queries()} queries"]
        parts += [f"{t} {n}" for t, n in sorted(by_transport.items())]
        parts += [
            f"{self.syn_data_queries} from SYN data",
            f"{self.tcp_connections} TCP connections ({self.tfo_connections} TFO)",
        ]
        if self.limits:
            parts.append(
                "limits hit: " + ", ".join(f"{k.value} {n}" for k, n in self.limits.items())
            )
        if self.kernel_at_start is not None:
            try:
                delta = read_counters().delta(self.kernel_at_start).nonzero()
            except OSError:
                delta = {}
            if delta:
                parts.append("kernel " + " ".join(f"{k}={v}" for k, v in delta.items()))
        return ", ".join(parts)


_SCALARS = tuple(f.name for f in fields(ServerStats) if f.type == "int")
"""The plain integer counters of :class:`ServerStats`."""


class StatsCollector:
    """A Prometheus collector over :class:`ServerStats`, read at scrape time.

    Args:
        stats: the counters, or a function that returns them at each scrape (the sum of
            the workers' counters).
    """

    def __init__(self, stats: ServerStats | Callable[[], ServerStats]) -> None:
        self._stats = stats

    def describe(self) -> list[object]:
        return []  # unchecked collector: the label sets are only known at scrape time

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily

        s = self._stats if isinstance(self._stats, ServerStats) else self._stats()
        queries = CounterMetricFamily(
            "dnstfo_queries", "Queries answered", labels=["transport", "rcode"]
        )
        for (transport, rcode), n in sorted(s.queries.items()):
            queries.add_metric([transport, rcode_name(rcode)], n)
        yield queries
        yield CounterMetricFamily("dnstfo_queries_dropped", "Queries not answered", s.dropped)
        yield CounterMetricFamily(
            "dnstfo_syn_data_queries", "Queries that arrived in the SYN", s.syn_data_queries
        )
        yield CounterMetricFamily(
            "dnstfo_tcp_connections", "TCP connections accepted", s.tcp_connections
        )
        yield CounterMetricFamily(
            "dnstfo_tfo_connections", "TCP connections opened with TFO", s.tfo_connections
        )
        yield CounterMetricFamily(
            "dnstfo_protocol_errors", "TCP connections closed for bad framing", s.protocol_errors
        )
        yield CounterMetricFamily("dnstfo_axfr", "Zone transfers served", s.axfr)
        yield CounterMetricFamily(
            "dnstfo_rrl_dropped",
            "UDP responses not sent because the client's prefix was over the rate limit",
            s.rrl_dropped,
        )
        yield CounterMetricFamily(
            "dnstfo_rrl_slipped",
            "UDP responses over the rate limit sent truncated (TC=1) so the client retries "
            "over TCP",
            s.rrl_slipped,
        )
        limits = CounterMetricFamily("dnstfo_limits_hit", "Limits hit", labels=["limit"])
        for limit in Limit:
            limits.add_metric([limit.value], s.limits[limit])
        yield limits


class KernelFastOpenCollector:
    """A Prometheus collector of the namespace's TcpExt TCPFastOpen* counters.

    These count every socket of the network namespace, not only this server's: other
    programs' TFO connections (and dnstfo's own client queries) in the same namespace add
    to them, and they start at the namespace's creation, not the server's.
    """

    def describe(self) -> list[object]:
        return []

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily

        try:
            counters = read_counters()
        except OSError as exc:
            log.debug("cannot read kernel counters: %s", exc)
            return
        for f in fields(counters):
            yield CounterMetricFamily(
                f"dnstfo_kernel_tcp_{f.name}",
                f"Kernel TcpExt counter {KERNEL_NAMES.get(f.name, f.name)} of the whole network "
                "namespace the server runs in (every program's sockets there, since the "
                "namespace was made; not only this server's)",
                getattr(counters, f.name),
            )


def start_metrics_server(
    stats: ServerStats | Callable[[], ServerStats],
    host: str,
    port: int,
    extra: Iterable[Collector] = (),
) -> None:
    """Serves ``/metrics`` on host:port in a thread (``stats`` as for :class:`StatsCollector`).

    Args:
        stats: the counters.
        host: the address to serve on.
        port: the port.
        extra: more collectors (the supervisor's per-worker liveness).

    Raises:
        OSError: the address cannot be bound.
    """
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(StatsCollector(stats))
    registry.register(KernelFastOpenCollector())
    for collector in extra:
        registry.register(collector)
    start_http_server(port, addr=host, registry=registry)
