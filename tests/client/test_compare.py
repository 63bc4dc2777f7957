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
