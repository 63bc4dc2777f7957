from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from dnstfo.lab.netns import Namespace, namespace


@pytest.fixture
def tfo_ns() -> Iterator[Namespace]:
    """A fresh namespace with client and server Fast Open on (tcp_fastopen=3)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a network namespace (run the suite as root)")
    with namespace("k", sysctls={"net.ipv4.tcp_fastopen": "3"}) as ns:
        yield ns
