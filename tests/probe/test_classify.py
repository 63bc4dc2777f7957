"""The verdict table: every verdict and PATHspider condition from hand-made observations."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dnstfo.kernel.tcpinfo import FastOpenClientFail as F
from dnstfo.probe.classify import Verdict, classify
from dnstfo.probe.observe import (
    Failure,
    OptionKind,
    Step,
    SynOnlyObservation,
    TargetObservations,
    WireEvidence,
)
from tests.probe.helpers import (
    BASE,
    C1,
    C2,
    C3,
    LOCAL,
    PRIMED,
    closed,
    conn,
    in_syn,
    lost,
    target,
)

T = Step.TFO
P = Step.PRIMING
B = Step.BASELINE

no_cookie_prime = conn(P, client_fail=F.COOKIE_UNAVAILABLE)
no_cookie_tfo = conn(T, client_fail=F.COOKIE_UNAVAILABLE)
req_lost_prime = conn(P, client_fail=F.COOKIE_UNAVAILABLE, syn_retransmits=1, total_ms=1200.0)
req_lost_tfo = conn(T, client_fail=F.COOKIE_UNAVAILABLE, syn_retransmits=1, total_ms=1200.0)
data_lost = conn(
    T,
    syn_data_sent=True,
    cookie_before=C1,
    cookie_after=C1,
    client_fail=F.SYN_RETRANSMITTED,
    syn_retransmits=1,
    total_ms=1200.0,
)
held_back = conn(T, cookie_before=C1, cookie_after=C1)
ignored = conn(
    T, syn_data_sent=True, cookie_before=C1, cookie_after=C1, client_fail=F.DATA_NOT_ACKED
)

acked_then_reset = closed(
    T,
    syn_data_sent=True,
    syn_data_acked=True,
    cookie_before=C1,
    cookie_after=C1,
    failure=Failure.RESET,
    error="reading the response: Connection reset by peer (ECONNRESET)",
)
CERT = "TLS: the server's certificate was refused: unable to get local issuer certificate"


def cert_refused(step: Step, **kw):  # type: ignore[no-untyped-def]
    return closed(step, failure=Failure.TLS_REFUSED, error=CERT, **kw)


def rejected(before: bytes, after: bytes):  # type: ignore[no-untyped-def]
    return conn(
        T,
        syn_data_sent=True,
        cookie_before=before,
        cookie_after=after,
        client_fail=F.DATA_NOT_ACKED,
    )


CASES: list[tuple[str, TargetObservations, Verdict, tuple[str, ...]]] = [
    (
        "works",
        target(BASE, PRIMED, in_syn(), in_syn()),
        Verdict.WORKS,
        ("tfo.connectivity.works", "tfo.cookie.received", "tfo.syndata.acked"),
    ),
    (
        "works after a transient baseline loss",
        target(lost(B), BASE, PRIMED, in_syn(), in_syn()),
        Verdict.WORKS,
        ("tfo.connectivity.works", "tfo.cookie.received", "tfo.syndata.acked"),
    ),
    (
        "both baselines lost, TFO answered",
        target(lost(B), lost(B), PRIMED, in_syn(), in_syn()),
        Verdict.WORKS,
        ("tfo.connectivity.transient",),
    ),
    (
        "no cookie",
        target(BASE, no_cookie_prime, no_cookie_tfo, no_cookie_tfo),
        Verdict.NO_TFO,
        ("tfo.connectivity.works", "tfo.cookie.not_received"),
    ),
    (
        "cookie requests dropped",
        target(BASE, req_lost_prime, req_lost_tfo, req_lost_tfo),
        Verdict.SYN_TFO_DROPPED,
        ("tfo.connectivity.works", "tfo.cookie.not_received"),
    ),
    (
        "SYN data dropped, then held back",
        target(BASE, PRIMED, data_lost, data_lost, held_back),
        Verdict.SYN_DATA_DROPPED,
        ("tfo.connectivity.works", "tfo.cookie.received"),
    ),
    (
        "SYN data dropped on the last",
        target(BASE, PRIMED, data_lost, data_lost),
        Verdict.SYN_DATA_DROPPED,
        ("tfo.connectivity.works", "tfo.cookie.received", "tfo.syndata.failed"),
    ),
    (
        "data ignored",
        target(BASE, PRIMED, ignored, ignored),
        Verdict.DATA_IGNORED,
        ("tfo.connectivity.works", "tfo.cookie.received", "tfo.syndata.not_acked"),
    ),
    (
        "cookie rejected each time",
        target(BASE, PRIMED, rejected(C1, C2), rejected(C2, C3)),
        Verdict.COOKIE_REJECTED,
        ("tfo.connectivity.works", "tfo.cookie.received", "tfo.syndata.not_acked"),
    ),
    (
        "rejected once, ignored once",
        target(BASE, PRIMED, rejected(C1, C2), ignored),
        Verdict.UNSTABLE,
        ("tfo.connectivity.works", "tfo.cookie.received", "tfo.syndata.not_acked"),
    ),
    (
        "pool: one acked, one rejected",
        target(BASE, PRIMED, in_syn(), rejected(C1, C2)),
        Verdict.UNSTABLE,
        ("tfo.connectivity.works", "tfo.cookie.received", "tfo.syndata.not_acked"),
    ),
    (
        "one acked, one SYN lost",
        target(BASE, PRIMED, in_syn(), data_lost),
        Verdict.UNSTABLE,
        ("tfo.connectivity.works", "tfo.cookie.received", "tfo.syndata.failed"),
    ),
    (
        "broken",
        target(BASE, PRIMED, lost(T, syn_data_sent=True, cookie_before=C1), in_syn()),
        Verdict.BROKEN,
        ("tfo.connectivity.works", "tfo.cookie.received", "tfo.syndata.acked"),
    ),
    (
        "broken on the last",
        target(BASE, PRIMED, in_syn(), lost(T, syn_data_sent=True, cookie_before=C1)),
        Verdict.BROKEN,
        ("tfo.connectivity.broken",),
    ),
    (
        "a TFO connection reset after its data was acked, plain ones answered",
        target(BASE, PRIMED, in_syn(), acked_then_reset),
        Verdict.REFUSED,
        ("tfo.connectivity.works", "tfo.cookie.received", "tfo.syndata.acked"),
    ),
    (
        "a TFO connection reset before its data was acked",
        target(BASE, PRIMED, in_syn(), replace(acked_then_reset, syn_data_acked=False)),
        Verdict.BROKEN,
        ("tfo.connectivity.works", "tfo.cookie.received", "tfo.syndata.not_acked"),
    ),
    (
        "the server closed plain connections too (its per-client limit)",
        target(closed(B), BASE, closed(P), acked_then_reset, acked_then_reset),
        Verdict.REFUSED,
        ("tfo.connectivity.works", "tfo.cookie.received", "tfo.syndata.acked"),
    ),
    (
        "the server closed every connection after the handshake",
        target(closed(B), closed(B), closed(P), closed(T), closed(T)),
        Verdict.REFUSED,
        ("tfo.connectivity.works", "tfo.cookie.not_received"),
    ),
    (
        "the certificate was refused, TFO carried the ClientHello",
        target(
            cert_refused(B),
            cert_refused(B),
            cert_refused(P, cookie_after=C1),
            cert_refused(T, syn_data_sent=True, syn_data_acked=True, cookie_before=C1),
            cert_refused(T, syn_data_sent=True, syn_data_acked=True, cookie_before=C1),
        ),
        Verdict.TLS_REFUSED,
        ("tfo.connectivity.works", "tfo.cookie.received", "tfo.syndata.acked"),
    ),
    (
        "offline",
        target(lost(B), lost(B), lost(P), lost(T), lost(T)),
        Verdict.OFFLINE,
        ("tfo.connectivity.offline",),
    ),
    (
        "client bit off",
        target(
            BASE,
            conn(P, fallback_reason="client TCP Fast Open is off"),
            conn(T, fallback_reason="client TCP Fast Open is off"),
            local=replace(LOCAL, client_enabled=False, sysctl=0),
        ),
        Verdict.LOCAL_CLIENT_OFF,
        ("tfo.connectivity.works", "tfo.cookie.not_received"),
    ),
    (
        "blackhole back-off: no option in any SYN",
        target(
            BASE,
            conn(P),
            held_back,
            local=replace(LOCAL, blackhole_timeout_s=3600, blackhole_count=1),
        ),
        Verdict.LOCAL_BLACKHOLE,
        ("tfo.connectivity.works", "tfo.cookie.received"),
    ),
    (
        "an old blackhole count, but cookies were asked for",
        target(
            BASE,
            no_cookie_prime,
            no_cookie_tfo,
            local=replace(LOCAL, blackhole_timeout_s=3600, blackhole_count=1),
        ),
        Verdict.NO_TFO,
        ("tfo.connectivity.works", "tfo.cookie.not_received"),
    ),
    (
        "stale cookie kept without root",
        target(BASE, held_back, held_back, cookie_deleted=False),
        Verdict.LOCAL_COOKIE_KEPT,
        ("tfo.connectivity.works", "tfo.cookie.received"),
    ),
    (
        "the cookie cache dropped the entry after priming",
        target(BASE, replace(no_cookie_prime, evicted=True), no_cookie_tfo, no_cookie_tfo),
        Verdict.LOCAL_COOKIE_EVICTED,
        ("tfo.connectivity.works", "tfo.cookie.not_received"),
    ),
    (
        "cookie given but never used, cache cleared",
        target(BASE, PRIMED, conn(T, cookie_after=C1), conn(T, cookie_after=C1)),
        Verdict.UNSTABLE,
        ("tfo.connectivity.works", "tfo.cookie.not_received"),
    ),
]


@pytest.mark.parametrize(
    ("obs", "verdict", "conds"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_verdict_and_conditions(
    obs: TargetObservations, verdict: Verdict, conds: tuple[str, ...]
) -> None:
    got = classify(obs)
    assert got.verdict is verdict, got.reason
    assert got.conditions == conds
    assert got.reason


def test_every_verdict_is_covered() -> None:
    assert {c[2] for c in CASES} == set(Verdict)


def test_local_verdicts_say_so() -> None:
    assert {v for v in Verdict if v.local} == {
        Verdict.LOCAL_CLIENT_OFF,
        Verdict.LOCAL_BLACKHOLE,
        Verdict.LOCAL_COOKIE_KEPT,
        Verdict.LOCAL_COOKIE_EVICTED,
    }


def test_wire_and_syn_only_evidence_named_for_no_tfo() -> None:
    wire = WireEvidence(
        syn_kind=OptionKind.FASTOPEN,
        syn_cookie_len=0,
        synack_kind=None,
        synack_cookie_len=None,
        syn_data_len=0,
        syn_data_acked=None,
        syn_count=1,
        retransmitted_syn_kind=None,
        retransmitted_syn_data_len=0,
    )
    syn = SynOnlyObservation(True, None, None, 100.0, None)
    obs = target(
        BASE, replace(no_cookie_prime, wire=wire), replace(no_cookie_tfo, wire=wire), syn_only=syn
    )
    reason = classify(obs).reason
    assert "captured SYN-ACKs carried no Fast Open option" in reason
    assert "crafted SYN" in reason


def test_dropped_requests_need_a_clean_baseline() -> None:
    slow_base = conn(B, syn_retransmits=1)
    obs = target(slow_base, req_lost_prime, req_lost_tfo)
    assert classify(obs).verdict is Verdict.NO_TFO


def test_a_refused_certificate_is_named_with_the_probes_options() -> None:
    tfo = cert_refused(T, syn_data_sent=True, syn_data_acked=True, cookie_before=C1)
    reason = classify(target(cert_refused(B), cert_refused(P), tfo, tfo)).reason
    assert reason.startswith(CERT)
    assert "2 of 2 ClientHellos rode in the SYN and were acked" in reason
    assert "--tls-ca FILE" in reason
    assert "+tls" not in reason


def test_rounds_are_not_claimed_on_a_path_under_1_ms() -> None:
    fast = [replace(c, rtt_ms=0.03, rounds=35.7) for c in (BASE, PRIMED, in_syn(), in_syn())]
    got = classify(target(*fast))
    assert got.verdict is Verdict.WORKS
    assert "round trip" not in got.reason
    slow = classify(target(BASE, PRIMED, in_syn(), in_syn()))
    assert "1 round trip at most" in slow.reason
