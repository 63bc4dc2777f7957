"""``dnstfo query``: dig's shape over TCP, with a report of what TCP Fast Open did."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, NoReturn

import click

from dnstfo.cli.exits import Exit

if TYPE_CHECKING:
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
        raise click.UsageError(str(exc)) from exc
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


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("words", nargs=-1, metavar="NAME [TYPE] [CLASS] @SERVER [+OPTIONS]")
@click.option("-p", "--port", type=click.IntRange(1, 65535), help="Server port (default 53).")
@click.option("-b", "--source", metavar="ADDR", help="Source address to bind.")
@click.option("-4", "ipv4", is_flag=True, help="Use IPv4 only.")
@click.option("-6", "ipv6", is_flag=True, help="Use IPv6 only.")
@click.option("--short", is_flag=True, default=None, help="Only the answer data (+short).")
@click.option("--json", "json_", is_flag=True, default=None, help="One JSON object per query.")
@click.option("--dnssec", is_flag=True, default=None, help="Set the DO bit (+dnssec).")
@click.option("--norecurse", is_flag=True, default=None, help="Clear RD (+norecurse).")
@click.option("--timeout", type=float, help="Seconds per try (+timeout=S, default 5).")
@click.option("--tries", type=int, help="Tries in all (+tries=N, default 1).")
@click.option("--notfo", is_flag=True, default=None, help="Plain TCP, no Fast Open (+notfo).")
@click.option(
    "--nocookie", is_flag=True, default=None, help="SYN data without a cookie (+nocookie)."
)
@click.option("--repeat", type=int, help="Queries in a row (+repeat=N).")
@click.option("--compare", is_flag=True, default=None, help="Plain vs TFO table (+compare).")
@click.option(
    "--method",
    type=click.Choice(["sendto", "connect"]),
    default="sendto",
    show_default=True,
    help="MSG_FASTOPEN sendto, or TCP_FASTOPEN_CONNECT.",
)
def query(
    words: tuple[str, ...],
    port: int | None,
    source: str | None,
    ipv4: bool,
    ipv6: bool,
    short: bool | None,
    json_: bool | None,
    dnssec: bool | None,
    norecurse: bool | None,
    timeout: float | None,
    tries: int | None,
    notfo: bool | None,
    nocookie: bool | None,
    repeat: int | None,
    compare: bool | None,
    method: str,
) -> None:
    """Look up NAME over TCP and say whether TCP Fast Open happened.

    dig's syntax: `dnstfo query example.com MX @192.0.2.53 +short`. Every +option has a
    --long-option twin. Exit status: 0 answered, 2 bad arguments, 3 TFO did not work
    (+compare), 9 no reply, 10 bad reply.
    """
    import socket

    from dnstfo.cli import digargs
    from dnstfo.client.config import QueryConfig, TfoMethod
    from dnstfo.errors import UsageError

    try:
        d = digargs.parse(words)
    except UsageError as exc:
        raise click.UsageError(str(exc)) from exc
    if ipv4 and ipv6:
        raise click.UsageError("-4 and -6 exclude each other")

    def pick(plus: object, long: object, default: object) -> object:
        return plus if plus is not None else long if long is not None else default

    the_port = int(pick(d.port, port, 53))  # type: ignore[call-overload]
    server_name = d.server or default_server()
    family = socket.AF_INET if ipv4 else socket.AF_INET6 if ipv6 else socket.AF_UNSPEC
    use_tfo = bool(pick(d.tfo, None if notfo is None else not notfo, True))
    with _errors():
        address = resolve_server(server_name, the_port, family)
        config = QueryConfig(
            qname=d.name or ".",
            server=address,
            rdtype=d.rdtype or ("A" if d.name else "NS"),
            rdclass=d.rdclass or "IN",
            port=the_port,
            source=source,
            tfo=TfoMethod(method) if use_tfo else TfoMethod.OFF,
            no_cookie=not pick(d.cookie, None if nocookie is None else not nocookie, True),
            dnssec=bool(pick(d.dnssec, dnssec, False)),
            recurse=bool(pick(d.recurse, None if norecurse is None else not norecurse, True)),
            timeout=float(pick(d.timeout, timeout, 5.0)),  # type: ignore[arg-type]
            tries=int(pick(d.tries, tries, 1)),  # type: ignore[call-overload]
        )
        if config.timeout <= 0 or config.tries < 1:
            raise click.UsageError("timeout and tries must be positive")
        as_json = bool(pick(d.json, json_, False))
        as_short = bool(pick(d.short, short, False))
        count = int(pick(d.repeat, repeat, 0))  # type: ignore[call-overload]
        if pick(d.compare, compare, False):
            _run_compare(config, server_name, count or 3, as_json)
        else:
            for _ in range(count or 1):
                _run_one(config, server_name, as_json, as_short)


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
