"""The ``dnstfo`` command line.

``entry`` is the console script. Commands that people run by hand and in loops
(``dnstfo query``) parse their own arguments and run without importing click, which
alone costs more start-up time than the rest of the query; every other command, and any
``--help``, goes through the click group ``main`` (``dnstfo.cli.group``).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

# name -> "module:attribute"; the module is imported only when the command is used. An
# attribute that is not a click command is a runner: it takes the raw arguments and
# returns the exit status, and its module's HELP is its help text.
COMMANDS: dict[str, str] = {
    "lab": "dnstfo.cli.lab:lab",
    "serve": "dnstfo.cli.serve:serve",
    "keygen": "dnstfo.cli.keygen:keygen",
    "query": "dnstfo.cli.query:run",
    "cookies": "dnstfo.cli.cookies:cookies",
    "doctor": "dnstfo.cli.doctor:doctor",
    "probe": "dnstfo.cli.probe:probe",
}

FAST_COMMANDS = frozenset({"query"})
"""Runners that ``entry`` calls directly, without click."""


def load(name: str) -> Any:
    """Imports and returns the object behind a command name."""
    module_name, attr = COMMANDS[name].split(":")
    return getattr(importlib.import_module(module_name), attr)


def entry() -> None:
    """The ``dnstfo`` console script."""
    args = sys.argv[1:]
    if args and args[0] in FAST_COMMANDS and not {"-h", "--help"} & set(args[1:]):
        sys.exit(load(args[0])(args[1:]))
    from dnstfo.cli.group import main

    main()


def __getattr__(name: str) -> Any:
    # ``from dnstfo.cli import main`` (tests, embedding) without importing click up front.
    if name == "main":
        from dnstfo.cli.group import main

        return main
    raise AttributeError(name)
