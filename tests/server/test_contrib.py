"""The operator files in contrib/ and the --pidfile option they use."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dnstfo.cli.serve import build_config
from tests.server.serveproc import ServeProcess, free_port, run_serve, write_zone

CONTRIB = Path(__file__).parents[2] / "contrib"
UNIT = CONTRIB / "dnstfo.service"


def unit_values(key: str) -> list[str]:
    prefix = f"{key}="
    return [
        line[len(prefix) :] for line in UNIT.read_text().splitlines() if line.startswith(prefix)
    ]


def test_unit_binds_port_53_without_root_and_reloads_with_sighup() -> None:
    assert unit_values("AmbientCapabilities") == ["CAP_NET_BIND_SERVICE"]
    assert unit_values("User") == ["dnstfo"]
    assert unit_values("ExecReload") == ["/bin/kill -HUP $MAINPID"]
    (start,) = unit_values("ExecStart")
    argv = shlex.split(start)
    assert argv[1] == "serve"
    options = dict(zip(argv[2::2], argv[3::2], strict=True))
    assert options["--pidfile"].startswith("/run/dnstfo/")  # RuntimeDirectory=dnstfo
    assert unit_values("RuntimeDirectory") == ["dnstfo"]
    config = build_config({"config": str(CONTRIB / "dnstfo.toml"), "pidfile": options["--pidfile"]})
    assert {endpoint.port for endpoint in config.listen} == {53}


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("needs systemd-analyze")
    dnstfo = Path(sys.executable).parent / "dnstfo"
    unit = tmp_path / "dnstfo.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/dnstfo", str(dnstfo)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_pidfile_written_once_bound_and_removed_at_exit(tmp_path: Path, workers: int) -> None:
    zones = tmp_path / "zones"
    write_zone(zones)
    pidfile = tmp_path / "run" / "dnstfo.pid"
    pidfile.parent.mkdir()
    port = free_port()
    args = ["--zone", str(zones), "--listen", f"127.0.0.1:{port}", "--workers", str(workers)]
    with ServeProcess([*args, "--pidfile", str(pidfile)]) as server:
        server.first_answer(port)
        assert pidfile.read_text() == f"{server.proc.pid}\n"  # the supervisor with workers
        assert server.stop() == 0, server.text
    assert not pidfile.exists()
    assert list(pidfile.parent.iterdir()) == []  # no temporary file left either


def test_pidfile_of_a_running_process_is_refused(tmp_path: Path) -> None:
    zones = tmp_path / "zones"
    write_zone(zones)
    pidfile = tmp_path / "dnstfo.pid"
    pidfile.write_text(f"{os.getpid()}\n")  # this test process: running
    args = ["--zone", str(zones), "--listen", f"127.0.0.1:{free_port()}", "--pidfile", str(pidfile)]
    status, err = run_serve(args)
    assert status == 1, err
    assert f"Error: pidfile {pidfile} names process {os.getpid()}, which is running" in err
    assert "Traceback" not in err
    assert pidfile.read_text() == f"{os.getpid()}\n"  # left alone
