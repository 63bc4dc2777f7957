"""TFO key files that are not keys: one clear error at start, the old key kept on reload."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from dnstfo.errors import UsageError
from dnstfo.kernel.sockets import listener_key
from dnstfo.server.config import Endpoint, ServerConfig
from dnstfo.server.keys import generate_key, read_key_file, write_key_file
from tests.server.conftest import ServerThread
from tests.server.serveproc import free_port, run_serve, write_zone

GARBAGE = bytes(range(256)) * 4


def secret(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def test_binary_key_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a TFO key: binary data"):
        read_key_file(secret(tmp_path / "k", GARBAGE))


def test_text_garbage_is_named_briefly(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a TFO key") as info:
        read_key_file(secret(tmp_path / "k", b"x" * 100_000))
    assert len(str(info.value)) < 300


@pytest.mark.timeout(10)
def test_fifo_key_file_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "k"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(UsageError, match=r"not a regular file \(a FIFO\)"):
        read_key_file(fifo)


def test_directory_key_file_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "k"
    directory.mkdir(mode=0o700)
    with pytest.raises(UsageError, match=r"not a regular file \(a directory\)"):
        read_key_file(directory)


@pytest.mark.parametrize("kind", ["binary", "fifo"])
def test_serve_refuses_a_bad_key_file_in_one_line(tmp_path: Path, kind: str) -> None:
    key = tmp_path / "tfo.key"
    if kind == "fifo":
        os.mkfifo(key, 0o600)
    else:
        secret(key, GARBAGE)
    zones = tmp_path / "zones"
    write_zone(zones)
    args = ["--zone", str(zones), "--listen", f"127.0.0.1:{free_port()}", "--tfo-key", str(key)]
    status, err = run_serve(args, within=20)
    assert status == 1, err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("Error:")]
    assert str(key) in line
    assert ("binary data" if kind == "binary" else "a FIFO") in line


def test_reload_with_a_garbage_key_keeps_the_old_key(
    zone_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tfo.key"
    old = generate_key()
    write_key_file(path, old)
    config = ServerConfig(zone_dir=zone_dir, listen=(Endpoint("127.0.0.1", 0),), tfo_key_file=path)
    server = ServerThread(config, key=old)
    try:
        secret(path, GARBAGE)
        with caplog.at_level(logging.ERROR, "dnstfo.server"):
            result = server.call(server.server.reload)
        assert not result.key_rotated
        assert listener_key(server.server.listeners[0].tcp) == old
        (record,) = [r for r in caplog.records if "TFO key not reloaded" in r.getMessage()]
        assert "binary data" in record.getMessage()
        assert record.exc_info is None
        new = generate_key()
        write_key_file(path, new)
        assert server.call(server.server.reload).key_rotated
        assert listener_key(server.server.listeners[0].tcp) == new.with_backup(old)
    finally:
        server.stop()
