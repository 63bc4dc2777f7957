"""The metrics say what they count: the kernel's counters are the whole namespace's."""

from __future__ import annotations

from dnstfo.server.stats import KernelFastOpenCollector, ServerStats, StatsCollector


def test_kernel_counters_say_they_are_the_whole_namespaces() -> None:
    metrics = list(KernelFastOpenCollector().collect())
    assert metrics
    for metric in metrics:
        assert "whole network namespace" in metric.documentation
        assert "not only this server" in metric.documentation
    names = {m.name: m.documentation for m in metrics}
    assert "TCPFastOpenPassive " in names["dnstfo_kernel_tcp_passive"]


def test_rrl_counters_are_exported() -> None:
    stats = ServerStats(rrl_dropped=7, rrl_slipped=3)
    values = {m.name: m.samples[0].value for m in StatsCollector(stats).collect() if m.samples}
    assert values["dnstfo_rrl_dropped"] == 7
    assert values["dnstfo_rrl_slipped"] == 3
