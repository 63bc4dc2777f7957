"""``dnstfo serve`` refuses bad start-up conditions with one clear line and exit 1."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from dnstfo.kernel.sysctl import read_sysctl
from tests.server.serveproc import ServeProcess, address_of, free_port, run_serve, write_zone

NOBODY = 65534
TLS_FILES = ["--tls-cert", "c.pem", "--tls-key", "k.pem"]


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


def test_privileged_port_as_unprivileged_user_names_the_capability() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to an unprivileged user")
    first = int(read_sysctl("net.ipv4.ip_unprivileged_port_start"))
    if first <= 53:
        pytest.skip(f"port 53 is not privileged here (ip_unprivileged_port_start={first})")
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to drop privileges")
    drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    with tempfile.TemporaryDirectory(prefix="dtfo-zones-") as readable:  # pytest's is 0700
        os.chmod(readable, 0o755)
        zones = Path(readable) / "zones"
        write_zone(zones)
        status, err = run_serve(["--zone", str(zones), "--listen", "127.0.0.1:53"], prefix=drop)
    assert status == 1, err
    line = error_line(err)
    assert "EACCES" in line
    assert "root or with CAP_NET_BIND_SERVICE" in line


def zone_args(zones: Path) -> list[str]:
    return ["--zone", str(zones), "--listen", f"127.0.0.1:{free_port()}"]


def test_missing_zone_directory(tmp_path: Path) -> None:
    status, err = run_serve(zone_args(tmp_path / "nope"))
    assert status == 1, err
    assert error_line(err).endswith(
        "nope: cannot list the zone directory: No such file or directory"
    )


def test_empty_zone_directory(tmp_path: Path) -> None:
    (tmp_path / ".hidden").write_text("not a zone")
    status, err = run_serve(zone_args(tmp_path))
    assert status == 1, err
    assert "no zone files in this directory" in error_line(err)


@pytest.mark.parametrize("workers", [1, 2])
def test_every_zone_broken_refuses_to_start_naming_each_once(tmp_path: Path, workers: int) -> None:
    (tmp_path / "a.test").write_text("$TTL 60\n@ SOA ns h 1 2 3 4 5\n@ NS ns\nns A 999.1.2.3\n")
    (tmp_path / "b.test").write_text("$TTL 60\n@ NS ns\n")
    status, err = run_serve([*zone_args(tmp_path), "--workers", str(workers)])
    assert status == 1, err
    assert "no zone loaded: all 2 zone files failed" in error_line(err)
    assert sum("a.test" in line for line in err.splitlines()) == 1
    assert f"{tmp_path / 'a.test'}:4: bad IPv4 address '999.1.2.3'" in err
    assert sum("b.test" in line for line in err.splitlines()) == 1
    assert "no SOA record" in err
    assert "serving" not in err
    assert "Fast Open" not in err


def test_partly_broken_directory_serves_the_good_zones(tmp_path: Path) -> None:
    zones = tmp_path / "zones"
    write_zone(zones)
    (zones / "broken.test").write_text("$TTL 60\n@ SOA ns h 1 2 3 4 5\n@ NS ns\nw AAAA 1::2::3\n")
    port = free_port()
    with ServeProcess(["--zone", str(zones), "--listen", f"127.0.0.1:{port}"]) as server:
        assert address_of(server.first_answer(port)) == "192.0.2.7"
        assert server.stop() == 0
    assert server.count("broken.test") == 1
    assert server.count(r"broken.test:4: bad IPv6 address '1::2::3'") == 1
    assert server.count(r"zone t\.example\. serial 1, 4 records, from .*t\.example\.zone") == 1


@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM])
def test_workers_refuse_a_port_another_reuseport_socket_holds(tmp_path: Path, kind: int) -> None:
    """A server with workers (SO_REUSEPORT) held by another is refused as a single
    process is, instead of joining its port group and taking a share of its traffic."""
    zones = tmp_path / "zones"
    write_zone(zones)
    with socket.socket(socket.AF_INET, kind) as other:  # what another server's worker holds
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            other.listen()
        port = other.getsockname()[1]
        args = ["--zone", str(zones), "--listen", f"127.0.0.1:{port}", "--workers", "2"]
        status, err = run_serve(args)
    assert status == 1, err
    line = error_line(err)
    assert f"127.0.0.1:{port}: the port is in use by another process" in line
    assert "EADDRINUSE" in line
    assert "serving" not in err


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--listen", "127.0.0.1:5630", "--listen", "127.0.0.1:5630"], "is given twice"),
        (["--listen", "0.0.0.0:5630", "--listen", "127.0.0.1:5630"], "overlaps --listen"),
        (["--listen", "127.0.0.1:5630", "--forward", "127.0.0.1:5630"], "is our own --listen"),
        (["--listen", "0.0.0.0:5630", "--forward", "127.0.0.2:5630"], "is our own --listen"),
        (["--tls-cert", "c.pem", "--tls-key", "k.pem"], "no --tls-listen"),
        (["--forward-allow", "10.0.0.0/8"], "nothing is forwarded"),
        (["--tls-listen", "127.0.0.1:5630", *TLS_FILES, "--workers", "2"], "leave out --workers"),
        (
            ["--listen", "127.0.0.1:5630", "--tls-listen", "127.0.0.1:5630", *TLS_FILES],
            "is also a --listen address",
        ),
    ],
)
def test_argument_errors_come_before_the_zones(
    tmp_path: Path, extra: list[str], words: str
) -> None:
    """Errors the arguments alone decide are the one line, before any zone loads (the
    zone directory here does not exist, so a later check would name it instead)."""
    status, err = run_serve(["--zone", str(tmp_path / "nope"), *extra])
    assert status == 1, err
    assert words in error_line(err)
    assert "zone directory" not in err


def test_forward_to_a_local_address_under_our_wildcard(tmp_path: Path) -> None:
    """An upstream on one of our own addresses, not loopback, under a wildcard listen
    address is found at start-up (the namespace's addresses are read, not guessed)."""
    hosts = [a for a in _local_ipv4() if not a.startswith("127.")]
    if not hosts:
        pytest.skip("no IPv4 address besides loopback here")
    args = ["--zone", str(tmp_path / "nope"), "--listen", "0.0.0.0:5631"]
    status, err = run_serve([*args, "--forward", f"{hosts[0]}:5631"])
    assert status == 1, err
    assert "is our own --listen 0.0.0.0:5631" in error_line(err)


def _local_ipv4() -> list[str]:
    import fcntl
    import struct

    found = []
    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                packed = fcntl.ioctl(sock.fileno(), 0x8915, struct.pack("256s", name.encode()))
            except OSError:
                continue
        found.append(socket.inet_ntoa(packed[20:24]))
    return found
