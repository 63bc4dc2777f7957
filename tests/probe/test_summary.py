"""The summary's histogram median and its per-target memory switch."""

from __future__ import annotations

import collections
import statistics

from hypothesis import given
from hypothesis import strategies as st

from dnstfo.probe.summary import Summary, _median

ROUNDS = st.sampled_from([0.9, 1.0, 1.1, 2.0, 2.1, 2.4, 12.3, 22.4])


@given(st.lists(ROUNDS, min_size=1, max_size=60))
def test_histogram_median_is_the_median(values: list[float]) -> None:
    assert _median(collections.Counter(values)) == round(statistics.median(values), 2)


def test_no_values_no_median() -> None:
    assert _median(collections.Counter()) is None


def test_a_live_summary_keeps_no_per_target_state() -> None:
    record = {"dip": "192.0.2.1", "dp": 53, "verdict": "works", "vantage": {"host": "a"}}
    live, merged = Summary(), Summary(track_targets=True)
    for s in (live, merged):
        s.add(record)
    assert live.by_target == {}
    assert merged.by_target == {("192.0.2.1", 53): {"a": "works"}}


def test_rounds_on_a_path_under_1_ms_are_left_out() -> None:
    def record(rtt_ms: float) -> dict[str, object]:
        conns = [
            {"step": "baseline", "rcode": "NOERROR", "rtt_ms": rtt_ms, "rounds": 2.0},
            {"step": "tfo", "rcode": "NOERROR", "rtt_ms": rtt_ms, "rounds": 1.0},
        ]
        return {"dip": "192.0.2.1", "dp": 53, "verdict": "works", "connections": conns}

    summary = Summary()
    summary.add(record(0.04))
    assert summary.short_path == 1
    assert summary.median_tfo_rounds is None
    summary.add(record(20.0))
    assert (summary.median_baseline_rounds, summary.median_tfo_rounds) == (2.0, 1.0)


def test_refused_targets_get_a_hint_about_the_per_client_limit() -> None:
    from dnstfo.cli.probe import render_summary

    summary = Summary()
    summary.add({"dip": "192.0.2.1", "dp": 53, "verdict": "works"})
    assert not [line for line in render_summary(summary) if "max-per-client" in line]
    summary.add({"dip": "192.0.2.2", "dp": 53, "verdict": "refused"})
    (hint,) = [line for line in render_summary(summary) if "max-per-client" in line]
    assert hint.startswith("1 target closed connections unanswered")
    assert "lower --concurrency" in hint
