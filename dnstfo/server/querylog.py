"""One log line per query, as text or JSON, on the ``dnstfo.query`` logger.

Example text line::

    2026-11-30T15:40:00.123Z 127.0.0.1#40312 -> 127.0.0.1#53 example.com. A NOERROR tcp TFO 0.081ms

The time is when the line was written, ISO 8601 in UTC with milliseconds; then the client's
address and port, the local address and port the query came in on (``-`` when the driver
does not know it), the question, the RCODE, the transport and the latency. ``TFO`` marks a
query that arrived in the data of the SYN (TCP_INFO SYN_DATA on our side). The JSON form
has the same values under ``time``, ``client``, ``port``, ``local``, ``local_port``,
``qname``, ``qtype``, ``rcode``, ``transport``, ``tfo`` and ``latency_ms``.
"""

from __future__ import annotations

import json
import logging
import time

import dns.rcode
import dns.rdatatype

from dnstfo.server.config import QueryLog

QUERY_LOGGER = "dnstfo.query"


def utc_timestamp(seconds: float) -> str:
    """``seconds`` since the epoch as ISO 8601 in UTC with milliseconds (``...T15:40:00.123Z``)."""
    whole = int(seconds)
    millis = int((seconds - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def rcode_name(rcode: int) -> str:
    """The RCODE's mnemonic (``NXDOMAIN``), or its number when it has none."""
    try:
        return dns.rcode.to_text(dns.rcode.Rcode(rcode))
    except ValueError:
        return str(rcode)


class QueryLogger:
    """Formats and emits query lines; check ``enabled`` before gathering anything.

    Args:
        mode: off, text or JSON.
        logger: where lines go (default ``dnstfo.query``).
    """

    __slots__ = ("_logger", "enabled", "mode")

    def __init__(self, mode: QueryLog, logger: logging.Logger | None = None) -> None:
        self.mode = mode
        self._logger = logger or logging.getLogger(QUERY_LOGGER)
        self.enabled = mode is not QueryLog.OFF

    def record(
        self,
        *,
        client: str,
        port: int,
        qname: str | None,
        qtype: int | None,
        rcode: int | None,
        transport: str,
        syn_data: bool,
        latency_ns: int,
        local: str | None = None,
        local_port: int | None = None,
        note: str | None = None,
    ) -> None:
        """Logs one query (INFO level).

        Args:
            client: the client's address.
            port: the client's port.
            qname: the question name, when it could be read.
            qtype: the question type, when it could be read.
            rcode: the response RCODE (None: nothing was sent).
            transport: ``udp`` or ``tcp``.
            syn_data: the query arrived in the SYN.
            latency_ns: from the query's arrival to its answer.
            local: the address the query was sent to (ours); None when unknown.
            local_port: the port it was sent to; None when unknown.
            note: more about the answer (a forwarded query's upstream), at the end.
        """
        stamp = utc_timestamp(time.time())
        qtype_text = (
            dns.rdatatype.to_text(dns.rdatatype.RdataType.make(qtype)) if qtype is not None else "-"
        )
        rcode_text = "-" if rcode is None else rcode_name(rcode)
        if self.mode is QueryLog.JSON:
            line = json.dumps(
                {
                    "time": stamp,
                    "client": client,
                    "port": port,
                    "local": local,
                    "local_port": local_port,
                    "qname": qname,
                    "qtype": qtype_text,
                    "rcode": rcode_text,
                    "transport": transport,
                    "tfo": syn_data,
                    "latency_ms": round(latency_ns / 1e6, 3),
                    **({"forward": note} if note else {}),
                },
                separators=(",", ":"),
            )
        else:
            mark = " TFO" if syn_data else ""
            here = f"{local or '-'}#{'-' if local_port is None else local_port}"
            line = (
                f"{stamp} {client}#{port} -> {here} {qname or '-'} {qtype_text} {rcode_text} "
                f"{transport}{mark} {latency_ns / 1e6:.3f}ms"
            )
            if note:
                line += " " + note
        self._logger.info("%s", line)
