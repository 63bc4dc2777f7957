"""The plan as data: the sequence of actions for answered and unanswered connections."""

from __future__ import annotations

import pytest

from dnstfo.errors import UsageError
from dnstfo.probe.observe import ConnectionObservation, Step
from dnstfo.probe.plan import Action, Connect, ForgetCookie, Plan, next_action
from tests.probe.helpers import conn, lost


def walk(plan: Plan, outcomes: dict[Step, list[bool]]) -> list[Action]:
    """Runs the plan, answering each step's connections as ``outcomes`` says (default yes)."""
    done: list[ConnectionObservation] = []
    forgotten = False
    actions: list[Action] = []
    for _ in range(20):
        action = next_action(plan, done, forgotten)
        actions.append(action)
        if action is None:
            return actions
        if isinstance(action, ForgetCookie):
            forgotten = True
            continue
        answers = outcomes.get(action.step, [])
        n = sum(c.step is action.step for c in done)
        ok = answers[n] if n < len(answers) else True
        done.append(conn(action.step) if ok else lost(action.step))
    raise AssertionError("the plan never ends")


B, P, T = Connect(Step.BASELINE), Connect(Step.PRIMING), Connect(Step.TFO)


def test_clean_plan() -> None:
    assert walk(Plan(), {}) == [B, ForgetCookie(), P, T, T, None]


def test_baseline_retried_once_when_unanswered() -> None:
    assert walk(Plan(), {Step.BASELINE: [False]}) == [B, B, ForgetCookie(), P, T, T, None]
    assert walk(Plan(), {Step.BASELINE: [False, False]}) == [B, B, ForgetCookie(), P, T, T, None]


def test_tfo_steps_run_even_when_unanswered_and_count_attempts() -> None:
    plan = Plan(tfo_attempts=3, forget_cookie=False)
    assert walk(plan, {Step.TFO: [False, False, False]}) == [B, P, T, T, T, None]


def test_only_tfo_steps_ask_for_tfo() -> None:
    assert (B.tfo, P.tfo, T.tfo) == (False, True, True)


def test_floor_and_bounds() -> None:
    assert Plan(tfo_attempts=2).round_trips == 6
    assert Plan(tfo_attempts=2).max_connections == 5
    with pytest.raises(UsageError, match="--attempts"):
        Plan(tfo_attempts=0)
