"""A reload of a big zone does not stop the server: queries over TCP and UDP sent while
150,000 records are parsed are all answered, promptly, from the old zones until the new
ones are swapped in (before, the loop parsed them itself and stayed silent throughout)."""

from __future__ import annotations

import signal
import statistics
import threading
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest

from tests.server.serveproc import ServeProcess, free_port, write_zone

RECORDS = 150_000
TIMEOUT = 2.0
"""Seconds a query may take before it counts as lost."""
SLOWEST = 0.5
"""Seconds the slowest query during the reload may take (the parse takes 20-50 s here)."""


def big_zone(path: Path, records: int, serial: int) -> None:
    lines = ["$TTL 300", f"@ SOA ns h {serial} 7200 900 1209600 60", "@ NS ns", "ns A 192.0.2.1"]
    lines += [f"h{i} A 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(records)]
    path.write_text("\n".join(lines) + "\n")


class Prober(threading.Thread):
    """Queries over TCP and UDP in turn, one at a time, until stopped."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.latencies: list[float] = []
        self.lost: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        names = ["w.t.example.", "h1.big.test."]
        count = 0
        while not self.done.is_set():
            name = names[count % 2]
            send = dns.query.tcp if count % 4 < 2 else dns.query.udp
            start = time.monotonic()
            try:
                response = send(
                    dns.message.make_query(name, "A"), "127.0.0.1", port=self.port, timeout=TIMEOUT
                )
            except (OSError, dns.exception.DNSException) as exc:
                self.lost.append(f"{send.__name__} {name}: {exc!r}")
            else:
                self.latencies.append(time.monotonic() - start)
                if response.rcode() != dns.rcode.NOERROR or not response.answer:
                    self.lost.append(
                        f"{send.__name__} {name}: {dns.rcode.to_text(response.rcode())}"
                    )
            count += 1


@pytest.mark.timeout(400)
def test_reload_of_a_big_zone_keeps_answering(tmp_path: Path) -> None:
    zones = tmp_path / "zones"
    write_zone(zones)
    big = zones / "big.test.zone"
    big_zone(big, 10, serial=1)
    port = free_port()
    with ServeProcess(["--zone", str(zones), "--listen", f"127.0.0.1:{port}"]) as server:
        server.first_answer(port)
        big_zone(big, RECORDS, serial=2)
        prober = Prober(port)
        prober.start()
        deadline = time.monotonic() + 10
        while len(prober.latencies) < 20:  # the prober runs before the reload starts
            assert not prober.lost, prober.lost
            assert time.monotonic() < deadline, "no answers before the reload"
            time.sleep(0.01)
        before = len(prober.latencies)
        server.signal(signal.SIGHUP)
        server.wait_for(rf"zone big\.test\. serial 2, {RECORDS + 3} records", within=300)
        server.wait_for(r"reloaded: 2 zones, 1 changed")
        prober.done.set()
        prober.join(TIMEOUT + 1)
        during = prober.latencies[before:]
        assert server.stop() == 0, server.text
    assert not prober.lost, prober.lost[:5]
    assert len(during) > 100, "too few queries during the reload to judge"
    figures = (
        f"{len(during)} queries during the reload: median {statistics.median(during) * 1e3:.2f}"
        f" ms, slowest {max(during) * 1e3:.1f} ms"
    )
    assert max(during) < SLOWEST, figures
