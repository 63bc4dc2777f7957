"""``+compare``: the same query as plain TCP, as a priming TFO query, and as TFO queries.

The plan (after PATHspider's ``[no_tfo, tfo, tfo]``): a baseline without TFO; then the
server's cookie is deleted from the kernel's cache (root only; otherwise it is kept and
the priming query may already ride in the SYN); a priming query that fetches a cookie;
then ``tfo_queries`` queries that should ride in the SYN. TFO worked when every one of
those was answered and acknowledged in the SYN. A query after the baseline that gets no
answer is counted and the plan goes on; without a baseline there is nothing to compare.
"""

from __future__ import annotations

import enum
import logging
import statistics
from dataclasses import dataclass, replace

from dnstfo.client.config import QueryConfig, TfoMethod
from dnstfo.client.query import exchange
from dnstfo.client.report import short_path
from dnstfo.client.result import QueryFailure, QueryResult
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
class FailedStep:
    """A query of the comparison that got no answer."""

    step: Step
    """Its part."""
    index: int
    """Its place among all queries, from 0 (the baseline)."""
    failure: QueryFailure
    """Where and why it failed."""
    error: DnstfoError
    """The error itself (its class gives the exit status)."""


@dataclass(frozen=True, slots=True)
class Comparison:
    """The outcome of ``+compare``."""

    steps: tuple[CompareStep, ...]
    """Every answered query, in order."""
    failed: tuple[FailedStep, ...]
    """Every query that got no answer."""
    cookie_deleted: bool
    """Whether the server's cookie was deleted before priming."""
    cookie_note: str | None
    """Why it was not deleted (not root), or None."""
    baseline_ms: float
    """Total time of the baseline query."""
    tfo_ms: float | None
    """Median total time of the answered TFO queries (None: none was answered)."""
    saving_ms: float | None
    """``baseline_ms - tfo_ms`` when TFO worked, else None."""
    baseline_rounds: float | None
    """Rounds of the baseline query."""
    tfo_rounds: float | None
    """Median rounds of the TFO queries."""
    worked: bool
    """Every TFO query was answered, rode in the SYN and was acknowledged."""
    failure: Outcome | None
    """The outcome of the first TFO query that did not work, or None."""
    reason: str
    """One line: why TFO worked or not."""

    @property
    def short_path(self) -> bool:
        """The path RTT is under 1 ms: rounds and savings measure host overhead, not RTTs."""
        return short_path(s.result.tfo.timings.rtt_ms for s in self.steps)

    def in_order(self) -> list[CompareStep | FailedStep]:
        """Answered and failed queries, in the order they were sent."""
        failed = {f.index: f for f in self.failed}
        answered = iter(self.steps)
        total = len(self.steps) + len(self.failed)
        return [failed[i] if i in failed else next(answered) for i in range(total)]


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
        DnstfoError: the baseline query failed (timeout, refused, bad response); later
            failures are in ``Comparison.failed``.
    """
    if tfo_queries < 1:
        raise UsageError(f"+compare needs at least one TFO query, not {tfo_queries}")
    tfo = config if config.tfo_requested else replace(config, tfo=TfoMethod.SENDTO)
    tls = None
    if config.tls is not None:  # DoT: later steps resume the first one's session
        from dnstfo.client.tls import TlsSessions

        tls = TlsSessions()
    plain = replace(config, tfo=TfoMethod.OFF)
    steps = [CompareStep(Step.BASELINE, exchange(plain, clock=clock, tls_sessions=tls))]
    deleted, note = _forget_cookie(config.server)
    failed: list[FailedStep] = []
    for index, step in enumerate([Step.PRIMING] + [Step.TFO] * tfo_queries, start=1):
        try:
            steps.append(CompareStep(step, exchange(tfo, clock=clock, tls_sessions=tls)))
        except DnstfoError as exc:
            log.info("%s query %d failed: %s", step.value, index, exc)
            failed.append(FailedStep(step, index, QueryFailure.from_error(exc), exc))
    tfo_steps = [s.result for s in steps if s.step is Step.TFO]
    not_in_syn = next((r for r in tfo_steps if not r.tfo.verdict.tfo_worked), None)
    baseline = steps[0].result.tfo.timings
    baseline_ms = baseline.total_ms or 0.0
    tfo_ms = (
        statistics.median(r.tfo.timings.total_ms or 0.0 for r in tfo_steps) if tfo_steps else None
    )
    tfo_rounds = [r.tfo.timings.rounds for r in tfo_steps if r.tfo.timings.rounds is not None]
    worked = not failed and not_in_syn is None
    if failed:
        first = failed[0].failure.message
        reason = (
            f"TFO not proven: {len(failed)} of {tfo_queries + 2} queries got no answer ({first})"
        )
    elif not_in_syn is not None:
        reason = f"TFO did not work: {not_in_syn.tfo.verdict.text}"
    else:
        reason = tfo_steps[-1].tfo.verdict.text
    return Comparison(
        steps=tuple(steps),
        failed=tuple(failed),
        cookie_deleted=deleted,
        cookie_note=note,
        baseline_ms=baseline_ms,
        tfo_ms=tfo_ms,
        saving_ms=baseline_ms - tfo_ms if worked and tfo_ms is not None else None,
        baseline_rounds=baseline.rounds,
        tfo_rounds=statistics.median(tfo_rounds) if tfo_rounds else None,
        worked=worked,
        failure=None if not_in_syn is None else not_in_syn.tfo.verdict.outcome,
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
