"""Fixtures for the probe's namespace tests: a fresh namespace with chosen TFO bits."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from dnstfo.lab.netns import Namespace, namespace


@pytest.fixture
def make_ns() -> Iterator[Callable[[str], Namespace]]:
    """Makes namespaces with ``net.ipv4.tcp_fastopen`` set as asked; removes them all."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a network namespace (run the suite as root)")
    with ExitStack() as stack:

        def make(tfo: str) -> Namespace:
            return stack.enter_context(namespace("p", sysctls={"net.ipv4.tcp_fastopen": tfo}))

        yield make
