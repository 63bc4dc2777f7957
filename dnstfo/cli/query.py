"""``dnstfo query``: dig's shape over TCP, with a report of what TCP Fast Open did.

Every query ends in one exit status: the last failure's (dig's 9 no reply, 10 bad
reply), else 0 (3 with ``+compare`` when TFO did not work). ``+repeat`` and ``-f`` go on
after a failed query and count it; with ``+json`` a failed query prints one object
holding ``error``, so a script reads one object per query sent.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from dnstfo.cli.exits import Exit

if TYPE_CHECKING:
    from dnstfo.cli.digargs import DigArgs
    from dnstfo.client.config import QueryConfig
    from dnstfo.client.tls import TlsSessions
    from dnstfo.errors import DnstfoError


def default_server(resolv_conf: str = "/etc/resolv.conf") -> str:
    """The first ``nameserver`` of resolv.conf, or 127.0.0.1 (as dig does)."""
    try:
        with open(resolv_conf) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    return parts[1]
    except OSError:
        pass
    return "127.0.0.1"


def resolve_server(name: str, port: int, family: int) -> str:
    """The address to use for ``name`` (a literal, or the system resolver's first answer).

    Raises:
        UsageError: the name does not resolve (in ``family``, when one is asked for).
    """
    import socket

    from dnstfo.errors import UsageError

    try:
        infos = socket.getaddrinfo(name, port, family, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        only: dict[int, str] = {
            socket.AF_INET: " to an IPv4 address",
            socket.AF_INET6: " to an IPv6 address",
        }
        raise UsageError(
            f"cannot resolve server {name!r}{only.get(family, '')}: {exc.strerror}"
        ) from exc
    return str(infos[0][4][0])


HELP = """Look up NAME over TCP and say whether TCP Fast Open happened.

dig's syntax: dnstfo query example.com MX @192.0.2.53 +short

\b
Options (each +option also works as --option, e.g. +timeout=2 or --timeout 2):
  -p PORT          server port, 1 to 65535 (default 53)
  -b ADDR          source address to bind (its family picks the server's)
  -4, -6           use only IPv4 or only IPv6
  -t TYPE, -c CLASS, -q NAME   the query's type, class and name, explicitly
  -x ADDR          reverse lookup: the PTR of ADDR
  -f FILE          one query per line (dig's words; - reads standard input)
  +short           only the answer data
  +json            one JSON object per query, an answer or an error (fields in the README)
  +dnssec          set the DO bit
  +norecurse       clear RD
  +timeout=S       seconds per try (default 5; dig's +time=S too)
  +tries=N         tries in all (default 1); Query time covers them all
  +notfo           plain TCP, no Fast Open
  +nocookie        SYN data without a cookie (TCP_FASTOPEN_NO_COOKIE)
  +repeat=N        N queries in a row (failures are counted, not fatal)
  +compare         plain TCP, priming and TFO queries side by side
  +tcp, +vc        accepted: every query is over TCP
  --method M       sendto (MSG_FASTOPEN, default) or connect (TCP_FASTOPEN_CONNECT)
  +tls             DNS over TLS (RFC 7858): the ClientHello rides in the SYN; -p defaults
                   to 853; the certificate is checked against the system's CAs
  +tls-ca[=FILE]   trust the CAs in FILE (without FILE: the system's store)
  +tls-hostname=N  the name the certificate must hold (default: the @SERVER word)
  +tls-insecure    do not check the certificate (the output says so)

AXFR prints every record of the transfer, as dig does. With several @SERVER the first counts.

Exit status: 0 answered, 2 bad arguments, 3 TFO did not work (+compare), 4 needs root,
9 no reply, 10 bad reply (of the last query that failed).
"""


def run(words: list[str] | tuple[str, ...]) -> int:
    """Runs ``dnstfo query`` with its arguments; returns the exit status.

    ``dnstfo.cli.entry`` calls it without importing click; the group wraps it for --help.
    """
    from dnstfo.cli import digargs
    from dnstfo.errors import UsageError

    try:
        d = digargs.parse(words)
        batch = None if d.batch is None else _batch(d)
    except UsageError as exc:
        return _usage(str(exc))
    if batch is None:
        return _run_query(d)
    from dnstfo.cli.render import err

    status: int = Exit.OK
    failures = 0
    for where, line in batch:  # a bad line is named and skipped, the rest still run
        try:
            code = _run_query(_line_args(d, line), where=where)
        except UsageError as exc:
            code = _usage(f"{where}: {exc}")
        if code:
            status, failures = code, failures + 1
    if failures:
        err(f";; {failures} of {len(batch)} queries in {d.batch or '-'} failed")
    return status


def _batch(d: DigArgs) -> list[tuple[str, str]]:
    """The batch file's queries as (``FILE:LINE``, words); blank and comment lines skipped.

    Raises:
        UsageError: the file cannot be read.
    """
    from dnstfo.errors import UsageError

    path = d.batch or "-"
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read -f {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    lines = [(f"{path}:{n}", line.strip()) for n, line in enumerate(text.splitlines(), start=1)]
    return [(where, line) for where, line in lines if line and line[0] not in "#;"]


def _line_args(base: DigArgs, line: str) -> DigArgs:
    """One batch line's words over the command line's (the line's own values win).

    Raises:
        UsageError: the line's words are bad, or it holds ``-f`` itself.
    """
    import dataclasses
    import shlex

    from dnstfo.cli import digargs
    from dnstfo.errors import UsageError

    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"cannot split {line!r}: {exc}") from exc
    own = digargs.parse(words)
    if own.batch is not None:
        raise UsageError("-f inside a batch file")
    given = {f.name: getattr(own, f.name) for f in dataclasses.fields(own)}
    return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})


def _usage(message: str) -> int:
    from dnstfo.cli.render import err

    err(f"dnstfo query: {message} (see dnstfo query --help)")
    return Exit.USAGE


def _config(d: DigArgs) -> tuple[QueryConfig, str]:
    """The query's config from the parsed arguments, with dig's defaults.

    Raises:
        UsageError: the source and the server are of different address families, or the
            server does not resolve.
    """
    from dnstfo.client.config import QueryConfig, TfoMethod, TlsOptions

    port = d.port or (853 if d.tls else 53)
    server_name = d.server or default_server()
    tls = None
    if d.tls:
        tls = TlsOptions(
            ca_file=d.tls_ca or None,
            hostname=d.tls_hostname or server_name,
            insecure=bool(d.tls_insecure),
        )
    family = _family(d, server_name)
    method = TfoMethod(d.method or "sendto")
    config = QueryConfig(
        qname=d.name or ".",
        server=resolve_server(server_name, port, family),
        rdtype=d.rdtype or ("A" if d.name else "NS"),
        rdclass=d.rdclass or "IN",
        port=port,
        source=d.source,
        tfo=method if d.tfo is not False else TfoMethod.OFF,
        no_cookie=d.cookie is False,
        dnssec=bool(d.dnssec),
        recurse=d.recurse is not False,
        timeout=d.timeout or 5.0,
        tries=d.tries or 1,
        tls=tls,
    )
    return config, server_name


def _family(d: DigArgs, server_name: str) -> int:
    """The address family to use: ``-4``/``-6``, else the source's, else either.

    Raises:
        UsageError: ``-b``, ``-4``/``-6`` and a literal server address disagree.
    """
    import ipaddress
    import socket

    from dnstfo.errors import UsageError

    def version(text: str) -> int | None:
        try:
            return ipaddress.ip_address(text).version
        except ValueError:
            return None

    source = None if d.source is None else version(d.source)
    server = version(server_name)
    if source is not None and d.family is not None and source != d.family:
        raise UsageError(f"-b {d.source} is IPv{source}, but -{d.family} asks for IPv{d.family}")
    if d.family is not None and server is not None and server != d.family:
        raise UsageError(f"-{d.family} asks for IPv{d.family}, but @{server_name} is IPv{server}")
    if source is not None and server is not None and source != server:
        raise UsageError(
            f"-b {d.source} (IPv{source}) and @{server_name} (IPv{server}) are of different "
            "address families: give a source of the server's family"
        )
    wanted = d.family or source
    return {4: socket.AF_INET, 6: socket.AF_INET6}.get(wanted or 0, socket.AF_UNSPEC)


def _run_query(d: DigArgs, where: str | None = None) -> int:
    """Runs one line's query (``+repeat`` times, or ``+compare``); returns its status.
    ``where`` (``FILE:LINE``) names a batch file's line in a usage error."""
    from dnstfo.cli.render import err
    from dnstfo.errors import UsageError

    try:
        config, server_name = _config(d)
    except UsageError as exc:
        return _usage(f"{where}: {exc}" if where else str(exc))
    if d.compare:
        return _run_compare(config, server_name, d.repeat or 3, bool(d.json)) or Exit.OK
    count = d.repeat or 1
    status: int = Exit.OK
    failures = 0
    sessions = None
    if config.tls is not None:  # +repeat: later queries resume the first one's session
        from dnstfo.client.tls import TlsSessions

        sessions = TlsSessions()
    for _ in range(count):
        code = _run_one(config, server_name, bool(d.json), bool(d.short), sessions=sessions)
        if code:
            status, failures = code, failures + 1
    if count > 1 and failures:
        err(f";; {failures} of {count} queries failed")
    return status


def _run_one(
    config: QueryConfig,
    server_name: str,
    as_json: bool,
    as_short: bool,
    sessions: TlsSessions | None = None,
) -> int:
    """One query, printed; returns its exit status."""
    import time

    from dnstfo.cli import render
    from dnstfo.client import records
    from dnstfo.client.query import exchange
    from dnstfo.errors import DnstfoError

    wall = time.time()
    try:
        result = exchange(config, tls_sessions=sessions)
    except DnstfoError as exc:
        return _failed(exc, config, server_name, as_json, wall)
    if as_json:
        render.emit_json(records.result_json(result, server_name))
    elif as_short:
        text = render.short_text(result)
        if text:
            render.out(text)
    else:
        render.out(render.dig_text(result, server_name))
    return Exit.OK


def _failed(
    exc: DnstfoError, config: QueryConfig, server_name: str, as_json: bool, wall: float
) -> int:
    """Says why a query failed (one line on stderr; one object with +json); its status."""
    from dnstfo.cli import render
    from dnstfo.client import records
    from dnstfo.client.result import QueryFailure

    code, line = _status(exc, config)
    render.err(line)
    if as_json:
        failure = QueryFailure.from_error(exc)
        render.emit_json(records.failure_json(config, server_name, failure, wall))
    return code


def _status(exc: DnstfoError, config: QueryConfig) -> tuple[Exit, str]:
    """The exit status for a library error and its one line (dig-like)."""
    from dnstfo.client.tls import HANDSHAKE, TlsError
    from dnstfo.errors import (
        NetworkError,
        PermissionNeeded,
        PhaseTimeout,
        RemoteProtocolError,
        UsageError,
    )

    if isinstance(exc, UsageError):
        return Exit.USAGE, f"dnstfo: {exc}"
    if isinstance(exc, NetworkError):
        tries = (
            f" ({config.tries} tries)" if isinstance(exc, PhaseTimeout) and config.tries > 1 else ""
        )
        if isinstance(exc, PhaseTimeout) and exc.phase == HANDSHAKE:
            tries += " (a plain DNS-over-TCP server on this port? it would wait so)"
        return Exit.NO_REPLY, f";; no answer: {exc}{tries}"
    if isinstance(exc, TlsError):
        return Exit.BAD_REPLY, f";; {exc}"
    if isinstance(exc, RemoteProtocolError):
        return Exit.BAD_REPLY, f";; bad answer: {exc}"
    if isinstance(exc, PermissionNeeded):
        return Exit.PERMISSION, f"dnstfo: {exc}"
    return Exit.NO_REPLY, f";; {exc}"


def _run_compare(config: QueryConfig, server_name: str, count: int, as_json: bool) -> int:
    """``+compare``; the status: a failed query's, else 3 when TFO did not work."""
    import time

    from dnstfo.cli import render
    from dnstfo.client import records
    from dnstfo.client.compare import compare
    from dnstfo.errors import DnstfoError

    wall = time.time()
    try:
        comparison = compare(config, tfo_queries=count)
    except DnstfoError as exc:  # the baseline: nothing to compare
        return _failed(exc, config, server_name, as_json, wall)
    if as_json:
        render.emit_json(records.compare_json(comparison, server_name))
    else:
        render.out(render.compare_text(comparison))
    if comparison.failed:
        return _status(comparison.failed[-1].error, config)[0]
    return Exit.OK if comparison.worked else Exit.TFO_FAILED
