"""``dnstfo doctor``: this host's TCP Fast Open state in words, and ``--fix``."""

from __future__ import annotations

import sys

import click

from dnstfo.cli.exits import Exit


@click.command()
@click.option("--fix", is_flag=True, help="Set net.ipv4.tcp_fastopen |= 3 here (root).")
def doctor(fix: bool) -> None:
    """Explain this host's TCP Fast Open settings and counters.

    Exit status: 0 ready to query and serve with TFO, 5 not ready (the fix is printed),
    4 --fix without root.
    """
    from dnstfo.cli import render
    from dnstfo.client import host
    from dnstfo.errors import DnstfoError, PermissionNeeded

    state = host.read_state()
    render.out(render.doctor_text(state, host.problems(state)))
    if fix:
        try:
            plan = host.plan_fix(state)
            host.apply_fix(plan)
        except PermissionNeeded as exc:
            render.err(f"dnstfo doctor: {exc}")
            sys.exit(Exit.PERMISSION)
        except DnstfoError as exc:
            render.err(f"dnstfo doctor: {exc}")
            sys.exit(Exit.NOT_READY)
        render.out(render.fix_text(plan, host.SYSCTL_D_FILE))
        state = host.read_state()
    if host.problems(state):
        sys.exit(Exit.NOT_READY)
