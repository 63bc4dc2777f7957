"""Runs last in tests/lab: the lab tests left no namespace, TUN device or process behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dnstfo.lab.netns import lab_namespaces
from tests.lab.conftest import requires_lab

pytestmark = [pytest.mark.lab, requires_lab]


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def test_nothing_is_left_behind() -> None:
    assert lab_namespaces(mine=True) == []
    assert not [d for d in os.listdir("/sys/class/net") if d.startswith("dtfo")]
    leftovers = [
        (pid, Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" "))
        for pid in _children(os.getpid())
    ]
    assert leftovers == []
