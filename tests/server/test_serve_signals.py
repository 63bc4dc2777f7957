"""``dnstfo serve`` as a process: signals from the first answer on."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.server.serveproc import (
    ServeProcess,
    address_of,
    ask,
    free_port,
    write_zone,
)

ROUNDS = 20


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_at_once_after_the_first_answer_reloads(tmp_path: Path, workers: int) -> None:
    """Every SIGHUP sent as soon as the server has answered is a reload, never lost nor
    fatal: the handlers are in place before any listener answers."""
    zones = tmp_path / "zones"
    for attempt in range(ROUNDS):
        write_zone(zones, "192.0.2.7")
        port = free_port()
        args = ["--zone", str(zones), "--listen", f"127.0.0.1:{port}", "--workers", str(workers)]
        with ServeProcess(args) as server:
            assert address_of(server.first_answer(port)) == "192.0.2.7"
            write_zone(zones, "192.0.2.8", serial=2)
            server.signal(signal.SIGHUP)
            # Each worker logs its reload; a lost SIGHUP never logs it, a fatal one exits.
            server.wait_for(r"reloaded: 1 zones", count=workers)
            assert server.proc.poll() is None, f"round {attempt}: exited {server.proc.poll()}"
            for _ in range(4 * workers):  # fresh connections reach every worker
                assert address_of(ask(port)) == "192.0.2.8"
            assert server.stop() == 0, server.text
