"""``+compare``: the same query as plain TCP, as a priming TFO query, and as TFO queries.

The plan (after PATHspider's ``[no_tfo, tfo, tfo]``): a baseline without TFO; then the
server's cookie is deleted from the kernel's cache (root only; otherwise it is kept and
the priming query may already ride in the SYN); a priming query that fetches a cookie;
then ``tfo_queries`` queries that should ride in the SYN. TFO worked when every one of
those was acknowledged in the SYN.
"""

from __future__ import annotations

import enum
import logging
import statistics
from dataclasses import dataclass, replace

from dnstfo.client.config import QueryConfig, TfoMethod
from dnstfo.client.query import exchange
from dnstfo.client.result import QueryResult
from dnstfo.client.verdict import Outcome
from dnstfo.errors import DnstfoError, PermissionNeeded, UsageError
from dnstfo.timing import Clock

log = logging.getLogger(__name__)


class Step(enum.Enum):
    """The part a query plays in the comparison."""

    BASELINE = "plain TCP"
    """No TFO: the reference."""
    PRIMING = "priming"
    """First TFO query: fetches the cookie (unless one was kept)."""
    TFO = "TFO"
    """A query that should ride in the SYN."""


@dataclass(frozen=True, slots=True)
class CompareStep:
    """One query of the comparison."""

    step: Step
    """Its part."""
    result: QueryResult
    """What happened."""


@dataclass(frozen=True, slots=True)
class Comparison:
    """The outcome of ``+compare``."""

    steps: tuple[CompareStep, ...]
    """Every query, in order."""
    cookie_deleted: bool
    """Whether the server's cookie was deleted before priming."""
    cookie_note: str | None
    """Why it was not deleted (not root), or None."""
    baseline_ms: float
    """Total time of the baseline query."""
    tfo_ms: float
    """Median total time of the TFO queries."""
    saving_ms: float
    """``baseline_ms - tfo_ms``."""
    baseline_rounds: float | None
    """Rounds of the baseline query."""
    tfo_rounds: float | None
    """Median rounds of the TFO queries."""
    worked: bool
    """Every TFO query rode in the SYN and was acknowledged."""
    failure: Outcome | None
    """The outcome of the first TFO query that did not work, or None."""
    reason: str
    """One line: why TFO worked or not."""


def compare(config: QueryConfig, *, tfo_queries: int = 3, clock: Clock | None = None) -> Comparison:
    """Runs the comparison for one server.

    Args:
        config: the query; its ``tfo`` method is used for the TFO steps (SENDTO if OFF).
        tfo_queries: TFO queries after priming (at least one).
        clock: the monotonic clock.

    Returns:
        All steps with the saving and whether TFO worked.

    Raises:
        UsageError: ``tfo_queries`` is less than one.
        DnstfoError: a query failed outright (timeout, refused, bad response).
    """
    if tfo_queries < 1:
        raise UsageError(f"+compare needs at least one TFO query, not {tfo_queries}")
    tfo = config if config.tfo_requested else replace(config, tfo=TfoMethod.SENDTO)
    steps = [CompareStep(Step.BASELINE, exchange(replace(config, tfo=TfoMethod.OFF), clock=clock))]
    deleted, note = _forget_cookie(config.server)
    steps.append(CompareStep(Step.PRIMING, exchange(tfo, clock=clock)))
    steps += [CompareStep(Step.TFO, exchange(tfo, clock=clock)) for _ in range(tfo_queries)]
    tfo_steps = [s.result for s in steps if s.step is Step.TFO]
    failed = next((r for r in tfo_steps if not r.tfo.verdict.tfo_worked), None)
    baseline = steps[0].result.tfo.timings
    baseline_ms = baseline.total_ms or 0.0
    tfo_ms = statistics.median(r.tfo.timings.total_ms or 0.0 for r in tfo_steps)
    tfo_rounds = [r.tfo.timings.rounds for r in tfo_steps if r.tfo.timings.rounds is not None]
    if failed is None:
        reason = tfo_steps[-1].tfo.verdict.text
    else:
        reason = f"TFO did not work: {failed.tfo.verdict.text}"
    return Comparison(
        steps=tuple(steps),
        cookie_deleted=deleted,
        cookie_note=note,
        baseline_ms=baseline_ms,
        tfo_ms=tfo_ms,
        saving_ms=baseline_ms - tfo_ms,
        baseline_rounds=baseline.rounds,
        tfo_rounds=statistics.median(tfo_rounds) if tfo_rounds else None,
        worked=failed is None,
        failure=None if failed is None else failed.tfo.verdict.outcome,
        reason=reason,
    )


def _forget_cookie(server: str) -> tuple[bool, str | None]:
    from dnstfo.kernel import tcp_metrics

    try:
        tcp_metrics.delete(server)
    except PermissionNeeded as exc:
        return False, f"cookie kept ({exc}): priming may already use it"
    except DnstfoError as exc:
        log.warning("cannot delete the cookie for %s: %s", server, exc)
        return False, f"cookie kept: {exc}"
    return True, None
