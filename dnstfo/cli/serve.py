"""``dnstfo serve``: options and a TOML file -> ServerConfig -> run.

A config file (``--config``, TOML) holds the same settings as the options, with the
option names as keys, plus a ``[limits]`` table; ``contrib/dnstfo.toml`` shows and
explains every key. Each key has one type (:data:`_TYPES`): a value of another type is
an error that names the key and the type it takes. The list keys (``listen``,
``axfr-allow``) also take one string, as a list of one. Options given on the command
line override the file.
"""

from __future__ import annotations

import logging
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from dnstfo.answer.forward import ForwardConfig, ForwardTransport, ForwardZone, parse_forward_zone
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
from dnstfo.server.tls import DEFAULT_PORT as TLS_PORT
from dnstfo.wire.connection import NS_PER_S

_T = TypeVar("_T")

_LIMITS = Limits()
_POLICY = _LIMITS.connection
"""The defaults, shown in --help."""
_LIMIT_KEYS = {
    "max-connections": "max_connections",
    "max-per-client": "max_per_client",
    "idle-timeout": "idle_timeout",
    "lifetime": "lifetime",
    "max-queries": "max_queries",
    "write-stall": "write_stall",
}
_TYPES = {
    "zone": "string",
    "listen": "strings",
    "tfo-queue": "integer",
    "tfo-key": "string",
    "workers": "integer",
    "metrics": "string",
    "query-log": "string",
    "axfr-allow": "strings",
    "rrl": "integer",
    "rrl-slip": "integer",
    "pidfile": "string",
    "forward": "strings",
    "forward-zone": "strings",
    "forward-allow": "strings",
    "forward-transport": "string",
    "forward-cache-size": "integer",
    "tls-listen": "strings",
    "tls-cert": "string",
    "tls-key": "string",
    "limits": "table",
}
"""The type of each top-level key of the config file."""
_LIMIT_TYPES = {"idle-timeout": "number", "lifetime": "number", "write-stall": "number"}
"""The type of each ``[limits]`` key that is not an integer."""
_TYPE_WORDS = {
    "string": "a string",
    "strings": 'a list of strings, e.g. ["127.0.0.1:53"] (or one string)',
    "integer": "an integer",
    "number": "a number of seconds",
    "table": "a table",
}


def _describe(value: Any) -> str:
    """A TOML value's type and value in words, for an error message."""
    kinds = (
        (bool, "the boolean"),
        (int, "the integer"),
        (float, "the number"),
        (str, "the string"),
        (list, "the list"),
        (dict, "a table"),
    )
    for kind, words in kinds:
        if isinstance(value, kind):
            return words if kind is dict else f"{words} {value!r}"
    return f"{type(value).__name__} {value!r}"  # dates and times


def _typed(where: str, key: str, value: Any, kind: str) -> Any:
    """``value`` checked against ``kind`` (one string becomes a list for ``strings``).

    Raises:
        UsageError: the value is of another type; the message names the key.
    """
    plain = not isinstance(value, bool)
    ok = {
        "string": isinstance(value, str),
        "strings": isinstance(value, list) and all(isinstance(v, str) for v in value),
        "integer": plain and isinstance(value, int),
        "number": plain and isinstance(value, int | float),
        "table": isinstance(value, dict),
    }[kind]
    if kind == "strings" and isinstance(value, str):
        return [value]
    if not ok:
        raise UsageError(f"{where}: {key} must be {_TYPE_WORDS[kind]}, not {_describe(value)}")
    return value


def _read_toml(path: Path) -> dict[str, Any]:
    """Reads a config file and checks each key and the type of its value.

    Raises:
        UsageError: unreadable, not TOML, an unknown key or a value of the wrong type.
    """
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"config file {path}: not TOML: {exc}") from exc
    where = f"config file {path}"
    unknown = set(data) - set(_TYPES)
    if unknown:
        raise UsageError(
            f"{where}: unknown keys {', '.join(sorted(unknown))} (known: {', '.join(_TYPES)})"
        )
    checked = {key: _typed(where, key, value, _TYPES[key]) for key, value in data.items()}
    limits = checked.get("limits", {})
    unknown = set(limits) - set(_LIMIT_KEYS)
    if unknown:
        raise UsageError(
            f"{where}: unknown keys in [limits]: {', '.join(sorted(unknown))} "
            f"(known: {', '.join(_LIMIT_KEYS)})"
        )
    checked["limits"] = {
        key: _typed(where, f"limits.{key}", value, _LIMIT_TYPES.get(key, "integer"))
        for key, value in limits.items()
    }
    return checked


def build_config(options: dict[str, Any]) -> ServerConfig:
    """Merges the config file (if any) with the command-line options into a ServerConfig.

    Args:
        options: option values by option name (``None`` / empty: not given).

    Raises:
        UsageError: a value is wrong (a file's value: the message names the file and key),
            or no zone directory was given.
    """
    file: dict[str, Any] = {}
    where = ""
    if options.get("config"):
        file = _read_toml(Path(options["config"]))
        where = f"config file {options['config']}"

    def given(name: str) -> bool:
        value = options.get(name.replace("-", "_"))
        return value is not None and value != ()

    def pick(name: str) -> Any:
        return options.get(name.replace("-", "_")) if given(name) else file.get(name)

    def parse(name: str, convert: Callable[[Any], _T]) -> _T:
        """Converts the value of ``name``; an error in the file's value names the key."""
        try:
            return convert(pick(name))
        except UsageError as exc:
            if given(name) or name not in file:
                raise
            raise UsageError(f"{where}: {name}: {exc}") from exc

    zone = pick("zone")
    if zone is None:
        raise UsageError("a zone directory is needed (--zone DIR or zone = in the config)")
    limits_file = file.get("limits", {})
    limit_values = {
        field: options.get(field) if options.get(field) is not None else limits_file.get(key_)
        for key_, field in _LIMIT_KEYS.items()
    }
    try:
        limits = Limits.from_seconds(**limit_values)
    except UsageError as exc:
        raise UsageError(f"{where}: [limits]: {exc}" if limits_file else str(exc)) from exc
    pidfile = pick("pidfile")
    return ServerConfig(
        zone_dir=Path(zone),
        listen=parse(
            "listen",
            lambda v: tuple(Endpoint.parse(str(t)) for t in v or [f"127.0.0.1:{DEFAULT_PORT}"]),
        ),
        tfo_queue=int(q) if (q := pick("tfo-queue")) is not None else DEFAULT_TFO_QUEUE,
        tfo_key_file=Path(key) if (key := pick("tfo-key")) else None,
        workers=int(w) if (w := pick("workers")) is not None else 1,  # 0 is refused
        metrics=parse("metrics", lambda v: Endpoint.parse(v, default_port=9153) if v else None),
        query_log=parse("query-log", _query_log),
        axfr_allow=parse("axfr-allow", lambda v: tuple(parse_network(str(n)) for n in v or ())),
        limits=limits,
        rrl=parse("rrl", lambda _: _rrl(pick("rrl"), pick("rrl-slip"))),
        pidfile=Path(pidfile) if pidfile else None,
        forward=parse("forward", lambda _: _forward(pick)),
        tls_listen=parse(
            "tls-listen",
            lambda v: tuple(Endpoint.parse(str(t), default_port=TLS_PORT) for t in v or ()),
        ),
        tls_cert=Path(cert) if (cert := pick("tls-cert")) else None,
        tls_key=Path(tls_key) if (tls_key := pick("tls-key")) else None,
    )


def _forward(pick: Callable[[str], Any]) -> ForwardConfig:
    """Forwarding from ``--forward*`` or the ``forward*`` keys.

    Raises:
        UsageError: a bad address, zone, network, transport or cache size.
    """
    default = ForwardConfig()

    def address(text: str) -> tuple[str, int]:
        endpoint = Endpoint.parse(str(text), default_port=53)
        if not endpoint.port:  # (0 picks a free port to listen on; no server is there)
            raise UsageError(f"bad upstream port in {text!r}: want 1 to 65535")
        return endpoint.host, endpoint.port

    zones = []
    for text in pick("forward-zone") or ():
        try:
            suffix, addresses = parse_forward_zone(str(text))
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        zones.append(ForwardZone(suffix, tuple(address(a) for a in addresses)))
    allow = pick("forward-allow")
    transport = pick("forward-transport") or default.transport.value
    try:
        kind = ForwardTransport(transport)
    except ValueError as exc:
        raise UsageError(f"forward-transport is tcp or udp, not {transport!r}") from exc
    size = pick("forward-cache-size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise UsageError(f"forward-cache-size must be an integer of 0 or more, not {size!r}")
    upstreams = tuple(address(a) for a in pick("forward") or ())
    networks = tuple(parse_network(str(n)) for n in allow) if allow else default.allow
    if not upstreams and not zones:
        for name in ("forward-allow", "forward-transport", "forward-cache-size"):
            if pick(name) is not None and pick(name) != ():
                raise UsageError(
                    f"--{name} given but no --forward or --forward-zone: nothing is forwarded"
                )
    return ForwardConfig(
        upstreams=upstreams,
        zones=tuple(zones),
        allow=networks,
        transport=kind,
        cache_size=default.cache_size if size is None else size,
    )


def _query_log(value: str | None) -> QueryLog:
    try:
        return QueryLog(value or "off")
    except ValueError as exc:
        raise UsageError("query-log is off, text or json") from exc


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
    "--max-queries",
    type=int,
    help=f"Queries per TCP connection; 0: no limit [{_POLICY.max_queries}].",
)
@click.option(
    "--write-stall",
    type=float,
    help="Seconds a TCP connection may leave its socket full before it is closed "
    f"(a client that does not read) [{_POLICY.write_stall_ns // NS_PER_S}].",
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
@click.option(
    "--pidfile",
    type=click.Path(dir_okay=False),
    help="Write the server's process ID here once its sockets are bound; removed at exit.",
)
@click.option(
    "--forward",
    multiple=True,
    metavar="ADDR[:PORT]",
    help="Send queries for names outside our zones to this upstream (port 53 by "
    "default); repeatable, tried in order.",
)
@click.option(
    "--forward-zone",
    multiple=True,
    metavar="ZONE=ADDR[:PORT][,ADDR...]",
    help="Upstreams for names under ZONE (the longest matching zone wins); repeatable.",
)
@click.option(
    "--forward-allow",
    multiple=True,
    metavar="NET",
    help="Clients that may use forwarding; others get REFUSED [loopback only].",
)
@click.option(
    "--forward-transport",
    type=click.Choice([t.value for t in ForwardTransport]),
    help="How queries go upstream: tcp (Fast Open, connections reused) or udp [tcp].",
)
@click.option(
    "--forward-cache-size",
    type=int,
    metavar="N",
    help=f"Upstream answers cached; 0: no cache [{ForwardConfig().cache_size}].",
)
@click.option(
    "--tls-listen",
    multiple=True,
    metavar="ADDR[:PORT]",
    help=f"Address to serve DNS over TLS on (TCP, Fast Open); repeatable [port {TLS_PORT}].",
)
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="PEM certificate chain.")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="PEM private key (mode 0600).")
def serve(**options: Any) -> None:
    """Serve zones over TCP with TCP Fast Open, and over UDP.

    SIGHUP reloads the zones (a broken file keeps its old zone), the key file (the
    old key stays valid as backup) and the TLS certificate (a bad pair keeps the old
    one); SIGTERM or Ctrl-C stops after in-flight answers.
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
