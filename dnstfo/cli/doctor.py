"""``dnstfo doctor``: this host's TCP Fast Open state in words, and ``--fix``."""

from __future__ import annotations

import sys

import click

from dnstfo.cli.exits import Exit


@click.command()
@click.option("--client", is_flag=True, help="Only ask: can this host query with TFO?")
@click.option("--server", is_flag=True, help="Only ask: can this host serve with TFO?")
@click.option(
    "--fix",
    is_flag=True,
    help="Set the missing bits of net.ipv4.tcp_fastopen here (root): 0x1 for --client, "
    "0x2 for --server, both by default.",
)
def doctor(client: bool, server: bool, fix: bool) -> None:
    """Explain this host's TCP Fast Open settings and counters.

    Querying with TFO (the client side) and serving with it (the server side) are judged
    apart; --client or --server asks about one only. With --fix the state is shown after
    the fix.

    Exit status: 0 ready for what was asked, 5 not ready (the reason and the fix are
    printed), 4 --fix without root.
    """
    from dnstfo.cli import render
    from dnstfo.client import host
    from dnstfo.errors import DnstfoError, PermissionNeeded
    from dnstfo.kernel.sysctl import TfoMode

    if not client and not server:
        client = server = True
    sides = (TfoMode.CLIENT if client else TfoMode(0)) | (TfoMode.SERVER if server else TfoMode(0))
    flags = "" if client and server else " --client" if client else " --server"
    state = host.read_state()
    if fix:
        try:
            plan = host.plan_fix(state, sides)
            host.apply_fix(plan)
        except PermissionNeeded as exc:
            render.err(f"dnstfo doctor: {exc}")
            sys.exit(Exit.PERMISSION)
        except DnstfoError as exc:
            render.err(f"dnstfo doctor: {exc}")
            sys.exit(Exit.NOT_READY)
        render.out(render.fix_text(plan, host.SYSCTL_D_FILE))
        state = host.read_state()
    client_problems = host.problems(state, TfoMode.CLIENT) if client else None
    server_problems = host.problems(state, TfoMode.SERVER) if server else None
    render.out(
        render.doctor_text(state, client_problems, server_problems, f"dnstfo doctor --fix{flags}")
    )
    if client_problems or server_problems:
        sys.exit(Exit.NOT_READY)
