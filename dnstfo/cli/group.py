"""The click group behind ``dnstfo``: subcommands load lazily, one module each."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import click

from dnstfo.cli import COMMANDS, load


def _runner_command(name: str, runner: Callable[[list[str]], int]) -> click.Command:
    """Wraps a runner (raw arguments -> exit status) as a click command, for help and tests."""
    module = importlib.import_module(runner.__module__)

    @click.pass_context
    def callback(ctx: click.Context, words: tuple[str, ...]) -> None:
        ctx.exit(runner(list(words)))

    return click.Command(
        name,
        callback=callback,
        help=getattr(module, "HELP", runner.__doc__),
        params=[click.Argument(["words"], nargs=-1, type=click.UNPROCESSED, metavar="ARGS")],
        options_metavar="",
        context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    )


class LazyGroup(click.Group):
    """A group that imports a subcommand's module only when that subcommand is invoked."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(n for n in COMMANDS if self._available(n))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS or not self._available(cmd_name):
            return None
        target = load(cmd_name)
        if isinstance(target, click.Command):
            return target
        return _runner_command(cmd_name, target)

    @staticmethod
    def _available(name: str) -> bool:
        return importlib.util.find_spec(COMMANDS[name].split(":")[0]) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dnstfo")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int, **_: Any) -> None:
    """DNS over TCP with TCP Fast Open, and what the kernel really did with it.

    Each command below has its own --help.
    """
    import logging

    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
