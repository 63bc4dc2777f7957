"""Probe runs over a namespace's loopback, against dnstfo serve's server (run inside it)."""

from __future__ import annotations

import asyncio
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import dns.message

from dnstfo.client.config import TlsOptions
from dnstfo.kernel.sockets import tfo_listener
from dnstfo.lab.testca import make_test_ca
from dnstfo.probe.observe import SynOnlyObservation, WireEvidence
from dnstfo.probe.plan import Plan
from dnstfo.probe.run import ProbeConfig, probe_targets
from dnstfo.probe.targets import Target
from dnstfo.server.app import DnsServer, load_authority
from dnstfo.server.config import Endpoint, Limits, ServerConfig
from dnstfo.server.listener import open_listeners
from dnstfo.wire.framing import frame
from tests.server.conftest import ZONE, ServerThread, read_messages, tcp_connect


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
    client_full: bool = False,
) -> dict[str, Any]:
    """Serves test.example on 0.0.0.0 and probes ``addresses`` (and ``closed`` ones on a
    port with nothing listening); returns the records and what the progress saw.

    With ``client_full`` the server admits one connection per client and one is held
    open from the probe's source address, so the server refuses every probe connection.
    """
    with tempfile.TemporaryDirectory() as tmp:
        zones = Path(tmp)
        (zones / "test.example.zone").write_text(ZONE)
        server = ServerThread(
            ServerConfig(
                zone_dir=zones,
                listen=(Endpoint("0.0.0.0", 0),),
                limits=Limits(max_connections=16384, max_per_client=1 if client_full else 16384),
            )
        )
        held: socket.socket | None = None
        try:
            port = server.address[1]
            if client_full:  # answered: the server counts it before the probe starts
                held = tcp_connect((addresses[0], port))
                query = dns.message.make_query("test.example.", "SOA")
                held.sendall(frame(query.to_wire()))
                assert read_messages(held, 1)
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
            if held is not None:
                held.close()
            server.stop()
    return {"records": records, "progress": seen}


def probe_tls_refused_certificate() -> dict[str, Any]:
    """Serves test.example over TLS with a certificate of one test CA, then probes it over
    TLS trusting another CA only: every certificate check must refuse it."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for d in ("zones", "served", "other"):
            (root / d).mkdir()
        (root / "zones" / "test.example.zone").write_text(ZONE)
        served, other = make_test_ca(root / "served"), make_test_ca(root / "other")
        config = ServerConfig(
            zone_dir=root / "zones",
            listen=(Endpoint("127.0.0.1", 0),),
            tls_listen=(Endpoint("127.0.0.1", 0),),
            tls_cert=served.cert,
            tls_key=served.key,
        )
        loop = asyncio.new_event_loop()
        listeners = open_listeners(config.listen, tfo_queue=16, key=None, reuseport=False)
        tls = tfo_listener(("127.0.0.1", 0))
        server = DnsServer(config, listeners, load_authority(config), [tls])
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
        try:
            config_ = ProbeConfig(
                timeout=10.0,
                vantage="loopback",
                tls=TlsOptions(ca_file=str(other.ca_cert)),
            )
            target = Target("127.0.0.1", tls.getsockname()[1])
            records = [r.to_json() for r in probe_targets(config_, [target])]
        finally:
            asyncio.run_coroutine_threadsafe(server.stop(1), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()
    return {"records": records}
