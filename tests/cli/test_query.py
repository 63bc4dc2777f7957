"""``dnstfo query`` argument parsing (CliRunner, no network) and the +json shape."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from dnstfo.cli import digargs, main
from dnstfo.client.config import QueryConfig, TfoMethod
from dnstfo.errors import UsageError

DOC = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def captured(monkeypatch):
    """Runs ``dnstfo query ARGS`` and returns the configs it would send (no network)."""
    from dnstfo.cli import query as cli_query

    seen: list[tuple[QueryConfig, str, bool, bool]] = []
    monkeypatch.setattr(cli_query, "_run_one", lambda *a, **_: seen.append(a))
    monkeypatch.setattr(cli_query, "_run_compare", lambda *a: seen.append(a))

    def run(*args: str) -> tuple[int, list, str]:
        result = CliRunner().invoke(main, ["query", *args])
        return result.exit_code, seen, result.output

    return run


def test_dig_shape(captured):
    code, seen, _ = captured("example.com", "MX", "@192.0.2.53", "+short", "+dnssec")
    assert code == 0
    ((config, server, as_json, as_short),) = seen
    assert (config.qname, config.rdtype, config.rdclass) == ("example.com", "MX", "IN")
    assert (config.server, config.port, server) == ("192.0.2.53", 53, "192.0.2.53")
    assert (config.dnssec, config.recurse, config.tfo) == (True, True, TfoMethod.SENDTO)
    assert (as_json, as_short) == (False, True)


def test_plus_options_and_long_options_agree(captured):
    plus = ["x.example", "@192.0.2.1", "+notfo", "+nocookie", "+norecurse", "+timeout=2",
            "+tries=3", "+json"]  # fmt: skip
    long = ["x.example", "@192.0.2.1", "--notfo", "--nocookie", "--norecurse", "--timeout", "2",
            "--tries", "3", "--json"]  # fmt: skip
    assert captured(*plus)[0] == 0
    code, seen, _ = captured(*long)
    assert code == 0
    (a, *_), (b, *_) = seen
    assert a == b
    assert (a.tfo, a.no_cookie, a.recurse, a.timeout, a.tries) == (
        TfoMethod.OFF, True, False, 2.0, 3)  # fmt: skip


def test_port_source_family_and_method(captured):
    code, seen, _ = captured("-p", "5353", "-b", "127.0.0.2", "-4", "--method", "connect",
                             "example.com", "TXT", "CH", "@127.0.0.1")  # fmt: skip
    assert code == 0
    config = seen[0][0]
    assert (config.port, config.source, config.tfo) == (5353, "127.0.0.2", TfoMethod.CONNECT)
    assert (config.rdtype, config.rdclass) == ("TXT", "CH")


def test_server_name_is_resolved_and_kept(captured):
    code, seen, _ = captured("example.com", "@localhost", "-4")
    assert code == 0
    assert seen[0][0].server == "127.0.0.1"
    assert seen[0][1] == "localhost"


def test_repeat_and_compare(captured):
    code, seen, _ = captured("example.com", "@127.0.0.1", "+repeat=3")
    assert (code, len(seen)) == (0, 3)
    code, seen, _ = captured("example.com", "@127.0.0.1", "+compare", "+repeat=5")
    assert code == 0
    assert seen[-1][2:] == (5, False)


@pytest.mark.parametrize(
    "args",
    [["example.com", "@127.0.0.1", "+bogus"], ["example.com", "@127.0.0.1", "+tries=x"],
     ["example.com", "@127.0.0.1", "-4", "-6"], ["example.com", "extra.example", "@127.0.0.1"],
     ["example.com", "@no-such-host.invalid"], ["example.com", "@127.0.0.1", "+timeout=0"]],
)  # fmt: skip
def test_bad_arguments_exit_2(captured, args):
    code, seen, output = captured(*args)
    assert code == 2, output
    assert seen == []


def test_digargs_order_is_free():
    a = digargs.parse(["@192.0.2.1", "+short", "IN", "example.com", "AAAA"])
    assert (a.name, a.rdtype, a.rdclass, a.server, a.short) == (
        "example.com", "AAAA", "IN", "192.0.2.1", True)  # fmt: skip


def test_digargs_rejects_value_on_flag():
    with pytest.raises(UsageError, match="takes no value"):
        digargs.parse(["+short=1"])


def test_digargs_unknown_option_with_a_value_is_unknown():
    with pytest.raises(UsageError, match=r"^unknown option \+bogus$"):
        digargs.parse(["+bogus=1"])


def test_digargs_dig_time_is_the_timeout():
    assert digargs.parse(["+time=2"]).timeout == 2.0
    assert digargs.parse(["+timeout=3", "+time=1.5"]).timeout == 1.5
    with pytest.raises(UsageError, match=r"\+time needs a value"):
        digargs.parse(["+time"])


def test_connection_refused_is_one_line_and_exit_9():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        result = CliRunner().invoke(main, ["query", "example.com", "@127.0.0.1", "-p", str(port)])
    assert result.exit_code == 9
    assert "ECONNREFUSED" in result.output


# ------------------------------------------------------------------ +json shape

SCALARS = {
    "version": int, "dateSeconds": float, "dateString": str, "tries": int, "elapsed_ms": float,
}  # fmt: skip
TRANSFER_KEYS = {"messages", "records", "bytes", "answerRRs"}
SHAPE = {
    "query": {"qname": str, "qtype": str, "qclass": str, "dnssec": bool, "recurse": bool,
              "msgsize": int},
    "server": {"name": str, "address": str, "port": int, "transport": str},
    "source": {"address": str, "port": int},
    "tfo": {
        "requested": bool, "method": str, "no_cookie": bool,
        "before": {"cookie_hex": (str, type(None)), "cookie_len": (int, type(None)),
                   "sysctl_tcp_fastopen": (int, type(None)), "client_enabled": bool,
                   "blackhole_timeout_s": (int, type(None)), "blackhole_count": int},
        "after": {"syn_data_sent": bool, "syn_data_acked": bool, "client_fail": str,
                  "syn_retransmits": int, "cookie_hex": (str, type(None)),
                  "cookie_len": (int, type(None)), "cookie_change": str, "fallback": str,
                  "fallback_reason": (str, type(None)), "blackhole_delta": int},
        "timings": {k: (float, int, type(None)) for k in (
            "handshake_ms", "first_byte_ms", "total_ms", "tcpi_rtt_ms", "tcpi_min_rtt_ms",
            "rtt_ms", "rounds")},
        "verdict": {"outcome": str, "expected_rounds": (int, type(None)), "tfo_worked": bool,
                    "text": str},
    },
}  # fmt: skip
RESPONSE_KEYS = {"ID", "QR", "Opcode", "AA", "TC", "RD", "RA", "AD", "CD", "RCODE", "RCODEname",
                 "QDCOUNT", "ANCOUNT", "NSCOUNT", "ARCOUNT", "questionRRs", "answerRRs",
                 "authorityRRs", "additionalRRs", "EDNS", "msgsize"}  # fmt: skip
RR_KEYS = {"NAME", "TYPE", "TYPEname", "CLASS", "CLASSname", "TTL", "RDATAHEX"}


def _check(obj, shape, path="$"):
    assert set(obj) == set(shape), f"{path}: {sorted(set(obj) ^ set(shape))}"
    for key, want in shape.items():
        if isinstance(want, dict):
            _check(obj[key], want, f"{path}.{key}")
        else:
            assert isinstance(obj[key], want), f"{path}.{key} = {obj[key]!r}"


@pytest.fixture
def loopback_server():
    from tests.client import tinyserver

    with tinyserver.running(tinyserver.make_listener(tfo=False)) as address:
        yield address


def test_json_shape_matches_the_documented_shape(loopback_server):
    host, port = loopback_server
    result = CliRunner().invoke(main, ["query", "example.com", f"@{host}", "-p", str(port),
                                       "+json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    (line,) = result.output.splitlines()
    obj = json.loads(line)
    _check({k: obj[k] for k in SHAPE}, SHAPE)
    assert set(obj) == set(SHAPE) | set(SCALARS) | {"response", "transfer", "tls"}
    assert obj["transfer"] is None
    assert obj["tls"] is None
    for key, kind in SCALARS.items():
        assert isinstance(obj[key], kind)
    assert set(obj["response"]) == RESPONSE_KEYS
    (rr,) = obj["response"]["answerRRs"]
    assert set(rr) == RR_KEYS | {"rdataA"}
    assert rr["rdataA"] == "192.0.2.1"
    # Every field name is documented.
    doc = DOC.read_text()
    names = set(SCALARS) | RESPONSE_KEYS | RR_KEYS | TRANSFER_KEYS | {"transfer"}
    for section in SHAPE.values():
        for key, sub in section.items():
            names |= set(sub) if isinstance(sub, dict) else {key}
    missing = sorted(n for n in names if not re.search(rf"\b{re.escape(n)}\b", doc))
    assert missing == []


# ------------------------------------------------------------------ dig's habits


@pytest.mark.parametrize(
    ("words", "rdtype", "rdclass"),
    [(["ANY"], "ANY", None), (["A", "ANY"], "A", "ANY"), (["IN", "ANY"], "ANY", "IN"),
     (["ANY", "ANY"], "ANY", "ANY"), (["any", "ch"], "ANY", "CH"), (["NONE"], "NONE", None)],
)  # fmt: skip
def test_a_type_and_class_word_is_a_type_until_the_type_is_given(words, rdtype, rdclass):
    a = digargs.parse(["example.com", *words, "@127.0.0.1"])
    assert (a.name, a.rdtype, a.rdclass) == ("example.com", rdtype, rdclass)


def test_any_is_asked_as_a_type(captured):
    code, seen, _ = captured("example.com", "ANY", "@127.0.0.1")
    assert code == 0
    assert (seen[0][0].rdtype, seen[0][0].rdclass) == ("ANY", "IN")


@pytest.mark.parametrize("port", ["99999", "65536", "0", "-1"])
@pytest.mark.parametrize("form", ["-p", "-pN", "+port="])
def test_a_port_out_of_range_is_a_usage_error(captured, port, form):
    words = {"-p": ["-p", port], "-pN": [f"-p{port}"], "+port=": [f"+port={port}"]}[form]
    code, seen, output = captured("example.com", "@127.0.0.1", *words)
    assert code == 2, output
    assert seen == []
    assert "Traceback" not in output
    assert output.count("\n") == 1


def test_the_highest_port_is_accepted(captured):
    code, seen, _ = captured("example.com", "@127.0.0.1", "-p", "65535")
    assert (code, seen[0][0].port) == (0, 65535)


@pytest.mark.parametrize(
    "args",
    [["-b", "127.0.0.1", "@::1"], ["-b", "::1", "@127.0.0.1"], ["-b", "::1", "-4", "@127.0.0.1"],
     ["-b", "127.0.0.1", "-6", "@::1"], ["-b", "not-an-address", "@127.0.0.1"],
     ["-4", "@::1"], ["-6", "@127.0.0.1"]],
)  # fmt: skip
def test_source_and_server_of_different_families_are_a_usage_error(captured, args):
    code, seen, output = captured("example.com", *args)
    assert code == 2, output
    assert seen == []
    assert output.count("\n") == 1


def test_mixed_families_never_reach_the_network():
    # Through the real runner (no capture): exit 2 before any socket is made.
    result = CliRunner().invoke(main, ["query", "example.com", "-b", "127.0.0.1", "@::1"])
    assert result.exit_code == 2
    assert "different address families" in result.stderr


def test_the_source_family_picks_the_server_s_address(captured):
    code, seen, _ = captured("example.com", "-b", "127.0.0.1", "@localhost")
    assert code == 0
    assert seen[0][0].server == "127.0.0.1"


def test_tcp_and_vc_are_accepted_no_ops(captured):
    code, seen, _ = captured("example.com", "@127.0.0.1", "+tcp", "+vc", "--tcp")
    assert code == 0
    plain = captured("example.com", "@127.0.0.1")[1][-1]
    assert seen[0] == plain


@pytest.mark.parametrize("option", ["+notcp", "+novc"])
def test_no_tcp_is_refused(captured, option):
    code, _, output = captured("example.com", "@127.0.0.1", option)
    assert code == 2
    assert "TCP only" in output


def test_dash_t_c_q(captured):
    code, seen, _ = captured("-t", "mx", "-c", "ch", "-q", "x.example", "@127.0.0.1")
    assert code == 0
    config = seen[0][0]
    assert (config.qname, config.rdtype, config.rdclass) == ("x.example", "MX", "CH")


def test_dash_t_joined_and_type_number(captured):
    code, seen, _ = captured("x.example", "-tTYPE65", "@127.0.0.1")
    assert (code, seen[0][0].rdtype) == (0, "TYPE65")


@pytest.mark.parametrize(
    ("address", "name"),
    [("192.0.2.1", "1.2.0.192.in-addr.arpa."),
     ("2001:db8::1", "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.")],
)  # fmt: skip
def test_dash_x_asks_the_ptr_of_the_reverse_name(captured, address, name):
    code, seen, _ = captured("-x", address, "@127.0.0.1")
    assert code == 0
    config = seen[0][0]
    assert (config.qname, config.rdtype, config.rdclass) == (name, "PTR", "IN")


@pytest.mark.parametrize(
    "args",
    [["-x", "not-an-address"], ["-x", "192.0.2.1", "-q", "x.example"], ["-t", "FOO", "x.example"],
     ["x.example", "FOO"], ["-c", "FOO", "x.example"], ["-t"], ["-x", "192.0.2.1", "x.example"]],
)  # fmt: skip
def test_bad_explicit_words_exit_2(captured, args):
    code, seen, output = captured(*args, "@127.0.0.1")
    assert code == 2, output
    assert seen == []


def test_unknown_type_is_named(captured):
    for args in (["x.example", "FOO"], ["-t", "foo", "x.example"]):
        _, _, output = captured(*args, "@127.0.0.1")
        assert "unknown type 'FOO'" in output


def test_several_servers_the_first_counts(captured):
    code, seen, _ = captured("x.example", "@127.0.0.1", "@192.0.2.99", "@::1")
    assert code == 0
    assert (seen[0][0].server, seen[0][1]) == ("127.0.0.1", "127.0.0.1")


def test_batch_file_runs_one_query_per_line(captured, tmp_path):
    batch = tmp_path / "queries"
    batch.write_text(
        "# names\nw.example\n\nx.example MX @127.0.0.2\n; dig's comment\n-x 192.0.2.1\n"
    )
    code, seen, _ = captured("-f", str(batch), "@127.0.0.1", "-p", "5353", "+short")
    assert code == 0
    got = [(c.qname, c.rdtype, c.server, c.port, short) for c, _, _, short in seen]
    assert got == [
        ("w.example", "A", "127.0.0.1", 5353, True),
        ("x.example", "MX", "127.0.0.2", 5353, True),
        ("1.2.0.192.in-addr.arpa.", "PTR", "127.0.0.1", 5353, True),
    ]


def test_batch_goes_on_after_a_bad_line_and_exits_2(captured, tmp_path):
    batch = tmp_path / "queries"
    batch.write_text("w.example\nx.example +bogus\ny.example\n")
    code, seen, output = captured("-f", str(batch), "@127.0.0.1")
    assert code == 2
    assert [c.qname for c, *_ in seen] == ["w.example", "y.example"]
    assert f"{batch}:2: unknown option +bogus" in output
    assert f";; 1 of 3 queries in {batch} failed" in output


def test_batch_names_a_bad_type_line_and_runs_the_rest(captured, tmp_path):
    batch = tmp_path / "queries"
    batch.write_text("w.example\nx.example BOGUSTYPE\ny.example SOA +short\n")
    code, seen, output = captured("-f", str(batch), "@127.0.0.1")
    assert code == 2
    assert [(c.qname, c.rdtype) for c, *_ in seen] == [("w.example", "A"), ("y.example", "SOA")]
    assert f"{batch}:2: unknown type 'BOGUSTYPE'" in output
    assert f";; 1 of 3 queries in {batch} failed" in output


def test_batch_file_missing_is_one_line(captured, tmp_path):
    code, seen, output = captured("-f", str(tmp_path / "none"), "@127.0.0.1")
    assert (code, seen) == (2, [])
    assert output.count("\n") == 1
