"""The lab demo: ``dnstfo serve`` in the server namespace, ``+compare`` from the client one.

The client asks the same question four or more times across the delay line (see
:mod:`dnstfo.client.compare`): once over plain TCP (handshake, then query: 2 round trips),
once to prime, which fetches a cookie (2 round trips again), then with the query in the SYN
(1 round trip). The server's query log says which queries arrived in the SYN.

With ``tls`` the same over DNS over TLS (RFC 7858, port 853, a test CA made on the fly):
the TLS 1.3 handshake adds a round trip, so 3 become 2, the ClientHello riding in the SYN.

:func:`demo_target` runs the server, :func:`demo_exchange` the comparison; :func:`run_demo`
builds the lab around both. Rendering is the CLI's job.
"""

from __future__ import annotations

import contextlib
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from dnstfo.client.compare import CompareStep, Comparison, Step, compare
from dnstfo.client.config import QueryConfig, TlsOptions
from dnstfo.errors import LabError, UsageError
from dnstfo.lab.netns import Namespace, realtime_priority
from dnstfo.lab.topology import Lab, LabSpec, start_lab

log = logging.getLogger(__name__)

DEFAULT_ZONES = Path(__file__).resolve().parents[2] / "zones"
"""The zones shipped with the repository."""
QNAME = "example.com"
"""The name the demo looks up (in zones/example.com.zone)."""
PORT = 53
"""The port ``dnstfo serve`` listens on in the server namespace."""
TLS_PORT = 853
"""Its DNS-over-TLS port (``tls``)."""
ONE_ROUND = 1.5
"""TFO queries faster than this many round trips took one round trip."""
TWO_ROUNDS = (1.5, 2.5)
"""A plain TCP query between these many round trips took two."""

_START_TIMEOUT_S = 15.0
_STOP_TIMEOUT_S = 5.0
_TCP_LISTEN = "0A"  # socket state in /proc/net/tcp
_CLI = "from dnstfo.cli import main; main(prog_name='dnstfo')"


@dataclass(frozen=True, slots=True)
class ServedQuery:
    """One line of the server's query log (``dnstfo serve --query-log json``)."""

    client: str
    """Client address."""
    port: int
    """Client port: matches a query's source port."""
    qname: str
    """Name asked for."""
    qtype: str
    """Type asked for."""
    rcode: str
    """Response code sent."""
    transport: str
    """``tcp`` or ``udp``."""
    tfo: bool
    """The query arrived in the data of the SYN."""
    latency_ms: float
    """Time the server took to answer."""

    @classmethod
    def from_line(cls, line: str) -> ServedQuery | None:
        """Parses one query log line; None for other lines (server start and stop)."""
        try:
            data = json.loads(line)
            return cls(
                client=data["client"],
                port=int(data["port"]),
                qname=data["qname"] or "-",
                qtype=data["qtype"],
                rcode=data["rcode"],
                transport=data["transport"],
                tfo=bool(data["tfo"]),
                latency_ms=float(data["latency_ms"]),
            )
        except (ValueError, TypeError, KeyError):
            return None


@dataclass
class DemoServer:
    """``dnstfo serve`` running in the lab's server namespace."""

    address: tuple[str, int]
    """Where it listens."""
    namespace: str
    """The namespace it runs in."""
    zones: Path
    """The zone directory it serves."""
    ca_file: Path | None = None
    """The test CA that signed its certificate, when it serves DNS over TLS."""
    log_lines: list[str] = field(default_factory=list)
    """Its stderr, filled in when it has stopped."""

    @property
    def served(self) -> tuple[ServedQuery, ...]:
        """The queries it logged (after it has stopped)."""
        parsed = (ServedQuery.from_line(line) for line in self.log_lines)
        return tuple(q for q in parsed if q is not None)


@dataclass(frozen=True, slots=True)
class DemoResult:
    """What the demo showed."""

    spec: LabSpec
    """The lab it ran on."""
    comparison: Comparison
    """The ``+compare`` steps, the saving and the verdict."""
    served: tuple[ServedQuery, ...]
    """The server's query log."""
    tls: bool = False
    """Over DNS over TLS (3 round trips become 2)."""

    @property
    def shortfall(self) -> str | None:
        """Why the round trips shown are not the promised 2 then 1 (TLS: 3 then 2); None
        when they are."""
        c = self.comparison
        tfo = [s.result.tfo.timings.rounds for s in c.steps if s.step is Step.TFO]
        return rounds_shortfall(c.worked, c.baseline_rounds, tfo, extra=1 if self.tls else 0)

    @property
    def story_held(self) -> bool:
        """Every TFO query rode in the SYN and took one round trip; plain TCP took two."""
        return self.shortfall is None

    def served_for(self, step: CompareStep) -> ServedQuery | None:
        """The server's log line for one step (matched by the client's port), or None."""
        return next((q for q in self.served if q.port == step.result.source[1]), None)


def rounds_shortfall(
    worked: bool,
    baseline_rounds: float | None,
    tfo_rounds: Sequence[float | None],
    *,
    extra: int = 0,
) -> str | None:
    """Checks the round-trip figures the demo shows against what it promises.

    The promise: plain TCP takes 2 round trips, a TFO query 1 (the median, as in the
    saving line). On a path too short for round trips to outweigh processing time
    (``--rtt 0ms``) neither holds, whatever the kernel did, and the demo must not claim a
    saving.

    Args:
        worked: every TFO query rode in the SYN and was acknowledged.
        baseline_rounds: round trips of the plain TCP query (None: not measured).
        tfo_rounds: round trips of each TFO query.
        extra: round trips added to both (1 for the TLS 1.3 handshake).

    Returns:
        The first figure that breaks the promise, in words; None when all hold.
    """
    if not worked:
        return "TFO did not work (see above)"
    low, high = TWO_ROUNDS
    if baseline_rounds is None or not low + extra <= baseline_rounds < high + extra:
        return f"plain TCP took {_rounds_text(baseline_rounds)} round trips, not {2 + extra}"
    measured = [r for r in tfo_rounds if r is not None]
    median = statistics.median(measured) if len(measured) == len(tfo_rounds) else None
    if median is None or median >= ONE_ROUND + extra:
        return f"the TFO queries took {_rounds_text(median)} round trips (median), not {1 + extra}"
    return None


def _rounds_text(rounds: float | None) -> str:
    return "?" if rounds is None else f"{rounds:g}"


@contextlib.contextmanager
def demo_target(
    lab: Lab, zones: Path = DEFAULT_ZONES, *, tls_dir: Path | None = None
) -> Iterator[DemoServer]:
    """Runs ``dnstfo serve`` in the lab's server namespace until the block ends.

    Args:
        lab: the running lab.
        zones: the zone directory to serve.
        tls_dir: serve DNS over TLS too, with a test CA made in this directory.

    Yields:
        The server, listening; its log is filled in once the block has ended.

    Raises:
        UsageError: ``zones`` is not a directory.
        LabError: the server exited or did not listen in time.
    """
    if not zones.is_dir():
        raise UsageError(f"no zone directory at {zones}")
    server = DemoServer((lab.server_v4, PORT), lab.server.name, zones)
    argv = [
        *("ip", "netns", "exec", lab.server.name, sys.executable, "-c", _CLI, "serve"),
        *("--zone", str(zones), "--listen", f"{lab.server_v4}:{PORT}", "--query-log", "json"),
    ]
    port = PORT
    if tls_dir is not None:
        from dnstfo.lab.testca import make_test_ca

        ca = make_test_ca(tls_dir, ("dns.test",), (lab.server_v4,))
        argv += ["--tls-listen", f"{lab.server_v4}:{TLS_PORT}"]
        argv += ["--tls-cert", str(ca.cert), "--tls-key", str(ca.key)]
        server.address, server.ca_file, port = (lab.server_v4, TLS_PORT), ca.ca_cert, TLS_PORT
    # Its log goes to a file, not a pipe read at the end: a JSON line per query would fill
    # the pipe (64 KiB, a few hundred queries) and block the server mid-answer.
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, text=True)
        try:
            wait_listening(lab.server, proc, port, log=err)
            # Timed like the client and the delay line: busy processes must not delay its
            # answers. Only once it listens: a start-up (imports, zones) at real-time
            # priority is a CPU burst that can stall the relay or push the CPU into RT
            # throttling. (``ip netns exec`` execs the server in place: the pid is its.)
            realtime_priority(pid=proc.pid)
            log.info("dnstfo serve listening on %s:%d in %s", *server.address, server.namespace)
            yield server
        finally:
            stop_server(proc)
            err.seek(0)
            server.log_lines = err.read().splitlines()


def wait_listening(
    ns: Namespace,
    proc: subprocess.Popen[str],
    port: int,
    name: str = "dnstfo serve",
    log: IO[str] | None = None,
) -> None:
    """Waits until ``proc`` (``name``, for the error) listens on TCP ``port`` in ``ns``.

    ``log``: the file its stderr goes to, when not a pipe (the error quotes its end).

    Raises:
        LabError: it exited, or did not listen within ``_START_TIMEOUT_S``.
    """
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _, err = proc.communicate()
            if log is not None:
                log.seek(0)
                err = log.read()
            raise LabError(f"{name} in {ns.name} exited with status {proc.returncode}: "
                           f"{err.strip()[-500:]}")  # fmt: skip
        if ns.in_thread(tcp_listening, port):
            return
        time.sleep(0.05)  # polling for the listening socket, bounded
    raise LabError(f"{name} in {ns.name} did not listen on port {port} within "
                   f"{_START_TIMEOUT_S:g} s")  # fmt: skip


def tcp_listening(port: int) -> bool:
    """Whether an IPv4 TCP socket listens on ``port`` in the calling thread's namespace."""
    # thread-self, not self: /proc/self/net follows the main thread, and this runs in a
    # thread that entered the server namespace (no fork per poll).
    lines = Path("/proc/thread-self/net/tcp").read_text().splitlines()[1:]
    fields = (line.split() for line in lines)
    return any(f[1].endswith(f":{port:04X}") and f[3] == _TCP_LISTEN for f in fields)


def stop_server(proc: subprocess.Popen[str]) -> list[str]:
    """Stops a server (SIGTERM: ``dnstfo serve`` finishes in-flight answers; SIGKILL after
    ``_STOP_TIMEOUT_S``) and returns its stderr lines (none when not a pipe)."""
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log.warning("a lab server ignored SIGTERM; killing it")
        proc.kill()
        _, err = proc.communicate()
    return (err or "").splitlines()


def demo_exchange(
    lab: Lab, address: tuple[str, int], *, tfo_queries: int = 3, ca_file: Path | None = None
) -> Comparison:
    """Runs ``+compare`` for :data:`QNAME` from the client namespace to ``address``.

    ``ca_file``: over DNS over TLS, trusting this CA.

    Raises:
        DnstfoError: a query failed outright (timeout, refused, bad response).
    """
    tls = None if ca_file is None else TlsOptions(ca_file=str(ca_file), hostname=address[0])
    config = QueryConfig(qname=QNAME, server=address[0], port=address[1], tls=tls)
    timeout = 30.0 + (tfo_queries + 2) * config.timeout
    return lab.client.run(compare, config, tfo_queries=tfo_queries, timeout=timeout, realtime=True)


def run_demo(
    spec: LabSpec,
    *,
    tfo_queries: int = 3,
    zones: Path = DEFAULT_ZONES,
    on_lab: Callable[[Lab, DemoServer], None] | None = None,
    tls: bool = False,
) -> DemoResult:
    """Builds a lab, serves the zones, runs the comparison, tears everything down.

    Args:
        spec: the lab to build (RTT, faults, TFO sysctls).
        tfo_queries: TFO queries after the priming one.
        zones: the zone directory to serve.
        on_lab: called once the lab is up and the server listens (to show them).
        tls: over DNS over TLS (a test CA is made in a temporary directory).

    Returns:
        The comparison and the server's query log.

    Raises:
        PermissionNeeded: not root or no /dev/net/tun.
        LabError: the lab or the server failed.
        DnstfoError: a query failed outright.
    """
    import tempfile

    with (
        tempfile.TemporaryDirectory(prefix="dtfo-ca-") as tmp,
        start_lab(spec) as lab,
        demo_target(lab, zones, tls_dir=Path(tmp) if tls else None) as server,
    ):
        if on_lab is not None:
            on_lab(lab, server)
        comparison = demo_exchange(
            lab, server.address, tfo_queries=tfo_queries, ca_file=server.ca_file
        )
    return DemoResult(spec, comparison, server.served, tls)
