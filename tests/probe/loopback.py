"""Probe runs over a namespace's loopback, against dnstfo serve's server (run inside it)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from dnstfo.probe.observe import SynOnlyObservation, WireEvidence
from dnstfo.probe.plan import Plan
from dnstfo.probe.run import ProbeConfig, probe_targets
from dnstfo.probe.targets import Target
from dnstfo.server.config import Endpoint, Limits, ServerConfig
from tests.server.conftest import ZONE, ServerThread


class SlowSynOnly:
    """Evidence whose crafted-SYN check takes ``seconds`` (a stand-in for a slow path)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def syn_only(self, target: Target) -> SynOnlyObservation | None:
        time.sleep(self.seconds)  # the check's own duration, not a synchronisation
        return SynOnlyObservation(True, None, None, self.seconds * 1000, None)

    def wire_for(self, target: Target, source: tuple[str, int]) -> WireEvidence | None:
        return None


def probe_loopback(
    addresses: list[str],
    *,
    concurrency: int = 100,
    attempts: int = 2,
    closed: list[str] | None = None,
    rate: float | None = None,
    slow_syn_only: float | None = None,
) -> dict[str, Any]:
    """Serves test.example on 0.0.0.0 and probes ``addresses`` (and ``closed`` ones on a
    port with nothing listening); returns the records and what the progress saw."""
    with tempfile.TemporaryDirectory() as tmp:
        zones = Path(tmp)
        (zones / "test.example.zone").write_text(ZONE)
        server = ServerThread(
            ServerConfig(
                zone_dir=zones,
                listen=(Endpoint("0.0.0.0", 0),),
                limits=Limits(max_connections=16384, max_per_client=16384),
            )
        )
        try:
            port = server.address[1]
            targets = [
                Target(a, port, "test.example.", {"rank": i}) for i, a in enumerate(addresses)
            ]
            targets += [Target(a, 9, None) for a in closed or []]
            seen: list[tuple[int, int]] = []
            config = ProbeConfig(
                plan=Plan(tfo_attempts=attempts),
                concurrency=concurrency,
                timeout=10.0,
                rate=rate,
                vantage="loopback",
                evidence=None if slow_syn_only is None else SlowSynOnly(slow_syn_only),
            )
            records = [
                r.to_json()
                for r in probe_targets(config, targets, progress=lambda d, f: seen.append((d, f)))
            ]
        finally:
            server.stop()
    return {"records": records, "progress": seen}
