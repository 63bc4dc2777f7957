"""``dnstfo serve`` refuses bad start-up conditions with one clear line and exit 1."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from dnstfo.kernel.sysctl import read_sysctl
from tests.server.serveproc import free_port, run_serve, write_zone

NOBODY = 65534


def error_line(err: str) -> str:
    """The one ``Error:`` line of a failed start, with no traceback around it."""
    assert "Traceback" not in err, err
    (line,) = [line for line in err.splitlines() if line.startswith("Error:")]
    return line


def test_metrics_port_in_use_single_process(tmp_path: Path) -> None:
    zones = tmp_path / "zones"
    write_zone(zones)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        metrics = taken.getsockname()[1]
        args = ["--zone", str(zones), "--listen", f"127.0.0.1:{free_port()}"]
        status, err = run_serve([*args, "--metrics", f"127.0.0.1:{metrics}"])
    assert status == 1, err
    line = error_line(err)
    assert f"metrics on 127.0.0.1:{metrics}" in line
    assert "EADDRINUSE" in line


def test_privileged_port_as_unprivileged_user_names_the_capability(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to an unprivileged user")
    first = int(read_sysctl("net.ipv4.ip_unprivileged_port_start"))
    if first <= 53:
        pytest.skip(f"port 53 is not privileged here (ip_unprivileged_port_start={first})")
    zones = tmp_path / "zones"
    write_zone(zones)
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to drop privileges")
    zones.chmod(0o755)
    tmp_path.chmod(0o755)
    drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    status, err = run_serve(["--zone", str(zones), "--listen", "127.0.0.1:53"], prefix=drop)
    assert status == 1, err
    line = error_line(err)
    assert "EACCES" in line
    assert "root or with CAP_NET_BIND_SERVICE" in line
