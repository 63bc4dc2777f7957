"""The probe's verdicts, each proven by a lab condition at 100 ms RTT on the real kernel.

``dnstfo serve`` (or ``knotd``) runs in the server namespace; the probe's library entry
point (``probe_targets``) runs in the client namespace. One lab serves every condition that
the delay line or a sysctl can switch on the fly; the anycast pool has a lab of its own.
For each condition: the verdict, PATHspider's conditions, and an answer wherever the path
allows one.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dnstfo.kernel import tcp_metrics
from dnstfo.kernel.sockets import TfoKey
from dnstfo.lab.delay import Fault, flow_instance
from dnstfo.lab.demo import stop_server, wait_listening
from dnstfo.lab.netns import Namespace, realtime_priority
from dnstfo.lab.topology import Lab, LabSpec, start_lab
from dnstfo.probe.plan import Plan
from dnstfo.probe.run import ProbeConfig, probe_targets
from dnstfo.probe.targets import Target
from tests.lab.conftest import lab_missing, requires_lab

pytestmark = [pytest.mark.lab, pytest.mark.netadmin, pytest.mark.linux, requires_lab]

RTT_MS = 100.0
ROOT = Path(__file__).resolve().parents[2]
ZONES = ROOT / "zones"
DOMAIN = "example.com."
CLOSED_PORT = 54  # nothing listens there
KNOT_PORT = 5353

WORKS = ["tfo.connectivity.works", "tfo.cookie.received", "tfo.syndata.acked"]
NO_COOKIE = ["tfo.connectivity.works", "tfo.cookie.not_received"]


# --- running things in the lab --------------------------------------------------------------


@contextlib.contextmanager
def dnstfo_serve(ns: Namespace, port: int = 53) -> Iterator[None]:
    """``dnstfo serve`` on 0.0.0.0 in ``ns``, with room for every probe connection."""
    argv = ["ip", "netns", "exec", ns.name, sys.executable, "-c"]
    argv += ["from dnstfo.cli import main; main(prog_name='dnstfo')", "serve"]
    argv += ["--zone", str(ZONES), "--listen", f"0.0.0.0:{port}"]
    argv += ["--max-connections", "16384", "--max-per-client", "16384"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(ns, proc, port)
        # Round trips are measured: busy processes must not delay it (once it listens: a
        # start-up at real-time priority is a CPU burst that would stall the delay line).
        realtime_priority(pid=proc.pid)
        yield
    finally:
        stop_server(proc)


def probe(
    targets: list[Target], attempts: int = 2, forget_cookie: bool = True, **kw: Any
) -> list[dict[str, Any]]:
    """Runs the probe (in the client namespace); returns its records, in target order."""
    config = ProbeConfig(
        plan=Plan(tfo_attempts=attempts, forget_cookie=forget_cookie),
        concurrency=100,
        timeout=5.0,
        vantage="lab",
        **kw,
    )
    records = [r.to_json() for r in probe_targets(config, targets)]
    order = {(t.address, t.port): i for i, t in enumerate(targets)}
    return sorted(records, key=lambda r: order[(r["dip"], r["dp"])])


def run_probe(lab: Lab, targets: list[Target], **kw: Any) -> list[dict[str, Any]]:
    return lab.client.run(probe, targets, timeout=120, realtime=True, **kw)


def answered_all(record: dict[str, Any]) -> bool:
    return all(c["rcode"] == "NOERROR" for c in record["connections"])


# --- one lab for the conditions that switch on the fly --------------------------------------


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    if reason := lab_missing():
        pytest.skip(reason)
    with start_lab(LabSpec(rtt_ms=RTT_MS)) as running, dnstfo_serve(running.server):
        yield running


@pytest.fixture
def fresh(lab: Lab) -> Iterator[Lab]:
    """The module's lab as new: no fault, both TFO bits on, no cookie."""

    def reset() -> None:
        lab.delay.configure(lab.spec.delay_config())
        lab.server.write_sysctls({"net.ipv4.tcp_fastopen": "3"})
        lab.client.write_sysctls({"net.ipv4.tcp_fastopen": "3"})
        lab.client.run(tcp_metrics.flush)

    reset()
    yield lab
    reset()


def fault(lab: Lab, which: Fault) -> None:
    lab.delay.configure(replace(lab.delay.config, faults=frozenset({which})))


def target(lab: Lab, port: int = 53) -> Target:
    return Target(lab.server_v4, port, DOMAIN)


def test_server_tfo_on_works_in_one_round_trip(fresh: Lab) -> None:
    (r,) = run_probe(fresh, [target(fresh)])
    assert r["verdict"] == "works", r["reason"]
    assert r["conditions"] == WORKS
    assert answered_all(r)
    assert [c["step"] for c in r["connections"]] == ["baseline", "priming", "tfo", "tfo"]
    base, prime, *tfo = r["connections"]
    assert 1.8 <= base["rounds"] < 2.5
    assert prime["cookie_before"] is None
    assert prime["cookie_after"] is not None
    assert all(c["syn_data_acked"] and 0.9 <= c["rounds"] < 1.5 for c in tfo)
    assert r["local"]["cookie_deleted"] is True


def test_server_bit_off_is_no_tfo_and_the_crafted_syn_agrees(fresh: Lab) -> None:
    fresh.server.write_sysctls({"net.ipv4.tcp_fastopen": "1"})
    (r,) = fresh.client.run(_probe_with_evidence, [target(fresh)], None, True, timeout=120)
    assert r["verdict"] == "no-tfo", r["reason"]
    assert r["conditions"] == NO_COOKIE
    assert answered_all(r)
    assert r["syn_only"]["answered"] is True
    assert r["syn_only"]["tfo_ackkind"] is None
    assert "crafted SYN's SYN-ACK carried no Fast Open option" in r["reason"]


def test_tfo_option_stripped_from_synacks_is_no_tfo(fresh: Lab) -> None:
    fault(fresh, Fault.STRIP_TFO_SYNACK)
    (r,) = run_probe(fresh, [target(fresh)])
    assert r["verdict"] == "no-tfo", r["reason"]
    assert r["conditions"] == NO_COOKIE
    assert answered_all(r)


def test_option_stripped_from_syns_once_a_cookie_is_cached_is_data_ignored(fresh: Lab) -> None:
    (primed,) = run_probe(fresh, [target(fresh)])  # caches the server's cookie
    assert primed["verdict"] == "works"
    fault(fresh, Fault.STRIP_TFO_SYN)
    (r,) = run_probe(fresh, [target(fresh)], forget_cookie=False)
    assert r["verdict"] == "data-ignored", r["reason"]
    assert r["conditions"] == [
        "tfo.connectivity.works",
        "tfo.cookie.received",
        "tfo.syndata.not_acked",
    ]
    assert answered_all(r)
    tfo = [c for c in r["connections"] if c["step"] == "tfo"]
    assert all(c["syn_data_sent"] and not c["syn_data_acked"] for c in tfo)
    assert all(c["cookie_after"] == c["cookie_before"] is not None for c in tfo)


def test_syns_with_data_dropped_is_syn_data_dropped(fresh: Lab) -> None:
    fault(fresh, Fault.DROP_SYN_DATA)
    (r,) = run_probe(fresh, [target(fresh)])
    assert r["verdict"] == "syn-data-dropped", r["reason"]
    assert r["conditions"] == [
        "tfo.connectivity.works",
        "tfo.cookie.received",
        "tfo.syndata.failed",
    ]
    assert answered_all(r)  # resent without data, the query is answered after the timeout
    tfo = [c for c in r["connections"] if c["step"] == "tfo"]
    assert all(c["client_fail"] == "syn_retransmitted" for c in tfo)


def test_syns_with_the_tfo_option_dropped_is_syn_tfo_dropped(fresh: Lab) -> None:
    fault(fresh, Fault.DROP_SYN_TFO)
    (r,) = run_probe(fresh, [target(fresh)])
    assert r["verdict"] == "syn-tfo-dropped", r["reason"]
    assert r["conditions"] == NO_COOKIE
    assert answered_all(r)
    prime = r["connections"][1]
    assert prime["syn_retransmits"] >= 1


def test_client_bit_off_is_local_and_blames_nothing_on_the_server(fresh: Lab) -> None:
    fresh.client.write_sysctls({"net.ipv4.tcp_fastopen": "2"})
    (r,) = run_probe(fresh, [target(fresh)])
    assert r["verdict"] == "local-client-off", r["reason"]
    assert r["local"]["client_enabled"] is False
    assert "nothing tested" in r["reason"]


def test_nothing_listening_is_offline(fresh: Lab) -> None:
    (r,) = run_probe(fresh, [target(fresh, CLOSED_PORT)])
    assert r["verdict"] == "offline", r["reason"]
    assert r["conditions"] == ["tfo.connectivity.offline"]
    assert {c["failure"] for c in r["connections"]} == {"refused"}


def test_knot_dns_works(fresh: Lab) -> None:
    from tests.client.conftest import knotd

    with tempfile.TemporaryDirectory() as tmp, knotd(fresh, Path(tmp), KNOT_PORT):
        (r,) = run_probe(fresh, [target(fresh, KNOT_PORT)])
    assert r["verdict"] == "works", r["reason"]
    assert r["conditions"] == WORKS
    assert answered_all(r)


# --- --pcap: the capture, read back with tshark, agrees with the records ---------------------


def _probe_with_evidence(
    targets: list[Target], pcap: str | None, syn_only: bool
) -> list[dict[str, Any]]:
    from dnstfo.probe.wire_evidence import open_evidence

    ports = {t.port for t in targets}
    with open_evidence(pcap=pcap, syn_only=syn_only, ports=ports) as evidence:
        return probe(targets, evidence=evidence)


def test_the_pcap_agrees_with_the_records_field_by_field(fresh: Lab) -> None:
    import shutil

    from tests.probe.test_lab_wire_evidence import tshark_evidence

    if shutil.which("tshark") is None:
        pytest.skip("needs tshark (scripts/sysdeps.sh installs it)")
    with tempfile.TemporaryDirectory() as tmp:
        pcap = Path(tmp) / "probe.pcap"
        (r,) = fresh.client.run(
            _probe_with_evidence, [target(fresh)], str(pcap), False, timeout=120
        )
        read = tshark_evidence(pcap)
    assert r["verdict"] == "works", r["reason"]
    assert len(read) == len(r["connections"]) == 4
    for c in r["connections"]:
        w, t = c["wire"], read[c["sp"]]
        assert w == {
            "tfo_synkind": None if t.syn_kind is None else int(t.syn_kind),
            "tfo_synclen": t.syn_cookie_len,
            "tfo_ackkind": None if t.synack_kind is None else int(t.synack_kind),
            "tfo_ackclen": t.synack_cookie_len,
            "tfo_dlen": t.syn_data_len,
            "syn_data_acked": t.syn_data_acked,
            "syn_count": t.syn_count,
            "retransmitted_synkind": None,
            "retransmitted_dlen": 0,
        }, c["step"]
    base, prime, *tfo = (c["wire"] for c in r["connections"])
    assert base["tfo_synkind"] is None
    assert (prime["tfo_synkind"], prime["tfo_synclen"], prime["tfo_ackclen"]) == (34, 0, 8)
    assert all(w["tfo_synclen"] == 8 and w["tfo_dlen"] > 0 and w["syn_data_acked"] for w in tfo)


# --- the anycast pool -----------------------------------------------------------------------

POOL_TARGETS = 12


@pytest.fixture(scope="module")
def pool() -> Iterator[Lab]:
    if reason := lab_missing():
        pytest.skip(reason)
    spec = LabSpec(rtt_ms=RTT_MS, anycast=2, server_addresses=POOL_TARGETS, ipv6=False)
    with start_lab(spec) as running, contextlib.ExitStack() as stack:
        for server in running.servers:
            stack.enter_context(dnstfo_serve(server))
        yield running


def _set_keys(lab: Lab, shared: bool) -> None:
    one = TfoKey(secrets.token_bytes(16))
    for server in lab.servers:
        key = one if shared else TfoKey(secrets.token_bytes(16))
        server.write_sysctls({"net.ipv4.tcp_fastopen_key": key.text()})
    lab.client.run(tcp_metrics.flush)


def _expected(lab: Lab, record: dict[str, Any]) -> str:
    """The verdict the flows' instances call for: a cookie works only where it was made."""
    tfo_phase = [c for c in record["connections"] if c["step"] in ("priming", "tfo")]
    count = len(lab.servers)

    def instance(c: dict[str, Any]) -> int:
        addresses = socket.inet_aton(c["source"]) + socket.inet_aton(record["dip"])
        return flow_instance(addresses, (c["sp"], record["dp"]), count)

    issuer = instance(tfo_phase[0])
    acked = []
    for c in tfo_phase[1:]:
        acked.append(instance(c) == issuer)
        issuer = instance(c)  # accepted: same issuer; rejected: the new instance's cookie
    if all(acked):
        return "works"
    return "cookie-rejected" if not any(acked) else "unstable"


def test_anycast_with_different_keys_is_unstable_or_cookie_rejected(pool: Lab) -> None:
    _set_keys(pool, shared=False)
    records = run_probe(pool, [Target(a, 53, DOMAIN) for a in pool.server_addresses])
    assert len(records) == POOL_TARGETS
    verdicts = [r["verdict"] for r in records]
    assert verdicts == [_expected(pool, r) for r in records], [r["reason"] for r in records]
    # With 12 targets, every one hashing all its flows to one instance has odds of 4^-12.
    assert {"unstable", "cookie-rejected"} & set(verdicts)
    assert all(answered_all(r) for r in records)
    for r in records:
        if r["verdict"] == "cookie-rejected":
            assert r["conditions"][-1] == "tfo.syndata.not_acked"


def test_anycast_with_a_shared_key_works(pool: Lab) -> None:
    _set_keys(pool, shared=True)
    records = run_probe(pool, [Target(a, 53, DOMAIN) for a in pool.server_addresses])
    split = [r for r in records if _expected(pool, r) != "works"]
    assert split  # flows did cross instances, and still:
    assert {r["verdict"] for r in records} == {"works"}, [r["reason"] for r in records]
    assert all(r["conditions"] == WORKS for r in records)
