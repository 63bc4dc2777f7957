"""Exit statuses of ``dnstfo query``, ``cookies`` and ``doctor`` (close to dig's)."""

from __future__ import annotations

import enum


class Exit(enum.IntEnum):
    """Process exit statuses; documented in the README."""

    OK = 0
    """An answer arrived (any RCODE, as with dig); with +compare: TFO worked."""
    TFO_FAILED = 3
    """+compare: every query was answered but TFO did not work (the reason is printed)."""
    PERMISSION = 4
    """The operation needs root (deleting cookies, doctor --fix)."""
    NOT_READY = 5
    """doctor: this host cannot use TFO as it is (the fix is printed)."""
    USAGE = 2
    """Bad arguments (click's status for usage errors)."""
    NO_REPLY = 9
    """No answer: timeout (the phase is named), refused, reset, unreachable (dig's 9)."""
    BAD_REPLY = 10
    """The server answered with something that is not a matching DNS response."""
