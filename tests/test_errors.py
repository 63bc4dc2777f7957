from __future__ import annotations

import errno
import pickle

import pytest

from dnstfo.errors import (
    DnstfoError,
    KernelFeatureError,
    NetworkError,
    PhaseTimeout,
    ZoneLoadError,
)

# Errors cross process boundaries (the lab runs code in namespaces and pickles results).
CASES = [
    KernelFeatureError("client TCP Fast Open is off", "sysctl -w net.ipv4.tcp_fastopen=1"),
    NetworkError("connecting to 192.0.2.1 port 53", errno.ECONNREFUSED),
    PhaseTimeout("first byte", 2.5),
    ZoneLoadError("zones/example.com.zone", 12, "bad TTL"),
]


@pytest.mark.parametrize("exc", CASES, ids=lambda e: type(e).__name__)
def test_errors_pickle_with_their_fields(exc: DnstfoError) -> None:
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc)
    assert str(back) == str(exc)
    assert vars(back) == vars(exc)


def test_messages_say_what_and_where() -> None:
    assert str(CASES[1]) == "connecting to 192.0.2.1 port 53 (ECONNREFUSED)"
    assert str(CASES[2]) == "timed out after 2.5 s waiting for first byte"
    assert str(CASES[3]) == "zones/example.com.zone:12: bad TTL"
