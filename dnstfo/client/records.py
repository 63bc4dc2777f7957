"""The query's JSON shapes: one query, a failed query, a ``+compare`` run.

What ``dnstfo query +json`` prints, written by the library so that scripts and the CLI
write the same thing. Response members follow RFC 8427. Field names and their order are
stable and listed in the README (``dnstfo query +json``): fields may be added, never
renamed or removed without raising ``JSON_VERSION``.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import dns.message
    import dns.rrset

    from dnstfo.client.compare import Comparison
    from dnstfo.client.config import QueryConfig
    from dnstfo.client.result import QueryFailure, QueryResult, TfoReport, Transfer
    from dnstfo.client.tls import TlsInfo

JSON_VERSION = 1
"""Version of the JSON shape; raised only for incompatible changes."""


def to_line(value: Any) -> str:
    """One JSON value on one line (no newline), UTF-8 left as it is."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def result_json(result: QueryResult, server_name: str) -> dict[str, Any]:
    """One query as one JSON object: the exchange, the response and the TFO report.

    Args:
        result: the answered query.
        server_name: the server as given (may be a host name).
    """
    return {
        **_header(result.wall_time),
        "query": {**_query(result.config), "msgsize": result.query_size},
        "server": _server(server_name, *result.server, tls=result.tls is not None),
        "source": {"address": result.source[0], "port": result.source[1]},
        "tries": result.tries,
        "elapsed_ms": result.elapsed_ms,
        "response": {**message_json(result.response), "msgsize": result.response_size},
        "transfer": None if result.transfer is None else transfer_json(result.transfer),
        "tfo": tfo_json(result.tfo),
        "tls": tls_json(result.tls),
    }


def failure_json(
    config: QueryConfig, server_name: str, failure: QueryFailure, wall_time: float
) -> dict[str, Any]:
    """A query that got no answer, as one object: what was asked, where, and ``error``."""
    return {
        **_header(wall_time),
        "query": _query(config),
        "server": _server(server_name, config.server, config.port, tls=config.tls is not None),
        "tries": config.tries,
        "error": error_json(failure),
    }


def compare_json(comparison: Comparison, server_name: str) -> dict[str, Any]:
    """The comparison as one JSON object (a failed query's step holds ``error``)."""
    from dnstfo.client.compare import FailedStep

    steps: list[dict[str, Any]] = []
    for s in comparison.in_order():
        if isinstance(s, FailedStep):
            steps.append({"step": s.step.name.lower(), "error": error_json(s.failure)})
        else:
            steps.append({"step": s.step.name.lower(), **result_json(s.result, server_name)})
    return {
        "version": JSON_VERSION,
        "steps": steps,
        "failures": len(comparison.failed),
        "cookie_deleted": comparison.cookie_deleted,
        "cookie_note": comparison.cookie_note,
        "baseline_ms": comparison.baseline_ms,
        "tfo_ms": comparison.tfo_ms,
        "saving_ms": comparison.saving_ms,
        "baseline_rounds": comparison.baseline_rounds,
        "tfo_rounds": comparison.tfo_rounds,
        "short_path": comparison.short_path,
        "tfo_worked": comparison.worked,
        "failure": None if comparison.failure is None else comparison.failure.value,
        "reason": comparison.reason,
    }


def error_json(failure: QueryFailure) -> dict[str, Any]:
    """The ``error`` member: ``phase``, ``errno``, ``errname``, ``message``."""
    return {
        "phase": failure.phase,
        "errno": failure.errno,
        "errname": failure.errname,
        "message": failure.message,
    }


def tfo_json(tfo: TfoReport) -> dict[str, Any]:
    """The ``tfo`` member: the state before, what the kernel did, timings and the verdict."""
    b, a, t, v = tfo.before, tfo.after, tfo.timings, tfo.verdict
    return {
        "requested": tfo.requested,
        "method": tfo.method,
        "no_cookie": tfo.no_cookie,
        "before": {
            **_cookie(b.cookie),
            "sysctl_tcp_fastopen": b.sysctl,
            "client_enabled": b.client_enabled,
            "blackhole_timeout_s": b.blackhole_timeout_s,
            "blackhole_count": b.blackhole_count,
        },
        "after": {
            "syn_data_sent": a.attempted,
            "syn_data_acked": a.syn_data_acked,
            "client_fail": a.client_fail.name.lower(),
            "syn_retransmits": a.syn_retransmits,
            **_cookie(a.cookie),
            "cookie_change": a.cookie_change.value,
            "fallback": a.fallback.value,
            "fallback_reason": a.fallback_reason,
            "blackhole_delta": a.blackhole_delta,
        },
        "timings": {
            "handshake_ms": t.handshake_ms,
            "first_byte_ms": t.first_byte_ms,
            "total_ms": t.total_ms,
            "tcpi_rtt_ms": t.tcpi_rtt_ms,
            "tcpi_min_rtt_ms": t.tcpi_min_rtt_ms,
            "rtt_ms": t.rtt_ms,
            "rounds": t.rounds,
        },
        "verdict": {
            "outcome": v.outcome.value,
            "expected_rounds": v.expected_rounds,
            "tfo_worked": v.tfo_worked,
            "text": v.text,
        },
    }


def tls_json(tls: TlsInfo | None) -> dict[str, Any] | None:
    """The ``tls`` member (None: plain TCP)."""
    if tls is None:
        return None
    return {
        "version": tls.version,
        "cipher": tls.cipher,
        "alpn": tls.alpn,
        "resumed": tls.resumed,
        "verified": tls.verified,
        "hostname": tls.hostname,
    }


def transfer_json(transfer: Transfer) -> dict[str, Any]:
    """A zone transfer's size and every record (``response`` holds its first message)."""
    return {
        "messages": len(transfer.messages),
        "records": transfer.records,
        "bytes": transfer.size,
        "answerRRs": [rr for m in transfer.messages for s in m.answer for rr in _rr_json(s)],
    }


def message_json(message: dns.message.Message) -> dict[str, Any]:
    """A message as RFC 8427 members (header bits, counts, sections)."""
    import dns.flags
    import dns.rcode
    import dns.rdataclass
    import dns.rdatatype

    f = message.flags
    return {
        "ID": message.id,
        "QR": int(bool(f & dns.flags.QR)),
        "Opcode": int(message.opcode()),
        "AA": int(bool(f & dns.flags.AA)),
        "TC": int(bool(f & dns.flags.TC)),
        "RD": int(bool(f & dns.flags.RD)),
        "RA": int(bool(f & dns.flags.RA)),
        "AD": int(bool(f & dns.flags.AD)),
        "CD": int(bool(f & dns.flags.CD)),
        "RCODE": int(message.rcode()),
        "RCODEname": dns.rcode.to_text(message.rcode()),
        "QDCOUNT": len(message.question),
        "ANCOUNT": sum(len(s) for s in message.answer),
        "NSCOUNT": sum(len(s) for s in message.authority),
        "ARCOUNT": sum(len(s) for s in message.additional) + (1 if message.edns >= 0 else 0),
        "questionRRs": [
            {
                "NAME": q.name.to_text(),
                "TYPE": int(q.rdtype),
                "TYPEname": dns.rdatatype.to_text(q.rdtype),
                "CLASS": int(q.rdclass),
                "CLASSname": dns.rdataclass.to_text(q.rdclass),
            }
            for q in message.question
        ],
        "answerRRs": [rr for s in message.answer for rr in _rr_json(s)],
        "authorityRRs": [rr for s in message.authority for rr in _rr_json(s)],
        "additionalRRs": [rr for s in message.additional for rr in _rr_json(s)],
        "EDNS": None if message.edns < 0 else {
            "version": message.edns, "udpSize": message.payload,
            "DO": bool(message.ednsflags & dns.flags.DO),
        },
    }  # fmt: skip


def _header(wall_time: float) -> dict[str, Any]:
    """``version`` and the wall-clock start in RFC 8427's two forms."""
    return {
        "version": JSON_VERSION,
        "dateSeconds": wall_time,
        "dateString": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall_time)),
    }


def _query(config: QueryConfig) -> dict[str, Any]:
    """What was asked (without ``msgsize``: a failed query may have none)."""
    return {
        "qname": config.qname,
        "qtype": config.rdtype,
        "qclass": config.rdclass,
        "dnssec": config.dnssec,
        "recurse": config.recurse,
    }


def _server(name: str, address: str, port: int, *, tls: bool) -> dict[str, Any]:
    """Where the query went: ``name`` as given, the ``address`` used, the ``transport``."""
    return {"name": name, "address": address, "port": port, "transport": "tls" if tls else "tcp"}


def _cookie(cookie: bytes | None) -> dict[str, Any]:
    """``cookie_hex`` and ``cookie_len`` (both null: no cookie cached)."""
    if cookie is None:
        return {"cookie_hex": None, "cookie_len": None}
    return {"cookie_hex": cookie.hex(), "cookie_len": len(cookie)}


def _rr_json(rrset: dns.rrset.RRset) -> list[dict[str, Any]]:
    """One object per record of the set: owner, type, class, TTL, data and its wire hex."""
    import dns.rdataclass
    import dns.rdatatype

    typ = dns.rdatatype.to_text(rrset.rdtype)
    base = {
        "NAME": rrset.name.to_text(),
        "TYPE": int(rrset.rdtype),
        "TYPEname": typ,
        "CLASS": int(rrset.rdclass),
        "CLASSname": dns.rdataclass.to_text(rrset.rdclass),
        "TTL": rrset.ttl,
    }
    return [
        {**base, f"rdata{typ}": rd.to_text(), "RDATAHEX": rd.to_wire().hex().upper()}
        for rd in rrset
    ]
