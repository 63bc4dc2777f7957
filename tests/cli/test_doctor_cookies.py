"""``dnstfo doctor --fix`` and ``dnstfo cookies`` inside a namespace of the test's own."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

DNSTFO = str(Path(sys.executable).parent / "dnstfo")
pytestmark = [pytest.mark.netadmin, pytest.mark.linux]


@pytest.fixture
def ns():
    from dnstfo.lab.netns import namespace

    if os.geteuid() != 0:
        pytest.skip("needs root to make a network namespace")
    with namespace("d", sysctls={"net.ipv4.tcp_fastopen": "1"}) as made:
        yield made


def test_doctor_explains_and_fixes(ns):
    before = ns.exec([DNSTFO, "doctor"])
    assert before.returncode == 5
    assert "net.ipv4.tcp_fastopen = 1: client (0x1)" in before.stdout
    assert "server bit (0x2) is off" in before.stdout
    fixed = ns.exec([DNSTFO, "doctor", "--fix"])
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "net.ipv4.tcp_fastopen = 3" in fixed.stdout  # the /etc/sysctl.d line
    assert ns.read_sysctl("net.ipv4.tcp_fastopen") == "3"


def test_doctor_judges_client_and_server_apart(ns):
    # tcp_fastopen=1: this namespace can query with TFO, not serve with it.
    client = ns.exec([DNSTFO, "doctor", "--client"])
    assert client.returncode == 0, client.stdout + client.stderr
    assert "query (client) with TCP Fast Open: ready" in client.stdout
    assert "serve (server)" not in client.stdout
    server = ns.exec([DNSTFO, "doctor", "--server"])
    assert server.returncode == 5
    assert "serve (server) with TCP Fast Open: no" in server.stdout
    assert "fix: dnstfo doctor --fix --server (root)" in server.stdout
    assert "query (client)" not in server.stdout


def test_doctor_explains_every_counter(ns):
    from dnstfo.kernel.sysctl import KERNEL_NAMES, MEANINGS

    out = ns.exec([DNSTFO, "doctor"]).stdout
    for name, meaning in MEANINGS.items():
        assert KERNEL_NAMES[name] in out
        assert meaning in out


def test_doctor_fix_shows_the_state_after_the_fix(ns):
    fixed = ns.exec([DNSTFO, "doctor", "--fix"])
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "set net.ipv4.tcp_fastopen = 3 (was 1)" in fixed.stdout
    assert "problem" not in fixed.stdout
    assert "server bit (0x2) is off" not in fixed.stdout
    assert "serve (server) with TCP Fast Open: ready" in fixed.stdout


def test_doctor_fix_client_sets_only_the_client_bit(ns):
    ns.write_sysctls({"net.ipv4.tcp_fastopen": "0"})
    fixed = ns.exec([DNSTFO, "doctor", "--fix", "--client"])
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert ns.read_sysctl("net.ipv4.tcp_fastopen") == "1"


def test_doctor_fix_keeps_other_bits(ns):
    ns.write_sysctls({"net.ipv4.tcp_fastopen": "0x401"})
    assert ns.exec([DNSTFO, "doctor", "--fix"]).returncode == 0
    assert int(ns.read_sysctl("net.ipv4.tcp_fastopen"), 0) == 0x403


def test_cookies_list_delete_flush(ns):
    from tests.client import tinyserver

    ns.write_sysctls({"net.ipv4.tcp_fastopen": "3"})
    listener = ns.in_thread(tinyserver.make_listener)
    with tinyserver.running(listener) as (host, port):
        q = ns.exec([DNSTFO, "query", "example.com", f"@{host}", "-p", str(port), "+short"])
        assert q.returncode == 0, q.stderr
    listed = ns.exec([DNSTFO, "cookies", "--json"])
    (entry,) = json.loads(listed.stdout)
    assert entry["server"] == "127.0.0.1"
    assert entry["cookie_len"] == 8
    assert ns.exec([DNSTFO, "cookies", "127.0.0.1", "--delete"]).returncode == 0
    assert ns.exec([DNSTFO, "cookies", "--json"]).stdout.strip() == "[]"
    assert ns.exec([DNSTFO, "cookies", "--flush"]).returncode == 0


def test_cookie_delete_without_root_says_so(ns):
    r = ns.exec(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", DNSTFO,
                 "cookies", "127.0.0.1", "--delete"])  # fmt: skip
    assert r.returncode == 4, r.stdout + r.stderr
    assert "needs root" in r.stderr
