"""``dnstfo query`` when queries fail, on real loopback sockets: +json errors, +repeat, +compare.

Failures come from a port with nothing listening (refused) and from scripted servers that
stay silent or close without answering (``tests/client/scriptserver.py``).
"""

from __future__ import annotations

import json
import re
import socket

import dns.message
import pytest
from click.testing import CliRunner

from dnstfo.cli import main
from tests.client import tinyserver
from tests.client.scriptserver import answer_a, serving

ERROR_KEYS = {"phase", "errno", "errname", "message"}


def query(*args: str):
    return CliRunner().invoke(main, ["query", *args])


def closed_port() -> int:
    """A loopback port with nothing listening (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def silent(_n: int, _conn: socket.socket, _query: dns.message.Message) -> None:
    """Never answers (the connection stays open)."""


def test_json_on_refusal_is_one_object_with_the_error():
    port = closed_port()
    result = query("x.example", "@127.0.0.1", "-p", str(port), "+json")
    assert result.exit_code == 9
    (line,) = result.stdout.splitlines()
    obj = json.loads(line)
    assert set(obj["error"]) == ERROR_KEYS
    assert obj["error"]["phase"] == "connect"
    assert obj["error"]["errname"] == "ECONNREFUSED"
    assert obj["error"]["errno"] == 111
    assert obj["query"]["qname"] == "x.example"
    assert obj["server"]["port"] == port
    assert "ECONNREFUSED" in result.stderr  # the one line for people, as before


def test_json_on_timeout_names_the_phase():
    with serving(silent) as port:
        result = query("x.example", "@127.0.0.1", "-p", str(port), "+json", "+timeout=0.3")
    assert result.exit_code == 9
    error = json.loads(result.stdout)["error"]
    assert (error["phase"], error["errno"]) == ("first byte", None)
    assert "timed out" in error["message"]


def close_at_once(_n: int, conn: socket.socket, _q: dns.message.Message) -> None:
    """Reads the query and closes without a byte of answer."""
    conn.shutdown(socket.SHUT_WR)


def test_close_without_answer_is_no_reply_exit_9():
    """No reply arrived: dig's 9 ("communications error ... end of file"), phase named."""
    with serving(close_at_once) as port:
        result = query("x.example", "@127.0.0.1", "-p", str(port), "+json")
        text = query("x.example", "@127.0.0.1", "-p", str(port))
    assert result.exit_code == 9
    assert json.loads(result.stdout)["error"]["phase"] == "first byte"
    assert text.exit_code == 9
    assert ";; no answer: the server closed the connection without answering" in text.stderr


def test_close_mid_message_is_a_bad_reply_exit_10():
    def half(_n: int, conn: socket.socket, q: dns.message.Message) -> None:
        conn.sendall(b"\x00\x40" + q.to_wire()[:10])  # 12 bytes of a 64-byte frame
        conn.shutdown(socket.SHUT_WR)

    with serving(half) as port:
        result = query("x.example", "@127.0.0.1", "-p", str(port))
    assert result.exit_code == 10
    assert ";; bad answer:" in result.stderr


def test_malformed_answer_is_worded_by_us():
    def hello(_n: int, conn: socket.socket, _q: dns.message.Message) -> None:
        conn.sendall(b"\x00\x05hello")

    with serving(hello) as port:
        result = query("x.example", "@127.0.0.1", "-p", str(port))
    assert result.exit_code == 10
    assert "a 5-byte message is shorter than a DNS header" in result.stderr
    assert "from_wire" not in result.stderr


def test_json_repeat_gives_one_object_per_query():
    port = closed_port()
    result = query("x.example", "@127.0.0.1", "-p", str(port), "+json", "+repeat=3")
    assert result.exit_code == 9
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["error"]["phase"] for o in objects] == ["connect"] * 3


def test_repeat_goes_on_after_a_failure_and_counts_it():
    def fail_second(n: int, conn: socket.socket, q: dns.message.Message) -> None:
        if n == 1:
            conn.shutdown(socket.SHUT_WR)  # closes without answering
        else:
            answer_a(conn, q)

    with serving(fail_second) as port:
        result = query("x.example", "@127.0.0.1", "-p", str(port), "+short", "+repeat=4")
    assert result.stdout.splitlines() == ["192.0.2.9"] * 3
    assert ";; 1 of 4 queries failed" in result.stderr
    assert result.exit_code == 9


def test_tries_time_covers_every_try():
    def silent_first(n: int, conn: socket.socket, q: dns.message.Message) -> None:
        if n > 0:
            answer_a(conn, q)

    with serving(silent_first) as port:
        result = query("x.example", "@127.0.0.1", "-p", str(port), "+tries=2", "+timeout=1")
    assert result.exit_code == 0, result.output
    (ms,) = re.findall(r";; Query time: (\d+) msec", result.stdout)
    assert int(ms) >= 1000
    assert ";; Tries: 2 (1 timed out)" in result.stdout


# ------------------------------------------------------------------ +compare


@pytest.fixture
def plain_server():
    """A loopback server without a TFO listener: TFO cannot work against it."""
    with tinyserver.running(tinyserver.make_listener(tfo=False)) as address:
        yield address


def test_compare_claims_no_saving_when_tfo_did_not_work(plain_server):
    host, port = plain_server
    result = query("x.example", f"@{host}", "-p", str(port), "+compare")
    assert result.exit_code == 3, result.output
    text = result.stdout
    assert "saving" not in text
    assert "TFO works" not in text
    assert "times: plain TCP" in text
    # Loopback: the same note as a single query, and no rounds in the table.
    assert "note: the path RTT is under 1 ms: rounds measure host overhead here" in text
    rows = text.split("-" * 60)[1].strip().splitlines()
    assert len(rows) == 5
    assert all(row.split()[-5] == "-" for row in rows), rows  # the rounds column


def test_compare_goes_on_after_a_failed_query_and_counts_it():
    def fail_third(n: int, conn: socket.socket, q: dns.message.Message) -> None:
        if n == 2:
            conn.shutdown(socket.SHUT_WR)
        else:
            answer_a(conn, q)

    with serving(fail_third) as port:
        result = query("x.example", "@127.0.0.1", "-p", str(port), "+compare", "+json")
    assert result.exit_code == 9
    obj = json.loads(result.stdout)
    assert obj["failures"] == 1
    assert [s["step"] for s in obj["steps"]] == ["baseline", "priming", "tfo", "tfo", "tfo"]
    assert set(obj["steps"][2]) == {"step", "error"}
    assert obj["tfo_worked"] is False
    assert obj["saving_ms"] is None


def test_compare_without_a_baseline_is_one_line_and_exit_9():
    result = query("x.example", "@127.0.0.1", "-p", str(closed_port()), "+compare")
    assert result.exit_code == 9
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
