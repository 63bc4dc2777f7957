"""``+compare`` where TFO works, on the loopback of a namespace with tcp_fastopen=3.

The path is sub-millisecond: the table shows no rounds, the note a single query prints is
there, and no saving is claimed from host overhead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dnstfo.lab.netns import Namespace, namespace
from tests.client import tinyserver

DNSTFO = str(Path(sys.executable).parent / "dnstfo")


@pytest.fixture
def tfo_ns() -> Iterator[Namespace]:
    if os.geteuid() != 0:
        pytest.skip("needs root to make a network namespace (run the suite as root)")
    with namespace("q", sysctls={"net.ipv4.tcp_fastopen": "3"}) as ns:
        yield ns


@pytest.mark.netadmin
def test_compare_on_loopback_where_tfo_works(tfo_ns):
    listener = tfo_ns.in_thread(tinyserver.make_listener)
    with tinyserver.running(listener) as (host, port):
        r = tfo_ns.exec([DNSTFO, "query", "x.example", f"@{host}", "-p", str(port), "+compare"])
    assert r.returncode == 0, r.stdout + r.stderr
    rows = r.stdout.split("-" * 60)[1].strip().splitlines()
    assert [row.split()[-3:-1] for row in rows[2:]] == [["yes", "yes"]] * 3  # in SYN, acked
    assert all(row.split()[-5] == "-" for row in rows), rows  # no rounds on this path
    assert "note: the path RTT is under 1 ms: rounds measure host overhead here" in r.stdout
    assert "saving: not measurable on a path under 1 ms" in r.stdout
    assert "TFO works: " in r.stdout
