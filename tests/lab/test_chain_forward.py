"""A forwarded query's upstream round trips on the real kernel, across the lab's delay line.

The forwarder (``dnstfo serve --forward``) runs in the lab's client namespace and Knot DNS
in its server namespace, so the forwarder -> upstream link is the delayed one; the client
asks the forwarder over loopback in the client namespace. Expected, in rounds of the
link's RTT: a fresh upstream connection without a cookie 2 (handshake, then the query), a
reused connection 1, a fresh connection with a cached cookie 1 (the query rides in the
SYN), and with Fast Open off again 2. The query log names each case and the metrics count
the upstream's SYN data.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dnstfo.lab.demo import stop_server, wait_listening
from dnstfo.lab.netns import realtime_priority
from tests.knot import knot_config
from tests.lab.conftest import lab_missing
from tests.server.serveproc import write_zone

pytestmark = [pytest.mark.lab, pytest.mark.netadmin, pytest.mark.linux]

DNSTFO = str(Path(sys.executable).parent / "dnstfo")
RTT_MS = 100.0
PORT = 5399
METRICS = 9399


def timed_query(port: int, name: str) -> tuple[float, int, list[str]]:
    """In the client namespace: one TCP query to the forwarder; (ms, rcode, answers)."""
    import dns.message
    import dns.query

    query = dns.message.make_query(name, "A")
    started = time.monotonic()
    response = dns.query.tcp(query, "127.0.0.1", port=port, timeout=5)
    ms = (time.monotonic() - started) * 1000
    return ms, response.rcode(), [str(rr) for rrset in response.answer for rr in rrset]


def ask(lab: Any, name: str) -> tuple[float, int, list[str]]:
    """:func:`timed_query` in the client namespace, at real-time priority (a busy machine
    must not delay the client)."""
    return lab.client.run(timed_query, PORT, name, realtime=True)  # type: ignore[no-any-return]


def scrape(port: int) -> str:
    """In the client namespace: the forwarder's metrics page."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
        return str(page.read().decode())


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A lab at 100 ms RTT with knotd in the server namespace."""
    reason = lab_missing()
    if reason:
        pytest.skip(reason)
    from dnstfo.lab.topology import LabSpec, start_lab

    run = tmp_path_factory.mktemp("knot")
    with start_lab(LabSpec(rtt_ms=RTT_MS, ipv6=False)) as lab:
        conf = knot_config(run, lab.server_v4, 53)
        argv = ["ip", "netns", "exec", lab.server.name, "knotd", "-c", str(conf)]
        knot = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        realtime_priority(pid=knot.pid)
        try:
            wait_listening(lab.server, knot, 53, "knotd")
            yield lab
        finally:
            stop_server(knot)


@contextlib.contextmanager
def forwarder(lab: Any, zones: Path) -> Iterator[list[str]]:
    """``dnstfo serve --forward`` in the client namespace; yields its log lines at exit."""
    argv = ["ip", "netns", "exec", lab.client.name, DNSTFO, "serve", "--zone", str(zones),
            "--listen", f"127.0.0.1:{PORT}", "--forward", f"{lab.server_v4}:53",
            "--forward-cache-size", "0", "--query-log", "text",
            "--metrics", f"127.0.0.1:{METRICS}"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        wait_listening(lab.client, proc, PORT)
        # Timed like the delay line: busy CPUs add no delay (once it listens: a start-up
        # at real-time priority is a CPU burst that would stall the delay line).
        realtime_priority(pid=proc.pid)
        # A fresh process's first answer pays for work done once: ask its own zone first.
        ask(lab, "ns.t.example.")
        yield lines
    finally:
        lines.extend(stop_server(proc))


def _rounds(ms: float) -> float:
    return ms / RTT_MS


def _upstream_rounds(line: str) -> float:
    """The upstream time of a query log line, in rounds of the link."""
    return _rounds(float(line.rsplit("upstream-ms=", 1)[1].split()[0]))


def test_upstream_rounds_fresh_reused_cookie_and_no_tfo(chain: Any, tmp_path: Path) -> None:
    from dnstfo.kernel import tcp_metrics

    lab = chain
    zones = tmp_path / "zones"
    write_zone(zones)
    lab.client.run(tcp_metrics.flush)
    lab.client.write_sysctls({"net.ipv4.tcp_fastopen": "3"})
    # Knot's first answer pays for its lazy start: one direct query first.
    lab.client.exec(["dig", "+tcp", "+tries=1", f"@{lab.server_v4}", "example.com", "SOA"])
    lab.client.run(tcp_metrics.flush)

    with forwarder(lab, zones) as first_log:
        fresh = ask(lab, "example.com.")
        reused = [ask(lab, "mail.example.com.") for _ in range(3)]
    with forwarder(lab, zones) as cookie_log:
        with_cookie = ask(lab, "example.com.")
        metrics = lab.client.run(scrape, METRICS)
    lab.client.write_sysctls({"net.ipv4.tcp_fastopen": "0"})
    try:
        with forwarder(lab, zones) as off_log:
            no_tfo = ask(lab, "example.com.")
    finally:
        lab.client.write_sysctls({"net.ipv4.tcp_fastopen": "3"})

    for _, rcode, answers in (fresh, with_cookie, no_tfo, *reused):
        assert rcode == 0
        assert answers
    assert fresh[2] == ["192.0.2.1"]
    forwarded = [line for line in first_log if "upstream=" in line]
    (cookie_line,) = [line for line in cookie_log if "upstream=" in line]
    (off_line,) = [line for line in off_log if "upstream=" in line]
    # The query log says which case each was.
    assert "fresh syn-data=no" in forwarded[0]
    assert all(" reused " in line for line in forwarded[1:4]), forwarded
    assert "fresh syn-data=acked" in cookie_line
    assert "fresh syn-data=no" in off_line
    # Rounds on the upstream link, as the forwarder timed them, within 5 % (delay only
    # adds: the best of the reused samples).
    assert _upstream_rounds(forwarded[0]) == pytest.approx(2.0, rel=0.05), forwarded
    best = min(_upstream_rounds(line) for line in forwarded[1:4])
    assert best == pytest.approx(1.0, rel=0.05), forwarded
    assert _upstream_rounds(cookie_line) == pytest.approx(1.0, rel=0.05), cookie_line
    assert _upstream_rounds(off_line) == pytest.approx(2.0, rel=0.05), off_line
    # What the client saw adds only the loopback link and the forwarder's own work.
    for (ms, _, _), want in ((with_cookie, 1.0), (no_tfo, 2.0), (min(reused), 1.0)):
        assert want <= _rounds(ms) < want + 0.5
    # The metrics count the upstream's SYN data.
    upstream = f'upstream="{lab.server_v4}:53"'
    assert f"dnstfo_upstream_syn_data_sent_total{{{upstream}}} 1.0" in metrics
    assert f"dnstfo_upstream_syn_data_acked_total{{{upstream}}} 1.0" in metrics
    assert f"dnstfo_upstream_connections_total{{{upstream}}} 1.0" in metrics


def test_upstream_dropping_syn_data_still_answers(chain: Any, tmp_path: Path) -> None:
    """A path that drops SYNs carrying data: the forwarder's kernel retries the SYN
    without data (after its 1 s SYN timeout) and the client still gets the answer."""
    import dataclasses

    from dnstfo.kernel import tcp_metrics
    from dnstfo.lab.delay import Fault

    lab = chain
    zones = tmp_path / "zones"
    write_zone(zones)
    lab.client.run(tcp_metrics.flush)
    with forwarder(lab, zones):  # fetches a cookie for the upstream
        ask(lab, "example.com.")
    faulty = dataclasses.replace(lab.spec.delay_config(), faults=frozenset({Fault.DROP_SYN_DATA}))
    lab.delay.configure(faulty)
    try:
        with forwarder(lab, zones) as log:
            ms, rcode, answers = ask(lab, "example.com.")
    finally:
        lab.delay.configure(lab.spec.delay_config())
        lab.client.run(tcp_metrics.flush)
    assert rcode == 0
    assert answers == ["192.0.2.1"]
    assert ms < 1500 + 3 * RTT_MS  # the forwarder's own timeout was not needed
    (line,) = [line for line in log if "upstream=" in line]
    assert "fresh syn-data=sent" in line  # sent in the SYN, never acknowledged
