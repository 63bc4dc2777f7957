"""Third-party clients against our server, across the lab's delay line.

``dig +tcp`` answers must equal the zone; ``kdig +tcp +fastopen`` twice: the first gets a
cookie, the second carries its query in the SYN, which our log marks TFO and our stats count.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from dnstfo.server.config import Endpoint, QueryLog, ServerConfig
from tests.server.conftest import ServerThread

pytestmark = [
    pytest.mark.interop,
    pytest.mark.lab,
    pytest.mark.netadmin,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="the lab needs /dev/net/tun"),
]

PORT = 5353


@pytest.fixture
def lab() -> Iterator[object]:
    from dnstfo.lab.topology import LabSpec, start_lab

    with start_lab(LabSpec(rtt_ms=20, ipv6=False)) as running:
        yield running


@pytest.fixture
def lab_server(lab, zone_dir: Path) -> Iterator[ServerThread]:  # type: ignore[no-untyped-def]
    config = ServerConfig(
        zone_dir=zone_dir, listen=(Endpoint(lab.server_v4, PORT),), query_log=QueryLog.TEXT
    )
    server = ServerThread(config, netns=lab.server)
    yield server
    server.stop()


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (run: sh scripts/sysdeps.sh)")
    return path


def test_dig_tcp_answers_equal_zone(lab, lab_server: ServerThread) -> None:  # type: ignore[no-untyped-def]
    dig = tool("dig")
    for name, rdtype, expected in [
        ("www.test.example", "A", {"192.0.2.1"}),
        ("www.test.example", "AAAA", {"2001:db8::1"}),
        ("test.example", "NS", {"ns1.test.example."}),
    ]:
        argv = [dig, "+tcp", "+short", f"@{lab.server_v4}", "-p", str(PORT), name, rdtype]
        result = lab.client.exec(argv)
        assert result.returncode == 0, result.stderr
        assert set(result.stdout.split()) == expected


def test_kdig_fastopen_second_query_in_syn(lab, lab_server: ServerThread, caplog) -> None:  # type: ignore[no-untyped-def]
    kdig = tool("kdig")
    argv = [kdig, "+tcp", "+fastopen", "+short", f"@{lab.server_v4}", "-p", str(PORT)]
    argv += ["www.test.example", "A"]
    with caplog.at_level(logging.INFO, logger="dnstfo.query"):
        for _ in range(2):
            result = lab.client.exec(argv)
            assert result.returncode == 0, result.stderr
            assert result.stdout.split() == ["192.0.2.1"]
    lines = [r.getMessage() for r in caplog.records if r.name == "dnstfo.query"]
    assert len(lines) == 2
    assert " TFO " not in lines[0]
    assert " tcp TFO " in lines[1]
    stats = lab_server.server.stats
    assert stats.syn_data_queries == 1
    assert stats.tfo_connections == 1
