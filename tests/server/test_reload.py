"""Reloads that would leave the server without zones keep the zones it serves."""

from __future__ import annotations

import asyncio
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


def test_sighups_during_a_reload_make_one_more_reload(
    make_server: Callable[..., ServerThread], zone_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGHUPs that arrive while a reload runs are not lost, nor run in parallel: one more
    reload follows, and it reads the files as they were after the last SIGHUP.

    The file is replaced in one rename, as a deployment does: the reload already running
    reads it whole, old or new (written in place, it could read it half-written and log
    that file as failed, which is right but not what this test is about).
    """
    server = make_server()
    zone = zone_dir / "test.example.zone"
    edited = zone_dir.parent / "test.example.zone.new"  # outside the zone directory
    edited.write_text(zone.read_text().replace("192.0.2.1", "192.0.2.9"))

    async def burst() -> None:
        server.server.request_reload()
        await asyncio.sleep(0)  # the reload starts: its parser thread runs
        assert server.server._reload_lock.locked()
        edited.replace(zone)
        for _ in range(5):
            server.server.request_reload()
        await asyncio.gather(*server.server._tasks)

    with caplog.at_level(logging.INFO, "dnstfo.server"):
        server.call(burst)
    # Exactly two reloads ("zone not reloaded: ..." is no reload), and neither failed a file.
    assert sum(r.getMessage().startswith("reloaded: ") for r in caplog.records) == 2
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert answer(server) == "192.0.2.9"
