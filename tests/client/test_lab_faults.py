"""Middlebox faults and TFO switched off at either end: the answer still arrives, and the
report says what went wrong. Each case gets a fresh lab and sets its own faults and sysctls."""

from __future__ import annotations

import dataclasses

import pytest

from tests.client.conftest import dnstfo_serve

pytestmark = [pytest.mark.lab, pytest.mark.netadmin, pytest.mark.linux]

RTT = 20


def _syns(packets, port):
    return [p for p in packets if p.is_syn and p.sport == port]


@pytest.fixture
def served(lab_with):
    from dnstfo.lab.topology import LabSpec

    lab = lab_with(LabSpec(rtt_ms=RTT, ipv6=False))
    with dnstfo_serve(lab) as s:
        yield s


def _set_faults(served, *faults):
    from dnstfo.lab.delay import Fault

    line = served.lab.delay
    line.configure(dataclasses.replace(line.config, faults=frozenset(Fault(f) for f in faults)))


def _prime(served):
    """Gets a cookie on a clean path; returns its hex."""
    _set_faults(served)
    served.delete_cookie()
    first = served.query_json("example.com")
    assert first["tfo"]["verdict"]["outcome"] == "cookie-received", first["tfo"]
    return first["tfo"]["after"]["cookie_hex"]


def _query(served, *args):
    served.lab.delay.clear()
    result = served.query_json("example.com", *args)
    assert result["response"]["answerRRs"][0]["rdataA"] == "192.0.2.1"  # answered anyway
    return result, _syns(served.lab.delay.packets(), result["source"]["port"])


def test_drop_syn_data(served):
    _prime(served)
    _set_faults(served, "drop-syn-data")
    r, syns = _query(served)
    a = r["tfo"]["after"]
    assert r["tfo"]["verdict"]["outcome"] == "syn-retransmitted"
    assert a["syn_data_sent"] is True
    assert a["syn_data_acked"] is False
    assert a["syn_retransmits"] >= 1
    assert a["client_fail"] == "syn_retransmitted"
    # Ground truth: the first SYN carried the query and was dropped; the retry had no data.
    assert syns[0].payload_len > 0
    assert syns[0].action.value == "dropped"
    assert syns[-1].payload_len == 0
    assert syns[-1].action.value == "forwarded"
    assert r["tfo"]["timings"]["total_ms"] > 1000  # the initial RTO


def test_strip_tfo_syn(served):
    cookie = _prime(served)
    _set_faults(served, "strip-tfo-syn")
    r, syns = _query(served)
    a = r["tfo"]["after"]
    assert r["tfo"]["before"]["cookie_hex"] == cookie
    assert a["syn_data_sent"] is True
    assert a["syn_data_acked"] is False
    assert a["client_fail"] == "data_not_acked"
    assert a["syn_retransmits"] == 0  # the resent data is not a SYN retransmission
    assert r["tfo"]["verdict"]["outcome"] == "data-not-acked"
    assert syns[0].payload_len > 0
    assert syns[0].action.value == "stripped"
    assert 1.9 < r["tfo"]["timings"]["total_ms"] / r["tfo"]["timings"]["rtt_ms"] < 2.5


def test_strip_tfo_synack(served):
    served.delete_cookie()
    _set_faults(served, "strip-tfo-synack")
    r, syns = _query(served)
    a = r["tfo"]["after"]
    assert (a["syn_data_sent"], a["cookie_hex"], a["cookie_change"]) == (False, None, "none")
    assert r["tfo"]["verdict"]["outcome"] == "no-cookie"
    assert syns[0].cookie_len == 0  # we asked; the answer's option never arrived


def test_drop_syn_tfo(served):
    served.delete_cookie()
    _set_faults(served, "drop-syn-tfo")
    r, syns = _query(served)
    a = r["tfo"]["after"]
    assert a["syn_retransmits"] >= 1
    assert a["syn_data_sent"] is False
    assert syns[0].tfo_option
    assert syns[0].action.value == "dropped"
    assert r["tfo"]["verdict"]["text"].startswith("answer after")


def test_server_tfo_off(served):
    served.lab.server.write_sysctls({"net.ipv4.tcp_fastopen": "0"})
    served.delete_cookie()
    _set_faults(served)
    r, _ = _query(served)
    assert r["tfo"]["verdict"]["outcome"] == "no-cookie"
    assert r["tfo"]["after"]["cookie_hex"] is None


def test_client_tfo_off(served):
    cookie = _prime(served)
    served.lab.client.write_sysctls({"net.ipv4.tcp_fastopen": "0"})
    r, syns = _query(served)
    t = r["tfo"]
    assert t["before"]["client_enabled"] is False
    assert t["before"]["cookie_hex"] == cookie
    assert t["after"]["fallback"] == "client-off"
    assert "sysctl -w net.ipv4.tcp_fastopen=1" in t["after"]["fallback_reason"]
    assert t["verdict"]["outcome"] == "client-off"
    assert not syns[0].tfo_option
    assert syns[0].payload_len == 0


def test_client_tfo_off_with_fastopen_connect(served):
    served.lab.client.write_sysctls({"net.ipv4.tcp_fastopen": "0"})
    r, _ = _query(served, "--method", "connect")
    assert r["tfo"]["after"]["fallback"] == "client-off"
    assert r["tfo"]["verdict"]["outcome"] == "client-off"


def test_fastopen_connect_rides_in_the_syn(served):
    _prime(served)
    r, syns = _query(served, "--method", "connect")
    assert r["tfo"]["verdict"]["outcome"] == "in-syn"
    assert syns[0].payload_len == r["query"]["msgsize"] + 2


def test_no_cookie_rides_in_the_syn(served):
    # 0x200 (TFO_SERVER_COOKIE_NOT_REQD): the server takes SYN data without a cookie.
    served.lab.server.write_sysctls({"net.ipv4.tcp_fastopen": "0x203"})
    served.delete_cookie()
    _set_faults(served)
    r, syns = _query(served, "+nocookie")
    t = r["tfo"]
    assert (t["no_cookie"], t["before"]["cookie_hex"]) == (True, None)
    assert (t["after"]["syn_data_sent"], t["after"]["syn_data_acked"]) == (True, True)
    assert t["verdict"]["outcome"] == "in-syn"
    assert "without a cookie" in t["verdict"]["text"]
    # Ground truth: the first SYN carried the whole framed query and no TFO option at all.
    assert syns[0].payload_len == r["query"]["msgsize"] + 2
    assert (syns[0].tfo_option, syns[0].cookie_len) == (False, None)
