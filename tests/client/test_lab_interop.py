"""The same queries against ``dnstfo serve`` and ``knotd``: answers equal dig's, and TFO
works against both (Knot accepts SYN data with ``tcp-fastopen: on``)."""

from __future__ import annotations

import shutil

import pytest

from tests.client.conftest import dnstfo_serve, knotd

pytestmark = [pytest.mark.lab, pytest.mark.netadmin, pytest.mark.interop]

QUERIES = [("example.com", "A"), ("example.com", "MX"), ("text.example.com", "TXT"),
           ("alias.example.net", "A"), ("ns1.example.com", "AAAA")]  # fmt: skip


def _dig_answer(served, name, rdtype):
    r = served.dig("+noall", "+answer", name, rdtype)
    assert r.returncode == 0, r.stderr
    return sorted(" ".join(line.split()) for line in r.stdout.splitlines() if line.strip())


def _our_answer(served, name, rdtype):
    rrs = served.query_json(name, rdtype)["response"]["answerRRs"]
    return sorted(
        " ".join(f"{rr['NAME']} {rr['TTL']} {rr['CLASSname']} {rr['TYPEname']} "
                 f"{rr['rdata' + rr['TYPEname']]}".split())
        for rr in rrs
    )  # fmt: skip


@pytest.fixture(params=["dnstfo", "knotd"])
def served(request, lab_with, tmp_path):
    from dnstfo.lab.topology import LabSpec

    if shutil.which("dig") is None:
        pytest.skip("needs dig (Debian package bind9-dnsutils; scripts/sysdeps.sh)")
    lab = lab_with(LabSpec(rtt_ms=20, ipv6=False))
    server = dnstfo_serve(lab) if request.param == "dnstfo" else knotd(lab, tmp_path)
    with server as s:
        yield s


@pytest.mark.parametrize(("name", "rdtype"), QUERIES)
def test_answer_section_equals_digs(served, name, rdtype):
    ours = _our_answer(served, name, rdtype)
    assert ours
    assert ours == _dig_answer(served, name, rdtype)


@pytest.mark.parametrize(("name", "rdtype"), QUERIES)
def test_short_equals_dig_short(served, name, rdtype):
    ours = served.dnstfo("query", name, rdtype, f"@{served.address}", "+short")
    dig = served.dig("+short", name, rdtype)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == dig.stdout


def test_tfo_in_one_round_trip(served):
    served.delete_cookie()
    report = served.query_json("example.com", "+compare", "+repeat=2")
    assert report["tfo_worked"] is True, report["reason"]
    assert [s["tfo"]["verdict"]["outcome"] for s in report["steps"]] == [
        "not-requested", "cookie-received", "in-syn", "in-syn"]  # fmt: skip
