"""The ``dnstfo`` command: a click group whose subcommands load lazily.

Each subcommand lives in its own module and is imported only when it runs, so that
``dnstfo query`` does not pay for the server's imports (start-up time matters for a
command people run by hand and in loops).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import click

# name -> "module:attribute"; the module is imported only when the command is used.
COMMANDS: dict[str, str] = {
    "lab": "dnstfo.cli.lab:lab",
    "serve": "dnstfo.cli.serve:serve",
    "keygen": "dnstfo.cli.serve:keygen",
    "query": "dnstfo.cli.query:query",
    "cookies": "dnstfo.cli.cookies:cookies",
    "doctor": "dnstfo.cli.doctor:doctor",
}


class LazyGroup(click.Group):
    """A group that imports a subcommand's module only when that subcommand is invoked."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(n for n in COMMANDS if self._available(n))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                return None  # not built yet
            raise
        command: click.Command = getattr(module, attr)
        return command

    @staticmethod
    def _available(name: str) -> bool:
        module_name = COMMANDS[name].split(":")[0]
        return importlib.util.find_spec(module_name) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dnstfo")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int, **_: Any) -> None:
    """DNS over TCP with TCP Fast Open: serve, query, probe, and a lab to prove it."""
    import logging

    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
