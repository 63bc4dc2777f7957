"""``dnstfo probe --tls`` on the real kernel: the same plan over DoT, the same verdicts."""

from __future__ import annotations

import json

import pytest

from tests.client.conftest import SERVER
from tests.client.conftest import lab_with as lab_with  # the fixture
from tests.lab.test_tls_rounds import ca as ca  # the fixture
from tests.lab.test_tls_rounds import dnstfo_tls

pytestmark = [pytest.mark.lab, pytest.mark.netadmin, pytest.mark.linux]


def test_probe_over_tls_works_with_the_client_hello_in_the_syn(lab_with, ca, tmp_path):
    from dnstfo.lab.topology import LabSpec

    lab = lab_with(LabSpec(rtt_ms=20, ipv6=False))
    log = tmp_path / "serve.log"
    with dnstfo_tls(lab, ca, log) as served:
        verified = served.dnstfo(
            "probe", SERVER, "--name", "example.com", "--tls", "--tls-ca", str(ca.ca_cert)
        )
        opportunistic = served.dnstfo("probe", SERVER, "--name", "example.com", "--tls")
    for run in (verified, opportunistic):
        assert run.returncode == 0, run.stderr
        (record,) = [json.loads(line) for line in run.stdout.splitlines()]
        assert record["verdict"] == "works", record["reason"]
        assert record["dp"] == 853
        steps = [c["step"] for c in record["connections"]]
        assert steps == ["baseline", "priming", "tfo", "tfo"]
        for c in record["connections"]:
            assert c["rcode"] == "NOERROR"
            assert c["syn_data_acked"] is (c["step"] == "tfo")
    tfo_lines = [line for line in log.read_text().splitlines() if " tls TFO " in line]
    assert len(tfo_lines) == 4  # two TFO connections per probe, marked by the server


def test_probe_tls_against_a_server_that_refuses_the_certificate_check(lab_with, ca, tmp_path):
    """A CA the server's certificate does not chain to: every connection fails, named in
    the probe's own options."""
    from dnstfo.lab.testca import make_test_ca
    from dnstfo.lab.topology import LabSpec

    (tmp_path / "other").mkdir()
    other = make_test_ca(tmp_path / "other")
    lab = lab_with(LabSpec(rtt_ms=5, ipv6=False))
    with dnstfo_tls(lab, ca, tmp_path / "serve.log") as served:
        run = served.dnstfo("probe", SERVER, "--tls", "--tls-ca", str(other.ca_cert))
    (record,) = [json.loads(line) for line in run.stdout.splitlines()]
    assert record["verdict"] == "tls-refused", record["reason"]
    assert "certificate was refused" in record["connections"][0]["error"]
    assert "--tls-ca FILE" in record["reason"]
    assert "+tls" not in record["reason"]
