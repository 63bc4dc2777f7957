"""The clock. Durations come from a monotonic clock in nanoseconds, never wall time."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol


class Clock(Protocol):
    """Something that tells monotonic time in nanoseconds."""

    def now_ns(self) -> int:
        """Returns the current monotonic time in nanoseconds."""
        ...


class MonotonicClock:
    """The real clock: ``time.monotonic_ns``."""

    def now_ns(self) -> int:
        return time.monotonic_ns()


class FakeClock:
    """A clock that moves only when told to (for tests).

    Args:
        start_ns: the initial reading.
    """

    def __init__(self, start_ns: int = 0) -> None:
        self._now = start_ns

    def now_ns(self) -> int:
        return self._now

    def advance(self, ns: int) -> None:
        """Moves the clock forward by ``ns`` nanoseconds."""
        self._now += ns


@dataclass(frozen=True, slots=True)
class PhaseTimes:
    """Milestones of one exchange, in monotonic nanoseconds (None: not reached)."""

    started: int
    """When the socket call that opens the connection was made."""
    connected: int | None = None
    """When the handshake completed (the connect returned)."""
    first_byte: int | None = None
    """When the first byte of the response arrived."""
    done: int | None = None
    """When the whole response was read."""

    def ms(self, end: int | None) -> float | None:
        """Milliseconds from ``started`` to ``end``, or None when ``end`` was not reached."""
        return None if end is None else (end - self.started) / 1e6
