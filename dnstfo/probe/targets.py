"""What to probe: targets from arguments, files (lines, PATHspider jobs, CSV) and NS sets.

A target is one address and port. Inputs:

- ``ADDR``, ``ADDR:PORT``, ``[V6]:PORT``, or a host name (``NAME`` or ``NAME:PORT``: each
  of its A/AAAA addresses becomes a target);
- a file (or ``-``) with one of those per line; or PATHspider's job format, one JSON
  object per line with ``dip``, ``dp``, ``domain`` (every other key is kept in the
  record); or CSV ``dip,dp,domain[,rank]``. Blank lines and ``#`` comments are skipped,
  and so is a bad line, named ``file:line``;
- ``--ns ZONE``: every address of every name in the zone's NS set.

Multicast, broadcast and unspecified addresses are refused: the probe targets only what
it is given, and only unicast hosts. ``shard`` splits a list deterministically across
vantage points by a hash of the target, not by its position.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import dns.exception
import dns.name

from dnstfo.errors import UsageError


@dataclass(frozen=True, slots=True)
class Target:
    """One server address to probe."""

    address: str
    """IP address literal (PATHspider's ``dip``)."""
    port: int = 53
    """TCP port (``dp``)."""
    domain: str | None = None
    """The zone it serves, if known (``domain``): the query asks for its SOA."""
    extra: Mapping[str, object] = field(default_factory=dict)
    """Every other key of the input job, kept in the record as given."""
    origin: str | None = None
    """Where it came from (``file:line``, an argument), for messages."""


OnBad = Callable[[str], None]
"""Told about each skipped line, as ``file:line: why``."""


def check_address(text: str) -> str:
    """Returns the address in canonical form if it may be probed.

    Raises:
        UsageError: not an address, or multicast, broadcast or unspecified.
    """
    try:
        ip = ipaddress.ip_address(text)
    except ValueError as exc:
        raise UsageError(f"not an IP address: {text!r}") from exc
    if ip.is_multicast:
        raise UsageError(f"{ip} is a multicast address: refused")
    if ip.is_unspecified:
        raise UsageError(f"{ip} is the unspecified address: refused")
    if ip.version == 4 and ip == ipaddress.IPv4Address("255.255.255.255"):
        raise UsageError(f"{ip} is the broadcast address: refused")
    return str(ip)


def check_domain(text: str) -> str:
    """Returns ``text`` if it is a DNS name the query can ask for (checked when read).

    Raises:
        UsageError: an empty label, a label over 63 octets, a name over 255 octets.
    """
    try:
        dns.name.from_text(text)
    except dns.name.EmptyLabel as exc:
        raise UsageError(f"bad domain {text!r} (empty label)") from exc
    except dns.name.LabelTooLong as exc:
        raise UsageError(f"bad domain {text!r} (a label over 63 octets)") from exc
    except dns.name.NameTooLong as exc:
        raise UsageError(f"bad domain {text!r} (over 255 octets)") from exc
    except dns.exception.DNSException as exc:
        raise UsageError(f"bad domain {text!r}") from exc
    return text


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise UsageError(f"not a port: {text!r}")
    return port


def split_host_port(text: str, default_port: int) -> tuple[str, int]:
    """Splits ``ADDR``, ``ADDR:PORT``, ``[V6]:PORT``, ``[V6]``, ``V6`` or ``NAME[:PORT]``.

    Raises:
        UsageError: an empty host or a bad port.
    """
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise UsageError(f"not a [V6]:PORT target: {text!r}")
        return host, _port(rest[1:]) if rest else default_port
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, _port(port)
    if not text:
        raise UsageError("an empty target")
    return text, default_port


def resolve(host: str) -> list[str]:
    """The addresses of a literal (itself) or a host name (A and AAAA, system resolver).

    Raises:
        UsageError: the name does not resolve.
    """
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UsageError(f"cannot resolve {host!r}: {exc}") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def parse_target(
    text: str,
    default_port: int = 53,
    *,
    domain: str | None = None,
    extra: Mapping[str, object] | None = None,
    origin: str | None = None,
) -> list[Target]:
    """The targets one argument or line names (a host name may give several).

    Raises:
        UsageError: a bad address, port or name, or a refused address.
    """
    host, port = split_host_port(text, default_port)
    return [
        Target(check_address(a), port, domain, dict(extra or {}), origin or text)
        for a in resolve(host)
    ]


def _job(line: str, default_port: int, origin: str) -> list[Target]:
    try:
        job = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UsageError(f"not a JSON object: {exc.msg}") from exc
    if not isinstance(job, dict) or not isinstance(job.get("dip"), str):
        raise UsageError("a job needs a string 'dip'")
    port = job.get("dp", default_port)
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise UsageError(f"not a port: {port!r}")
    domain = job.get("domain")
    if domain is not None and not isinstance(domain, str):
        raise UsageError("'domain' must be a string")
    extra = {k: v for k, v in job.items() if k not in ("dip", "dp", "domain")}
    address = check_address(job["dip"])
    return [Target(address, port, check_domain(domain) if domain else None, extra, origin)]


def _csv(line: str, default_port: int, origin: str) -> list[Target]:
    cells = [c.strip() for c in line.split(",")]
    if not 2 <= len(cells) <= 4:
        raise UsageError("CSV lines are dip,dp,domain[,rank]")
    address = check_address(cells[0])
    port = _port(cells[1]) if cells[1] else default_port
    domain = check_domain(cells[2]) if len(cells) > 2 and cells[2] else None
    extra: dict[str, object] = {}
    if len(cells) == 4 and cells[3]:
        try:
            extra["rank"] = int(cells[3])
        except ValueError as exc:
            raise UsageError(f"not a rank: {cells[3]!r}") from exc
    return [Target(address, port, domain, extra, origin)]


def read_lines(
    lines: Iterable[str], name: str, default_port: int = 53, *, on_bad: OnBad | None = None
) -> Iterator[Target]:
    """The targets of a target list, lazily (memory does not grow with the list).

    Args:
        lines: the file's lines.
        name: the file's name, for ``file:line`` in messages.
        default_port: the port when a line names none.
        on_bad: told about each bad line, which is skipped.
    """
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        origin = f"{name}:{number}"
        if line.replace(" ", "").lower().startswith("dip,dp"):
            continue  # a CSV header
        try:
            if line.startswith("{"):
                found = _job(line, default_port, origin)
            elif "," in line:
                found = _csv(line, default_port, origin)
            else:
                found = parse_target(line, default_port, origin=origin)
        except UsageError as exc:
            if on_bad is not None:
                on_bad(f"{origin}: {exc}")
            continue
        yield from found


def parse_shard(text: str) -> tuple[int, int]:
    """Parses ``I/N`` (1 <= I <= N): this vantage point takes the I-th of N shares.

    Raises:
        UsageError: not in that form.
    """
    i, sep, n = text.partition("/")
    try:
        index, count = int(i), int(n)
    except ValueError:
        index = count = 0
    if not sep or not 1 <= index <= count:
        raise UsageError(f"--shard wants I/N with 1 <= I <= N, not {text!r}")
    return index, count


def in_shard(target: Target, index: int, count: int) -> bool:
    """Whether ``target`` belongs to share ``index`` of ``count`` (stable on every host)."""
    if count == 1:
        return True
    digest = hashlib.sha256(f"{target.address}|{target.port}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % count == index - 1


def ns_targets(
    zone: str,
    port: int = 53,
    *,
    resolver: str | None = None,
    resolver_port: int = 53,
    timeout: float = 5.0,
) -> list[Target]:
    """Every address of every name in ``zone``'s NS set, with ``domain`` = the zone.

    Args:
        zone: the zone.
        port: the port to probe.
        resolver: a resolver address to ask (None: the system's, /etc/resolv.conf).
        resolver_port: its port.
        timeout: seconds per lookup.

    Raises:
        UsageError: the NS set or an address cannot be found.
    """
    import dns.resolver

    res = dns.resolver.Resolver(configure=resolver is None)
    if resolver is not None:
        res.nameservers = [check_address(resolver)]
        res.port = resolver_port
    res.lifetime = timeout
    try:
        names = sorted(str(r.target) for r in res.resolve(zone, "NS"))
    except dns.exception.DNSException as exc:
        raise UsageError(f"cannot look up the NS set of {zone!r}: {exc}") from exc
    out: list[Target] = []
    for name in names:
        addresses: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                addresses += [r.to_text() for r in res.resolve(name, rdtype)]
            except dns.resolver.NoAnswer:
                continue
            except dns.exception.DNSException as exc:
                raise UsageError(f"cannot look up {rdtype} of {name}: {exc}") from exc
        for a in addresses:
            out.append(Target(check_address(a), port, zone, {"ns": name}, f"NS {name}"))
    if not out:
        raise UsageError(f"no address for any NS of {zone!r}")
    return out
