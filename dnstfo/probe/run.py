"""Many targets on one event loop: the plan per target, bounded concurrency, a rate cap.

Theory of operation: up to ``concurrency`` targets are in progress at once. Each target's
next step comes from ``plan.next_action``; its connections run on the multiplexed driver
(``client.multiplex``), so one process carries thousands of connections without a thread
each. ``rate`` caps new connections per second (a token per connection, handed out in
order). When a connection ends, its observation is built from its own socket (TCP_INFO,
read by the driver) and its own (source, target) cookie entry (one tcp_metrics GET); when
a target's plan is complete it is classified and its record is yielded at once, so memory
holds only the targets in progress. Host-wide state (the sysctl, the blackhole counter)
is read once at the start and sampled at most once a second, never per connection.

``probe_targets`` is the library entry point; the CLI and the lab tests call it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import errno
import logging
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Protocol

import dns.rcode

from dnstfo.client.config import QueryConfig, TfoMethod, TlsOptions
from dnstfo.client.message import build_query
from dnstfo.client.multiplex import Multiplexer, Outcome
from dnstfo.client.observe import CookieReader, route_source, syn_retransmits
from dnstfo.client.report import Fallback, Timings
from dnstfo.client.tls import TlsCertificateRefused
from dnstfo.errors import (
    DnstfoError,
    KernelFeatureError,
    NetworkError,
    PeerClosed,
    PermissionNeeded,
    PhaseTimeout,
    RemoteProtocolError,
    UsageError,
)
from dnstfo.kernel import sysctl, tcp_metrics
from dnstfo.kernel.tcpinfo import FastOpenClientFail
from dnstfo.probe.classify import classify
from dnstfo.probe.observe import (
    ConnectionObservation,
    Failure,
    LocalState,
    Step,
    SynOnlyObservation,
    TargetObservations,
    WireEvidence,
)
from dnstfo.probe.plan import Connect, ForgetCookie, Plan, next_action
from dnstfo.probe.records import ProbeRecord
from dnstfo.probe.targets import Target
from dnstfo.timing import Clock, MonotonicClock

log = logging.getLogger(__name__)


class Evidence(Protocol):
    """Wire evidence for the probe's connections (``--pcap``, ``--syn-only``)."""

    def syn_only(self, target: Target) -> SynOnlyObservation | None:
        """The crafted-SYN check for a target (None: not asked for)."""
        ...

    def wire_for(self, target: Target, source: tuple[str, int]) -> WireEvidence | None:
        """What the capture showed for the connection from ``source`` (None: not seen)."""
        ...


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    """How to probe: the plan, the query, and how hard to push."""

    plan: Plan = field(default_factory=Plan)
    """Connections per target."""
    qname: str | None = None
    """Name to ask (None: the target's ``domain``, else the root)."""
    qtype: str | None = None
    """Type to ask (None: SOA for a domain, NS for the root, A for ``qname``)."""
    concurrency: int = 100
    """Targets in progress at once."""
    rate: float | None = None
    """New connections per second at most (None: no cap)."""
    timeout: float = 5.0
    """Seconds allowed per phase of every connection (connect, first byte, response)."""
    vantage: str | None = None
    """Where this runs from, for the records (None: this host's name)."""
    evidence: Evidence | None = None
    """Wire evidence hooks (``--pcap``, ``--syn-only``), or None."""
    tls: TlsOptions | None = None
    """Probe over DNS over TLS (the ClientHello is what rides in the SYN), or None."""

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise UsageError(f"--concurrency must be at least 1, not {self.concurrency}")
        if self.rate is not None and self.rate <= 0:
            raise UsageError(f"--rate must be positive, not {self.rate:g}")
        if self.timeout <= 0:
            raise UsageError(f"--timeout must be positive, not {self.timeout:g}")

    def query_for(self, target: Target) -> tuple[str, str]:
        """The (name, type) to ask ``target``."""
        if self.qname is not None:
            return self.qname, self.qtype or "A"
        if target.domain:
            return target.domain, self.qtype or "SOA"
        return ".", self.qtype or "NS"


_SYN_ONLY_WORKERS = 8
"""Crafted-SYN checks (``--syn-only``) in flight at once."""
_EVIDENCE_POLL_S = 0.05
"""How often the loop looks for finished crafted-SYN checks while connections run."""

Progress = Callable[[int, int], None]
"""Told (targets finished, connections in flight) after every wake-up."""


class _Host:
    """This namespace's TFO state: read once, the blackhole counter sampled once a second."""

    def __init__(self, clock: Clock, clearable: bool) -> None:
        try:
            mode: int | None = int(sysctl.fastopen_mode())
        except (DnstfoError, ValueError, OSError):
            mode = None
        self._clock = clock
        self.start_count = self._count()
        self._sampled_at = clock.now_ns()
        self.state = LocalState(
            sysctl=mode,
            client_enabled=mode is not None and sysctl.client_enabled(sysctl.TfoMode(mode)),
            blackhole_timeout_s=sysctl.blackhole_timeout(),
            blackhole_count=self.start_count,
            blackhole_delta=0,
            cookie_clearable=clearable,
        )

    @staticmethod
    def _count() -> int:
        try:
            return sysctl.read_counters().blackhole
        except OSError:
            return 0

    def sample(self) -> LocalState:
        now = self._clock.now_ns()
        if now - self._sampled_at >= 1_000_000_000:
            self._sampled_at = now
            delta = max(self._count() - self.start_count, 0)
            if delta != self.state.blackhole_delta:
                self.state = LocalState(
                    sysctl=self.state.sysctl,
                    client_enabled=self.state.client_enabled,
                    blackhole_timeout_s=self.state.blackhole_timeout_s,
                    blackhole_count=self.state.blackhole_count,
                    blackhole_delta=delta,
                    cookie_clearable=self.state.cookie_clearable,
                )
        return self.state

    def no_clearing(self) -> None:
        s = self.state
        self.state = LocalState(
            s.sysctl,
            s.client_enabled,
            s.blackhole_timeout_s,
            s.blackhole_count,
            s.blackhole_delta,
            False,
        )


class _TargetRun:
    __slots__ = (
        "base_config",
        "cookie_deleted",
        "done",
        "forgotten",
        "query",
        "source",
        "syn_only",
        "target",
        "wire",
    )

    def __init__(self, target: Target, base_config: QueryConfig, source: str | None) -> None:
        self.target = target
        self.base_config = base_config
        self.query = build_query(base_config)
        self.wire = self.query.to_wire()
        self.source = source
        self.done: list[ConnectionObservation] = []
        self.forgotten = False
        self.cookie_deleted = False
        self.syn_only: concurrent.futures.Future[SynOnlyObservation | None] | None = None


def failure_of(error: DnstfoError) -> Failure:
    """The kind of failure behind an error (for the record)."""
    if isinstance(error, TlsCertificateRefused):
        return Failure.TLS_REFUSED
    if isinstance(error, PhaseTimeout):
        return Failure.TIMEOUT
    if isinstance(error, PeerClosed):
        return Failure.CLOSED
    if isinstance(error, RemoteProtocolError):
        return Failure.BAD_REPLY
    if isinstance(error, NetworkError):
        if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.EADDRNOTAVAIL):
            return Failure.LOCAL
        if error.errno == errno.ECONNREFUSED:
            return Failure.REFUSED
        if error.errno in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED):
            return Failure.RESET
        return Failure.UNREACHABLE
    return Failure.LOCAL


def error_text(error: DnstfoError) -> str:
    """The error in words, in the probe's own terms (a refused certificate names
    ``--tls-ca``, not the query's ``+tls-`` options)."""
    if isinstance(error, TlsCertificateRefused):
        return f"TLS: the server's certificate was refused: {error.verify_message}"
    return str(error)


def observe(
    step: Step,
    outcome: Outcome,
    cookie_before: bytes | None,
    cookie_after: bytes | None,
) -> ConnectionObservation:
    """The observation of one finished connection, from its outcome and its cookie entry."""
    info, at_connect = outcome.info, outcome.at_connect
    attempted = outcome.in_syn > 0
    if at_connect is not None:
        retrans = syn_retransmits(at_connect, attempted)
    else:
        retrans = info.total_retrans if info is not None else 0
    times = outcome.times
    answered = outcome.rcode is not None
    timings = Timings.measure(
        times.ms(times.connected),
        times.ms(times.first_byte),
        times.ms(times.done) if answered else None,
        info.rtt_us if info is not None and at_connect is not None else None,
        info.min_rtt_us if info is not None and at_connect is not None else None,
    )
    error = outcome.error
    return ConnectionObservation(
        step=step,
        source=None if outcome.source is None else outcome.source[0],
        source_port=None if outcome.source is None else outcome.source[1],
        tfo_requested=outcome.config.tfo_requested,
        syn_data_sent=attempted,
        syn_data_acked=info.syn_data if info is not None else False,
        client_fail=info.fastopen_client_fail if info is not None else FastOpenClientFail.UNSPEC,
        cookie_before=cookie_before,
        cookie_after=cookie_after,
        syn_retransmits=retrans,
        fallback_reason=outcome.fallback_reason if outcome.fallback is not Fallback.NONE else None,
        handshake_ms=timings.handshake_ms,
        total_ms=timings.total_ms,
        rtt_ms=timings.rtt_ms,
        rounds=timings.rounds,
        rcode=None if outcome.rcode is None else dns.rcode.to_text(dns.rcode.Rcode(outcome.rcode)),
        failure=None if error is None else failure_of(error),
        error=None if error is None else error_text(error),
        started=outcome.wall_started,
        finished=outcome.wall_finished,
    )


def probe_targets(
    config: ProbeConfig,
    targets: Iterable[Target],
    *,
    clock: Clock | None = None,
    progress: Progress | None = None,
) -> Iterator[ProbeRecord]:
    """Runs the plan for every target; yields each target's record as soon as it is done.

    Records come in completion order. Closing the iterator (or Ctrl-C) abandons the
    targets in progress; every record already yielded is complete. The process's
    open-file limit is raised to what ``concurrency`` needs (one socket per target in
    progress), within its hard limit.

    Args:
        config: the plan, query and pace.
        targets: what to probe (read lazily, ``concurrency`` ahead at most).
        clock: the monotonic clock.
        progress: told (finished, connections in flight) after each wake-up.

    Raises:
        UsageError: the query cannot be built, or the hard open-file limit is too low.
    """
    clock = clock or MonotonicClock()
    ensure_descriptors(config.concurrency)
    vantage = config.vantage or socket.gethostname()
    try:
        cache: tcp_metrics.Cache | None = tcp_metrics.Cache()
    except (KernelFeatureError, OSError) as exc:
        log.warning("cannot read the cookie cache: %s", exc)
        cache = None
    host = _Host(clock, clearable=cache is not None and config.plan.forget_cookie)
    cookies = CookieReader(cache)
    mux = Multiplexer(clock, per_phase=True, parse=False)
    finished: collections.deque[ProbeRecord] = collections.deque()
    waiting: collections.deque[tuple[_TargetRun, Step]] = collections.deque()
    interval = 0 if config.rate is None else int(1e9 / config.rate)
    next_token = clock.now_ns()
    active = 0
    count = 0

    def advance(run: _TargetRun) -> None:
        nonlocal active
        while True:
            action = next_action(config.plan, run.done, run.forgotten)
            if isinstance(action, ForgetCookie):
                run.forgotten = True
                run.cookie_deleted = forget(run)
                continue
            if isinstance(action, Connect):
                waiting.append((run, action.step))
                return
            active -= 1
            completing.append(run)
            return

    def forget(run: _TargetRun) -> bool:
        if cache is None or not host.state.cookie_clearable:
            return False
        source = next((c.source for c in run.done if c.source), run.source)
        try:
            cache.delete(run.target.address, source)
        except PermissionNeeded as exc:
            log.warning("cookies are kept, priming may already use one: %s", exc)
            host.no_clearing()
            return False
        except DnstfoError as exc:
            log.warning("cannot delete the cookie for %s: %s", run.target.address, exc)
            return False
        return True

    def start(run: _TargetRun, step: Step) -> None:
        tfo = TfoMethod.SENDTO if step is not Step.BASELINE else TfoMethod.OFF
        cfg = QueryConfig(
            qname=run.base_config.qname,
            server=run.target.address,
            rdtype=run.base_config.rdtype,
            port=run.target.port,
            tfo=tfo,
            recurse=False,
            timeout=config.timeout,
            tls=config.tls,
        )
        before = cookies.cookie(run.target.address, run.source) if tfo is TfoMethod.SENDTO else None

        def done(outcome: Outcome) -> None:
            source = outcome.source[0] if outcome.source is not None else run.source
            entry, after = (
                cookies.entry(run.target.address, source) if cfg.tfo_requested else (None, None)
            )
            seen = observe(step, outcome, before, after)
            asked = seen.syn_data_sent or seen.client_fail is not FastOpenClientFail.UNSPEC
            if entry is False and outcome.at_connect is not None and asked:
                seen = replace(seen, evicted=True)
            run.done.append(seen)
            advance(run)

        mux.start(cfg, run.query, done, wire=run.wire)

    def record_of(run: _TargetRun) -> ProbeRecord:
        conns = tuple(run.done)
        if config.evidence is not None:
            conns = tuple(_with_wire(config.evidence, run.target, c) for c in conns)
        syn_only = None if run.syn_only is None else run.syn_only.result()
        obs = TargetObservations(
            local=host.sample(),
            connections=conns,
            cookie_deleted=run.cookie_deleted,
            syn_only=syn_only,
        )
        return ProbeRecord(
            target=run.target,
            qname=run.base_config.qname,
            qtype=run.base_config.rdtype,
            vantage=vantage,
            observations=obs,
            classification=classify(obs),
        )

    # The crafted-SYN check blocks for up to a round trip or its timeout: it runs on a few
    # threads of its own while the plan runs, never inside the event loop.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=_SYN_ONLY_WORKERS)
    completing: list[_TargetRun] = []
    pending = iter(targets)
    exhausted = False
    try:
        while True:
            while not exhausted and active < config.concurrency:
                target = next(pending, None)
                if target is None:
                    exhausted = True
                    break
                qname, qtype = config.query_for(target)
                base = QueryConfig(qname=qname, server=target.address, rdtype=qtype)
                run = _TargetRun(target, base, route_source(target.address, target.port))
                if config.evidence is not None:
                    run.syn_only = pool.submit(config.evidence.syn_only, target)
                active += 1
                advance(run)
            now = clock.now_ns()
            while waiting and (interval == 0 or now >= next_token):
                next_token = max(next_token, now - interval) + interval
                start(*waiting.popleft())
            ready = [r for r in completing if r.syn_only is None or r.syn_only.done()]
            for run in ready:
                completing.remove(run)
                finished.append(record_of(run))
            while finished:
                count += 1
                yield finished.popleft()
            if progress is not None:
                progress(count, len(mux))
            if exhausted and active == 0 and not waiting and not completing:
                return
            wait = None if not waiting else max(next_token - clock.now_ns(), 0) / 1e9
            if completing:
                wait = _EVIDENCE_POLL_S if wait is None else min(wait, _EVIDENCE_POLL_S)
            if len(mux):
                mux.poll(wait if wait is not None else 1.0)
            elif completing:
                futures = [r.syn_only for r in completing if r.syn_only is not None]
                concurrent.futures.wait(futures, wait, concurrent.futures.FIRST_COMPLETED)
            elif wait:
                _sleep_until(wait)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        mux.close()
        cookies.close()
        if cache is not None:
            with contextlib.suppress(OSError):
                cache.close()


_SPARE_FDS = 64
"""File descriptors the run needs beside one socket per target in progress."""


def ensure_descriptors(concurrency: int) -> None:
    """Raises the open-file limit to what ``concurrency`` needs, up to the hard limit.

    Raises:
        UsageError: the hard limit is too low (the message says which ``ulimit -n``).
    """
    import resource

    need = concurrency + _SPARE_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise UsageError(
                f"--concurrency {concurrency} needs {need} open files, the limit is {hard}: "
                f"lower it or raise the limit (ulimit -n {need})"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def _sleep_until(seconds: float) -> None:
    # Only the rate cap waits with nothing in flight: a bounded pause, not a sync point.
    import select

    select.select([], [], [], seconds)


def _with_wire(
    evidence: Evidence, target: Target, c: ConnectionObservation
) -> ConnectionObservation:
    if c.source is None or c.source_port is None:
        return c
    wire = evidence.wire_for(target, (c.source, c.source_port))
    if wire is None:
        return c
    return replace(c, wire=wire)
