"""``dnstfo query``: dig's shape over TCP, with a report of what TCP Fast Open did."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, NoReturn

from dnstfo.cli.exits import Exit

if TYPE_CHECKING:
    from dnstfo.cli.digargs import DigArgs
    from dnstfo.client.config import QueryConfig


def _fail(message: str, code: Exit) -> NoReturn:
    from dnstfo.cli.render import err

    err(f";; {message}" if code in (Exit.NO_REPLY, Exit.BAD_REPLY) else f"dnstfo: {message}")
    sys.exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    """Turns library errors into one line and dig-like exit statuses."""
    from dnstfo.errors import (
        DnstfoError,
        NetworkError,
        PermissionNeeded,
        RemoteProtocolError,
        UsageError,
    )

    try:
        yield
    except UsageError as exc:
        _fail(str(exc), Exit.USAGE)
    except NetworkError as exc:
        _fail(f"no answer: {exc}", Exit.NO_REPLY)
    except RemoteProtocolError as exc:
        _fail(f"bad answer: {exc}", Exit.BAD_REPLY)
    except PermissionNeeded as exc:
        _fail(str(exc), Exit.PERMISSION)
    except DnstfoError as exc:
        _fail(str(exc), Exit.NO_REPLY)


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
        UsageError: the name does not resolve.
    """
    import socket

    from dnstfo.errors import UsageError

    try:
        infos = socket.getaddrinfo(name, port, family, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UsageError(f"cannot resolve server {name!r}: {exc.strerror}") from exc
    return str(infos[0][4][0])


HELP = """Look up NAME over TCP and say whether TCP Fast Open happened.

dig's syntax: dnstfo query example.com MX @192.0.2.53 +short

\b
Options (each +option also works as --option, e.g. +timeout=2 or --timeout 2):
  -p PORT          server port (default 53)
  -b ADDR          source address to bind
  -4, -6           use only IPv4 or only IPv6
  +short           only the answer data
  +json            one JSON object per query (fields in the README)
  +dnssec          set the DO bit
  +norecurse       clear RD
  +timeout=S       seconds per try (default 5)
  +tries=N         tries in all (default 1)
  +notfo           plain TCP, no Fast Open
  +nocookie        SYN data without a cookie (TCP_FASTOPEN_NO_COOKIE)
  +repeat=N        N queries in a row
  +compare         plain TCP, priming and TFO queries side by side
  --method M       sendto (MSG_FASTOPEN, default) or connect (TCP_FASTOPEN_CONNECT)

Exit status: 0 answered, 2 bad arguments, 3 TFO did not work (+compare), 4 needs root,
9 no reply, 10 bad reply.
"""


def run(words: list[str] | tuple[str, ...]) -> int:
    """Runs ``dnstfo query`` with its arguments; returns the exit status.

    ``dnstfo.cli.entry`` calls it without importing click; the group wraps it for --help.
    """
    from dnstfo.cli import digargs
    from dnstfo.errors import UsageError

    try:
        d = digargs.parse(words)
    except UsageError as exc:
        return _usage(str(exc))
    with _errors():
        try:
            config, server_name = _config(d)
        except UsageError as exc:
            return _usage(str(exc))
        if d.compare:
            _run_compare(config, server_name, d.repeat or 3, bool(d.json))
        else:
            for _ in range(d.repeat or 1):
                _run_one(config, server_name, bool(d.json), bool(d.short))
    return Exit.OK


def _usage(message: str) -> int:
    from dnstfo.cli.render import err

    err(f"dnstfo query: {message} (see dnstfo query --help)")
    return Exit.USAGE


def _config(d: DigArgs) -> tuple[QueryConfig, str]:
    """The query's config from the parsed arguments, with dig's defaults."""
    import socket

    from dnstfo.client.config import QueryConfig, TfoMethod

    port = d.port or 53
    server_name = d.server or default_server()
    family = {4: socket.AF_INET, 6: socket.AF_INET6}.get(d.family or 0, socket.AF_UNSPEC)
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
    )
    return config, server_name


def _run_one(config: QueryConfig, server_name: str, as_json: bool, as_short: bool) -> None:
    from dnstfo.cli import render
    from dnstfo.client.query import exchange

    result = exchange(config)
    if as_json:
        render.emit_json(render.result_json(result, server_name))
    elif as_short:
        text = render.short_text(result)
        if text:
            render.out(text)
    else:
        render.out(render.dig_text(result, server_name))


def _run_compare(config: QueryConfig, server_name: str, count: int, as_json: bool) -> None:
    from dnstfo.cli import render
    from dnstfo.client.compare import compare

    comparison = compare(config, tfo_queries=count)
    if as_json:
        render.emit_json(render.compare_json(comparison, server_name))
    else:
        render.out(render.compare_text(comparison))
    if not comparison.worked:
        sys.exit(Exit.TFO_FAILED)
