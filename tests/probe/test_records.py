"""The record's JSON shape: PATHspider's fields exactly, ours beside them, one line each."""

from __future__ import annotations

import io
import json
import re

from dnstfo.probe.classify import classify
from dnstfo.probe.observe import OptionKind, WireEvidence
from dnstfo.probe.records import VERSION, ProbeRecord, write
from dnstfo.probe.targets import Target
from tests.probe.helpers import BASE, C1, PRIMED, in_syn, target

WIRE = WireEvidence(
    syn_kind=OptionKind.FASTOPEN,
    syn_cookie_len=8,
    synack_kind=None,
    synack_cookie_len=None,
    syn_data_len=42,
    syn_data_acked=True,
    syn_count=1,
    retransmitted_syn_kind=None,
    retransmitted_syn_data_len=0,
)


def record() -> ProbeRecord:
    from dataclasses import replace

    obs = target(BASE, PRIMED, replace(in_syn(), wire=WIRE), in_syn())
    job = Target(
        "192.0.2.1", 53, "example.", {"rank": 3, "tag": ["a"], "conditions": ["x"], "verdict": "y"}
    )
    return ProbeRecord(job, "example.", "SOA", "here", obs, classify(obs))


def test_pathspider_fields_and_ours() -> None:
    j = record().to_json()
    assert (j["dip"], j["dp"], j["domain"]) == ("192.0.2.1", 53, "example.")
    assert (j["rank"], j["tag"]) == (3, ["a"])
    assert j["conditions"] == ["tfo.connectivity.works", "tfo.cookie.received", "tfo.syndata.acked"]
    assert j["verdict"] == "works"
    assert set(j["time"]) == {"from", "to"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{6})?", j["time"]["from"])
    assert j["version"] == VERSION
    assert j["query"] == {"name": "example.", "type": "SOA"}
    assert j["vantage"] == {"host": "here", "source": "127.0.0.1"}
    assert j["local"]["cookie_deleted"] is True
    assert j["syn_only"] is None
    conns = j["connections"]
    assert [c["step"] for c in conns] == ["baseline", "priming", "tfo", "tfo"]
    assert set(conns[0]) == {
        "step", "source", "sp", "tfo_requested", "syn_data_sent", "syn_data_acked",
        "client_fail", "cookie_before", "cookie_after", "syn_retransmits", "fallback_reason",
        "handshake_ms", "total_ms", "rtt_ms", "rounds", "rcode", "failure", "error", "wire",
        "cache_evicted",
    }  # fmt: skip
    assert conns[1]["cookie_after"] == C1.hex()
    assert conns[1]["client_fail"] == "cookie_unavailable"
    assert conns[2]["wire"]["tfo_synkind"] == 34
    assert conns[2]["wire"]["tfo_dlen"] == 42
    assert conns[3]["wire"] is None


def test_our_fields_win_over_input_keys_of_the_same_name() -> None:
    j = record().to_json()
    assert j["verdict"] == "works"
    assert j["conditions"][0] == "tfo.connectivity.works"


def test_one_line_per_record() -> None:
    out = io.StringIO()
    write(record(), out)
    write(record(), out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert json.loads(lines[0]) == record().to_json()
