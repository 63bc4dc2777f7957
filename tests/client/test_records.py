"""The query's JSON shapes (``client/records.py``), pinned byte for byte.

``records_golden.ndjson`` holds the lines ``cli/render.py`` wrote for the fixed objects
below before the shapes moved to the library (the commit that moved them proved the two
writers equal on real loopback queries). Real queries through ``dnstfo query +json`` must
give the same members in the same order.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import dns.message
import pytest

from dnstfo.cli.query import run
from dnstfo.client import records
from dnstfo.client.compare import CompareStep, Comparison, FailedStep, Step
from dnstfo.client.config import QueryConfig, TfoMethod
from dnstfo.client.report import CookieChange, Fallback, TfoAfter, TfoBefore, Timings
from dnstfo.client.result import QueryFailure, QueryResult, TfoReport, Transfer
from dnstfo.client.tls import TlsInfo
from dnstfo.client.verdict import Outcome, Verdict
from dnstfo.errors import DnstfoError
from dnstfo.kernel.tcpinfo import FastOpenClientFail as Fail
from dnstfo.kernel.tcpinfo import parse_tcp_info
from dnstfo.timing import PhaseTimes
from tests.client import test_transfer, tinyserver

xfr_server = test_transfer.xfr_server  # the project's server with a big zone, AXFR allowed
GOLDEN = Path(__file__).with_name("records_golden.ndjson")
COOKIE = bytes.fromhex("0011223344556677")


# ------------------------------------------------------------------ fixed objects, golden lines


def _message(text: str) -> dns.message.Message:
    return dns.message.from_text(text)


QUERY = _message("id 4660\nopcode QUERY\nflags RD\nedns 0\npayload 1232\n"
                 ";QUESTION\nexample.com. IN A\n")  # fmt: skip
RESPONSE = _message(
    "id 4660\nopcode QUERY\nrcode NOERROR\nflags QR AA RD\nedns 0\neflags DO\npayload 1232\n"
    ";QUESTION\nexample.com. IN A\n;ANSWER\nexample.com. 300 IN A 192.0.2.1\n"
    "example.com. 300 IN A 192.0.2.2\n;AUTHORITY\nexample.com. 60 IN NS ns.exämple.\n"
    ";ADDITIONAL\nns.exämple. 60 IN AAAA 2001:db8::53\n"
)
XFR = (
    _message("id 7\nopcode QUERY\nrcode NOERROR\nflags QR AA\n;QUESTION\nx.example. IN AXFR\n"
             ";ANSWER\nx.example. 60 IN SOA ns.x.example. h.x.example. 1 2 3 4 5\n"
             "x.example. 60 IN NS ns.x.example.\n"),
    _message("id 7\nopcode QUERY\nrcode NOERROR\nflags QR AA\n;ANSWER\n"
             "x.example. 60 IN SOA ns.x.example. h.x.example. 1 2 3 4 5\n"),
)  # fmt: skip
CONFIG = QueryConfig("example.com", "192.0.2.53", port=5353, dnssec=True)
TFO = TfoReport(
    requested=True,
    method="sendto",
    no_cookie=False,
    before=TfoBefore(COOKIE, True, 3, 3600, 2),
    after=TfoAfter(
        attempted=True,
        syn_data_acked=True,
        client_fail=Fail.UNSPEC,
        syn_retransmits=0,
        cookie=COOKIE,
        cookie_change=CookieChange.SAME,
        fallback=Fallback.NONE,
        fallback_reason=None,
        blackhole_delta=0,
    ),
    timings=Timings.measure(50.25, 50.5, 50.75, 50_100, 50_000),
    verdict=Verdict(Outcome.IN_SYN, 1, True, "answer in 1 round trip: the query rode in the SYN"),
)
RESULT = QueryResult(
    config=CONFIG,
    query=QUERY,
    response=RESPONSE,
    query_size=40,
    response_size=160,
    server=("192.0.2.53", 5353),
    source=("192.0.2.10", 40000),
    times=PhaseTimes(started=0),
    tcp_info=parse_tcp_info(bytes(256)),
    tfo=TFO,
    wall_time=1_700_000_000.125,
    tries=1,
    elapsed_ms=51.5,
)
NOT_TFO = replace(
    TFO,
    requested=False,
    method="off",
    before=replace(TFO.before, cookie=None),
    after=replace(TFO.after, attempted=False, syn_data_acked=False, cookie=None,
                  cookie_change=CookieChange.NONE, client_fail=Fail.COOKIE_UNAVAILABLE),
    verdict=Verdict(Outcome.NOT_REQUESTED, 2, False, "answer in 2 round trips: plain TCP"),
)  # fmt: skip
TRANSFER = replace(
    RESULT,
    config=replace(CONFIG, qname="x.example", rdtype="AXFR", dnssec=False, tfo=TfoMethod.OFF),
    response=XFR[0],
    transfer=Transfer(XFR, 123),
    tfo=NOT_TFO,
    tls=TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", "dot", True, False, None),
)
FAILURE = QueryFailure("connect", 111, "connecting to 192.0.2.53 port 5353: connection refused")
COMPARISON = Comparison(
    steps=(CompareStep(Step.BASELINE, replace(RESULT, tfo=NOT_TFO)), CompareStep(Step.TFO, RESULT)),
    failed=(FailedStep(Step.PRIMING, 1, FAILURE, DnstfoError("refused")),),
    cookie_deleted=False,
    cookie_note="cookie kept (needs root): priming may already use it",
    baseline_ms=100.5,
    tfo_ms=50.75,
    saving_ms=None,
    baseline_rounds=2.0,
    tfo_rounds=1.0,
    worked=False,
    failure=None,
    reason="TFO not proven: 1 of 3 queries got no answer (refused)",
)


def _golden() -> dict[str, str]:
    result, transfer, failed, compared = GOLDEN.read_text(encoding="utf-8").splitlines()
    return {"result": result, "transfer": transfer, "failed": failed, "compare": compared}


def test_the_shapes_are_written_byte_for_byte_as_before() -> None:
    golden = _golden()
    assert records.to_line(records.result_json(RESULT, "ns.exämple")) == golden["result"]
    assert records.to_line(records.result_json(TRANSFER, "192.0.2.53")) == golden["transfer"]
    failed = records.failure_json(CONFIG, "ns.exämple", FAILURE, 1_700_000_000.125)
    assert records.to_line(failed) == golden["failed"]
    assert records.to_line(records.compare_json(COMPARISON, "ns.exämple")) == golden["compare"]


def test_the_cli_prints_the_library_line(capsys: pytest.CaptureFixture[str]) -> None:
    from dnstfo.cli import render

    render.emit_json(records.compare_json(COMPARISON, "ns.exämple"))
    assert capsys.readouterr().out == _golden()["compare"] + "\n"


def _members(value: Any, path: str = "") -> list[str]:
    """Every object member's path, in order (records in lists left out: their data vary)."""
    if not isinstance(value, dict):
        return []
    return [m for k, v in value.items() for m in (f"{path}.{k}", *_members(v, f"{path}.{k}"))]


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, int]]:
    with tinyserver.running(tinyserver.make_listener(tfo=True)) as address:
        yield address


def _query(capsys: pytest.CaptureFixture[str], *words: str) -> dict[str, Any]:
    run([*words, "+json"])
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_real_queries_have_the_pinned_members_in_order(
    server: tuple[str, int], xfr_server: tuple[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    golden = {k: json.loads(v) for k, v in _golden().items()}
    at = [f"@{server[0]}", "-p", str(server[1])]
    one = _query(capsys, "example.com", *at, "+dnssec")
    assert _members(one) == _members(golden["result"])
    xfr = _query(capsys, "big.example", "AXFR", f"@{xfr_server[0]}", "-p", str(xfr_server[1]))
    assert xfr["transfer"]["records"] == test_transfer.BIG_HOSTS + 4  # both SOAs, NS and its A
    plain = {"response": None, "tls": None}  # EDNS and TLS differ from the pinned transfer
    assert _members({**xfr, **plain}) == _members({**golden["transfer"], **plain})
    compared = _query(capsys, "example.com", *at, "+compare", "+repeat=2")
    assert _members(compared) == _members(golden["compare"])
    step = golden["compare"]["steps"][0]
    assert [_members(s) for s in compared["steps"]] == [_members(step)] * 4
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        closed = str(s.getsockname()[1])
    failed = _query(capsys, "example.com", "@127.0.0.1", "-p", closed, "+dnssec")
    assert _members(failed) == _members(golden["failed"])


def test_a_failed_tls_query_says_tls(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        closed = str(s.getsockname()[1])
    failed = _query(capsys, "example.com", "@127.0.0.1", "-p", closed, "+tls")
    assert failed["error"]["errname"] == "ECONNREFUSED"
    assert failed["server"]["transport"] == "tls"
