"""Reloads that would leave the server without zones keep the zones it serves."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import dns.message
import dns.query
import pytest

from tests.server.conftest import ServerThread


def answer(server: ServerThread) -> str:
    host, port = server.address
    response = dns.query.tcp(
        dns.message.make_query("www.test.example.", "A"), host, port=port, timeout=5
    )
    return str(response.answer[0][0])


@pytest.mark.parametrize("how", ["emptied", "all broken", "directory gone"])
def test_reload_that_would_leave_no_zone_keeps_them(
    make_server: Callable[..., ServerThread],
    zone_dir: Path,
    how: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = make_server()
    assert answer(server) == "192.0.2.1"
    zone = zone_dir / "test.example.zone"
    if how == "emptied":
        zone.unlink()
    elif how == "all broken":
        zone.write_text(zone.read_text() + "bad A 999.1.2.3\n")
    else:
        zone.unlink()
        zone_dir.rmdir()
    with caplog.at_level(logging.INFO, "dnstfo.server"):
        result = server.call(server.server.reload)
    assert result.zones == 1
    assert answer(server) == "192.0.2.1"
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert messages, "the failed reload is logged"
    if how != "all broken":  # a broken file keeps its zone: that reload succeeds
        assert not any("reloaded:" in r.getMessage() for r in caplog.records)
