"""``dnstfo lab``: bring up the network lab, or run the round-trip demo in it."""

from __future__ import annotations

import re
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from dnstfo.errors import DnstfoError, PermissionNeeded, UsageError
from dnstfo.lab.delay import Fault
from dnstfo.lab.topology import MAX_ANYCAST, MAX_SERVER_ADDRESSES

if TYPE_CHECKING:
    from dnstfo.client.compare import CompareStep
    from dnstfo.client.result import TfoReport
    from dnstfo.lab.chain import Chain, ChainSpec
    from dnstfo.lab.demo import DemoResult, DemoServer
    from dnstfo.lab.forwarddemo import ForwardCase, ForwardDemoResult
    from dnstfo.lab.topology import Lab, LabSpec

EXIT_LAB_ERROR = 1
EXIT_NO_PRIVILEGE = 2
EXIT_STORY_FAILED = 3
SHORT_PATH_MS = 10.0
"""Below this RTT, round trips are too short to count against processing time."""

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*$")


def parse_ms(_ctx: click.Context | None, _param: click.Parameter | None, value: str) -> float:
    """Parses ``100ms``, ``0.1s`` or ``100`` (milliseconds) into milliseconds."""
    match = _DURATION.match(value)
    if not match:
        raise click.BadParameter(f"{value!r} is not a duration like 100ms or 0.1s")
    number, unit = float(match.group(1)), match.group(2) or "ms"
    return number * 1000 if unit == "s" else number


@contextmanager
def _lab_errors() -> Iterator[None]:
    """Turns library errors into one line and an exit code; Ctrl-C into a quiet exit."""
    try:
        yield
    except PermissionNeeded as exc:
        _fail(f"{exc}", EXIT_NO_PRIVILEGE)
    except DnstfoError as exc:
        _fail(f"{exc}", EXIT_LAB_ERROR)
    except KeyboardInterrupt:
        click.echo("lab down", err=True)
        sys.exit(130)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"dnstfo lab: {message}", err=True)
    sys.exit(code)


@click.group()
def lab() -> None:
    """The network lab: two namespaces joined by a delay line with middlebox faults."""


def _path_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options that shape the lab's path: RTT, faults, loss, jitter, TFO sysctls."""
    options = [
        click.option("--rtt", default="100ms", show_default=True, callback=parse_ms,
                     help="Round-trip time between client and server (100ms, 0.1s)."),
        click.option("--fault", "faults", multiple=True,
                     type=click.Choice([f.value for f in Fault]),
                     help="A middlebox fault to play (repeatable)."),
        click.option("--loss", type=click.FloatRange(0, 100), default=0.0,
                     help="Packet loss in %."),
        click.option("--jitter", default="0ms", callback=parse_ms,
                     help="Delay variation (e.g. 5ms)."),
        click.option("--client-tfo", type=int, default=3, show_default=True,
                     help="net.ipv4.tcp_fastopen in the client namespace."),
        click.option("--server-tfo", type=int, default=3, show_default=True,
                     help="net.ipv4.tcp_fastopen in the server namespace."),
    ]  # fmt: skip
    for option in reversed(options):
        fn = option(fn)
    return fn


def _spec(
    rtt: float,
    faults: tuple[str, ...],
    loss: float,
    jitter: float,
    client_tfo: int,
    server_tfo: int,
) -> LabSpec:
    """The lab spec the path options ask for."""
    from dnstfo.lab.topology import LabSpec

    return LabSpec(
        rtt_ms=rtt,
        jitter_ms=jitter,
        loss=loss / 100,
        faults=frozenset(Fault(f) for f in faults),
        client_tcp_fastopen=client_tfo,
        server_tcp_fastopen=server_tfo,
    )


def _check_name(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    from dnstfo.lab.netns import fixed_name

    if value is not None:
        try:
            fixed_name(value, "c")
        except UsageError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


@lab.command()
@_path_options
@click.option(
    "--name",
    callback=_check_name,
    help="Fixed namespace names dtfo-NAME-c and dtfo-NAME-s, for scripts [random ones].",
)
@click.option(
    "--server-addresses",
    type=click.IntRange(0, MAX_SERVER_ADDRESSES),
    default=0,
    help="Extra server addresses from 198.19.0.1, routed through the delay line.",
)
@click.option(
    "--anycast",
    type=click.IntRange(1, MAX_ANYCAST),
    default=1,
    show_default=True,
    help="Server instances (namespaces) behind the same addresses; flows split by hash.",
)
@click.option("--shared-key", is_flag=True,
              help="One TFO key for every anycast instance [each its own].")  # fmt: skip
@click.option("--chain", is_flag=True,
              help="Three namespaces, client - forwarder - upstream, each link its own delay "
              "line (--rtt: client link, --upstream-rtt: upstream link).")  # fmt: skip
@click.option("--upstream-rtt", default="100ms", show_default=True, callback=parse_ms,
              help="With --chain: RTT between forwarder and upstream.")  # fmt: skip
def up(
    name: str | None,
    server_addresses: int,
    anycast: int,
    shared_key: bool,
    chain: bool,
    upstream_rtt: float,
    **path: Any,
) -> None:
    """Start a lab and keep it up until Ctrl-C, SIGINT or SIGTERM.

    Run commands inside its namespaces with `ip netns exec NAME COMMAND`; the names are
    printed (with --name they are fixed).
    """
    from dnstfo.lab.topology import start_lab

    if chain:
        _chain_up(path, upstream_rtt, name, server_addresses, anycast, shared_key)
        return

    try:
        spec = replace(
            _spec(**path),
            name=name,
            server_addresses=server_addresses,
            anycast=anycast,
            shared_key=shared_key,
        )
    except UsageError as exc:
        raise click.UsageError(str(exc)) from None
    with _lab_errors(), start_lab(spec) as running:
        _render_lab(running, hints=True)
        click.echo("up; press Ctrl-C (or send SIGINT or SIGTERM) to tear it down")
        sys.stdout.flush()
        while True:
            signal.pause()


@lab.command()
@_path_options
@click.option("--count", default=3, show_default=True, help="TFO queries after priming.")
@click.option("--zone", "zones", type=click.Path(file_okay=False, path_type=Path),
              help="Zone directory to serve [zones/ of the repository].")  # fmt: skip
@click.option(
    "--tls",
    is_flag=True,
    help="DNS over TLS (port 853, a test CA made on the fly): 3 rounds become 2.",
)
@click.option(
    "--forward",
    is_flag=True,
    help="A forwarding chain (client - dnstfo serve --forward - upstream): the rounds of a "
    "forwarded query per link, without TFO, with TFO on both, upstream connection reused.",
)
@click.option("--upstream-rtt", default="100ms", show_default=True, callback=parse_ms,
              help="With --forward: RTT between forwarder and upstream.")  # fmt: skip
def demo(
    count: int, zones: Path | None, tls: bool, forward: bool, upstream_rtt: float, **path: Any
) -> None:
    """DNS over TCP with and without TFO: 2 round trips become 1 (with --tls, 3 become 2).

    Runs `dnstfo serve` in the lab's server namespace and `dnstfo query +compare` in the
    client namespace. Exit status: 0 when the TFO queries took 1 round trip (TLS: 2), 3
    when not (the reason is printed), 1 when the lab failed, 2 without root or TUN.
    With --forward: 0 when each link took the rounds expected in each case.
    """
    from dnstfo.lab.demo import DEFAULT_ZONES, run_demo

    if forward:
        _forward_demo(path, upstream_rtt, zones or DEFAULT_ZONES)
        return

    with _lab_errors():
        spec = _spec(**path)
        click.echo(f"building a lab with {spec.rtt_ms:g} ms RTT ...")
        result = run_demo(
            spec,
            tfo_queries=count,
            zones=zones or DEFAULT_ZONES,
            on_lab=_render_demo_lab,
            tls=tls,
        )
    _render_demo(result)
    if not result.story_held:
        sys.exit(EXIT_STORY_FAILED)


def _chain_spec(path: dict[str, Any], upstream_rtt: float) -> ChainSpec:
    """The chain the options ask for (the path faults belong to the two-namespace lab)."""
    from dnstfo.lab.chain import ChainSpec

    if path["faults"] or path["loss"] or path["jitter"]:
        raise click.UsageError("--fault, --loss and --jitter do not apply to a chain")
    if path["client_tfo"] != path["server_tfo"]:
        raise click.UsageError("a chain takes one TFO setting: give the same --client-tfo "
                               "and --server-tfo")  # fmt: skip
    try:
        return ChainSpec(path["rtt"], upstream_rtt, path["client_tfo"])
    except UsageError as exc:
        raise click.UsageError(str(exc)) from None


def _chain_up(
    path: dict[str, Any],
    upstream_rtt: float,
    name: str | None,
    server_addresses: int,
    anycast: int,
    shared_key: bool,
) -> None:
    from dnstfo.lab.chain import FORWARDER_V4, UPSTREAM_V4, start_chain

    if name or server_addresses or anycast > 1 or shared_key:
        raise click.UsageError("--name, --server-addresses, --anycast and --shared-key "
                               "do not apply to a chain")  # fmt: skip
    spec = _chain_spec(path, upstream_rtt)
    with _lab_errors(), start_chain(spec) as running:
        _render_chain(running)
        c, f, u = (ns.name for ns in running.namespaces)
        click.echo("run     for example")
        click.echo(f"        ip netns exec {u} dnstfo serve --zone zones --listen {UPSTREAM_V4}:53")
        click.echo(
            f"        ip netns exec {f} dnstfo serve --zone OWN --listen {FORWARDER_V4}:53 "
            f"--forward {UPSTREAM_V4} --forward-allow 198.18.0.1 --query-log text"
        )
        click.echo(f"        ip netns exec {c} dnstfo query example.com @{FORWARDER_V4}")
        click.echo("up; press Ctrl-C (or send SIGINT or SIGTERM) to tear it down")
        sys.stdout.flush()
        while True:
            signal.pause()


def _render_chain(running: Chain) -> None:
    from dnstfo.lab.chain import (
        CLIENT_DEVICE,
        CLIENT_V4,
        FORWARDER_UP_V4,
        FORWARDER_V4,
        UPSTREAM_DEVICE,
        UPSTREAM_V4,
    )

    spec = running.spec
    click.echo(f"client    {running.client.name}  {CLIENT_DEVICE} {CLIENT_V4}")
    click.echo(f"forwarder {running.forwarder.name}  {CLIENT_DEVICE} {FORWARDER_V4}, "
               f"{UPSTREAM_DEVICE} {FORWARDER_UP_V4}")  # fmt: skip
    click.echo(f"upstream  {running.upstream.name}  {UPSTREAM_DEVICE} {UPSTREAM_V4}")
    click.echo(f"delay     client link rtt {spec.rtt_ms:g} ms (relay pid "
               f"{running.client_link.pid}), upstream link rtt {spec.upstream_rtt_ms:g} ms "
               f"(relay pid {running.upstream_link.pid})")  # fmt: skip


def _forward_demo(path: dict[str, Any], upstream_rtt: float, zones: Path) -> None:
    from dnstfo.lab.forwarddemo import run_forward_demo

    spec = _chain_spec(path, upstream_rtt)
    with _lab_errors():
        click.echo(f"building a chain: client link {spec.rtt_ms:g} ms, upstream link "
                   f"{spec.upstream_rtt_ms:g} ms RTT ...")  # fmt: skip
        result = run_forward_demo(spec, zones=zones, on_chain=_render_chain)
    for case in result.cases:
        click.echo("")
        _render_forward_case(result, case)
    click.echo("")
    click.echo("rounds: a link's time over its RTT; a link's time is its delay line's span on the "
               "query\nless what the programs at its ends held it. Own work: what each program "
               "held it; the\nforwarder's is what forwarding cost the query beyond the "
               "upstream's rounds.\n")  # fmt: skip
    if result.story_held:
        click.echo(
            "each link took the round trips expected: TFO saves one per link, and a reused\n"
            "upstream connection costs one round trip without any handshake"
        )
    else:
        click.echo("some link did not take the round trips expected, or the upstream "
                   "connection was not\nopened or reused as the case wants (see the figures "
                   "above)")  # fmt: skip
        sys.exit(EXIT_STORY_FAILED)


def _render_forward_case(result: ForwardDemoResult, case: ForwardCase) -> None:
    """A case of the forwarding demo: each link's rounds, and each program's own work."""
    client, upstream = result.rounds(case)
    syn = "the query in the SYN, acked" if case.client_in_syn else "the query after the handshake"
    click.echo(f"  {case.title}: the client waited {case.client_ms:.1f} ms")
    click.echo(f"    client link    {client:.2f} rounds (want {case.want_client})  "
               f"{case.client_link_ms:5.1f} ms; {syn}")  # fmt: skip
    own, server = case.own_ms, case.upstream_server_ms
    if upstream is None or case.upstream_ms is None or own is None or server is None:
        click.echo(f"    upstream link  -    (want {case.want_upstream})  nothing went upstream")
        click.echo(f"    own work       forwarder (its whole hold) {case.held_ms:.1f} ms, "
                   f"client {case.client_own_ms:.1f} ms")  # fmt: skip
    else:
        click.echo(f"    upstream link  {upstream:.2f} rounds (want {case.want_upstream})  "
                   f"{case.upstream_ms:5.1f} ms")  # fmt: skip
        click.echo(f"    own work       forwarder {own:.1f} ms, upstream server {server:.1f} ms, "
                   f"client {case.client_own_ms:.1f} ms")  # fmt: skip
    click.echo(f"    its log        {case.note}")


def _render_lab(running: Lab, hints: bool = False) -> None:
    spec = running.spec
    faults = ", ".join(sorted(f.value for f in spec.faults)) or "none"
    click.echo(f"client  {running.client.name}  {running.device} {running.client_v4}"
               + (f" {running.client_v6}" if running.client_v6 else ""))  # fmt: skip
    for i, server in enumerate(running.servers):
        label = "server " if len(running.servers) == 1 else f"server{i + 1}"
        click.echo(f"{label} {server.name}  {running.device} {running.server_v4}"
                   + (f" {running.server_v6}" if running.server_v6 else ""))  # fmt: skip
    extra = running.server_addresses
    if extra:
        click.echo(f"        and {len(extra)} more: {extra[0]} .. {extra[-1]}")
    if len(running.servers) > 1:
        keys = "one shared TFO key" if running.spec.shared_key else "each its own TFO key"
        click.echo(f"anycast {len(running.servers)} instances, flows split by hash, {keys}")
    click.echo(
        f"delay   rtt {spec.rtt_ms:g} ms, jitter {spec.jitter_ms:g} ms, "
        f"loss {spec.loss * 100:g} %, faults: {faults} (relay pid {running.delay.pid})"
    )
    if not hints:
        return
    from dnstfo.lab.demo import DEFAULT_ZONES, QNAME

    server_ns, client, host = running.server.name, running.client.name, running.server_v4
    listen = "0.0.0.0" if running.server_addresses else host
    click.echo("run     a command in a namespace: ip netns exec NAME COMMAND, for example")
    click.echo(f"        ip netns exec {server_ns} dnstfo serve --zone {_near(DEFAULT_ZONES)} "
               f"--listen {listen}:53")  # fmt: skip
    if len(running.servers) > 1:
        click.echo("        (and the same in every server namespace of the anycast pool)")
    click.echo(f"        ip netns exec {client} dnstfo query {QNAME} @{host} +compare")


def _render_demo_lab(running: Lab, server: DemoServer) -> None:
    from dnstfo.lab.demo import QNAME

    _render_lab(running)
    host, port = server.address
    zones = _near(server.zones)
    if server.ca_file is None:
        click.echo(f"serve   dnstfo serve --zone {zones} --listen {host}:{port} --query-log json")
        query = f"dnstfo query {QNAME} A @{host} +compare"
    else:
        click.echo(f"serve   dnstfo serve --zone {zones} --tls-listen {host}:{port} "
                   "--tls-cert server.pem --tls-key server.key --query-log json")  # fmt: skip
        query = f"dnstfo query {QNAME} A @{host} +tls +tls-ca={server.ca_file} +compare"
    click.echo(f"          (in {server.namespace})")
    click.echo(f"query   {query}")
    click.echo(f"          (in {running.client.name})")
    click.echo("")


def _near(path: Path) -> Path:
    """``path`` relative to the working directory when it is below it."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def _render_demo(result: DemoResult) -> None:
    from itertools import groupby

    from dnstfo.cli.render import compare_text

    click.echo(compare_text(result.comparison))
    click.echo("")
    click.echo("what the kernel did (TCP_INFO, tcp_metrics):")
    first = "ClientHello" if result.tls else "query"  # what rides in the SYN
    lines = [
        f"{s.step.value:<10} {_kernel_did(s.result.tfo).replace('query', first)}"
        for s in result.comparison.steps
    ]
    for line, same in groupby(lines):
        n = len(list(same))
        click.echo(f"  {line}" + (f" (x{n})" if n > 1 else ""))
    click.echo("what the server logged (TFO: the query came in the SYN):")
    for step in result.comparison.steps:
        click.echo(f"  {step.step.value:<10} {_served_line(result, step)}")
    click.echo("")
    click.echo(_story(result))


def _kernel_did(tfo: TfoReport) -> str:
    """What the kernel did for one query, in a few words, from its TFO report."""
    from dnstfo.client.report import CookieChange, Fallback

    a, b = tfo.after, tfo.before
    if not tfo.requested:
        return "plain SYN, no TFO option; query after the handshake"
    if a.fallback is not Fallback.NONE:
        return f"plain TCP: {a.fallback_reason}"
    retrans = f"; {a.syn_retransmits} SYN retransmission(s)" if a.syn_retransmits else ""
    if a.attempted:
        how = "with the cached cookie" if b.cookie is not None else "without a cookie"
        acked = "acked in the SYN-ACK" if a.syn_data_acked else "NOT acked: resent after it"
        return f"query in the SYN {how}, {acked}{retrans}"
    asked = "SYN asked for a cookie" if b.cookie is None else "cached cookie not used"
    got = {
        CookieChange.NEW: f"SYN-ACK brought one ({len(a.cookie or b'')} bytes), cached",
        CookieChange.CHANGED: "SYN-ACK brought a new one, cached",
        CookieChange.SAME: "the cookie stays cached",
        CookieChange.NONE: "none came back",
    }[a.cookie_change]
    return f"{asked}; {got}; query after the handshake{retrans}"


def _served_line(result: DemoResult, step: CompareStep) -> str:
    q = result.served_for(step)
    if q is None:
        return "(no log line)"
    mark = " TFO" if q.tfo else ""
    where = f"{q.client}#{q.port}"
    return f"{where} {q.qname} {q.qtype} {q.rcode} {q.transport}{mark} {q.latency_ms:.3f}ms"


def _story(result: DemoResult) -> str:
    """The last line: did 2 round trips become 1, and if not, why."""
    c, spec = result.comparison, result.spec
    shortfall = result.shortfall
    if shortfall is None:
        rounds = "3 round trips into 2 over TLS" if result.tls else "2 round trips into 1"
        return (
            f"TFO turned {rounds}: {c.saving_ms:.0f} ms saved per query "
            f"on a {spec.rtt_ms:g} ms path"
        )
    faults = ", ".join(sorted(f.value for f in spec.faults))
    played = f"; the delay line played {faults}" if faults else ""
    short = ""
    if c.worked and spec.rtt_ms < SHORT_PATH_MS:
        short = (
            f"; on a {spec.rtt_ms:g} ms path processing time outweighs the round trips "
            f"(try --rtt 100ms)"
        )
    return f"no saving shown: {shortfall}{played}{short}"
