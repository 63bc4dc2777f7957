"""Forwarding metrics with ``--workers N``: each worker's ForwardStats goes through its
report pipe, and the supervisor serves their sum."""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
import urllib.request
from dataclasses import fields
from pathlib import Path

import dns.message
import dns.query
from prometheus_client import CollectorRegistry, generate_latest

from dnstfo.answer.forward import ForwardConfig
from dnstfo.server.forwardmetrics import ForwardCollector, ForwardStats
from dnstfo.server.stats import ServerStats
from dnstfo.server.upstream import LATENCY_BUCKETS_MS, Forwarder, UpstreamStats
from dnstfo.server.workerstats import ReportWriter, WorkerReports, snapshot_line
from tests.server.serveproc import ServeProcess, free_port

A = "127.0.0.1:53"
B = "[2001:db8::1]:5353"


def _upstream(queries: int) -> UpstreamStats:
    s = UpstreamStats(queries=queries, timeouts=1, connections=2, syn_data_sent=1, reused=3)
    s.syn_data_acked, s.failures, s.latency_ns = 1, 4, queries * 3_000_000
    s.answers.update({0: queries - 2, 3: 2})
    s.latency.update({2: queries - 1, len(LATENCY_BUCKETS_MS): 1})  # and one past the last
    return s


def _forward(queries: int) -> ForwardStats:
    return ForwardStats(
        upstreams={A: _upstream(queries), B: UpstreamStats()},
        cache_hits=queries * 2,
        cache_misses=queries,
        cache_size=queries - 1,
        in_flight=2,
        overloaded=1,
        refused=5,
    )


def _through_json(stats: ForwardStats) -> ForwardStats:
    back = ForwardStats()
    back.add(json.loads(json.dumps(stats.snapshot())))
    return back


def test_of_copies_each_upstream_whole_and_apart() -> None:
    forwarder = Forwarder(ForwardConfig(upstreams=(("127.0.0.1", 53),)))
    live = forwarder.upstreams[("127.0.0.1", 53)].stats
    given = _upstream(10)
    for f in fields(UpstreamStats):
        setattr(live, f.name, getattr(given, f.name))
    copy = ForwardStats.of(forwarder, refused=5).upstreams["127.0.0.1:53"]
    assert copy == _upstream(10)
    live.queries += 1
    live.answers[0] += 1
    live.latency[2] += 1
    assert copy == _upstream(10)


def test_snapshot_round_trip_and_sum() -> None:
    assert _through_json(_forward(10)) == _forward(10)
    total = _through_json(_forward(10))
    total.add(_forward(7).snapshot())
    a = total.upstreams[A]
    assert (a.queries, a.timeouts, a.failures, a.connections) == (17, 2, 8, 4)
    assert (a.syn_data_sent, a.syn_data_acked, a.reused) == (2, 2, 6)
    assert a.answers == {0: 13, 3: 4}
    assert a.latency == {2: 15, len(LATENCY_BUCKETS_MS): 2}
    assert a.latency_ns == 17 * 3_000_000
    assert total.upstreams[B] == UpstreamStats()  # listed though it did nothing
    assert (total.cache_hits, total.cache_misses, total.cache_size) == (34, 17, 15)
    assert (total.in_flight, total.overloaded, total.refused) == (4, 2, 10)


def test_workers_forwarding_is_summed_without_the_gauges_of_the_dead() -> None:
    reports = WorkerReports(2, kernel_at_start=None)
    for index in (0, 1):
        reports.started(index, restart=False)
    assert reports.feed(0, snapshot_line(ServerStats(), _forward(10)))
    assert reports.feed(1, snapshot_line(ServerStats(), _forward(7)))
    bad = json.loads(snapshot_line(ServerStats(), _forward(1)))
    bad["forward"]["upstreams"][A][-1] = [1] * 20  # more buckets than there are
    assert not reports.feed(1, json.dumps(bad).encode() + b"\n")  # the last good one stays
    assert reports.forward_total().upstreams[A].queries == 17
    reports.ended(1)  # its counters stay in the sum, its cache and queue are gone
    total = reports.forward_total()
    assert (total.upstreams[A].queries, total.cache_misses) == (17, 17)
    assert (total.cache_size, total.in_flight) == (9, 2)
    text = generate_latest_of(ForwardCollector(reports.forward_total))
    assert f'dnstfo_upstream_queries_total{{upstream="{A}"}} 17.0' in text
    assert f'dnstfo_upstream_answers_total{{rcode="NXDOMAIN",upstream="{A}"}} 4.0' in text
    assert f'dnstfo_upstream_latency_seconds_bucket{{le="0.005",upstream="{A}"}} 15.0' in text
    assert f'dnstfo_upstream_latency_seconds_count{{upstream="{A}"}} 17.0' in text
    assert "dnstfo_forward_cache_size 9.0" in text


def generate_latest_of(collector: ForwardCollector) -> str:
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry).decode()


def test_a_line_longer_than_pipe_buf_cut_by_a_full_pipe_arrives_whole() -> None:
    many = ForwardStats(upstreams={f"[2001:db8::{i:x}]:53": _upstream(10**9) for i in range(40)})
    line = snapshot_line(ServerStats(), many)
    assert len(line) > 4096  # past PIPE_BUF: the kernel may write part of it
    read_end, write_end = os.pipe()
    try:
        size = fcntl.fcntl(write_end, fcntl.F_GETPIPE_SZ)
        os.write(write_end, b"\n" * (size - 8192))  # room for two pages
        writer = ReportWriter(write_end)
        writer.write(line)  # cut after 8192 bytes
        writer.write(snapshot_line(ServerStats(), _forward(1)))  # skipped: the rest waits
        reports = WorkerReports(1, kernel_at_start=None)
        reports.started(0, restart=False)
        data = b""
        for _ in range(40):  # drain, and let the writer finish its line
            data += os.read(read_end, 65536)
            writer.write(snapshot_line(ServerStats(), _forward(3)))
        writer.close(b"")
        write_end = -1
        while chunk := os.read(read_end, 65536):
            data += chunk
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    data = data.lstrip(b"\n")
    lines = data.split(b"\n")
    assert lines[0] + b"\n" == line  # whole, and first
    assert len(lines) > 3
    assert lines[-1] == b""
    for whole in lines[:-1]:
        ForwardStats().add(json.loads(whole)["forward"])
    assert reports.feed(0, data)
    assert reports.forward_total() == _forward(3)


# The real thing: dnstfo serve --workers 2 --forward to another dnstfo serve ------------

UPSTREAM_ZONE = "$TTL 60\n@ SOA ns h 1 2 3 4 5\n@ NS ns\nns A 192.0.2.1\n* A 192.0.2.9\n"
OWN_ZONE = "$TTL 60\n@ SOA ns h 1 2 3 4 5\n@ NS ns\nns A 192.0.2.1\n"


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def _value(text: str, name: str, labels: str = "") -> float | None:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def _lookups(text: str) -> float:
    hits = _value(text, "dnstfo_forward_cache_hits_total") or 0.0
    return hits + (_value(text, "dnstfo_forward_cache_misses_total") or 0.0)


def _wait_lookups(port: int, count: int, within: float = 15.0) -> str:
    """The metrics once the workers' reports hold ``count`` cache lookups."""
    deadline = time.monotonic() + within
    while _lookups(text := _metrics(port)) != count:
        assert time.monotonic() < deadline, f"not {count} lookups in the metrics:\n{text}"
        time.sleep(0.1)
    return text


def _ask(port: int, name: str) -> str:
    query = dns.message.make_query(name, "A")
    answer = dns.query.tcp(query, "127.0.0.1", port=port, timeout=5)  # a connection each
    return str(answer.answer[0][0].address)


def test_workers_serve_the_sum_of_their_forwarding_metrics(tmp_path: Path) -> None:
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "u.example.zone").write_text(UPSTREAM_ZONE)
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "f.example.zone").write_text(OWN_ZONE)
    up_port, port, metrics_port = free_port(), free_port(), free_port()
    upstream = f"127.0.0.1:{up_port}"
    label = f'{{upstream="{upstream}"}}'
    names = [f"q{i}.u.example." for i in range(40)]
    up_args = ["--zone", str(tmp_path / "up"), "--listen", upstream, "--idle-timeout", "60"]
    args = ["--zone", str(tmp_path / "own"), "--listen", f"127.0.0.1:{port}", "--workers", "2"]
    args += ["--forward", upstream, "--metrics", f"127.0.0.1:{metrics_port}"]
    with ServeProcess(up_args) as up, ServeProcess(args) as server:
        up.wait_for("serving 127.0.0.1")
        server.wait_for(r"started 2 workers")
        server.wait_for("serving 127.0.0.1", count=2)
        for name in names:  # fresh connections: the kernel spreads them over both workers
            assert _ask(port, name) == "192.0.2.9"
        text = _wait_lookups(metrics_port, len(names))
        assert _value(text, "dnstfo_upstream_queries_total", label) == len(names)
        answers = f'{{rcode="NOERROR",upstream="{upstream}"}}'
        assert _value(text, "dnstfo_upstream_answers_total", answers) == len(names)
        assert _value(text, "dnstfo_upstream_latency_seconds_count", label) == len(names)
        assert _value(text, "dnstfo_upstream_connections_total", label) >= 2  # one per worker
        assert _value(text, "dnstfo_forward_cache_misses_total") == len(names)
        assert _value(text, "dnstfo_forward_cache_size") == len(names)
        assert _value(text, "dnstfo_forward_in_flight") == 0
        # Again: a name is a hit where the same worker cached it, else a miss sent upstream
        # and cached there too (each worker has its own cache; the sizes add up).
        for name in names:
            assert _ask(port, name) == "192.0.2.9"
        text = _wait_lookups(metrics_port, 2 * len(names))
        misses = _value(text, "dnstfo_forward_cache_misses_total")
        assert misses is not None
        assert len(names) <= misses < 2 * len(names)
        assert _value(text, "dnstfo_upstream_queries_total", label) == misses
        assert _value(text, "dnstfo_forward_cache_size") == misses
        assert server.stop() == 0, server.text
        assert up.stop() == 0, up.text
    served = [int(n) for n in re.findall(r"app: stopped: (\d+) queries", server.text)]
    assert len(served) == 2, server.text
    assert all(served), served  # both workers forwarded some
    assert sum(served) == 2 * len(names)
    (upstream_got,) = re.findall(r"app: stopped: (\d+) queries", up.text)
    assert int(upstream_got) == misses  # what the upstream itself counted
