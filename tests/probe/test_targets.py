"""Target parsing: arguments, lines, PATHspider jobs, CSV, refused addresses, shards, NS."""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Iterator
from pathlib import Path

import pytest

from dnstfo.errors import UsageError
from dnstfo.probe.targets import (
    Target,
    in_shard,
    ns_targets,
    parse_shard,
    parse_target,
    read_lines,
)
from dnstfo.server.config import Endpoint, ServerConfig
from tests.server.conftest import ZONE, ServerThread


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("192.0.2.1", ("192.0.2.1", 53)),
        ("192.0.2.1:5353", ("192.0.2.1", 5353)),
        ("2001:db8::1", ("2001:db8::1", 53)),
        ("[2001:db8::1]:853", ("2001:db8::1", 853)),
        ("[2001:DB8::1]", ("2001:db8::1", 53)),
        ("localhost:99", ("127.0.0.1", 99)),
    ],
)
def test_target_forms(text: str, want: tuple[str, int]) -> None:
    got = parse_target(text)
    assert (got[0].address, got[0].port) == want


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("[::]:53", "unspecified"),
        ("255.255.255.255", "broadcast"),
        ("192.0.2.1:0", "not a port"),
        ("192.0.2.1:x", "not a port"),
        ("[2001:db8::1", "V6"),
        ("no-such-host.invalid", "cannot resolve"),
    ],
)
def test_refused_and_bad_targets(text: str, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        parse_target(text)


def test_a_list_mixes_forms_and_names_bad_lines() -> None:
    lines = [
        "# comment",
        "",
        "192.0.2.1",
        json.dumps({"dip": "192.0.2.2", "dp": 5353, "domain": "example.", "rank": 7, "x": [1]}),
        "dip,dp,domain,rank",
        "192.0.2.3,53,example.org,12",
        "192.0.2.4,,,",
        "224.0.0.1",
        '{"dp": 53}',
        "{broken",
        "192.0.2.5,53,a,b",
    ]
    bad: list[str] = []
    got = list(read_lines(lines, "t.txt", on_bad=bad.append))
    assert got == [
        Target("192.0.2.1", 53, None, {}, "t.txt:3"),
        Target("192.0.2.2", 5353, "example.", {"rank": 7, "x": [1]}, "t.txt:4"),
        Target("192.0.2.3", 53, "example.org", {"rank": 12}, "t.txt:6"),
        Target("192.0.2.4", 53, None, {}, "t.txt:7"),
    ]
    assert [b.split(":")[1] for b in bad] == ["8", "9", "10", "11"]
    assert bad[0].startswith("t.txt:8: ")
    assert "multicast" in bad[0]


def test_reading_is_lazy() -> None:
    def lines() -> Iterator[str]:
        yield "192.0.2.1"
        raise AssertionError("read past what was asked")

    assert next(read_lines(lines(), "-")).address == "192.0.2.1"


def test_shards_partition_deterministically() -> None:
    targets = [Target(f"10.0.{i // 250}.{i % 250}") for i in range(1000)]
    shares = [[t for t in targets if in_shard(t, i, 4)] for i in range(1, 5)]
    assert sorted(functools.reduce(operator.iadd, shares, []), key=targets.index) == targets
    assert all(150 < len(s) < 350 for s in shares)
    assert [t for t in targets if in_shard(t, 2, 4)] == shares[1]
    assert parse_shard("2/4") == (2, 4)
    for bad in ("0/4", "5/4", "x", "1/0", "1-2"):
        with pytest.raises(UsageError, match="--shard"):
            parse_shard(bad)


def test_ns_set_from_a_resolver(tmp_path: Path) -> None:
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "test.example.zone").write_text(ZONE)
    server = ServerThread(ServerConfig(zone_dir=zones, listen=(Endpoint("127.0.0.1", 0),)))
    try:
        host, port = server.address
        got = ns_targets("test.example.", resolver=host, resolver_port=port, timeout=5)
        with pytest.raises(UsageError, match="NS set"):
            ns_targets("nowhere.example.", resolver=host, resolver_port=port, timeout=5)
    finally:
        server.stop()
    assert got == [
        Target(
            "192.0.2.53", 53, "test.example.", {"ns": "ns1.test.example."}, "NS ns1.test.example."
        )
    ]


def test_a_bad_domain_skips_its_line_only() -> None:
    lines = [
        "127.0.0.1,5353,example.com",
        "127.0.0.1,5353,bad..name",
        json.dumps({"dip": "127.0.0.1", "dp": 5353, "domain": "x" * 64 + ".test"}),
        "127.0.0.1,5353,example.net",
    ]
    bad: list[str] = []
    got = [t.domain for t in read_lines(lines, "j3.txt", on_bad=bad.append)]
    assert got == ["example.com", "example.net"]
    assert bad == [
        "j3.txt:2: bad domain 'bad..name' (empty label)",
        f"j3.txt:3: bad domain '{'x' * 64}.test' (a label over 63 octets)",
    ]
