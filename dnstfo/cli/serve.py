"""``dnstfo serve``: options and a TOML file -> ServerConfig -> run.

A config file (``--config``, TOML) holds the same settings as the options, with the
option names as keys (``zone``, ``listen`` (list), ``tfo-queue``, ``tfo-key``, ``workers``,
``metrics``, ``query-log``, ``axfr-allow`` (list), ``rrl``, ``rrl-slip``) plus a ``[limits]`` table
(``max-connections``, ``max-per-client``, ``idle-timeout``, ``lifetime``, ``max-queries``).
Options given on the command line override the file.
"""

from __future__ import annotations

import logging
import sys
import tomllib
from pathlib import Path
from typing import Any

import click

from dnstfo.errors import DnstfoError, UsageError
from dnstfo.kernel.sockets import DEFAULT_TFO_QUEUE
from dnstfo.server.config import (
    DEFAULT_PORT,
    Endpoint,
    Limits,
    QueryLog,
    ServerConfig,
    parse_network,
)
from dnstfo.server.rrl import RrlConfig
from dnstfo.wire.connection import NS_PER_S

_LIMITS = Limits()
_POLICY = _LIMITS.connection
"""The defaults, shown in --help."""
_LIMIT_KEYS = {
    "max-connections": "max_connections",
    "max-per-client": "max_per_client",
    "idle-timeout": "idle_timeout",
    "lifetime": "lifetime",
    "max-queries": "max_queries",
}
_TOP_KEYS = {
    "zone",
    "listen",
    "tfo-queue",
    "tfo-key",
    "workers",
    "metrics",
    "query-log",
    "axfr-allow",
    "limits",
    "rrl",
    "rrl-slip",
}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path}: {exc}") from exc
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise UsageError(f"config file {path}: unknown keys {', '.join(sorted(unknown))}")
    limits = data.get("limits", {})
    if not isinstance(limits, dict) or set(limits) - set(_LIMIT_KEYS):
        raise UsageError(f"config file {path}: [limits] takes {', '.join(_LIMIT_KEYS)}")
    return data


def build_config(options: dict[str, Any]) -> ServerConfig:
    """Merges the config file (if any) with the command-line options into a ServerConfig.

    Args:
        options: option values by option name (``None`` / empty: not given).

    Raises:
        UsageError: a value is wrong, or no zone directory was given.
    """
    file: dict[str, Any] = {}
    if options.get("config"):
        file = _read_toml(Path(options["config"]))

    def pick(name: str) -> Any:
        value = options.get(name.replace("-", "_"))
        if value is None or value == ():
            value = file.get(name)
        return value

    zone = pick("zone")
    if zone is None:
        raise UsageError("a zone directory is needed (--zone DIR or zone = in the config)")
    listen = pick("listen") or [f"127.0.0.1:{DEFAULT_PORT}"]
    metrics = pick("metrics")
    key = pick("tfo-key")
    limits_file = file.get("limits", {})
    limit_values = {
        field: options.get(field) if options.get(field) is not None else limits_file.get(key_)
        for key_, field in _LIMIT_KEYS.items()
    }
    try:
        query_log = QueryLog(pick("query-log") or "off")
    except ValueError as exc:
        raise UsageError("query-log is off, text or json") from exc
    return ServerConfig(
        zone_dir=Path(zone),
        listen=tuple(Endpoint.parse(str(text)) for text in listen),
        tfo_queue=int(pick("tfo-queue") or DEFAULT_TFO_QUEUE),
        tfo_key_file=Path(key) if key else None,
        workers=int(pick("workers") or 1),
        metrics=Endpoint.parse(str(metrics), default_port=9153) if metrics else None,
        query_log=query_log,
        axfr_allow=tuple(parse_network(str(n)) for n in pick("axfr-allow") or ()),
        limits=Limits.from_seconds(**limit_values),
        rrl=_rrl(pick("rrl"), pick("rrl-slip")),
    )


def _rrl(rate: Any, slip: Any) -> RrlConfig:
    """UDP response rate limiting from ``--rrl``/``--rrl-slip`` or ``rrl``/``rrl-slip``."""
    for key, value in (("rrl", rate), ("rrl-slip", slip)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise UsageError(f"{key} must be an integer, not {value!r}")
    default = RrlConfig()
    return RrlConfig(
        rate=default.rate if rate is None else rate, slip=default.slip if slip is None else slip
    )


@click.command()
@click.option("--zone", type=click.Path(file_okay=False), help="Directory of zone files.")
@click.option(
    "--listen",
    multiple=True,
    metavar="ADDR[:PORT]",
    help=f"Address to serve on, TCP and UDP; repeatable; IPv6 as [::1]:{DEFAULT_PORT}. "
    f"Default 127.0.0.1:{DEFAULT_PORT} (unprivileged; port 53 needs root).",
)
@click.option(
    "--tfo-queue", type=int, help=f"TFO queue length of the listeners [{DEFAULT_TFO_QUEUE}]."
)
@click.option("--tfo-key", type=click.Path(dir_okay=False), help="TFO key file (mode 0600).")
@click.option("--workers", type=int, help="Processes sharing the port (SO_REUSEPORT) [1].")
@click.option("--metrics", metavar="ADDR:PORT", help="Serve Prometheus metrics here.")
@click.option("--config", type=click.Path(dir_okay=False), help="TOML config file.")
@click.option(
    "--query-log", type=click.Choice([m.value for m in QueryLog]), help="Per-query log [off]."
)
@click.option("--axfr-allow", multiple=True, metavar="NET", help="Allow AXFR from NET.")
@click.option(
    "--max-connections", type=int, help=f"TCP connections in total [{_LIMITS.max_connections}]."
)
@click.option(
    "--max-per-client",
    type=int,
    help=f"TCP connections per client address [{_LIMITS.max_per_client}].",
)
@click.option(
    "--idle-timeout",
    type=float,
    help=f"Seconds before an idle TCP close [{_POLICY.idle_timeout_ns // NS_PER_S}].",
)
@click.option(
    "--lifetime",
    type=float,
    help=f"Seconds a TCP connection may live [{_POLICY.lifetime_ns // NS_PER_S}].",
)
@click.option(
    "--max-queries", type=int, help=f"Queries per TCP connection [{_POLICY.max_queries}]."
)
@click.option(
    "--rrl",
    type=int,
    metavar="RATE",
    help="UDP responses per second per client /24 (IPv4) or /56 (IPv6); 0: off [off].",
)
@click.option(
    "--rrl-slip",
    type=int,
    metavar="N",
    help="Of the responses over --rrl, send every Nth truncated so the client retries "
    f"over TCP; 0: drop all [{RrlConfig().slip}].",
)
def serve(**options: Any) -> None:
    """Serve zones over TCP with TCP Fast Open, and over UDP.

    SIGHUP reloads the zones (a broken file keeps its old zone) and the key file (the
    old key stays valid as backup); SIGTERM or Ctrl-C stops after in-flight answers.
    """
    from dnstfo.server.run import run

    try:
        config = build_config(options)
        _setup_logging(config.query_log)
        status = run(config)
    except DnstfoError as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(status)


def _setup_logging(mode: QueryLog) -> None:
    """Server lifecycle lines (listening, reloads, the summary) and query lines are INFO:
    show them without turning up every other logger."""
    server_logger = logging.getLogger("dnstfo.server")
    server_logger.setLevel(min(logging.getLogger().getEffectiveLevel(), logging.INFO))
    if mode is QueryLog.OFF:
        return
    from dnstfo.server.querylog import QUERY_LOGGER

    logger = logging.getLogger(QUERY_LOGGER)
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
