"""``+compare`` refuses a plan without TFO queries before it sends anything."""

from __future__ import annotations

import pytest

from dnstfo.client.compare import compare
from dnstfo.client.config import QueryConfig
from dnstfo.errors import UsageError


def test_compare_needs_a_tfo_query():
    # 192.0.2.1 (TEST-NET-1) is never reached: the plan is checked first.
    with pytest.raises(UsageError, match="at least one TFO query"):
        compare(QueryConfig("example.com", "192.0.2.1", timeout=0.01), tfo_queries=0)


def test_compare_counts_a_failed_query_and_goes_on():
    import socket

    from dnstfo.client.compare import Step
    from dnstfo.client.config import TfoMethod
    from tests.client.scriptserver import answer_a, serving

    def fail_priming(n, conn, q):
        if n == 1:
            conn.shutdown(socket.SHUT_WR)
        else:
            answer_a(conn, q)

    with serving(fail_priming) as port:
        config = QueryConfig("x.example", "127.0.0.1", port=port, tfo=TfoMethod.SENDTO)
        comparison = compare(config, tfo_queries=2)
    assert [s.step for s in comparison.steps] == [Step.BASELINE, Step.TFO, Step.TFO]
    ((failed),) = comparison.failed
    assert (failed.step, failed.index, failed.failure.phase) == (Step.PRIMING, 1, "first byte")
    assert not comparison.worked
    assert comparison.saving_ms is None
    assert "1 of 4 queries got no answer" in comparison.reason
