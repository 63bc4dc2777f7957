"""Builders of probe observations for the pure tests."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from dnstfo.kernel.tcpinfo import FastOpenClientFail
from dnstfo.probe.observe import (
    ConnectionObservation,
    Failure,
    LocalState,
    Step,
    TargetObservations,
)

C1 = b"\x01" * 8
C2 = b"\x02" * 8
C3 = b"\x03" * 8

LOCAL = LocalState(
    sysctl=1,
    client_enabled=True,
    blackhole_timeout_s=0,
    blackhole_count=0,
    blackhole_delta=0,
    cookie_clearable=True,
)


def conn(step: Step, **kw: Any) -> ConnectionObservation:
    """A connection that was answered in 2 rounds without TFO, changed by ``kw``."""
    base = ConnectionObservation(
        step=step,
        source="127.0.0.1",
        source_port=40000,
        tfo_requested=step is not Step.BASELINE,
        syn_data_sent=False,
        syn_data_acked=False,
        client_fail=FastOpenClientFail.UNSPEC,
        cookie_before=None,
        cookie_after=None,
        syn_retransmits=0,
        fallback_reason=None,
        handshake_ms=100.0,
        total_ms=200.0,
        rtt_ms=100.0,
        rounds=2.0,
        rcode="NOERROR",
        failure=None,
        error=None,
        started=1_700_000_000.0,
        finished=1_700_000_000.2,
    )
    return replace(base, **kw)


def lost(step: Step, **kw: Any) -> ConnectionObservation:
    """A connection that got no answer."""
    return conn(
        step,
        rcode=None,
        total_ms=None,
        rounds=None,
        failure=Failure.TIMEOUT,
        error="timed out after 5 s waiting for connect",
        **kw,
    )


def closed(step: Step, **kw: Any) -> ConnectionObservation:
    """A connection the server closed after the handshake without answering."""
    fields: dict[str, Any] = {
        "rcode": None,
        "total_ms": None,
        "rounds": None,
        "failure": Failure.CLOSED,
        "error": "the server closed the connection without answering",
    }
    return conn(step, **(fields | kw))


BASE = conn(Step.BASELINE)
PRIMED = conn(Step.PRIMING, client_fail=FastOpenClientFail.COOKIE_UNAVAILABLE, cookie_after=C1)


def in_syn(cookie: bytes = C1) -> ConnectionObservation:
    """A TFO connection that worked with ``cookie``."""
    return conn(
        Step.TFO,
        syn_data_sent=True,
        syn_data_acked=True,
        cookie_before=cookie,
        cookie_after=cookie,
        total_ms=100.0,
        rounds=1.0,
    )


def target(*conns: ConnectionObservation, **kw: Any) -> TargetObservations:
    """Observations of one target."""
    local = kw.pop("local", LOCAL)
    return TargetObservations(
        local=local, connections=conns, cookie_deleted=kw.pop("cookie_deleted", True), **kw
    )
