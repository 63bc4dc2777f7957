"""Namespaces: names, sysctls inside, running code inside, and removal on errors."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from dnstfo.errors import LabError
from dnstfo.lab.netns import PREFIX, lab_namespaces, namespace
from tests.lab.conftest import requires_lab

pytestmark = [pytest.mark.lab, pytest.mark.netadmin, requires_lab]


def _netns_inode() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def _fail(message: str) -> None:
    raise ValueError(message)


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def test_namespace_has_sysctls_loopback_and_goes_away() -> None:
    host_tfo = Path("/proc/sys/net/ipv4/tcp_fastopen").read_text()
    with namespace("t", sysctls={"net.ipv4.tcp_fastopen": "1027"}) as ns:
        assert ns.name.startswith(f"{PREFIX}-t-")
        assert ns.name in lab_namespaces(mine=True)
        assert ns.read_sysctl("net.ipv4.tcp_fastopen") == "1027"
        assert ns.read_sysctl("net.ipv4.tcp_fastopen_blackhole_timeout_sec") == "0"
        assert "UP" in ns.exec(["ip", "-br", "link", "show", "lo"]).stdout
        assert ns.run(_netns_inode) != _netns_inode()
    assert ns.name not in lab_namespaces()
    assert Path("/proc/sys/net/ipv4/tcp_fastopen").read_text() == host_tfo


def test_namespace_is_removed_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError), namespace("t") as ns:
        raise RuntimeError("boom")
    assert ns.name not in lab_namespaces()


def test_run_returns_values_and_raises_the_childs_exception() -> None:
    with namespace("t") as ns:
        assert ns.run(pow, 2, 10) == 1024
        with pytest.raises(ValueError, match="from the child") as info:
            ns.run(_fail, "from the child")
        assert any("namespace child" in note for note in info.value.__notes__)


def test_run_kills_a_child_that_overruns() -> None:
    with namespace("t") as ns:
        started = time.monotonic()
        with pytest.raises(LabError, match="longer than"):
            ns.run(_sleep, 30, timeout=0.3)
        assert time.monotonic() - started < 5


def test_exec_realtime_runs_the_command_at_fifo_priority() -> None:
    # A timed client runs at real-time priority from its first instruction: two busy
    # processes on a small machine must not add milliseconds to its round trips.
    policy = ["python3", "-c", "import os; print(os.sched_getscheduler(0))"]
    with namespace("t") as ns:
        assert ns.exec(policy, realtime=True).stdout.strip() == str(os.SCHED_FIFO)
        assert ns.exec(policy).stdout.strip() == str(os.SCHED_OTHER)


def test_sockets_made_in_thread_belong_to_the_namespace() -> None:
    with namespace("t") as ns:
        listener = ns.in_thread(socket.create_server, ("127.0.0.1", 0))
        with listener:
            port = listener.getsockname()[1]
            out = ns.exec(["ss", "-Hltn", f"sport = :{port}"]).stdout
            assert f":{port}" in out
            host = socket.socket()
            with host, pytest.raises(ConnectionRefusedError):
                host.connect(("127.0.0.1", port))  # not in the host namespace


_HOLD_A_NAMESPACE = """
import signal
from dnstfo.lab.netns import namespace, signals_as_exceptions
with signals_as_exceptions(), namespace("t") as ns:
    print(ns.name, flush=True)
    signal.pause()
"""


def test_namespace_is_removed_when_the_process_gets_sigterm() -> None:
    import signal
    import subprocess
    import sys

    from dnstfo.lab.netns import remove_namespace

    argv = [sys.executable, "-c", _HOLD_A_NAMESPACE]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        name = proc.stdout.readline().strip()
        try:
            assert name in lab_namespaces()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
            assert name not in lab_namespaces()
        finally:
            proc.kill()
            if name.startswith(PREFIX):
                remove_namespace(name)
