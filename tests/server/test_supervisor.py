"""``--workers N``: a worker that dies or hangs is logged, restarted, and answers again;
the metrics show each worker's liveness and restarts."""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.request
from pathlib import Path

import dns.message
import dns.query
import pytest

from tests.server.serveproc import ServeProcess, address_of, ask, free_port, write_zone


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def sample(text: str, name: str, worker: int) -> float | None:
    match = re.search(rf'^{name}{{worker="{worker}"}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else None


def wait_metric(port: int, name: str, worker: int, value: float, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while (seen := sample(metrics(port), name, worker)) != value:
        assert time.monotonic() < deadline, f"{name}{{worker={worker}}} is {seen}, not {value}"
        time.sleep(0.1)


def worker_pids(server: ServeProcess) -> list[int]:
    server.wait_for(r"started 2 workers: \d+ \d+")
    (line,) = [line for line in server.lines if "started 2 workers" in line]
    return [int(pid) for pid in line.rsplit(":", 1)[1].split()]


@pytest.mark.parametrize(
    ("how", "logged"),
    [
        (signal.SIGKILL, r"worker 0 \(pid {pid}\) was killed by SIGKILL after"),
        (signal.SIGSTOP, r"worker 0 \(pid {pid}\) sent no report for \d+ s \(stuck or stopped\)"),
    ],
    ids=["killed", "stopped"],
)
def test_dead_or_hung_worker_is_restarted_and_answers(
    tmp_path: Path, how: signal.Signals, logged: str
) -> None:
    zones = tmp_path / "zones"
    write_zone(zones)
    port, metrics_port = free_port(), free_port()
    args = ["--zone", str(zones), "--listen", f"127.0.0.1:{port}", "--workers", "2"]
    args += ["--metrics", f"127.0.0.1:{metrics_port}"]
    with ServeProcess(args) as server:
        server.first_answer(port)
        first, _ = worker_pids(server)
        for worker in (0, 1):
            wait_metric(metrics_port, "dnstfo_worker_up", worker, 1.0)
        os.kill(first, how)
        server.wait_for(logged.format(pid=first))
        server.wait_for(r"worker 0 restarted: pid \d+")
        wait_metric(metrics_port, "dnstfo_worker_up", 0, 1.0)
        text = metrics(metrics_port)
        assert sample(text, "dnstfo_worker_restarts_total", 0) == 1.0
        assert sample(text, "dnstfo_worker_restarts_total", 1) == 0.0
        # Fresh connections and datagrams reach both workers again; none is lost.
        for _ in range(30):
            assert address_of(ask(port)) == "192.0.2.7"
            query = dns.message.make_query("w.t.example.", "A")
            assert (
                address_of(dns.query.udp(query, "127.0.0.1", port=port, timeout=2)) == "192.0.2.7"
            )
        assert server.stop() == 0, server.text
    summaries = [line for line in server.lines if re.search(r"app: stopped: \d+ queries", line)]
    assert len(summaries) == 2, server.text  # the surviving worker and the restarted one
    assert all(" 0 queries" not in line for line in summaries), summaries


def test_sighup_reaches_a_restarted_worker(tmp_path: Path) -> None:
    """A worker restarted after a reload serves the reloaded zones, not those of start-up."""
    zones = tmp_path / "zones"
    zone = write_zone(zones, "192.0.2.7")
    port = free_port()
    args = ["--zone", str(zones), "--listen", f"127.0.0.1:{port}", "--workers", "2"]
    with ServeProcess(args) as server:
        server.first_answer(port)
        first, _ = worker_pids(server)
        zone.write_text(zone.read_text().replace("192.0.2.7", "192.0.2.8"))
        server.signal(signal.SIGHUP)
        server.wait_for("reloaded: 1 zones", count=2)
        os.kill(first, signal.SIGKILL)
        server.wait_for(r"worker 0 restarted: pid \d+")
        server.wait_for("reloaded: 1 zones", count=3)
        for _ in range(20):
            assert address_of(ask(port)) == "192.0.2.8"
        assert server.stop() == 0, server.text
