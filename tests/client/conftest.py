"""Fixtures for the client's lab tests: a lab, ``dnstfo serve`` or ``knotd`` in it, and runners.

Everything happens inside namespaces the fixtures make (``dtfo`` prefix) and removes, also
when a test fails; the host's own network settings are never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dnstfo.lab.demo import stop_server, wait_listening
from dnstfo.lab.netns import realtime_priority
from tests.knot import knot_config

ROOT = Path(__file__).resolve().parents[2]
ZONES = ROOT / "zones"
DNSTFO = [str(Path(sys.executable).parent / "dnstfo")]
SERVER = "198.18.0.2"


def need_lab() -> None:
    """Skips the test, with the reason, when this process cannot build a lab."""
    if os.geteuid() != 0:
        pytest.skip("needs root to build network namespaces and the delay line")
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("needs /dev/net/tun for the delay line")


@dataclass
class Served:
    """A DNS server running in the lab's server namespace."""

    lab: Any
    proc: subprocess.Popen[str]
    address: str
    port: int

    def dnstfo(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Runs ``dnstfo ARGS`` in the client namespace, timed like the delay line (real time)."""
        return self.lab.client.exec([*DNSTFO, *args], timeout=timeout, cwd=ROOT, realtime=True)

    def query_json(self, *args: str) -> dict[str, Any]:
        """Runs ``dnstfo query ... +json`` in the client namespace; returns the one object."""
        r = self.dnstfo("query", *args, f"@{self.address}", "-p", str(self.port), "+json")
        assert r.returncode in (0, 3), r.stderr
        return json.loads(r.stdout)  # type: ignore[no-any-return]

    def dig(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Runs ``dig +tcp`` in the client namespace."""
        return self.lab.client.exec(
            ["dig", "+tcp", "+tries=1", "+time=5", f"@{self.address}", "-p", str(self.port), *args]
        )

    def delete_cookie(self) -> None:
        """Forgets the client's cookie for the server (in the client namespace)."""
        r = self.dnstfo("cookies", self.address, "--delete")
        assert r.returncode == 0, r.stderr


@pytest.fixture
def lab_with() -> Iterator[Callable[..., Any]]:
    """Returns ``start(spec)``: a running lab for the test, torn down afterwards."""
    from dnstfo.lab.topology import start_lab

    need_lab()
    with contextlib.ExitStack() as stack:
        yield lambda spec: stack.enter_context(start_lab(spec))


@contextlib.contextmanager
def dnstfo_serve(lab: Any, port: int = 53) -> Iterator[Served]:
    """Runs ``dnstfo serve --zone zones/`` in the server namespace."""
    argv = ["ip", "netns", "exec", lab.server.name, *DNSTFO, "serve", "--zone", str(ZONES),
            "--listen", f"{SERVER}:{port}"]  # fmt: skip
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_listening(lab.server, proc, port)
        # Its answers are timed: busy CPUs must not delay them (not its start-up: a CPU
        # burst at real-time priority would stall the delay line).
        realtime_priority(pid=proc.pid)
        yield Served(lab, proc, SERVER, port)
    finally:
        stop_server(proc)


@contextlib.contextmanager
def knotd(lab: Any, tmp: Path, port: int = 53) -> Iterator[Served]:
    """Runs ``knotd`` with the zones/ zones and ``tcp-fastopen: on`` in the server namespace."""
    conf = knot_config(tmp, SERVER, port)
    argv = ["ip", "netns", "exec", lab.server.name, "knotd", "-c", str(conf)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    realtime_priority(pid=proc.pid)  # before its worker threads start: they inherit it
    try:
        wait_listening(lab.server, proc, port, "knotd")
        yield Served(lab, proc, SERVER, port)
    finally:
        stop_server(proc)
