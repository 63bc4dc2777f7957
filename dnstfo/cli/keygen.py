"""``dnstfo keygen``: make a TCP Fast Open key for ``dnstfo serve --tfo-key``."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="Write the key here (mode 0600), ending with a newline; default: print it.",
)
@click.option("--force", is_flag=True, help="Replace an existing file at --output.")
def keygen(output: str | None, force: bool) -> None:
    """Make a TCP Fast Open key (xxxxxxxx-xxxxxxxx-xxxxxxxx-xxxxxxxx) for --tfo-key.

    An existing file is kept unless --force is given: replacing a key that servers use
    invalidates the cookies their clients hold (restart or SIGHUP rotates it properly).
    """
    from dnstfo.errors import DnstfoError
    from dnstfo.server.keys import generate_key, write_key_file

    key = generate_key()
    if output is None:
        click.echo(key.text())
        return
    path = Path(output)
    if not force and (path.exists() or path.is_symlink()):
        raise click.ClickException(f"{output} exists; use --force to replace it")
    try:
        write_key_file(path, key)
    except DnstfoError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {output}", err=True)
