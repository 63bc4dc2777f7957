"""The single-target report of ``dnstfo probe``: its cookie column, read from a record."""

from __future__ import annotations

from typing import Any

import pytest

from dnstfo.cli.probe import render_single

A, B = "0011223344556677", "8899aabbccddeeff"


def _record(requested: bool, before: str | None, after: str | None) -> dict[str, Any]:
    connection = {
        "step": "tfo", "tfo_requested": requested, "cookie_before": before, "cookie_after": after,
        "total_ms": 100.25, "rcode": "NOERROR", "failure": None, "error": None,
        "syn_data_sent": True, "syn_data_acked": True, "rounds": 1.0,
    }  # fmt: skip
    return {"dip": "192.0.2.53", "dp": 53, "connections": [connection], "verdict": "works",
            "reason": "every TFO connection rode in the SYN", "conditions": []}  # fmt: skip


@pytest.mark.parametrize(
    ("requested", "before", "after", "cookie"),
    [(False, A, A, "-"), (True, A, None, "none"), (True, None, A, "new"), (True, A, A, "same"),
     (True, A, B, "changed"), (True, None, None, "none")],
)  # fmt: skip
def test_the_cookie_column(requested: bool, before: str | None, after: str | None, cookie: str):
    row = render_single(_record(requested, before, after))[3]
    assert row.split() == ["tfo", "1.0", "100.2", "yes", "yes", cookie, "NOERROR"]
