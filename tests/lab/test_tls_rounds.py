"""DNS over TLS with TFO on the real kernel, across the lab's delay line: 3 round trips
without TFO, 2 with a cookie (the ClientHello rides in the SYN), both sides' TCP_INFO, and
kdig's ``+tls +fastopen`` against ``dnstfo serve --tls-listen``."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dnstfo.lab.demo import stop_server, wait_listening
from dnstfo.lab.netns import realtime_priority
from tests.client.conftest import DNSTFO, ROOT, SERVER, ZONES, Served
from tests.client.conftest import lab_with as lab_with  # the fixture

pytestmark = [pytest.mark.lab, pytest.mark.netadmin, pytest.mark.linux]

TLS_PORT = 853


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory):
    from dnstfo.lab.testca import make_test_ca

    return make_test_ca(tmp_path_factory.mktemp("ca"), ("dns.test",), (SERVER,))


@contextlib.contextmanager
def dnstfo_tls(lab, ca, log: Path) -> Iterator[Served]:
    """``dnstfo serve`` with a TLS listener (port 853) and its query log in ``log``."""
    argv = ["ip", "netns", "exec", lab.server.name, *DNSTFO, "serve", "--zone", str(ZONES),
            "--listen", f"{SERVER}:53", "--tls-listen", SERVER, "--tls-cert", str(ca.cert),
            "--tls-key", str(ca.key), "--query-log", "text"]  # fmt: skip
    with log.open("w+") as err:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, text=True)
        try:
            wait_listening(lab.server, proc, TLS_PORT, log=err)
            # Its handshakes are timed: the TLS work must not wait behind busy processes
            # (raised once it listens: its start-up is no timed work).
            realtime_priority(pid=proc.pid)
            yield Served(lab, proc, SERVER, TLS_PORT)
        finally:
            stop_server(proc)


def _tls_lines(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if " tls" in line]


def test_tls_rounds_3_then_2_with_the_client_hello_in_the_syn(lab_with, ca, tmp_path):
    from dnstfo.lab.topology import LabSpec

    rtt_ms = 100
    lab = lab_with(LabSpec(rtt_ms=rtt_ms, ipv6=False))
    log = tmp_path / "serve.log"
    tls = ("+tls", f"+tls-ca={ca.ca_cert}")
    with dnstfo_tls(lab, ca, log) as served:
        served.query_json("example.com", *tls, "+notfo")  # warm-up (lazy start)
        lab.delay.clear()
        runs = [served.query_json("example.com", *tls, "+compare", "+repeat=2")]
        packets = lab.delay.packets()
        runs += [served.query_json("example.com", *tls, "+compare", "+repeat=2")]
        runs += [served.query_json("example.com", *tls, "+compare", "+repeat=2")]
    report = runs[0]
    assert report["tfo_worked"] is True, report["reason"]
    steps = report["steps"]
    assert [s["step"] for s in steps] == ["baseline", "priming", "tfo", "tfo"]
    for s in steps:
        assert s["response"]["answerRRs"][0]["rdataA"] == "192.0.2.1"
        assert s["tls"]["version"] == "TLSv1.3"
        assert s["tls"]["alpn"] == "dot"
        assert s["tls"]["verified"] is True
        assert s["tls"]["resumed"] is (s["step"] != "baseline")  # TLS 1.3: still 1 round trip
    for i, s in enumerate(steps):
        want = 2.0 if s["step"] == "tfo" else 3.0
        timings = [r["steps"][i]["tfo"]["timings"] for r in runs]
        best = min(t["total_ms"] / t["rtt_ms"] for t in timings)
        assert best == pytest.approx(want, rel=0.05), timings
        assert all(abs(t["rounds"] - want) < 0.5 for t in timings), timings
        assert s["tfo"]["verdict"]["text"].startswith(f"answer in {want:.0f} round trips")

    # On the wire: each TFO SYN carries the ClientHello (a TLS handshake record), acked.
    for s in steps[2:]:
        port = s["source"]["port"]
        (syn,) = [p for p in packets if p.tcp and p.is_syn and p.sport == port]
        assert syn.payload_len > 200  # a whole ClientHello, not a DNS query (~40 bytes)
        after = s["tfo"]["after"]
        assert (after["syn_data_sent"], after["syn_data_acked"]) == (True, True)
    (syn,) = [p for p in packets if p.tcp and p.is_syn and p.sport == steps[0]["source"]["port"]]
    assert syn.payload_len == 0
    # The server's TCP_INFO said SYN data for the TFO connections: their queries carry the
    # TFO mark in its query log, and no other does.
    lines = _tls_lines(log)
    assert sum(" tls TFO " in line for line in lines) == 2 * len(runs)
    assert len(lines) == 1 + 4 * len(runs)


def test_kdig_tls_fastopen_against_dnstfo_serve(lab_with, ca, tmp_path):
    from dnstfo.lab.topology import LabSpec

    if shutil.which("kdig") is None:
        pytest.skip("needs kdig (Debian package knot-dnsutils)")
    lab = lab_with(LabSpec(rtt_ms=20, ipv6=False))
    log = tmp_path / "serve.log"
    kdig = ["kdig", f"@{SERVER}", "-p", str(TLS_PORT), "+tls", "+fastopen",
            f"+tls-ca={ca.ca_cert}", "+tls-hostname=dns.test", "+time=3", "+retry=0",
            "example.com", "A"]  # fmt: skip
    with dnstfo_tls(lab, ca, log):
        # Debian's kdig 3.2.6 may abort on its first +tls +fastopen query without a cookie
        # (its exit status is not checked); that query still brings the cookie.
        lab.client.exec(kdig, timeout=15)
        second = lab.client.exec(kdig, timeout=15)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "192.0.2.1" in second.stdout
    lines = _tls_lines(log)
    assert lines, log.read_text()
    assert " tls TFO " in lines[-1]  # the second query's ClientHello rode in the SYN
