"""The forwarder's counters as one value, and their Prometheus rendering.

:class:`ForwardStats` is a copy of what one process's forwarding counted (per upstream,
the cache, the queue, the ACL), taken on the loop by ``Forwarding.stats``. A single
process renders it live; with ``--workers N`` each worker sends its :meth:`snapshot
<ForwardStats.snapshot>` with its other counters (see :mod:`~dnstfo.server.workerstats`)
and the supervisor renders the sum (:meth:`ForwardStats.add`). Gauges are summed too:
each worker has its own cache and queue, so the sum is what the server holds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from dnstfo.server.querylog import rcode_name
from dnstfo.server.upstream import LATENCY_BUCKETS_MS, UpstreamStats

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from dnstfo.server.upstream import Forwarder

_UPSTREAM_INTS = tuple(f.name for f in fields(UpstreamStats) if f.type == "int")
"""The plain integer counters of :class:`UpstreamStats`, in a snapshot's order."""


def _copy(stats: UpstreamStats) -> UpstreamStats:
    return replace(stats, answers=Counter(stats.answers), latency=Counter(stats.latency))


@dataclass(slots=True)
class ForwardStats:
    """Counters of forwarding in one process, or summed over the workers."""

    upstreams: dict[str, UpstreamStats] = field(default_factory=dict)
    """Counters per upstream, by ``ADDR:PORT``."""
    cache_hits: int = 0
    """Queries answered from the forward cache."""
    cache_misses: int = 0
    """Cache lookups that found nothing fresh."""
    cache_size: int = 0
    """Entries in the cache now (a gauge)."""
    in_flight: int = 0
    """Forwarded queries waiting for an upstream now (a gauge)."""
    overloaded: int = 0
    """Queries answered SERVFAIL at once: too many were waiting."""
    refused: int = 0
    """Queries not forwarded: the client is outside ``--forward-allow``."""

    @classmethod
    def of(cls, forwarder: Forwarder, refused: int) -> ForwardStats:
        """A copy of a live forwarder's counters (each copied whole under the GIL, so
        the metrics thread may call it)."""
        cache = forwarder.cache
        return cls(
            upstreams={label: _copy(s) for label, s in forwarder.stats().items()},
            cache_hits=cache.hits,
            cache_misses=cache.misses,
            cache_size=len(cache),
            in_flight=forwarder.in_flight,
            overloaded=forwarder.overloaded,
            refused=refused,
        )

    def snapshot(self) -> dict[str, Any]:
        """The counters as compact JSON values (part of a worker's report line).

        Each upstream is one list: its integer counters in field order, then its answers
        as flat ``[rcode, n, ...]``, then its latency buckets without trailing zeros.
        """
        counts: dict[str, Any] = {name: getattr(self, name) for name in _SCALARS}
        upstreams: dict[str, list[Any]] = {}
        for label, s in self.upstreams.items():
            answers = [x for rcode, n in sorted(s.answers.items()) for x in (rcode, n)]
            buckets = [s.latency[i] for i in range(len(LATENCY_BUCKETS_MS) + 1)]
            while buckets and not buckets[-1]:
                buckets.pop()
            upstreams[label] = [*(getattr(s, name) for name in _UPSTREAM_INTS), answers, buckets]
        counts["upstreams"] = upstreams
        return counts

    def add(self, snapshot: dict[str, Any], *, gauges: bool = True) -> None:
        """Adds the counters of a :meth:`snapshot` to these.

        Args:
            snapshot: what :meth:`snapshot` returned, through JSON.
            gauges: add the gauges too (not for a worker that has exited: its cache and
                queue are gone).

        Raises:
            KeyError, TypeError, ValueError: not a snapshot.
        """
        for name in _SCALARS:
            n = int(snapshot[name])
            if gauges or name not in _GAUGES:
                setattr(self, name, getattr(self, name) + n)
        for label, values in snapshot["upstreams"].items():
            *ints, answers, buckets = values
            if len(ints) != len(_UPSTREAM_INTS) or len(answers) % 2:
                raise ValueError(f"bad counters of upstream {label}")
            if len(buckets) > len(LATENCY_BUCKETS_MS) + 1:
                raise ValueError(f"bad latency buckets of upstream {label}")
            s = self.upstreams.setdefault(str(label), UpstreamStats())
            for name, n in zip(_UPSTREAM_INTS, ints, strict=True):
                setattr(s, name, getattr(s, name) + int(n))
            for rcode, n in zip(answers[::2], answers[1::2], strict=True):
                s.answers[int(rcode)] += int(n)
            for i, n in enumerate(buckets):
                if n:
                    s.latency[i] += int(n)


_SCALARS = tuple(f.name for f in fields(ForwardStats) if f.type == "int")
"""The plain integer counters of :class:`ForwardStats`."""
_GAUGES = frozenset({"cache_size", "in_flight"})
"""Those that say what a process holds now, not what it counted."""

_UPSTREAM_HELP = {
    "queries": "Queries sent upstream",
    "timeouts": "Upstream queries that got no answer in time",
    "failures": "Upstream connections that failed or sent something wrong",
    "connections": "TCP connections opened to the upstream",
    "syn_data_sent": "Upstream connections whose SYN carried queries (TFO)",
    "syn_data_acked": "Upstream connections whose SYN data was acknowledged",
    "reused": "Queries sent on an upstream connection that had answered before",
}


class ForwardCollector:
    """Prometheus metrics of forwarding: per upstream, the cache, the queue and the ACL.

    Args:
        stats: a function returning the counters at each scrape (``Forwarding.stats`` in
            one process, the workers' sum in the supervisor).
    """

    def __init__(self, stats: Callable[[], ForwardStats]) -> None:
        self._stats = stats

    def describe(self) -> list[object]:
        return []  # unchecked collector: the label sets are only known at scrape time

    def collect(self) -> Iterator[Metric]:
        """Yields the metric families (called by prometheus_client on each scrape)."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        s = self._stats()
        per = s.upstreams
        for name, text in _UPSTREAM_HELP.items():
            family = CounterMetricFamily(f"dnstfo_upstream_{name}", text, labels=["upstream"])
            for label, stats in per.items():
                family.add_metric([label], getattr(stats, name))
            yield family
        answers = CounterMetricFamily(
            "dnstfo_upstream_answers", "Upstream answers by RCODE", labels=["upstream", "rcode"]
        )
        latency = HistogramMetricFamily(
            "dnstfo_upstream_latency_seconds", "Upstream answer time", labels=["upstream"]
        )
        for label, stats in per.items():
            for rcode, n in sorted(stats.answers.items()):
                answers.add_metric([label, rcode_name(rcode)], n)
            buckets: list[tuple[str, float]] = []
            total = 0
            for i, bound in enumerate(LATENCY_BUCKETS_MS):
                total += stats.latency[i]
                buckets.append((str(bound / 1000), total))
            total += stats.latency[len(LATENCY_BUCKETS_MS)]
            buckets.append(("+Inf", total))
            latency.add_metric([label], buckets, sum_value=stats.latency_ns / 1e9)
        yield answers
        yield latency
        yield CounterMetricFamily("dnstfo_forward_cache_hits", "Forward cache hits", s.cache_hits)
        yield CounterMetricFamily(
            "dnstfo_forward_cache_misses", "Forward cache misses", s.cache_misses
        )
        yield GaugeMetricFamily("dnstfo_forward_cache_size", "Forward cache entries", s.cache_size)
        yield GaugeMetricFamily(
            "dnstfo_forward_in_flight", "Forwarded queries waiting for an upstream", s.in_flight
        )
        yield CounterMetricFamily(
            "dnstfo_forward_overloaded",
            "Forwarded queries answered SERVFAIL at once: too many were waiting",
            s.overloaded,
        )
        yield CounterMetricFamily(
            "dnstfo_forward_refused",
            "Queries not forwarded: client outside --forward-allow",
            s.refused,
        )
