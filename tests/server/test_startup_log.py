"""The start-up log says what the kernel will do: TCP with Fast Open only when the
namespace's server bit is on, never right after the warning that it is off."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.serveproc import ServeProcess, write_zone

pytestmark = [
    pytest.mark.linux,
    pytest.mark.netadmin,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a network namespace"),
]


@pytest.fixture(params=["1", "3"], ids=["client-only", "server-on"])
def ns(request: pytest.FixtureRequest) -> Iterator[tuple[object, str]]:
    from dnstfo.lab.netns import namespace

    with namespace("s", sysctls={"net.ipv4.tcp_fastopen": request.param}) as space:
        yield space, request.param


def test_serving_line_matches_the_kernel(ns: tuple[object, str], tmp_path: Path) -> None:
    space, mode = ns
    zones = tmp_path / "zones"
    write_zone(zones)
    prefix = ["ip", "netns", "exec", space.name]  # type: ignore[attr-defined]
    args = ["--zone", str(zones), "--listen", "127.0.0.1:5353"]
    with ServeProcess(args, prefix=prefix) as server:
        server.wait_for("serving 127.0.0.1:5353")
        assert server.stop() == 0
    (serving,) = [line for line in server.lines if "serving 127.0.0.1:5353" in line]
    warned = server.count("does not accept SYN data") == 1
    if mode == "3":
        assert serving.endswith("over TCP (Fast Open) and UDP")
        assert not warned
    else:
        assert serving.endswith("over TCP without Fast Open and UDP")
        assert warned
    assert server.count(r"zone t\.example\. serial 1, 4 records") == 1
