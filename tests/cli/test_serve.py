"""``dnstfo serve`` and ``dnstfo keygen``: option parsing, config file, key files."""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import stat
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from dnstfo.cli import main
from dnstfo.cli.serve import build_config
from dnstfo.errors import UsageError
from dnstfo.kernel.sockets import TfoKey
from dnstfo.server.config import Endpoint, QueryLog
from tests.server.serveproc import (
    ServeProcess,
    address_of,
    ask,
    free_port,
    write_zone,
)

OPTIONS = {"zone": None, "listen": (), "config": None, "axfr_allow": ()}


def options(**given: object) -> dict[str, object]:
    return {**OPTIONS, **given}


def test_defaults() -> None:
    config = build_config(options(zone="zones"))
    assert config.listen == (Endpoint("127.0.0.1", 5353),)
    assert config.query_log is QueryLog.OFF
    assert config.axfr_allow == ()
    assert config.limits.connection.idle_timeout_ns == 10_000_000_000


def test_listen_forms() -> None:
    config = build_config(options(zone="z", listen=("127.0.0.1", "[::1]:53", "192.0.2.1:8053")))
    assert config.listen == (
        Endpoint("127.0.0.1", 5353),
        Endpoint("::1", 53),
        Endpoint("192.0.2.1", 8053),
    )


@pytest.mark.parametrize("bad", ["localhost", "[::1", "1.2.3.4:99999", "[::1]x"])
def test_bad_listen(bad: str) -> None:
    with pytest.raises(UsageError):
        build_config(options(zone="z", listen=(bad,)))


@pytest.mark.parametrize(
    ("given", "ways"),
    [
        ("::1:5353", "write [::1]:5353 or [::1:5353] (port 5353)"),
        ("::1", "write [::1] (port 5353)"),
        ("2001:db8::53", "write [2001:db8::53] (port 5353)"),
    ],
)
def test_ipv6_without_brackets_says_how_to_write_it(given: str, ways: str) -> None:
    result = CliRunner().invoke(main, ["serve", "--zone", "z", "--listen", given])
    assert result.exit_code == 1
    assert result.output == f"Error: IPv6 address {given!r} needs brackets: {ways}\n"


@pytest.mark.parametrize(
    ("name", "error"),
    [("workers", "--workers must be at least 1"), ("tfo_queue", "--tfo-queue must be at least 1")],
)
def test_zero_workers_or_queue_refused_not_taken_as_the_default(name: str, error: str) -> None:
    with pytest.raises(UsageError, match=error):
        build_config(options(zone="z", **{name: 0}))


def test_config_file_and_override(tmp_path: Path) -> None:
    conf = tmp_path / "serve.toml"
    conf.write_text(
        'zone = "zones"\nlisten = ["[::1]:5300"]\nworkers = 2\nquery-log = "json"\n'
        'axfr-allow = ["192.0.2.0/24"]\ntfo-queue = 64\n'
        "[limits]\nidle-timeout = 3\nmax-per-client = 9\n"
    )
    config = build_config(options(config=str(conf)))
    assert config.listen == (Endpoint("::1", 5300),)
    assert config.workers == 2
    assert config.tfo_queue == 64
    assert config.query_log is QueryLog.JSON
    assert config.axfr_allow == (ipaddress.ip_network("192.0.2.0/24"),)
    assert config.limits.max_per_client == 9
    assert config.limits.connection.idle_timeout_ns == 3_000_000_000
    overridden = build_config(
        options(config=str(conf), workers=1, listen=("127.0.0.2:53",), idle_timeout=1.5)
    )
    assert overridden.workers == 1
    assert overridden.listen == (Endpoint("127.0.0.2", 53),)
    assert overridden.limits.connection.idle_timeout_ns == 1_500_000_000
    assert overridden.limits.max_per_client == 9  # still from the file


def test_config_file_unknown_key(tmp_path: Path) -> None:
    conf = tmp_path / "serve.toml"
    conf.write_text('zone = "z"\nlisten-on = "x"\n')
    result = CliRunner().invoke(main, ["serve", "--config", str(conf)])
    assert result.exit_code == 1
    assert "unknown keys listen-on" in result.output


def test_serve_needs_a_zone() -> None:
    result = CliRunner().invoke(main, ["serve"])
    assert result.exit_code == 1
    assert "zone directory is needed" in result.output


def test_help_names_the_default_listen_address() -> None:
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0
    assert "127.0.0.1:5353" in result.output


def test_keygen_writes_a_0600_key(tmp_path: Path) -> None:
    path = tmp_path / "tfo.key"
    old_umask = os.umask(0)  # even a permissive umask must not widen the mode
    try:
        result = CliRunner().invoke(main, ["keygen", "-o", str(path)])
    finally:
        os.umask(old_umask)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = TfoKey.parse(path.read_text())
    assert key.backup is None
    assert path.read_text().strip() == key.text()


def test_keygen_prints_a_key() -> None:
    result = CliRunner().invoke(main, ["keygen"])
    assert result.exit_code == 0
    TfoKey.parse(result.output)


def test_group_readable_key_refused(tmp_path: Path) -> None:
    path = tmp_path / "tfo.key"
    CliRunner().invoke(main, ["keygen", "-o", str(path)])
    path.chmod(0o640)
    zones = tmp_path / "zones"
    zones.mkdir()
    result = CliRunner().invoke(
        main, ["serve", "--zone", str(zones), "--listen", "127.0.0.1:0", "--tfo-key", str(path)]
    )
    assert result.exit_code == 1
    assert "accessible by group or others" in result.output
    assert "chmod 600" in result.output


def fetch(url: str, within: float = 10.0) -> str:
    """GETs a URL, retrying while the server is still starting (bounded)."""
    deadline = time.monotonic() + within
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return str(response.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def tcp_noerror(metrics_text: str) -> int:
    """The metrics' count of NOERROR answers over TCP."""
    want = 'dnstfo_queries_total{rcode="NOERROR",transport="tcp"} '
    for line in metrics_text.splitlines():
        if line.startswith(want):
            return int(float(line[len(want) :]))
    return 0


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_process_sighup_reload_and_sigterm(tmp_path: Path, workers: int) -> None:
    zones = tmp_path / "zones"
    zone = write_zone(zones, "192.0.2.7")
    port = free_port()
    metrics = free_port()
    args = ["--zone", str(zones), "--listen", f"127.0.0.1:{port}", "--workers", str(workers)]
    args += ["--metrics", f"127.0.0.1:{metrics}", "--query-log", "json"]
    answered = 0  # NOERROR answers over TCP

    def ask_w() -> str:
        nonlocal answered
        address = address_of(ask(port))
        answered += 1
        return address

    with ServeProcess(args) as server:
        assert address_of(server.first_answer(port)) == "192.0.2.7"
        answered += 1
        zone.write_text(zone.read_text().replace("192.0.2.7", "192.0.2.8"))
        server.signal(signal.SIGHUP)
        server.wait_for("reloaded: 1 zones", count=workers)  # every worker reloaded
        for _ in range(20):  # fresh connections: SO_REUSEPORT spreads them over the workers
            assert ask_w() == "192.0.2.8"
        # The metrics count every query, whichever worker answered it (workers report
        # their counters every second).
        deadline = time.monotonic() + 10
        while (seen := tcp_noerror(fetch(f"http://127.0.0.1:{metrics}/metrics"))) != answered:
            assert time.monotonic() < deadline, f"metrics count {seen} of {answered} queries"
            time.sleep(0.2)
        text = fetch(f"http://127.0.0.1:{metrics}/metrics")
        assert "dnstfo_kernel_tcp_passive_total" in text
        assert server.stop() == 0, server.text
        err = server.text
    assert err.count("stopped:") == workers + (workers > 1)  # each worker, then their sum
    if workers > 1:
        (total,) = [line for line in err.splitlines() if "all 2 workers stopped:" in line]
        assert f"{answered} queries, tcp {answered}" in total
        # Both workers answered some (the kernel spreads connections over the listeners).
        summaries = [
            line for line in err.splitlines() if " stopped: " in line and "all" not in line
        ]
        assert all(" 0 queries" not in line for line in summaries), summaries


EXAMPLE = Path(__file__).parents[2] / "contrib" / "dnstfo.toml"


def config_error(tmp_path: Path, text: str) -> str:
    """The one error line of ``serve --config`` with a file holding ``text``."""
    conf = tmp_path / "serve.toml"
    conf.write_text(text)
    result = CliRunner().invoke(main, ["serve", "--config", str(conf)])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"Error: config file {conf}: ")
    assert result.output.count("\n") == 1, result.output
    return result.output[len(f"Error: config file {conf}: ") :].strip()


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('zone = "z"\nworkers = "2"\n', "workers must be an integer, not the string '2'"),
        ('zone = "z"\nworkers = true\n', "workers must be an integer, not the boolean True"),
        ("zone = 5\n", "zone must be a string, not the integer 5"),
        (
            'zone = "z"\nlisten = 53\n',
            'listen must be a list of strings, e.g. ["127.0.0.1:53"] (or one string), '
            "not the integer 53",
        ),
        ('zone = "z"\nlimits = 3\n', "limits must be a table, not the integer 3"),
        (
            'zone = "z"\n[limits]\nidle-timeout = "3s"\n',
            "limits.idle-timeout must be a number of seconds, not the string '3s'",
        ),
        (
            'zone = "z"\n[limits]\nmax-connections = 1.5\n',
            "limits.max-connections must be an integer, not the number 1.5",
        ),
        ('zone = "z"\n[limits]\nidle = 3\n', "unknown keys in [limits]: idle (known: "),
        (
            'zone = "z"\nlisten = ["::1:53"]\n',
            "listen: IPv6 address '::1:53' needs brackets: write [::1]:53 or [::1:53] (port 5353)",
        ),
        ('zone = "z"\nquery-log = "yes"\n', "query-log: query-log is off, text or json"),
        ('zone = "z"\n[limits]\nlifetime = -1\n', "[limits]: "),
        ("zone = [", "not TOML: "),
    ],
)
def test_config_file_errors_name_the_key_and_type(tmp_path: Path, text: str, error: str) -> None:
    assert config_error(tmp_path, text).startswith(error)


def test_config_list_keys_take_one_string(tmp_path: Path) -> None:
    conf = tmp_path / "serve.toml"
    conf.write_text('zone = "z"\nlisten = "127.0.0.1:53"\naxfr-allow = "192.0.2.0/24"\n')
    config = build_config(options(config=str(conf)))
    assert config.listen == (Endpoint("127.0.0.1", 53),)
    assert config.axfr_allow == (ipaddress.ip_network("192.0.2.0/24"),)


def test_example_config_documents_every_key_and_parses(tmp_path: Path) -> None:
    from dnstfo.cli.serve import _LIMIT_KEYS, _TYPES

    text = EXAMPLE.read_text()
    for key in [*_TYPES, *_LIMIT_KEYS]:
        if key != "limits":
            assert re.search(rf"^(# )?{key} = ", text, re.MULTILINE), f"{key} not in the example"
    # The file as shipped, and with every example value switched on, is a valid config.
    build_config(options(config=str(EXAMPLE)))
    every = tmp_path / "every.toml"
    every.write_text(re.sub(r"^# (\S+ = )", r"\1", text, flags=re.MULTILINE))
    config = build_config(options(config=str(every)))
    assert config.workers == 2
    assert config.limits.connection.write_stall_ns == 5_000_000_000
    assert config.pidfile == Path("/run/dnstfo/dnstfo.pid")
