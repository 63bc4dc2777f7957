"""Zone loading: origins, file:line errors, empty non-terminals, atomic reload."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import dns.name
import pytest

from dnstfo.answer.authority import Authority
from dnstfo.answer.zones import load_zone_file, load_zones, origin_from_file_name
from dnstfo.errors import ZoneLoadError

from .conftest import ZONES

GOOD = "$TTL 60\n@ SOA ns h {serial} 2 3 4 30\n@ NS ns\nns A 192.0.2.1\n"


def name(text: str) -> dns.name.Name:
    return dns.name.from_text(text)


def test_example_zones_index(authority: Authority) -> None:
    com = authority.zones[name("example.com")]
    assert set(authority.zones) == {name("example.com"), name("example.net")}
    assert com.cuts == {name("child.example.com")}
    for ent in ("_tcp.example.com", "ent.wild.example.com", "wild.example.com"):
        assert name(ent) in com.names
        assert name(ent) not in com.rrsets
    assert com.negative_soa.ttl == 300


@pytest.mark.parametrize(
    ("file_name", "origin"),
    [("example.org.zone", "example.org."), ("example.org", "example.org."), ("a.b.zone", "a.b.")],
)
def test_origin_from_file_name(file_name: str, origin: str) -> None:
    assert origin_from_file_name(Path(file_name)).to_text() == origin


def test_origin_directive_wins(tmp_path: Path) -> None:
    path = tmp_path / "whatever.zone"
    path.write_text("; comment\n\n$ORIGIN other.test.\n" + GOOD.format(serial=1))
    assert load_zone_file(path).origin == name("other.test")


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.test"
    path.write_text(GOOD.format(serial=1) + "x BOGUS 1\n")
    with pytest.raises(ZoneLoadError) as info:
        load_zone_file(path)
    assert info.value.path == str(path)
    assert info.value.line == 5
    assert "BOGUS" in info.value.reason
    assert f"{path}:5:" in str(info.value)


def test_missing_ns_has_no_line(tmp_path: Path) -> None:
    path = tmp_path / "nons.test"
    path.write_text("@ 60 SOA ns h 1 2 3 4 5\n")
    with pytest.raises(ZoneLoadError) as info:
        load_zone_file(path)
    assert info.value.line is None


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "bin.test"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ZoneLoadError, match="cannot read"):
        load_zone_file(path)


def test_directory_skips_hidden_and_backups_and_reports_duplicates(tmp_path: Path) -> None:
    (tmp_path / "a.test").write_text(GOOD.format(serial=1))
    (tmp_path / "a.test.zone").write_text(GOOD.format(serial=2))  # same origin, later name
    (tmp_path / ".hidden.test").write_text("garbage")
    (tmp_path / "b.test~").write_text("garbage")
    (tmp_path / "sub").mkdir()
    zones, errors = load_zones(tmp_path)
    assert list(zones) == [name("a.test")]
    assert zones[name("a.test")].serial == 1
    assert [e.path for e in errors] == [str(tmp_path / "a.test.zone")]


def test_missing_directory() -> None:
    with pytest.raises(ZoneLoadError, match="cannot list"):
        load_zones(Path("/nonexistent/zones"))


def test_reload_keeps_old_zone_whose_file_breaks(tmp_path: Path) -> None:
    shutil.copy(ZONES / "example.com.zone", tmp_path)
    (tmp_path / "t.test").write_text(GOOD.format(serial=1))
    (tmp_path / "gone.test").write_text(GOOD.format(serial=1))
    first, errors = Authority.load(tmp_path)
    assert errors == []
    (tmp_path / "t.test").write_text(GOOD.format(serial=1) + "broken A not-an-address\n")
    (tmp_path / "gone.test").unlink()
    (tmp_path / "new.test").write_text(GOOD.format(serial=3))
    (tmp_path / "example.com.zone").write_text(
        (ZONES / "example.com.zone").read_text().replace("2024060101", "2024060102")
    )
    second, errors = first.reload(tmp_path)
    assert [e.path for e in errors] == [str(tmp_path / "t.test")]
    assert second.generation == first.generation + 1
    assert second.zones[name("t.test")] is first.zones[name("t.test")]  # kept
    assert name("gone.test") not in second.zones  # removed with its file
    assert second.zones[name("new.test")].serial == 3
    assert second.zones[name("example.com")].serial == 2024060102
    assert first.zones[name("example.com")].serial == 2024060101  # old one untouched


@pytest.mark.parametrize(
    "bad",
    [
        "www IN A 300.1.1.1",  # found after the newline was read
        "www IN A",  # end of line where the address should be
        "www IN MX 10",
        "www IN BOGUS x",  # found in mid-line
        "www IN A 192.0.2.1 extra",
    ],
)
def test_error_line_is_the_bad_record_wherever_the_tokenizer_stopped(
    tmp_path: Path, bad: str
) -> None:
    lines = ["$TTL 60", "@ SOA ns h 1 2 3 4 5", "@ NS ns", "; a comment", bad, "ns A 192.0.2.1"]
    path = tmp_path / "t.example.zone"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ZoneLoadError) as caught:
        load_zone_file(path)
    assert caught.value.line == 5
    assert str(caught.value).startswith(f"{path}:5: ")


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("www IN A 999.1.2.3", "bad IPv4 address '999.1.2.3'"),
        ("www 300 IN AAAA 1::2::3", "bad IPv6 address '1::2::3'"),
        ("www IN MX 10", "MX record '10' is incomplete or malformed (expecting an identifier)"),
        ("www IN A 192.0.2.1 extra", "A record '192.0.2.1 extra' has extra fields"),
        ("www IN BOGUS x", "unknown record type 'BOGUS'"),
    ],
)
def test_error_reason_in_words(tmp_path: Path, bad: str, reason: str) -> None:
    path = tmp_path / "t.example.zone"
    path.write_text(GOOD.format(serial=1) + bad + "\n")
    with pytest.raises(ZoneLoadError) as caught:
        load_zone_file(path)
    assert str(caught.value) == f"{path}:5: {reason}"


def test_missing_soa_names_the_zone(tmp_path: Path) -> None:
    path = tmp_path / "t.example.zone"
    path.write_text("$TTL 60\n@ NS ns\nns A 192.0.2.1\n")
    with pytest.raises(ZoneLoadError) as caught:
        load_zone_file(path)
    assert str(caught.value) == f"{path}: zone t.example.: no SOA record at the zone's apex"


def test_reload_parses_only_changed_files(tmp_path: Path) -> None:
    (tmp_path / "same.test").write_text(GOOD.format(serial=1))
    (tmp_path / "edit.test").write_text(GOOD.format(serial=1))
    first, _ = Authority.load(tmp_path)
    # Same size, written at once: only the bytes tell the change apart.
    (tmp_path / "edit.test").write_text(GOOD.format(serial=2))
    second, errors = first.reload(tmp_path)
    assert errors == []
    assert second.zones[name("same.test")] is first.zones[name("same.test")]
    assert second.zones[name("edit.test")] is not first.zones[name("edit.test")]
    assert second.zones[name("edit.test")].serial == 2


def test_record_count(tmp_path: Path) -> None:
    path = tmp_path / "t.test"
    path.write_text(GOOD.format(serial=1) + "www A 192.0.2.2\nwww A 192.0.2.3\n")
    assert load_zone_file(path).records == 5


def test_missing_soa_names_the_zone_of_an_origin_directive(tmp_path: Path) -> None:
    path = tmp_path / "nosoa.zone"
    path.write_text("$ORIGIN a.test.\n$TTL 60\n@ IN NS ns\nns IN A 192.0.2.1\n")
    with pytest.raises(ZoneLoadError, match=r"nosoa\.zone: zone a\.test\.: no SOA record"):
        load_zone_file(path)


def test_cname_and_other_data_names_owner_and_line(tmp_path: Path) -> None:
    path = tmp_path / "b.test"
    path.write_text(
        "$TTL 60\n@ SOA ns h 1 2 3 4 5\n@ NS ns\nns IN A 192.0.2.1\nw A 192.0.2.2\nns IN CNAME x\n"
    )
    with pytest.raises(ZoneLoadError) as caught:
        load_zone_file(path)
    assert caught.value.line == 6
    assert str(caught.value) == (
        f"{path}:6: ns.b.test. holds a CNAME and other data "
        "(RFC 1034 §3.6.2 allows the CNAME alone)"
    )


def test_record_outside_the_zone_is_named_in_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "b.test"
    path.write_text(
        "$TTL 60\n@ SOA ns h 1 2 3 4 5\n@ NS ns\nNS.B.TEST. A 192.0.2.1\n"
        "foo.other.test. A 192.0.2.9\nx.test. A 192.0.2.8\n"
    )
    with caplog.at_level(logging.WARNING, logger="dnstfo.answer.zones"):
        zone = load_zone_file(path)
    assert zone.records == 3
    (record,) = caplog.records
    assert record.getMessage() == (
        f"{path}:5: foo.other.test. is outside the zone b.test.: record ignored and 1 more"
    )
