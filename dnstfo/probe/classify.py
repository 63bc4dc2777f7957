"""The probe's verdict: a PURE function of one target's observations (no I/O).

Theory of operation (RFC 7413, Linux ``tcp_send_syn_data``, ``tcp_rcv_fastopen_synack``):
the plan makes a baseline without TFO, a priming connection whose SYN carries an empty
Fast Open option (a cookie request), and TFO connections whose SYN carries the cookie
and the query. A non-blocking ``sendto(MSG_FASTOPEN)`` frees the kernel's Fast Open
request right after the first SYN, so a retransmitted SYN carries neither the option nor
data: a SYN with the option that goes unanswered shows as a SYN retransmission, and the
answer still comes after the retransmission timeout (1 s). So:

- the priming SYN retransmitted, no cookie, while plain SYNs were answered at once:
  something drops SYNs that carry the option (``syn-tfo-dropped``);
- a SYN with data retransmitted (``tcpi_fastopen_client_fail`` = syn_retransmitted):
  something drops SYNs that carry data (``syn-data-dropped``);
- data sent, SYN-ACK without acknowledging it, cookie unchanged (``data-ignored``) or new
  each time (``cookie-rejected``: the key changes per connection, or the instances
  behind one address use different keys, RFC 9210 §4.1);
- no cookie after a cookie request that was answered (``no-tfo``).

This host's own state comes first: with the client bit off, or the kernel's blackhole
back-off active, or a stale cookie that could not be cleared, nothing is blamed on the
server (``local-…``).

PATHspider's conditions (``tfo.connectivity.*``, ``tfo.cookie.*``, ``tfo.syndata.*``) are
computed as its TFO plugin does, from the baseline and the last TFO connection.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from dnstfo.client.report import short_path
from dnstfo.kernel.tcpinfo import FastOpenClientFail
from dnstfo.probe.observe import ConnectionObservation, Failure, Step, TargetObservations


class Verdict(enum.Enum):
    """What TFO does for one target, and what is wrong when it does not work."""

    WORKS = "works"
    """Every TFO connection rode in the SYN and was acknowledged (one round trip)."""
    NO_TFO = "no-tfo"
    """The server sent no cookie in answer to a cookie request."""
    SYN_TFO_DROPPED = "syn-tfo-dropped"
    """SYNs with the Fast Open option went unanswered; resent without it, they were."""
    SYN_DATA_DROPPED = "syn-data-dropped"
    """SYNs with data went unanswered; resent without data, they were."""
    DATA_IGNORED = "data-ignored"
    """SYN data not acknowledged while the cookie stayed the same."""
    COOKIE_REJECTED = "cookie-rejected"
    """SYN data not acknowledged and a new cookie each time."""
    UNSTABLE = "unstable"
    """Some TFO connections worked and others did not."""
    BROKEN = "broken"
    """The baseline answered and a TFO connection did not."""
    REFUSED = "refused"
    """The server closed or reset connections after the handshake without answering, plain
    ones, or TFO ones whose SYN data it had acknowledged (a connection limit, overload):
    not TFO evidence."""
    TLS_REFUSED = "tls-refused"
    """The server answered the TLS handshakes, but its certificate failed the check
    (``--tls-ca``): no DNS answer; the reason says what TFO did."""
    OFFLINE = "offline"
    """Nothing answered."""
    LOCAL_CLIENT_OFF = "local-client-off"
    """This host's client bit is off: nothing was tested."""
    LOCAL_BLACKHOLE = "local-blackhole"
    """This host's kernel has paused active TFO (blackhole back-off)."""
    LOCAL_COOKIE_KEPT = "local-cookie-kept"
    """A stale cookie that could not be cleared (not root) kept the kernel from using TFO."""
    LOCAL_COOKIE_EVICTED = "local-cookie-evicted"
    """This host's cookie cache dropped the server's entry (too many destinations at once)."""

    @property
    def local(self) -> bool:
        """The verdict is about this host, not the server."""
        return self.value.startswith("local-")


@dataclass(frozen=True, slots=True)
class Classification:
    """The judgement on one target."""

    verdict: Verdict
    """The verdict."""
    reason: str
    """One line for people, naming the evidence that decided it."""
    conditions: tuple[str, ...]
    """PATHspider's conditions, as its TFO plugin names them."""


def _label(c: ConnectionObservation, conns: Sequence[ConnectionObservation]) -> str:
    same = [x for x in conns if x.step is c.step]
    if len(same) == 1:
        return c.step.value
    return f"{c.step.value} #{same.index(c) + 1}"


def conditions(obs: TargetObservations) -> tuple[str, ...]:
    """PATHspider's TFO conditions: the baseline against the last TFO connection.

    Connectivity is TCP's, as in PATHspider (a connect that succeeded): a connection was
    connected when it was answered, closed or reset by the server after the handshake,
    or refused only by our certificate check.

    ``tfo.cookie.received`` when the last TFO connection had a cookie to send (its SYN
    carried one); ``tfo.syndata.acked`` when the SYN-ACK acknowledged the data,
    ``failed`` when the SYN with data got no SYN-ACK (it was retransmitted), ``not_acked``
    when the SYN-ACK did not acknowledge it.
    """
    base_ok = any(_connected(c) for c in obs.of(Step.BASELINE))
    tfo_conns = obs.of(Step.TFO) or obs.of(Step.PRIMING)
    last = tfo_conns[-1] if tfo_conns else None
    tfo_ok = last is not None and _connected(last)
    if not base_ok and not tfo_ok:
        return ("tfo.connectivity.offline",)
    if not base_ok:
        return ("tfo.connectivity.transient",)
    if last is None or not tfo_ok:
        return ("tfo.connectivity.broken",)
    out = ["tfo.connectivity.works"]
    if not (last.syn_data_sent or last.cookie_before is not None):
        return (*out, "tfo.cookie.not_received")
    out.append("tfo.cookie.received")
    if last.syn_data_sent:
        if last.syn_data_acked and not last.syn_retransmitted:
            out.append("tfo.syndata.acked")
        elif last.syn_retransmitted:
            out.append("tfo.syndata.failed")
        else:
            out.append("tfo.syndata.not_acked")
    return tuple(out)


def classify(obs: TargetObservations) -> Classification:
    """Decides the verdict for one target from its observations alone.

    Args:
        obs: the local state and every connection of the plan.

    Returns:
        The verdict, the reason naming its evidence, and PATHspider's conditions.
    """
    verdict, reason = _decide(obs)
    return Classification(verdict, reason, conditions(obs))


def _decide(obs: TargetObservations) -> tuple[Verdict, str]:
    conns = obs.connections
    base = obs.of(Step.BASELINE)
    tfo_phase = obs.of(Step.PRIMING) + obs.of(Step.TFO)
    tfo = obs.of(Step.TFO)
    base_ok = any(c.answered for c in base)

    off = next((c for c in tfo_phase if c.fallback_reason), None)
    if not obs.local.client_enabled or off is not None:
        why = off.fallback_reason if off is not None else "the client bit (0x1) is off"
        return Verdict.LOCAL_CLIENT_OFF, f"this host cannot send TFO ({why}); nothing tested"
    cert = next((c for c in conns if c.failure is Failure.TLS_REFUSED), None)
    if cert is not None:
        return Verdict.TLS_REFUSED, _tls_refused(cert, tfo)
    unanswered = [c for c in conns if not c.answered]
    if (
        unanswered
        and (not base_ok or any(not c.answered for c in tfo_phase))
        and all(_closed_by_server(c) and _data_delivered(c) for c in unanswered)
    ):
        plain = [_label(c, conns) for c in unanswered if not c.syn_data_sent]
        which = (
            f"plain ones too ({', '.join(plain)})"
            if plain
            else "after acknowledging their SYN data"
        )
        return (
            Verdict.REFUSED,
            f"the server closed or reset {len(unanswered)} of {len(conns)} connections after the "
            f"handshake without answering, {which}: not TFO "
            f"(a connection limit? overload?; first: {unanswered[0].error})",
        )
    if not base_ok and not any(c.answered for c in tfo_phase):
        errors = "; ".join(f"{_label(c, conns)}: {c.error}" for c in conns[:2])
        return Verdict.OFFLINE, f"no connection was answered ({errors})"
    failed = next((c for c in tfo_phase if not c.answered), None)
    if failed is not None and base_ok:
        return (
            Verdict.BROKEN,
            f"the baseline was answered but {_label(failed, conns)} was not ({failed.error})",
        )
    note = "" if base_ok else " (the baseline got no answer: transient)"

    worked = [c for c in tfo if c.tfo_worked]
    if tfo and len(worked) == len(tfo):
        rounds = [c.rounds for c in tfo if c.rounds is not None]
        most = max(rounds) if rounds else None
        if most is None or short_path(c.rtt_ms for c in conns):
            shown = ""  # under 1 ms of RTT, rounds measure the hosts, not the path
        else:
            shown = f", {most:g} round trip{'' if most == 1 else 's'} at most"
        return (
            Verdict.WORKS,
            f"all {len(tfo)} TFO connections rode in the SYN and were acknowledged{shown}{note}",
        )
    if obs.local.blackhole_active and not any(_asked(c) for c in tfo_phase):
        return (
            Verdict.LOCAL_BLACKHOLE,
            "this host's kernel suspected a TFO blackhole and paused active TFO "
            f"(TCPFastOpenBlackhole {obs.local.blackhole_count + obs.local.blackhole_delta}, "
            f"timeout {obs.local.blackhole_timeout_s} s); nothing blamed on the server",
        )

    evicted = [c for c in tfo_phase if c.evicted]
    if evicted:
        return (
            Verdict.LOCAL_COOKIE_EVICTED,
            f"this host's cookie cache dropped the entry for the server after "
            f"{_label(evicted[0], conns)} (tcp_metrics reclaims entries when too many "
            f"destinations are probed at once: lower --concurrency); nothing blamed on the server",
        )
    data_dropped = [c for c in tfo_phase if c.syn_data_sent and c.syn_retransmitted]
    if data_dropped:
        if worked:
            return (
                Verdict.UNSTABLE,
                f"{len(worked)} of {len(tfo)} TFO connections worked, but the SYN with data "
                f"of {_label(data_dropped[0], conns)} went unanswered{note}",
            )
        return (
            Verdict.SYN_DATA_DROPPED,
            f"{len(data_dropped)} SYN(s) with data went unanswered and were resent without "
            f"data (tcpi_fastopen_client_fail syn_retransmitted){note}",
        )

    cookie_seen = any(c.cookie_before or c.cookie_after for c in tfo_phase)
    if not cookie_seen:
        return _no_cookie(obs, base, tfo_phase, note)

    attempted = [c for c in tfo if c.syn_data_sent]
    if worked:
        return (
            Verdict.UNSTABLE,
            f"{len(worked)} of {len(tfo)} TFO connections rode in the SYN and were "
            f"acknowledged, {len(tfo) - len(worked)} were not{note}",
        )
    if attempted:
        changed = [c for c in attempted if c.cookie_after != c.cookie_before]
        if len(changed) == len(attempted):
            return (
                Verdict.COOKIE_REJECTED,
                f"SYN data not acknowledged and a new cookie each time ({len(changed)} of "
                f"{len(attempted)}): the key changes, or instances behind the address "
                f"use different keys{note}",
            )
        if not changed:
            return (
                Verdict.DATA_IGNORED,
                f"SYN data with a cookie not acknowledged ({len(attempted)} of {len(tfo)}) "
                f"while the cookie stayed the same{note}",
            )
        return (
            Verdict.UNSTABLE,
            f"SYN data not acknowledged; the cookie changed on {len(changed)} of "
            f"{len(attempted)} connections{note}",
        )
    if not obs.cookie_deleted:
        return (
            Verdict.LOCAL_COOKIE_KEPT,
            "a cookie is cached but the kernel sent no SYN data (earlier SYN-data losses "
            "make it back off); the cache could not be cleared (needs root)",
        )
    return (
        Verdict.UNSTABLE,
        f"the server gave a cookie but the kernel sent no SYN data with it{note}",
    )


def _connected(c: ConnectionObservation) -> bool:
    """The TCP handshake completed: answered, closed by the server, or our certificate
    check refused what it sent."""
    return c.answered or c.failure is Failure.TLS_REFUSED or _closed_by_server(c)


def _closed_by_server(c: ConnectionObservation) -> bool:
    """Closed or reset by the other end before any answer. Both need an established
    connection (a reset SYN is ``refused``), though a TFO connection may be reset before
    the driver saw it established: its SYN-ACK then shows as ``syn_data_acked``."""
    return c.failure in _SERVER_CLOSES


def _data_delivered(c: ConnectionObservation) -> bool:
    """TFO did its part: no SYN data, or the server's SYN-ACK acknowledged it."""
    return not c.syn_data_sent or (c.syn_data_acked and not c.syn_retransmitted)


_SERVER_CLOSES = frozenset({Failure.CLOSED, Failure.RESET, Failure.BAD_REPLY})
"""Failures after the handshake that the server (or a box in front of it) decided."""


def _tls_refused(cert: ConnectionObservation, tfo: Sequence[ConnectionObservation]) -> str:
    in_syn = [c for c in tfo if c.syn_data_sent and c.syn_data_acked and not c.syn_retransmitted]
    transport = (
        f"TFO itself: {len(in_syn)} of {len(tfo)} ClientHellos rode in the SYN and were acked"
        if tfo
        else "no TFO connection was made"
    )
    return (
        f"{cert.error}; {transport}. Name the CA that signed it with --tls-ca FILE, or "
        f"leave out --tls-ca to probe without checking certificates"
    )


def _asked(c: ConnectionObservation) -> bool:
    """The kernel put a Fast Open option in the SYN (a cookie request, or data with one).

    With active TFO paused (blackhole back-off) ``tcp_fastopen_cookie_check`` sends
    neither and leaves ``tcpi_fastopen_client_fail`` unset.
    """
    return c.syn_data_sent or c.client_fail is not FastOpenClientFail.UNSPEC


def _no_cookie(
    obs: TargetObservations,
    base: tuple[ConnectionObservation, ...],
    tfo_phase: tuple[ConnectionObservation, ...],
    note: str,
) -> tuple[Verdict, str]:
    conns = obs.connections
    requests_lost = [c for c in tfo_phase if not c.syn_data_sent and c.syn_retransmitted]
    base_clean = any(c.answered and not c.syn_retransmitted for c in base)
    if requests_lost and base_clean:
        return (
            Verdict.SYN_TFO_DROPPED,
            f"SYNs asking for a cookie went unanswered and were resent without the option "
            f"({len(requests_lost)} of {len(tfo_phase)}, first {_label(requests_lost[0], conns)}), "
            f"while the plain SYN was answered at once; no cookie{note}",
        )
    evidence = "no cookie after a cookie request"
    if obs.syn_only is not None and obs.syn_only.answered and obs.syn_only.option_kind is None:
        evidence += "; the crafted SYN's SYN-ACK carried no Fast Open option"
    seen = [c.wire for c in tfo_phase if c.wire is not None and c.wire.syn_count]
    if seen and all(w.synack_kind is None for w in seen):
        evidence += "; the captured SYN-ACKs carried no Fast Open option"
    return Verdict.NO_TFO, f"the server does not offer TFO: {evidence}{note}"
