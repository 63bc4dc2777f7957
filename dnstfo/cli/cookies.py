"""``dnstfo cookies``: the kernel's TCP Fast Open cookie cache (tcp_metrics)."""

from __future__ import annotations

import sys

import click

from dnstfo.cli.exits import Exit


@click.command()
@click.argument("server", required=False)
@click.option("--delete", is_flag=True, help="Forget SERVER's cookies (root).")
@click.option("--flush", is_flag=True, help="Forget every cached cookie and metric (root).")
@click.option("--all", "show_all", is_flag=True, help="Also list entries without a cookie.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
def cookies(server: str | None, delete: bool, flush: bool, show_all: bool, as_json: bool) -> None:
    """List, show, delete or flush the cached TFO cookies of this network namespace.

    Without SERVER: every cached cookie. With SERVER (an IP address): its entries.
    Deleting and flushing need root (CAP_NET_ADMIN); exit status 4 says so.
    """
    from dnstfo.cli import render
    from dnstfo.errors import DnstfoError, PermissionNeeded
    from dnstfo.kernel import tcp_metrics
    from dnstfo.kernel.sockets import family_of

    if delete and flush:
        raise click.UsageError("--delete and --flush exclude each other")
    if delete and server is None:
        raise click.UsageError("--delete needs a SERVER")
    try:
        if server is not None:
            family_of(server)
        if flush:
            tcp_metrics.flush()
            render.out("flushed the TCP metrics cache")
            return
        if delete:
            assert server is not None
            tcp_metrics.delete(server)
            render.out(f"deleted the cached entries for {server}")
            return
        entries = tcp_metrics.lookup(server) if server else tcp_metrics.entries()
    except PermissionNeeded as exc:
        render.err(f"dnstfo cookies: {exc}")
        sys.exit(Exit.PERMISSION)
    except DnstfoError as exc:
        raise click.UsageError(str(exc)) from exc
    if not (show_all or server):
        entries = [e for e in entries if e.cookie is not None]
    if as_json:
        render.emit_json(render.cookies_json(entries))
    else:
        render.out(render.cookies_text(entries))
