"""The forwarding demo: the round trips of a forwarded query, counted per link.

In a chain (see :mod:`dnstfo.lab.chain`) ``dnstfo serve`` answers ``zones/`` in the
upstream namespace and ``dnstfo serve --forward`` runs in the forwarder's namespace; the
client asks the forwarder for :data:`~dnstfo.lab.demo.QNAME` three ways:

1. Fast Open off on both links (``tcp_fastopen=0`` in the client's and the forwarder's
   namespaces), fresh connections: a handshake, then the query, on each link: 2 + 2.
2. Fast Open on, cookies cached on both links (a priming query fetched them), a fresh
   upstream connection (the forwarder restarted): the query rides in the SYN on each: 1 + 1.
3. The same, the forwarder's upstream connection reused: 1 + 1 without any SYN upstream.

Each link is timed apart, by its own delay line's packet log (see
:mod:`dnstfo.lab.linktimes`): a link's time is its span on the exchange less what the
programs at its ends held (the client's reaction to the handshake, the forwarder's whole
hold of the query on the client link; the forwarder's reaction and the upstream server's
answer on the upstream link). The relays and the client read the same monotonic clock
(net namespaces have none of their own). What is left of the forwarder's hold once the
upstream link and the upstream server are taken out is its own work on the query: what
forwarding costs beyond the upstream's round trips. The forwarder's query log says which
upstream connection it used and gives its own view of the upstream time.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dnstfo.client.config import QueryConfig, TfoMethod
from dnstfo.client.query import exchange
from dnstfo.lab.chain import FORWARDER_V4, UPSTREAM_V4, Chain, ChainSpec, start_chain
from dnstfo.lab.demo import DEFAULT_ZONES, QNAME, stop_server, wait_listening
from dnstfo.lab.linktimes import ExchangeTimes, exchange_times
from dnstfo.lab.netns import Namespace, realtime_priority

PORT = 53
_CLI = "from dnstfo.cli import main; main(prog_name='dnstfo')"
_OWN_ZONE = "$ORIGIN fwd.test.\n$TTL 60\n@ SOA ns h 1 2 3 4 5\n@ NS ns\nns A 192.0.2.1\n"
"""The forwarder's own zone: anything but the demo's name, so that name is forwarded."""
WARM_UP = "ns.fwd.test"
"""Asked first of each new forwarder (its own zone): a fresh process's first answer pays
for work done once (as the plain lab demo's first query does)."""


@dataclass(frozen=True, slots=True)
class ForwardCase:
    """One forwarded query of the demo."""

    title: str
    """What the case shows."""
    client_ms: float
    """The query as the client timed it on the wire: from the connect to the answer."""
    client_link_ms: float
    """Its time on the client link (the line's span less both ends' holds)."""
    held_ms: float
    """How long the forwarder held the query, as the client link's delay line saw it."""
    upstream_ms: float | None
    """Its time on the upstream link, likewise (None: nothing went upstream)."""
    upstream_server_ms: float | None
    """How long the upstream server held the forwarded query (None: nothing went upstream)."""
    logged_upstream_ms: float | None
    """The forwarder's own upstream time, from its query log (None: no log line)."""
    note: str
    """The forwarder's query log note (upstream, fresh or reused, SYN data)."""
    client_in_syn: bool
    """The client's query went in its SYN and was acknowledged."""
    want_client: int
    """Round trips expected on the client link."""
    want_upstream: int
    """Round trips expected on the upstream link."""
    upstream_opened: bool | None = None
    """A SYN opened the upstream connection (False: reused; None: nothing went upstream)."""
    want_upstream_opened: bool = True
    """Whether the upstream connection should have been opened for the query."""

    @property
    def own_ms(self) -> float | None:
        """The forwarder's own work on the query: its hold less the upstream link and server."""
        if self.upstream_ms is None or self.upstream_server_ms is None:
            return None
        return self.held_ms - self.upstream_ms - self.upstream_server_ms

    @property
    def client_own_ms(self) -> float:
        """The client's own part of its time: the rest once both links and the forwarder are out."""
        return self.client_ms - self.client_link_ms - self.held_ms


@dataclass(frozen=True, slots=True)
class ForwardDemoResult:
    """The three cases, in order."""

    spec: ChainSpec
    """The chain they ran in."""
    cases: tuple[ForwardCase, ...] = field(default_factory=tuple)
    """What each query took."""

    def rounds(self, case: ForwardCase) -> tuple[float, float | None]:
        """(client link, upstream link) round trips of a case."""
        upstream = (
            None if case.upstream_ms is None else case.upstream_ms / self.spec.upstream_rtt_ms
        )
        return case.client_link_ms / self.spec.rtt_ms, upstream

    @property
    def story_held(self) -> bool:
        """Every case took the round trips expected on each link (to the nearest round), on a
        fresh or reused upstream connection as expected."""
        for case in self.cases:
            if case.upstream_opened is not case.want_upstream_opened:
                return False
            client, upstream = self.rounds(case)
            if upstream is None or abs(upstream - case.want_upstream) >= 0.5:
                return False
            if abs(client - case.want_client) >= 0.5:
                return False
        return True


@contextlib.contextmanager
def _serve(ns: Namespace, args: list[str], log: list[str]) -> Iterator[None]:
    """``dnstfo serve ARGS`` in ``ns``; its stderr lines are added to ``log`` at the end."""
    argv = ["ip", "netns", "exec", ns.name, sys.executable, "-c", _CLI, "serve", *args]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(ns, proc, PORT)
        realtime_priority(pid=proc.pid)  # once it listens: not its start-up (see demo.py)
        yield
    finally:
        log.extend(stop_server(proc))


def _forwarded(log: list[str]) -> list[tuple[float | None, str]]:
    """(upstream ms, note) of each forwarded query in a JSON query log."""
    out: list[tuple[float | None, str]] = []
    for line in log:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        note = entry.get("forward") if isinstance(entry, dict) else None
        if note:
            ms = None
            if "upstream-ms=" in note:
                ms = float(note.rsplit("upstream-ms=", 1)[1].split()[0])
            out.append((ms, note))
    return out


def run_forward_demo(
    spec: ChainSpec,
    *,
    zones: Path = DEFAULT_ZONES,
    on_chain: Callable[[Chain], None] | None = None,
) -> ForwardDemoResult:
    """Builds a chain, runs the three cases, tears everything down.

    Raises:
        PermissionNeeded: not root or no /dev/net/tun.
        LabError: the chain or a server failed, or a link's packets were not as expected.
        DnstfoError: a query failed outright.
    """
    with tempfile.TemporaryDirectory(prefix="dtfo-fwd-") as tmp, start_chain(spec) as chain:
        own = Path(tmp)
        (own / "fwd.test.zone").write_text(_OWN_ZONE)
        own.chmod(0o755)
        forwarder = ["--zone", str(own), "--listen", f"{FORWARDER_V4}:{PORT}",
                     "--forward", f"{UPSTREAM_V4}:{PORT}", "--forward-allow", "198.18.0.0/24",
                     "--forward-cache-size", "0", "--query-log", "json"]  # fmt: skip
        upstream = ["--zone", str(zones), "--listen", f"{UPSTREAM_V4}:{PORT}"]
        if on_chain is not None:
            on_chain(chain)
        ignored: list[str] = []
        with _serve(chain.upstream, upstream, ignored):
            tfo_off = {"net.ipv4.tcp_fastopen": "0"}
            tfo_on = {"net.ipv4.tcp_fastopen": str(spec.tcp_fastopen)}
            for ns in (chain.client, chain.forwarder):
                ns.write_sysctls(tfo_off)
            log: list[str] = []
            with _serve(chain.forwarder, forwarder, log):
                _ask(chain, TfoMethod.OFF, WARM_UP)
                plain = _timed(chain, TfoMethod.OFF)
            plain_case = _case("Fast Open off, fresh connections", plain, _forwarded(log), 2, 2)
            for ns in (chain.client, chain.forwarder):
                ns.write_sysctls(tfo_on)
            with _serve(chain.forwarder, forwarder, ignored):
                _ask(chain, TfoMethod.SENDTO)  # priming: cookies for both links
            log = []
            with _serve(chain.forwarder, forwarder, log):
                _ask(chain, TfoMethod.SENDTO, WARM_UP)
                fresh = _timed(chain, TfoMethod.SENDTO)
                reused = _timed(chain, TfoMethod.SENDTO)
            entries = _forwarded(log)
            cases = (
                plain_case,
                _case("Fast Open on both links, cookies cached", fresh, entries[:1], 1, 1),
                _case("Fast Open, upstream connection reused", reused, entries[1:], 1, 1, False),
            )
    return ForwardDemoResult(spec, cases)


@dataclass(frozen=True, slots=True)
class _Asked:
    """One query from the client namespace, as the client saw it."""

    wire_ms: float
    """From the connect to the answer."""
    in_syn: bool
    """The query went in the SYN and was acknowledged."""
    port: int
    """The client's TCP port."""


@dataclass(frozen=True, slots=True)
class _Timed:
    """One query, timed by the client and by both delay lines."""

    asked: _Asked
    """What the client saw."""
    client_link: ExchangeTimes
    """The client link's log of it."""
    upstream_link: ExchangeTimes | None
    """The upstream link's log of it (None: nothing went upstream)."""


def _ask(chain: Chain, tfo: TfoMethod, qname: str = QNAME) -> _Asked:
    """One query from the client namespace."""
    config = QueryConfig(qname=qname, server=FORWARDER_V4, port=PORT, tfo=tfo)
    result = chain.client.run(exchange, config, timeout=30.0, realtime=True)
    # Not ``elapsed_ms``: that also holds the client's reads of its cookie cache, sysctls
    # and routes (netlink), a few ms of work on neither link.
    wire_ms = result.tfo.timings.total_ms
    assert wire_ms is not None  # an answered query has a total
    in_syn = bool(result.tfo.after.attempted and result.tfo.after.syn_data_acked)
    return _Asked(wire_ms, in_syn, result.source[1])


def _timed(chain: Chain, tfo: TfoMethod) -> _Timed:
    """Asks :data:`QNAME` with both links' packet logs cleared first, and reads them after."""
    chain.client_link.clear()
    chain.upstream_link.clear()
    asked = _ask(chain, tfo)
    client_link = exchange_times(chain.client_link.packets(), asked.port)
    assert client_link is not None  # a port was given: a missing exchange raises
    return _Timed(asked, client_link, exchange_times(chain.upstream_link.packets()))


def _case(
    title: str,
    timed: _Timed,
    entries: list[tuple[float | None, str]],
    want_client: int,
    want_upstream: int,
    want_opened: bool = True,
) -> ForwardCase:
    logged_ms, note = entries[0] if entries else (None, "(no log line)")
    up = timed.upstream_link
    return ForwardCase(
        title=title,
        client_ms=timed.asked.wire_ms,
        client_link_ms=timed.client_link.link_ns / 1e6,
        held_ms=timed.client_link.far_ns / 1e6,
        upstream_ms=None if up is None else up.link_ns / 1e6,
        upstream_server_ms=None if up is None else up.far_ns / 1e6,
        logged_upstream_ms=logged_ms,
        note=note,
        client_in_syn=timed.asked.in_syn,
        want_client=want_client,
        want_upstream=want_upstream,
        upstream_opened=None if up is None else up.opened,
        want_upstream_opened=want_opened,
    )
