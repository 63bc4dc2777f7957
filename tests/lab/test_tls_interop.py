"""``dnstfo query +tls`` against dnsdist's TLS frontend with TFO (Debian's dnsdist), in the
lab: the answer equals the plain one, and the ClientHello rides in the SYN once a cookie is
cached (2 round trips instead of 3)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dnstfo.lab.demo import stop_server, wait_listening
from dnstfo.lab.netns import realtime_priority
from tests.client.conftest import SERVER, Served, dnstfo_serve
from tests.client.conftest import lab_with as lab_with  # the fixture

pytestmark = [pytest.mark.lab, pytest.mark.netadmin, pytest.mark.linux, pytest.mark.interop]

CLIENTS = "198.18.0.0/15"
"""The lab's addresses (dnsdist's default ACL allows private ranges only)."""
DNSDIST_CONF = """\
setSecurityPollSuffix("")
setLocal("127.0.0.1:5300")
addACL("{client_net}")
addTLSLocal("{server}:853", "{cert}", "{key}", {{provider="openssl", tcpFastOpenQueueSize=64}})
newServer({{address="{server}:53"}})
"""


@contextlib.contextmanager
def dnsdist(lab, tmp: Path, ca) -> Iterator[Served]:
    """dnsdist with a TLS frontend (TFO queue 64) on port 853, forwarding to port 53."""
    exe = shutil.which("dnsdist")
    if exe is None:
        pytest.skip("needs dnsdist (Debian package dnsdist; scripts/sysdeps.sh installs it)")
    conf = tmp / "dnsdist.conf"
    conf.write_text(
        DNSDIST_CONF.format(server=SERVER, cert=ca.cert, key=ca.key, client_net=CLIENTS)
    )
    argv = ["ip", "netns", "exec", lab.server.name, exe, "--supervised", "--disable-syslog",
            "-C", str(conf)]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # Its handshakes are timed: set before its worker threads start (they inherit it).
    realtime_priority(pid=proc.pid)
    try:
        wait_listening(lab.server, proc, 853, "dnsdist")
        yield Served(lab, proc, SERVER, 853)
    finally:
        stop_server(proc)


def test_dnstfo_query_tls_against_dnsdist(lab_with, tmp_path):
    from dnstfo.lab.testca import make_test_ca
    from dnstfo.lab.topology import LabSpec

    ca = make_test_ca(tmp_path, ("dns.test",), (SERVER,))
    lab = lab_with(LabSpec(rtt_ms=50, ipv6=False))
    tls = ("+tls", f"+tls-ca={ca.ca_cert}")
    with dnstfo_serve(lab) as plain, dnsdist(lab, tmp_path, ca) as dot:
        want = plain.query_json("example.com", "MX", "+notfo")
        report = dot.query_json("example.com", "MX", *tls, "+compare", "+repeat=2")
    assert report["tfo_worked"] is True, report["reason"]
    for step in report["steps"]:
        assert step["response"]["answerRRs"] == want["response"]["answerRRs"]
        assert step["tls"]["verified"] is True
    base, _, *tfo = report["steps"]
    assert base["tfo"]["timings"]["rounds"] == pytest.approx(3, abs=0.4)
    for step in tfo:
        after = step["tfo"]["after"]
        assert (after["syn_data_sent"], after["syn_data_acked"]) == (True, True)
        assert step["tfo"]["timings"]["rounds"] == pytest.approx(2, abs=0.4)
