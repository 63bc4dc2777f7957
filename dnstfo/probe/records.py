"""The probe's records: one JSON object per target, one line each (ndjson).

The shape follows PATHspider's TFO plugin, whose records carry the input job (``dip``,
``dp``, ``domain`` and any other key), ``conditions`` and ``time`` {``from``, ``to``} (UTC,
``str(datetime)`` form). Ours adds ``version``, ``verdict``, ``reason``, ``query``,
``vantage``, ``local``, ``syn_only`` and ``connections``. Field names are stable: fields
may be added, never renamed or removed without raising ``version``. The README lists them.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from typing import Any, TextIO

from dnstfo.probe.classify import Classification
from dnstfo.probe.observe import (
    ConnectionObservation,
    LocalState,
    SynOnlyObservation,
    TargetObservations,
    WireEvidence,
)
from dnstfo.probe.targets import Target

VERSION = 1
"""Shape version of a record."""

_OURS = frozenset(
    {"version", "verdict", "reason", "query", "vantage", "local", "syn_only", "connections"}
)


@dataclass(frozen=True, slots=True)
class ProbeRecord:
    """Everything about one target: input, observations and the judgement."""

    target: Target
    """What was probed."""
    qname: str
    """The name asked for."""
    qtype: str
    """The type asked for."""
    vantage: str
    """Where it was measured from (this host's name, or ``--vantage``)."""
    observations: TargetObservations
    """What every connection showed."""
    classification: Classification
    """The verdict, its reason and PATHspider's conditions."""

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (keys in a stable order)."""
        obs = self.observations
        out: dict[str, Any] = {
            k: v
            for k, v in self.target.extra.items()
            if k not in _OURS and k not in ("conditions", "time")
        }
        out.update(dip=self.target.address, dp=self.target.port, domain=self.target.domain)
        out["conditions"] = list(self.classification.conditions)
        out["time"] = _time_span(obs.connections)
        out["version"] = VERSION
        out["verdict"] = self.classification.verdict.value
        out["reason"] = self.classification.reason
        out["query"] = {"name": self.qname, "type": self.qtype}
        src = next((c.source for c in obs.connections if c.source), None)
        out["vantage"] = {"host": self.vantage, "source": src}
        out["local"] = local_json(obs.local, obs.cookie_deleted)
        out["syn_only"] = None if obs.syn_only is None else syn_only_json(obs.syn_only)
        out["connections"] = [connection_json(c) for c in obs.connections]
        return out

    def to_line(self) -> str:
        """The record as one ndjson line (with its newline)."""
        return json.dumps(self.to_json(), separators=(",", ":")) + "\n"


def _utc(t: float) -> str:
    # PATHspider writes str(datetime.utcnow()): "YYYY-MM-DD HH:MM:SS.ffffff", naive UTC.
    return str(datetime.datetime.fromtimestamp(t, datetime.UTC).replace(tzinfo=None))


def _time_span(conns: tuple[ConnectionObservation, ...]) -> dict[str, str | None]:
    if not conns:
        return {"from": None, "to": None}
    return {"from": _utc(min(c.started for c in conns)), "to": _utc(max(c.finished for c in conns))}


def _hex(b: bytes | None) -> str | None:
    return None if b is None else b.hex()


def local_json(local: LocalState, cookie_deleted: bool) -> dict[str, Any]:
    """This host's preconditions, as recorded in ``local``."""
    return {
        "sysctl_tcp_fastopen": local.sysctl,
        "client_enabled": local.client_enabled,
        "blackhole_timeout_s": local.blackhole_timeout_s,
        "blackhole_count": local.blackhole_count,
        "blackhole_delta": local.blackhole_delta,
        "cookie_clearable": local.cookie_clearable,
        "cookie_deleted": cookie_deleted,
    }


def wire_json(w: WireEvidence) -> dict[str, Any]:
    """What the capture showed, with PATHspider's ``tfo_*`` names where it has them."""
    return {
        "tfo_synkind": None if w.syn_kind is None else int(w.syn_kind),
        "tfo_synclen": w.syn_cookie_len,
        "tfo_ackkind": None if w.synack_kind is None else int(w.synack_kind),
        "tfo_ackclen": w.synack_cookie_len,
        "tfo_dlen": w.syn_data_len,
        "syn_data_acked": w.syn_data_acked,
        "syn_count": w.syn_count,
        "retransmitted_synkind": (
            None if w.retransmitted_syn_kind is None else int(w.retransmitted_syn_kind)
        ),
        "retransmitted_dlen": w.retransmitted_syn_data_len,
    }


def syn_only_json(s: SynOnlyObservation) -> dict[str, Any]:
    """The crafted-SYN check, as recorded in ``syn_only``."""
    return {
        "answered": s.answered,
        "tfo_ackkind": None if s.option_kind is None else int(s.option_kind),
        "tfo_ackclen": s.cookie_len,
        "rtt_ms": s.rtt_ms,
        "error": s.error,
    }


def connection_json(c: ConnectionObservation) -> dict[str, Any]:
    """One connection, as recorded in ``connections``."""
    return {
        "step": c.step.value,
        "source": c.source,
        "sp": c.source_port,
        "tfo_requested": c.tfo_requested,
        "syn_data_sent": c.syn_data_sent,
        "syn_data_acked": c.syn_data_acked,
        "client_fail": c.client_fail.name.lower(),
        "cookie_before": _hex(c.cookie_before),
        "cookie_after": _hex(c.cookie_after),
        "syn_retransmits": c.syn_retransmits,
        "fallback_reason": c.fallback_reason,
        "handshake_ms": _ms(c.handshake_ms),
        "total_ms": _ms(c.total_ms),
        "rtt_ms": _ms(c.rtt_ms),
        "rounds": c.rounds,
        "rcode": c.rcode,
        "failure": None if c.failure is None else c.failure.value,
        "error": c.error,
        "wire": None if c.wire is None else wire_json(c.wire),
        "cache_evicted": c.evicted,
    }


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def write(record: ProbeRecord, out: TextIO) -> None:
    """Writes one record as a line and flushes, so a crash keeps every finished target."""
    out.write(record.to_line())
    out.flush()
