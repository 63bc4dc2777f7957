"""Zone files on disk -> immutable, query-ready zone data.

Each file in the zone directory is one zone in RFC 1035 §5 master format, read by dnspython.
The origin comes from a leading ``$ORIGIN`` directive, otherwise from the file name with a
``.zone`` suffix removed (``example.com.zone`` and ``example.com`` both give ``example.com.``).

Loading turns a ``dns.zone.Zone`` into a :class:`LoadedZone`: RRsets indexed by absolute owner
name and type, the set of names that exist (nodes and empty non-terminals, RFC 4592 §2.2.2),
the delegation points (zone cuts, RFC 1034 §4.2.1) and the SOA to put in negative answers
(RFC 2308 §3). The index is built once, so answering never walks the zone.

A broken file becomes a :class:`~dnstfo.errors.ZoneLoadError` naming the file, the line of
the bad record when dnspython reports one, and the reason in words (dnspython says "Text
input is malformed." for ``999.1.2.3``; we say "bad IPv4 address '999.1.2.3'").
:func:`load_zones` returns the zones that loaded together with the errors, so a reload can
keep the previous version of a zone whose file is now broken. Given the zones already
loaded, it parses only the files whose bytes changed (a SHA-256 of the file: timestamps
are too coarse to see a rewrite within the same few milliseconds).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.name
import dns.node
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rrset
import dns.transaction
import dns.zone
import dns.zonefile

from dnstfo.errors import ZoneLoadError

log = logging.getLogger(__name__)

#: File names that are never zones: editor backups and package-manager leftovers.
_SKIPPED_SUFFIXES = ("~", ".swp", ".bak", ".tmp", ".orig", ".dpkg-old", ".dpkg-new")
#: dnspython's syntax errors read ``<file>:<line>: <reason>``.
_LINE_IN_MESSAGE = re.compile(r":(\d+): (.*)$", re.DOTALL)
_ORIGIN_DIRECTIVE = re.compile(r"\$ORIGIN\b", re.IGNORECASE)

#: Keyed by type code: RdataType members are ints, and lookups use the query's int QTYPE.
RRsetsByType = Mapping[int, dns.rrset.RRset]


@dataclass(frozen=True, slots=True)
class LoadedZone:
    """One zone, indexed for answering. Never mutated after loading."""

    origin: dns.name.Name
    """The zone apex."""
    path: Path
    """The file the zone came from."""
    rrsets: Mapping[dns.name.Name, RRsetsByType]
    """Every RRset of the zone by owner name and type."""
    names: frozenset[dns.name.Name]
    """Names that exist: owner names plus empty non-terminals (RFC 4592 §2.2.2)."""
    cuts: frozenset[dns.name.Name]
    """Delegation points: names below the apex that own an NS RRset (RFC 1034 §4.2.1)."""
    soa: dns.rrset.RRset
    """The apex SOA as stored."""
    negative_soa: dns.rrset.RRset
    """The SOA for negative answers, TTL = min(SOA TTL, SOA MINIMUM) (RFC 2308 §3)."""
    records: int = 0
    """Resource records in the zone."""
    digest: bytes = b""
    """SHA-256 of the file's bytes (a reload skips a file whose digest is unchanged)."""

    @property
    def serial(self) -> int:
        """The SOA serial."""
        return int(self.soa[0].serial)

    @classmethod
    def from_zone(cls, zone: dns.zone.Zone, path: Path, digest: bytes = b"") -> LoadedZone:
        """Indexes a dnspython zone that was read with absolute names.

        Args:
            zone: a zone read with ``relativize=False`` whose origin check passed.
            path: the file it came from.
            digest: the SHA-256 of the file's bytes.

        Returns:
            The indexed zone.
        """
        origin = zone.origin
        assert origin is not None
        rrsets: dict[dns.name.Name, dict[int, dns.rrset.RRset]] = {}
        names: set[dns.name.Name] = set()
        cuts: set[dns.name.Name] = set()
        records = 0
        for name, node in zone.nodes.items():
            by_type: dict[int, dns.rrset.RRset] = {}
            for rdataset in node.rdatasets:
                rrset = dns.rrset.RRset(name, rdataset.rdclass, rdataset.rdtype, rdataset.covers)
                rrset.update(rdataset)
                by_type[rdataset.rdtype] = rrset
                records += len(rrset)
            if not by_type:
                continue
            rrsets[name] = by_type
            if name != origin and dns.rdatatype.NS in by_type:
                cuts.add(name)
            # The owner and every ancestor up to the apex exist (empty non-terminals).
            while name != origin and name not in names:
                names.add(name)
                name = name.parent()
        names.add(origin)
        soa = rrsets[origin][dns.rdatatype.SOA]
        negative_soa = soa.copy()
        negative_soa.ttl = min(soa.ttl, soa[0].minimum)
        return cls(
            origin=origin,
            path=path,
            rrsets=rrsets,
            names=frozenset(names),
            cuts=frozenset(cuts),
            soa=soa,
            negative_soa=negative_soa,
            records=records,
            digest=digest,
        )


def origin_from_file_name(path: Path) -> dns.name.Name:
    """Derives a zone origin from a file name: ``example.com.zone`` -> ``example.com.``.

    Args:
        path: the zone file.

    Returns:
        The absolute origin name.
    """
    stem = path.name.removesuffix(".zone")
    return dns.name.from_text(stem)


def _leading_origin(text: str) -> str | None:
    """The name of a master file's ``$ORIGIN`` when it is its first directive or record
    (``""`` when it names none), else None."""
    for raw in text.splitlines():
        line = raw.split(";", 1)[0].strip()
        if not line:
            continue
        if _ORIGIN_DIRECTIVE.match(line):
            words = line.split()
            return words[1] if len(words) > 1 else ""
        if not line.upper().startswith("$TTL"):
            return None
    return None


_ABSOLUTE_OWNER = re.compile(r"^([^\s;$()][^\s;()]*\.)\s", re.MULTILINE)


def _warn_outside(path: Path, text: str, origin: dns.name.Name) -> None:
    """Warns of records whose absolute owner name lies outside the zone: the reader drops
    them without a word (RFC 1035 §5.2 leaves them to the loader; BIND and Knot warn)."""
    apex = origin.to_text().lower()
    suffix = "." + apex
    outside: list[tuple[int, str]] = []
    for match in _ABSOLUTE_OWNER.finditer(text):
        owner = match.group(1).lower()
        if owner != apex and not owner.endswith(suffix) and apex != ".":
            outside.append((text.count("\n", 0, match.start()) + 1, match.group(1)))
    if outside:
        line, owner = outside[0]
        more = f" and {len(outside) - 1} more" if len(outside) > 1 else ""
        log.warning(
            "%s:%d: %s is outside the zone %s: record ignored%s",
            path,
            line,
            owner,
            apex,
            more,
        )


class _CnameConflict(dns.exception.SyntaxError):
    """A CNAME beside other data, raised where the reader can name the line."""

    def __init__(self, message: str) -> None:
        super().__init__(message)  # type: ignore[no-untyped-call]


def _check_cname(
    txn: dns.transaction.Transaction, name: dns.name.Name, rdataset: dns.rdataset.Rdataset
) -> None:
    """dnspython's CNAME-and-other-data check, raised as a syntax error: the reader adds the
    file and line to those, and our message names the owner."""
    node = txn.get_node(name)
    if node is None:
        return
    kinds = {node.classify(), dns.node.NodeKind.classify_rdataset(rdataset)}
    if kinds == {dns.node.NodeKind.CNAME, dns.node.NodeKind.REGULAR}:
        raise _CnameConflict(
            f"{name} holds a CNAME and other data (RFC 1034 §3.6.2 allows the CNAME alone)"
        )


def _locate_cname_conflict(text: str, origin: dns.name.Name | None) -> str | None:
    """Parses ``text`` again with :func:`_check_cname` to find the CNAME conflict's line
    and owner (only after a load failed with it: it costs a second parse)."""
    try:
        dns.zone.from_text(
            text,
            origin=origin,
            relativize=False,
            filename="zone",
            allow_include=False,
            check_origin=False,
            transaction_setup=lambda txn: txn.check_put_rdataset(_check_cname),
        )
    except dns.exception.SyntaxError as exc:
        return str(exc)
    except (dns.exception.DNSException, ValueError):
        return None
    return None


def _zone_load_error(
    path: Path, exc: Exception, text: str, origin: dns.name.Name | None, declared: str | None
) -> ZoneLoadError:
    """Turns a dnspython exception into a ZoneLoadError: file, line when given, and the
    reason in words; ``declared`` is the file's leading ``$ORIGIN`` name, if any."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, dns.zonefile.CNAMEAndOtherData):
        message = _locate_cname_conflict(text, origin) or message
    match = _LINE_IN_MESSAGE.search(message)
    if match:
        line = _exact_line(text, origin, int(match.group(1)))
        lines = text.splitlines()
        record = lines[line - 1] if 0 < line <= len(lines) else ""
        return ZoneLoadError(str(path), line, _record_reason(match.group(2), record))
    if isinstance(exc, dns.zone.NoSOA):
        message = "no SOA record at the zone's apex"
    elif isinstance(exc, dns.zone.NoNS):
        message = "no NS record at the zone's apex"
    elif isinstance(exc, dns.zonefile.CNAMEAndOtherData):
        message = "a name holds a CNAME and other data (RFC 1034 §3.6.2 allows the CNAME alone)"
    name = origin if origin is not None else declared
    where = f" {name}" if name else ""
    return ZoneLoadError(str(path), None, f"zone{where}: {message}")


#: dnspython's one message for any malformed field.
_MALFORMED = str(dns.exception.SyntaxError())
_ADDRESS_WORDS = {"A": "bad IPv4 address", "AAAA": "bad IPv6 address"}


def _record_reason(reason: str, record: str) -> str:
    """dnspython's reason for a bad record, in words that name the field at fault."""
    if reason.startswith("unknown rdatatype"):
        return reason.replace("rdatatype", "record type", 1)
    rdtype, rdata = _type_and_data(record)
    if rdtype is None:
        return reason
    if reason.strip() == _MALFORMED:
        return f"{_ADDRESS_WORDS.get(rdtype, f'bad {rdtype} data')} {rdata!r}"
    if reason.startswith("expecting ") or "ended unexpectedly" in reason:
        return f"{rdtype} record {rdata!r} is incomplete or malformed ({reason})"
    if reason.startswith("expected EOL or EOF"):
        return f"{rdtype} record {rdata!r} has extra fields"
    return reason


def _type_and_data(record: str) -> tuple[str | None, str]:
    """The type and rdata of one master-file line (owner, TTL and class skipped)."""
    tokens = record.split(";", 1)[0].split()
    if record[:1] not in (" ", "\t") and tokens:
        tokens = tokens[1:]  # the owner
    for index, token in enumerate(tokens):
        word = token.upper()
        if word[:1].isdigit() or word in ("IN", "CH", "HS", "ANY") or word.startswith("CLASS"):
            continue  # a TTL or a class
        try:
            dns.rdatatype.from_text(word)
        except dns.exception.DNSException:
            return None, ""
        return word, " ".join(tokens[index + 1 :])
    return None, ""


def _exact_line(text: str, origin: dns.name.Name | None, reported: int) -> int:
    """The line of the bad record, given the line dnspython reported.

    dnspython reports its tokenizer's line, which is one past the bad record when the
    error was found after the record's newline had been read (most rdata errors). So if
    the lines before the reported one fail to parse on their own, the record is the line
    before it.
    """
    if reported <= 1:
        return reported
    head = "\n".join(text.splitlines()[: reported - 1]) + "\n"
    try:
        dns.zone.from_text(
            head, origin=origin, relativize=False, check_origin=False, allow_include=False
        )
    except (dns.exception.DNSException, ValueError):
        return reported - 1
    return reported


def load_zone_file(path: Path, known: LoadedZone | None = None) -> LoadedZone:
    """Reads and indexes one zone file.

    Args:
        path: a master-format file.
        known: the zone last loaded from this file; returned as is if the file's bytes
            have not changed since.

    Returns:
        The zone.

    Raises:
        ZoneLoadError: the file cannot be read, does not parse, or lacks an apex SOA or NS.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ZoneLoadError(str(path), None, f"cannot read: {exc.strerror or exc}") from exc
    digest = hashlib.sha256(data).digest()
    if known is not None and known.digest == digest:
        return known
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ZoneLoadError(str(path), None, f"cannot read: not UTF-8 text ({exc})") from exc
    origin = None
    declared = _leading_origin(text)
    try:
        origin = None if declared is not None else origin_from_file_name(path)
        zone = dns.zone.from_text(
            text,
            origin=origin,
            relativize=False,
            filename=str(path),
            allow_include=False,  # a zone directory is self-contained
        )
    except (dns.exception.DNSException, ValueError) as exc:
        raise _zone_load_error(path, exc, text, origin, declared) from exc
    loaded = LoadedZone.from_zone(zone, path, digest)
    _warn_outside(path, text, loaded.origin)
    # Free dnspython's copy a node at a time: dropped at once, its deallocation is one
    # long C call that holds the GIL (~0.15 s for 150,000 records) when loaded in a thread.
    while zone.nodes:
        zone.nodes.popitem()
    return loaded


def zone_files(directory: Path) -> list[Path]:
    """Lists the candidate zone files of a directory in name order.

    Hidden files, editor backups and sub-directories are skipped.

    Args:
        directory: the zone directory.

    Returns:
        The files to load.

    Raises:
        ZoneLoadError: the directory cannot be listed.
    """
    try:
        entries = sorted(directory.iterdir())
    except OSError as exc:
        reason = f"cannot list the zone directory: {exc.strerror or exc}"
        raise ZoneLoadError(str(directory), None, reason) from exc
    return [
        entry
        for entry in entries
        if entry.is_file()
        and not entry.name.startswith(".")
        and not entry.name.endswith(_SKIPPED_SUFFIXES)
    ]


def load_zones(
    directory: Path, known: Mapping[Path, LoadedZone] | None = None
) -> tuple[dict[dns.name.Name, LoadedZone], list[ZoneLoadError]]:
    """Loads every zone file of a directory.

    A file that fails does not stop the others; two files for the same origin keep the first
    (in name order) and report the second. Nothing is logged: the caller reports the errors
    (once each).

    Args:
        directory: the zone directory.
        known: zones loaded before, by file; a file whose bytes are unchanged is not parsed
            again and keeps its zone object.

    Returns:
        The zones that loaded, by origin, and one error per file that did not.

    Raises:
        ZoneLoadError: the directory itself cannot be listed.
    """
    known = known or {}
    zones: dict[dns.name.Name, LoadedZone] = {}
    errors: list[ZoneLoadError] = []
    for path in zone_files(directory):
        try:
            zone = load_zone_file(path, known.get(path))
        except ZoneLoadError as exc:
            errors.append(exc)
            continue
        if zone.origin in zones:
            other = zones[zone.origin].path
            errors.append(ZoneLoadError(str(path), None, f"{zone.origin} already in {other}"))
            continue
        zones[zone.origin] = zone
    return zones, errors
