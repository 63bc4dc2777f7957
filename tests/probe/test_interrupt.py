"""Ctrl-C: the finished targets' records are kept, the rest abandoned, exit status 130."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dnstfo.lab.netns import Namespace
from dnstfo.server.config import Endpoint, ServerConfig
from tests.server.conftest import ZONE, ServerThread

DNSTFO = str(Path(sys.executable).parent / "dnstfo")


def silent_listener() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.3", 0))
    s.listen(8)  # handshakes complete in the kernel; nothing ever answers
    return s


@pytest.mark.netadmin
def test_ctrl_c_keeps_finished_records(make_ns: Callable[[str], Namespace], tmp_path: Path) -> None:
    ns = make_ns("3")
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "test.example.zone").write_text(ZONE)
    server = ServerThread(
        ServerConfig(zone_dir=zones, listen=(Endpoint("127.0.0.2", 0),)), netns=ns
    )
    silent = ns.in_thread(silent_listener)
    out = tmp_path / "records.ndjson"
    try:
        targets = [f"127.0.0.2:{server.address[1]}", f"127.0.0.3:{silent.getsockname()[1]}"]
        argv = ["ip", "netns", "exec", ns.name, DNSTFO, "probe", "--timeout", "30", "-o", str(out),
                *targets]  # fmt: skip
        # As from a terminal: SIGINT at its default in the probe. A runner started in the
        # background (CI, nohup) has SIGINT ignored, and exec would pass that on; a Python
        # handler here is reset to the default by exec instead.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        finally:
            signal.signal(signal.SIGINT, previous)
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and proc.poll() is None:
                if out.exists() and out.read_text().endswith("\n"):
                    break
                time.sleep(0.02)
            assert proc.poll() is None, proc.communicate()
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    finally:
        server.stop()
        silent.close()
    assert proc.returncode == 130, err
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["dip"] == "127.0.0.2"
    assert record["verdict"] == "works"
    assert "interrupted; 1 of 2 targets written" in err
    assert "Traceback" not in err
