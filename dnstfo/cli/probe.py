"""``dnstfo probe``: does TCP Fast Open work end to end for many servers, and if not, why.

Parses options into a ``ProbeConfig``, reads the targets, calls ``probe_targets`` and
writes each record (ndjson) as its target finishes: to stdout, or ``-o FILE``. People's
output (a progress bar, the summary, the single-target report) goes to stderr when the
records go to stdout. ``dnstfo probe summary FILE...`` summarises and merges records.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

import click

from dnstfo.cli.exits import Exit
from dnstfo.cli.render import SHORT_PATH_NOTE
from dnstfo.errors import DnstfoError, UsageError

_SHOWN_DISAGREEMENTS = 10
"""Targets listed whose verdict differs between vantage points."""

EVIDENCE_MODULE = "dnstfo.probe.wire_evidence"
"""Where ``--pcap`` and ``--syn-only`` come from (``open_evidence(pcap=, syn_only=)``)."""


def _targets(
    args: tuple[str, ...],
    targets_file: str | None,
    ns: str | None,
    resolver: str | None,
    port: int,
    shard: str | None,
) -> list[Any]:
    from dnstfo.probe import targets as t

    found: list[t.Target] = []
    for arg in args:
        found += t.parse_target(arg, port)
    if targets_file is not None:

        def bad(line: str) -> None:
            click.echo(f"dnstfo probe: skipped {line}", err=True)

        if targets_file == "-":
            found += t.read_lines(sys.stdin, "-", port, on_bad=bad)
        else:
            try:
                with open(targets_file, encoding="utf-8") as f:
                    found += t.read_lines(f, targets_file, port, on_bad=bad)
            except OSError as exc:
                raise UsageError(f"cannot read {targets_file}: {exc.strerror}") from exc
    if ns is not None:
        found += t.ns_targets(ns, port, resolver=resolver)
    if shard is not None:
        index, count = t.parse_shard(shard)
        found = [x for x in found if t.in_shard(x, index, count)]
    if not found:
        raise UsageError("nothing to probe: give TARGETs, --targets FILE or --ns ZONE")
    return found


@contextlib.contextmanager
def _evidence(pcap: str | None, syn_only: bool, ports: set[int]) -> Iterator[Any]:
    if pcap is None and not syn_only:
        yield None
        return
    what = "--pcap" if pcap is not None else "--syn-only"
    if importlib.util.find_spec(EVIDENCE_MODULE) is None:
        raise UsageError(f"{what} is not available yet: this build has no wire evidence module")
    module = importlib.import_module(EVIDENCE_MODULE)
    with module.open_evidence(pcap=pcap, syn_only=syn_only, ports=sorted(ports)) as evidence:
        yield evidence


class _Progress:
    """A one-line progress bar on stderr (only on a terminal)."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.stream = stream
        self.on = stream.isatty()
        self.started = time.monotonic()
        self.shown = 0.0

    def __call__(self, done: int, in_flight: int) -> None:
        now = time.monotonic()
        if not self.on or (now - self.shown < 0.2 and done < self.total):
            return
        self.shown = now
        elapsed = max(now - self.started, 1e-6)
        rate = done / elapsed
        left = f"{(self.total - done) / rate:.0f} s left" if rate > 0 else "? s left"
        width = 30
        filled = int(width * done / max(self.total, 1))
        bar = "#" * filled + "-" * (width - filled)
        line = f"\r[{bar}] {done}/{self.total} targets, {rate:.1f}/s, {left}, {in_flight} open"
        self.stream.write(line)
        self.stream.flush()

    def end(self) -> None:
        if self.on:
            self.stream.write("\n")
            self.stream.flush()


def _rounds(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def render_summary(summary: Any) -> list[str]:
    """The summary table, as lines."""
    lines = [f"targets: {summary.targets}", "", "verdict               targets"]
    lines += [f"{v:<21} {n:>7}" for v, n in summary.verdicts.most_common()]
    lines += ["", "condition                      targets"]
    lines += [f"{c:<30} {n:>7}" for c, n in sorted(summary.conditions.items())]
    lines += [
        "",
        f"median round trips: without TFO {_rounds(summary.median_baseline_rounds)}, "
        f"with TFO {_rounds(summary.median_tfo_rounds)}",
    ]
    if summary.short_path:
        lines.append(f"  ({summary.short_path} targets left out: {SHORT_PATH_NOTE})")
    if refused := summary.verdicts.get("refused"):
        lines += [
            "",
            f"{refused} target{'' if refused == 1 else 's'} closed connections unanswered; "
            "if they are one server (a lab's "
            "--server-addresses), lower --concurrency or raise its per-client connection "
            "limit (dnstfo serve --max-per-client)",
        ]
    if len(summary.vantages) > 1:
        lines += [
            "",
            "vantage points: " + ", ".join(f"{v} ({n})" for v, n in summary.vantages.items()),
        ]
    if summary.track_targets and len(summary.vantages) > 1:
        differ = summary.disagreements()
        lines.append(
            f"targets seen from several: {summary.shared_targets}, "
            f"verdicts differ on {len(differ)} (the path, not the server)"
        )
        for (dip, dp), seen in differ[:_SHOWN_DISAGREEMENTS]:
            where = ", ".join(f"{v}: {verdict}" for v, verdict in sorted(seen.items()))
            lines.append(f"  {dip} port {dp}: {where}")
    return lines


def render_single(record: dict[str, Any]) -> list[str]:
    """A short report for one target, like ``query +compare``."""
    from dnstfo.client.report import CookieChange, short_path

    head = f"{'step':<9} {'rounds':>6} {'ms':>9}  {'in SYN':<6} {'acked':<5} {'cookie':<7} answer"
    lines = [f"{record['dip']} port {record['dp']}", head, "-" * len(head)]
    short = short_path(c.get("rtt_ms") for c in record["connections"])
    for c in record["connections"]:
        change = CookieChange.between(c["cookie_before"], c["cookie_after"])  # hex or null
        cookie = change.value if c["tfo_requested"] else "-"
        ms = "-" if c["total_ms"] is None else f"{c['total_ms']:.1f}"
        answer = c["rcode"] or f"{c['failure']}: {c['error']}"
        sent = "yes" if c["syn_data_sent"] else "no"
        acked = "yes" if c["syn_data_acked"] else "no"
        rounds = _rounds(None if short else c["rounds"])
        lines.append(
            f"{c['step']:<9} {rounds:>6} {ms:>9}  {sent:<6} {acked:<5} {cookie:<7} {answer}"
        )
    lines.append("-" * len(head))
    if short:
        lines.append(f"note: {SHORT_PATH_NOTE}")
    lines.append(f"verdict: {record['verdict']}: {record['reason']}")
    lines.append("conditions: " + " ".join(record["conditions"]))
    return lines


def _run(opts: dict[str, Any], targets: tuple[str, ...]) -> int:
    from dnstfo.client.config import TlsOptions
    from dnstfo.probe.plan import Plan
    from dnstfo.probe.records import write
    from dnstfo.probe.run import ProbeConfig, probe_targets
    from dnstfo.probe.summary import Summary

    tls = None
    if opts["tls"] or opts["tls_ca"]:
        ca = opts["tls_ca"]
        tls = TlsOptions(ca_file=ca, insecure=ca is None)  # opportunistic (RFC 8310 §5)
    port = opts["port"] or (853 if tls else 53)
    found = _targets(
        targets, opts["targets_file"], opts["ns"], opts["resolver"], port, opts["shard"]
    )
    plan = Plan(tfo_attempts=opts["attempts"])
    out: TextIO = sys.stdout
    people = sys.stderr
    summary = Summary()
    last: dict[str, Any] | None = None
    interrupted = False
    with contextlib.ExitStack() as stack:
        ports = {t.port for t in found}
        evidence = stack.enter_context(_evidence(opts["pcap"], opts["syn_only"], ports))
        config = ProbeConfig(
            plan=plan,
            qname=opts["name"],
            qtype=opts["qtype"],
            concurrency=opts["concurrency"],
            rate=opts["rate"],
            timeout=opts["timeout"],
            vantage=opts["vantage"],
            evidence=evidence,
            tls=tls,
        )
        if opts["output"] not in (None, "-"):
            try:
                out = stack.enter_context(open(opts["output"], "w", encoding="utf-8"))
            except OSError as exc:
                raise UsageError(f"cannot write {opts['output']}: {exc.strerror}") from exc
            people = sys.stdout
        progress = _Progress(len(found), sys.stderr)
        try:
            for record in probe_targets(config, found, progress=progress):
                write(record, out)
                last = record.to_json()
                summary.add(last)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            progress.end()
    lines = render_single(last) if len(found) == 1 and last is not None else render_summary(summary)
    for line in lines:
        click.echo(line, file=people)
    if interrupted:
        click.echo(
            f"dnstfo probe: interrupted; {summary.targets} of {len(found)} targets written",
            err=True,
        )
        return 130
    return Exit.OK


def _summary(files: tuple[str, ...]) -> int:
    from dnstfo.probe.summary import Summary, read_records

    if not files:
        raise UsageError("probe summary needs at least one FILE (or -)")
    summary = Summary(track_targets=True)
    for name in files:
        if name == "-":
            for r in read_records(sys.stdin, "-"):
                summary.add(r)
            continue
        try:
            with open(name, encoding="utf-8") as f:
                for r in read_records(f, name):
                    summary.add(r)
        except OSError as exc:
            raise UsageError(f"cannot read {name}: {exc.strerror}") from exc
    for line in render_summary(summary):
        click.echo(line)
    return Exit.OK


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("targets", nargs=-1)
@click.option(
    "--targets",
    "targets_file",
    metavar="FILE|-",
    help="Targets, one per line: ADDR[:PORT], names, PATHspider ndjson jobs, "
    "or CSV dip,dp,domain[,rank].",
)
@click.option("--ns", metavar="ZONE", help="Probe every address of every name in ZONE's NS set.")
@click.option("--resolver", metavar="ADDR", help="Resolver for --ns (default: the system's).")
@click.option(
    "-p",
    "--port",
    type=click.IntRange(1, 65535),
    help="Port when a target names none [53; 853 with --tls].",
)
@click.option(
    "--tls",
    is_flag=True,
    help="Over DNS over TLS: the ClientHello rides in the SYN (certificates not checked "
    "unless --tls-ca).",
)
@click.option("--tls-ca", metavar="FILE", help="With --tls: check certificates against FILE.")
@click.option("--name", help="Name to ask (default: the target's domain SOA, else . NS).")
@click.option("--type", "qtype", metavar="TYPE", help="Type to ask.")
@click.option(
    "--attempts", default=2, show_default=True, type=int, help="TFO connections after priming."
)
@click.option(
    "--concurrency", default=100, show_default=True, type=int, help="Targets in progress at once."
)
@click.option("--rate", type=float, help="New connections per second at most.")
@click.option(
    "--timeout",
    default=5.0,
    show_default=True,
    type=float,
    help="Seconds per phase of each connection.",
)
@click.option("-o", "--output", metavar="FILE", help="Write records here instead of stdout.")
@click.option(
    "--pcap",
    metavar="FILE",
    help="Capture the probe's SYNs and SYN-ACKs; records gain what the wire showed.",
)
@click.option(
    "--syn-only",
    is_flag=True,
    help="Also send a crafted SYN asking for a cookie, and read the SYN-ACK's option.",
)
@click.option(
    "--shard",
    metavar="I/N",
    help="Probe only the I-th of N shares of the targets (stable across hosts).",
)
@click.option(
    "--vantage", metavar="NAME", help="Where this runs from, for the records (default: host name)."
)
def probe(targets: tuple[str, ...], **opts: Any) -> None:
    """Probe TARGETs (ADDR, ADDR:PORT, [V6]:PORT, host names) for TCP Fast Open.

    Per target: a baseline without TFO (retried once), the cached cookie deleted (root),
    a priming TFO connection, then --attempts TFO connections; every one reads and
    checks the DNS answer. One ndjson record per target, as each finishes, with
    PATHspider's conditions and a verdict: works, no-tfo, syn-tfo-dropped,
    syn-data-dropped, data-ignored, cookie-rejected, unstable, broken, refused,
    tls-refused, offline, local-...

    `dnstfo probe summary FILE...` summarises and merges records instead.
    """
    try:
        code = _summary(targets[1:]) if targets[:1] == ("summary",) else _run(opts, targets)
    except UsageError as exc:
        click.echo(f"dnstfo probe: {exc}", err=True)
        sys.exit(Exit.USAGE)
    except DnstfoError as exc:
        click.echo(f"dnstfo probe: {exc}", err=True)
        sys.exit(1)
    sys.exit(code)
