"""``dnstfo probe`` through click: bad input, records, the summary, and ``probe summary``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dnstfo.cli.probe import probe
from dnstfo.lab.netns import Namespace


def run(*args: str, stdin: str | None = None) -> Any:
    return CliRunner().invoke(probe, list(args), input=stdin)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "nothing to probe"),
        (("224.0.0.1",), "multicast"),
        (("0.0.0.0",), "unspecified"),
        (("192.0.2.1", "--shard", "3/2"), "--shard"),
        (("192.0.2.1", "--attempts", "0"), "--attempts"),
        (("192.0.2.1", "--concurrency", "0"), "--concurrency"),
        (("192.0.2.1", "--rate", "0"), "--rate"),
        (("192.0.2.1", "--concurrency", "100000000"), "open files"),
        (("--targets", "/nonexistent/list"), "cannot read"),
        (("192.0.2.1", "--pcap", "x.pcap"), "not available yet"),
        (("192.0.2.1", "--syn-only"), "not available yet"),
        (("summary",), "at least one FILE"),
        (("summary", "/nonexistent.ndjson"), "cannot read"),
    ],
)
def test_bad_input_is_one_line_and_status_2(
    args: tuple[str, ...], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The "not available" path: as in a build without the wire evidence module.
    monkeypatch.setattr("dnstfo.cli.probe.EVIDENCE_MODULE", "dnstfo.probe.no_such_module")
    r = run(*args)
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_a_bad_summary_line_is_named(tmp_path: Path) -> None:
    f = tmp_path / "r.ndjson"
    f.write_text('{"verdict": "works"}\nnot json\n')
    r = run("summary", str(f))
    assert r.exit_code == 2
    assert f"{f}:2: not a JSON record" in r.output


def test_a_json_line_without_a_verdict_is_not_a_probe_record(tmp_path: Path) -> None:
    f = tmp_path / "r.ndjson"
    f.write_text('{"verdict": "works"}\n{"ts": 1, "qname": "t.example."}\n')
    r = run("summary", str(f))
    assert r.exit_code == 2, r.output
    assert r.output.strip() == f"dnstfo probe: {f}:2: not a probe record (no verdict)"


def test_summary_merges_vantage_points(tmp_path: Path) -> None:
    def rec(v: str, verdict: str, base: float, tfo: float, dip: str = "192.0.2.1") -> str:
        conns = [
            {"step": "baseline", "rounds": base, "rcode": "NOERROR"},
            {"step": "tfo", "rounds": tfo, "rcode": "NOERROR"},
        ]
        return json.dumps(
            {
                "dip": dip,
                "dp": 53,
                "verdict": verdict,
                "conditions": ["tfo.connectivity.works"],
                "vantage": {"host": v},
                "connections": conns,
            }
        )

    (tmp_path / "a").write_text(
        rec("a", "works", 2.0, 1.0) + "\n" + rec("a", "no-tfo", 2.0, 2.0, "192.0.2.2") + "\n"
    )
    (tmp_path / "b").write_text(rec("b", "syn-data-dropped", 2.2, 1.1) + "\n")
    r = run("summary", str(tmp_path / "a"), str(tmp_path / "b"))
    assert r.exit_code == 0, r.output
    assert "targets: 3" in r.output
    assert "works                       1" in r.output
    assert "syn-data-dropped            1" in r.output
    assert "tfo.connectivity.works               3" in r.output
    assert "without TFO 2.0, with TFO 1.1" in r.output
    assert "vantage points: a (2), b (1)" in r.output
    assert (
        "targets seen from several: 1, verdicts differ on 1 (the path, not the server)" in r.output
    )
    assert "  192.0.2.1 port 53: a: works, b: syn-data-dropped" in r.output


def cli_in_ns(tmp: str, port_file: bool) -> dict[str, Any]:
    """Runs ``dnstfo probe`` via click inside the namespace against an in-process server."""
    import tempfile

    from dnstfo.server.config import Endpoint, ServerConfig
    from tests.server.conftest import ZONE, ServerThread

    with tempfile.TemporaryDirectory() as zones:
        Path(zones, "test.example.zone").write_text(ZONE)
        server = ServerThread(ServerConfig(zone_dir=Path(zones), listen=(Endpoint("0.0.0.0", 0),)))
        try:
            port = server.address[1]
            lst = Path(tmp, "targets.txt")
            lst.write_text(
                f"127.0.0.2:{port}\n127.0.0.3:{port}\n# c\n127.0.0.4:{port}\nbogus line\n"
                f"127.0.0.6,{port},bad..name\n"
            )
            many = CliRunner().invoke(
                probe, ["--targets", str(lst), "-o", str(Path(tmp, "out.ndjson"))]
            )
            one = CliRunner().invoke(probe, [f"127.0.0.5:{port}", "--name", "www.test.example."])
        finally:
            server.stop()
    return {
        "many": (many.exit_code, many.output),
        "one": (one.exit_code, one.stdout, one.stderr),
        "records": Path(tmp, "out.ndjson").read_text(),
    }


@pytest.mark.netadmin
def test_probe_writes_records_and_a_summary(
    make_ns: Callable[[str], Namespace], tmp_path: Path
) -> None:
    ns = make_ns("3")
    out = ns.run(cli_in_ns, str(tmp_path), True, timeout=60)
    code, text = out["many"]
    assert code == 0, text
    records = [json.loads(x) for x in out["records"].splitlines()]
    assert sorted(r["dip"] for r in records) == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    assert {r["verdict"] for r in records} == {"works"}
    assert "targets.txt:5" in text
    assert "skipped" in text
    assert "works                       3" in text
    assert "targets.txt:6: bad domain 'bad..name' (empty label)\n" in text
    assert "median round trips: without TFO -, with TFO -" in text  # loopback: under 1 ms
    assert "(3 targets left out: the path RTT is under 1 ms" in text
    assert not any("round trip" in r["reason"] for r in records)
    code, stdout, stderr = out["one"]
    assert code == 0, stderr
    (record,) = [json.loads(x) for x in stdout.splitlines()]
    assert record["query"] == {"name": "www.test.example.", "type": "A"}
    assert "verdict: works:" in stderr
    assert "note: the path RTT is under 1 ms" in stderr
    assert "priming" in stderr
    assert "tfo" in stderr


def test_targets_from_stdin_name_bad_lines() -> None:
    r = run("--targets", "-", stdin="# only bad lines\n224.0.0.1\n192.0.2.1:99999\n")
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert lines[0] == "dnstfo probe: skipped -:2: 224.0.0.1 is a multicast address: refused"
    assert lines[1].startswith("dnstfo probe: skipped -:3: not a port")
    assert lines[2] == "dnstfo probe: nothing to probe: give TARGETs, --targets FILE or --ns ZONE"
