"""``dnstfo query NAME AXFR``: dig's output shape for a multi-message transfer, and errors."""

from __future__ import annotations

import json
import re
import socket

import dns.message
import dns.rrset
from click.testing import CliRunner

from dnstfo.cli import main
from dnstfo.wire.framing import frame
from tests.client.scriptserver import serving
from tests.client.test_transfer import BIG_HOSTS, xfr_server

__all__ = ["xfr_server"]  # the fixture, shared with the library's tests

XFR_SIZE = re.compile(r";; XFR size: (\d+) records \(messages (\d+), bytes (\d+)\)$")


def query(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["query", *args])
    return result.exit_code, result.output


def test_axfr_prints_every_record_and_dig_s_size_line(xfr_server):
    host, port = xfr_server
    code, output = query("big.example", "AXFR", f"@{host}", "-p", str(port))
    assert code == 0, output[-500:]
    lines = output.splitlines()
    records = [line for line in lines if line and not line.startswith(";")]
    assert len(records) == BIG_HOSTS + 4
    assert "\tSOA\t" in records[0]
    assert records[-1] == records[0]
    (size,) = [m for line in lines if (m := XFR_SIZE.match(line))]
    assert int(size[1]) == BIG_HOSTS + 4
    assert int(size[2]) > 1
    assert ";; Got answer:" not in output  # dig prints no header for a transfer


def test_axfr_json_holds_every_record(xfr_server):
    host, port = xfr_server
    code, output = query("big.example", "AXFR", f"@{host}", "-p", str(port), "+json")
    assert code == 0
    (line,) = output.splitlines()
    transfer = json.loads(line)["transfer"]
    assert transfer["records"] == len(transfer["answerRRs"]) == BIG_HOSTS + 4
    assert transfer["messages"] > 1


def test_one_message_axfr_counts_five_records(xfr_server):
    host, port = xfr_server
    code, output = query("one.example", "AXFR", f"@{host}", "-p", str(port), "+short")
    assert code == 0
    assert len(output.splitlines()) == 5


def test_a_cut_transfer_is_one_line_and_exit_10():
    def first_message_only(_n: int, conn: socket.socket, q: dns.message.Message) -> None:
        response = dns.message.make_response(q)
        soa = "ns.cut.example. h.cut.example. 1 2 3 4 5"
        response.answer.append(dns.rrset.from_text("cut.example.", 60, "IN", "SOA", soa))
        conn.sendall(frame(response.to_wire()))
        conn.shutdown(socket.SHUT_WR)

    with serving(first_message_only) as port:
        code, output = query("cut.example", "AXFR", "@127.0.0.1", "-p", str(port))
    assert code == 10
    assert output.count("\n") == 1
    assert "transfer was cut" in output
