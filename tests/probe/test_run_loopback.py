"""The probe's runner on real sockets: many targets at once inside a namespace's loopback."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import pytest

from dnstfo.lab.netns import Namespace
from tests.probe.loopback import probe_loopback, probe_tls_refused_certificate

pytestmark = pytest.mark.netadmin


def test_every_target_works_with_tfo_on(make_ns: Callable[[str], Namespace]) -> None:
    ns = make_ns("3")
    addresses = [f"127.0.{i // 250 + 1}.{i % 250 + 1}" for i in range(300)]
    out = ns.run(probe_loopback, addresses, concurrency=150, timeout=120)
    records = out["records"]
    assert sorted(r["dip"] for r in records) == sorted(addresses)
    assert {r["verdict"] for r in records} == {"works"}, records[0]
    for r in records:
        assert r["conditions"] == [
            "tfo.connectivity.works",
            "tfo.cookie.received",
            "tfo.syndata.acked",
        ]
        steps = [c["step"] for c in r["connections"]]
        assert steps == ["baseline", "priming", "tfo", "tfo"]
        assert r["local"]["cookie_deleted"] is True
        prime, *tfo = r["connections"][1:]
        assert prime["cookie_before"] is None
        assert prime["cookie_after"] is not None
        assert all(c["syn_data_sent"] and c["syn_data_acked"] for c in tfo)
        assert all(c["rcode"] == "NOERROR" for c in r["connections"])
        assert r["domain"] == "test.example."
        assert r["query"] == {
            "name": "test.example.",
            "type": "SOA",
        }
        assert isinstance(r["rank"], int)
        assert r["time"]["from"] <= r["time"]["to"]
    assert out["progress"][-1][0] == 300


def test_server_bit_off_is_no_tfo_and_closed_port_offline(
    make_ns: Callable[[str], Namespace],
) -> None:
    ns = make_ns("1")
    out = ns.run(probe_loopback, ["127.0.0.2"], closed=["127.0.0.3"], timeout=60)
    by = {r["dip"]: r for r in out["records"]}
    assert by["127.0.0.2"]["verdict"] == "no-tfo"
    assert by["127.0.0.2"]["conditions"] == ["tfo.connectivity.works", "tfo.cookie.not_received"]
    off = by["127.0.0.3"]
    assert off["verdict"] == "offline"
    assert off["conditions"] == ["tfo.connectivity.offline"]
    assert [c["failure"] for c in off["connections"]] == ["refused"] * 5


def test_client_bit_off_blames_nothing_on_the_server(make_ns: Callable[[str], Namespace]) -> None:
    ns = make_ns("2")
    out = ns.run(probe_loopback, ["127.0.0.2"], timeout=60)
    (r,) = out["records"]
    assert r["verdict"] == "local-client-off"
    assert r["local"]["client_enabled"] is False


def test_rate_caps_new_connections(make_ns: Callable[[str], Namespace]) -> None:
    ns = make_ns("3")
    # 10 targets x 4 connections at 100 per second take at least 0.37 s (about 5 ms without).
    out = ns.run(probe_loopback, [f"127.0.0.{i}" for i in range(2, 12)], rate=100.0, timeout=60)
    records = out["records"]
    first = min(datetime.fromisoformat(r["time"]["from"]) for r in records)
    last = max(datetime.fromisoformat(r["time"]["to"]) for r in records)
    assert (last - first).total_seconds() >= 0.37
    assert {r["verdict"] for r in records} == {"works"}


def test_a_slow_syn_only_check_never_stalls_the_connections(
    make_ns: Callable[[str], Namespace],
) -> None:
    ns = make_ns("3")
    addresses = [f"127.0.0.{i}" for i in range(2, 12)]
    out = ns.run(probe_loopback, addresses, slow_syn_only=0.4, timeout=60)
    records = out["records"]
    assert len(records) == 10
    assert all(r["syn_only"]["answered"] for r in records)
    slowest = max(c["total_ms"] for r in records for c in r["connections"])
    assert slowest < 300, "a crafted-SYN check ran inside the event loop"


def test_a_server_at_its_per_client_limit_is_refused_not_tfo(
    make_ns: Callable[[str], Namespace],
) -> None:
    ns = make_ns("3")
    out = ns.run(probe_loopback, ["127.0.0.2"], client_full=True, timeout=60)
    (r,) = out["records"]
    conns = r["connections"]
    assert [c["rcode"] for c in conns] == [None] * 5, conns
    # closed (EOF) or reset, as the close and the query cross
    assert {c["failure"] for c in conns} <= {"closed", "reset"}, conns
    assert all(c["syn_data_sent"] and c["syn_data_acked"] for c in conns[3:]), conns
    assert r["verdict"] == "refused", r["reason"]
    assert "plain ones too (baseline #1, baseline #2, priming)" in r["reason"]
    # PATHspider's connectivity is TCP's: every handshake completed, and the SYN data was acked
    assert r["conditions"] == [
        "tfo.connectivity.works",
        "tfo.cookie.received",
        "tfo.syndata.acked",
    ]


def test_a_refused_certificate_is_named_and_tfo_judged_on_the_wire(
    make_ns: Callable[[str], Namespace],
) -> None:
    ns = make_ns("3")
    (r,) = ns.run(probe_tls_refused_certificate, timeout=60)["records"]
    conns = r["connections"]
    assert {c["failure"] for c in conns} == {"tls-refused"}, conns
    assert all(c["syn_data_sent"] and c["syn_data_acked"] for c in conns if c["step"] == "tfo")
    assert r["verdict"] == "tls-refused", r["reason"]
    assert "certificate was refused" in r["reason"]
    assert "2 of 2 ClientHellos rode in the SYN and were acked" in r["reason"]
    assert "--tls-ca FILE" in r["reason"]
    assert "+tls" not in r["reason"] + conns[0]["error"]
    assert r["conditions"] == [
        "tfo.connectivity.works",
        "tfo.cookie.received",
        "tfo.syndata.acked",
    ]
