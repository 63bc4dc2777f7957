"""The plan per target, as data: which connection comes next, given those made so far.

After PATHspider's ``[no_tfo, tfo, tfo]``, with its gaps filled:

1. a baseline without TFO, retried once when it gets no answer (transient loss is told
   from breakage);
2. the cookie cached for (source, target) deleted from the kernel's cache (root), so the
   priming connection really asks for a cookie;
3. a priming TFO connection (its SYN carries a cookie request);
4. ``tfo_attempts`` TFO connections, each expected to carry the query in the SYN.

Every connection reads and checks the DNS answer within the per-phase timeout. The
functions here are pure: the runner (``probe/run.py``) does what ``next_action`` says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dnstfo.errors import UsageError
from dnstfo.probe.observe import ConnectionObservation, Step


@dataclass(frozen=True, slots=True)
class Plan:
    """The connections made per target."""

    tfo_attempts: int = 2
    """TFO connections after priming (at least one)."""
    baseline_tries: int = 2
    """Baseline connections at most: the second only when the first got no answer."""
    forget_cookie: bool = True
    """Delete the cached cookie before priming (needs root; skipped without)."""

    def __post_init__(self) -> None:
        if self.tfo_attempts < 1:
            raise UsageError(f"--attempts must be at least 1, not {self.tfo_attempts}")
        if self.baseline_tries < 1:
            raise UsageError(f"baseline tries must be at least 1, not {self.baseline_tries}")

    @property
    def max_connections(self) -> int:
        """Connections per target at most."""
        return self.baseline_tries + 1 + self.tfo_attempts

    @property
    def round_trips(self) -> int:
        """Round trips of the whole plan on a clean path where TFO works (the floor).

        Baseline and priming take two each (handshake, then query); TFO ones take one.
        """
        return 2 + 2 + self.tfo_attempts


@dataclass(frozen=True, slots=True)
class Connect:
    """Make a connection for ``step``."""

    step: Step
    """The step it plays."""

    @property
    def tfo(self) -> bool:
        """Whether it asks for TFO (every step but the baseline)."""
        return self.step is not Step.BASELINE


@dataclass(frozen=True, slots=True)
class ForgetCookie:
    """Delete the cookie cached for (source, target), then ask again."""


Action = Connect | ForgetCookie | None
"""What to do next; None: the plan is complete."""


def next_action(plan: Plan, done: Sequence[ConnectionObservation], forgotten: bool) -> Action:
    """The next thing to do for a target.

    Args:
        plan: the plan.
        done: the connections made so far, in order.
        forgotten: whether the cookie step has been carried out (or skipped).

    Returns:
        A connection to make, the cookie to forget, or None when the plan is complete.
    """
    base = [c for c in done if c.step is Step.BASELINE]
    if not base or (len(base) < plan.baseline_tries and not any(c.answered for c in base)):
        return Connect(Step.BASELINE)
    if plan.forget_cookie and not forgotten:
        return ForgetCookie()
    if not any(c.step is Step.PRIMING for c in done):
        return Connect(Step.PRIMING)
    if sum(c.step is Step.TFO for c in done) < plan.tfo_attempts:
        return Connect(Step.TFO)
    return None
