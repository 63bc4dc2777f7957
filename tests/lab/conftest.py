"""Fixtures for the lab tests: one lab per module, reset between tests, and a skip reason."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from dnstfo.kernel import tcp_metrics
from dnstfo.lab.ping import ping_server
from dnstfo.lab.topology import Lab, LabSpec, start_lab

RTT_MS = 100.0


def lab_missing() -> str | None:
    """Why the lab cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "the lab needs root (namespaces, TUN devices): run the suite as root"
    if not os.path.exists("/dev/net/tun"):
        return "the lab needs /dev/net/tun: modprobe tun"
    return None


requires_lab = pytest.mark.skipif(lab_missing() is not None, reason=str(lab_missing()))


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """A lab at 100 ms RTT shared by one test module (tests reset it with ``fresh_lab``)."""
    reason = lab_missing()
    if reason:
        pytest.skip(reason)
    with start_lab(LabSpec(rtt_ms=RTT_MS)) as running:
        yield running


@pytest.fixture(scope="module")
def target(lab: Lab) -> Iterator[tuple[str, int]]:
    """A ping server in the lab's server namespace, on its IPv4 address."""
    with ping_server(lab.server, lab.server_v4) as address:
        yield address


@pytest.fixture
def fresh_lab(lab: Lab) -> Iterator[Lab]:
    """The module's lab, as if new: no faults, no cookies, both TFO bits on, empty log."""
    _reset(lab)
    yield lab
    _reset(lab)


def _reset(lab: Lab) -> None:
    lab.delay.configure(lab.spec.delay_config())
    for server in lab.servers:
        server.write_sysctls({"net.ipv4.tcp_fastopen": str(lab.spec.server_tcp_fastopen)})
    lab.client.write_sysctls({"net.ipv4.tcp_fastopen": str(lab.spec.client_tcp_fastopen)})
    lab.client.run(tcp_metrics.flush)
    lab.delay.clear()
