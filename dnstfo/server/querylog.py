"""One log line per query, as text or JSON, on the ``dnstfo.query`` logger.

Example text line::

    127.0.0.1#40312 example.com. A NOERROR tcp TFO 0.081ms

``TFO`` marks a query that arrived in the data of the SYN (TCP_INFO SYN_DATA on our side).
"""

from __future__ import annotations

import json
import logging

import dns.rcode
import dns.rdatatype

from dnstfo.server.config import QueryLog

QUERY_LOGGER = "dnstfo.query"


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
    ) -> None:
        """Logs one query (INFO level)."""
        qtype_text = (
            dns.rdatatype.to_text(dns.rdatatype.RdataType.make(qtype)) if qtype is not None else "-"
        )
        rcode_text = "-" if rcode is None else rcode_name(rcode)
        if self.mode is QueryLog.JSON:
            line = json.dumps(
                {
                    "client": client,
                    "port": port,
                    "qname": qname,
                    "qtype": qtype_text,
                    "rcode": rcode_text,
                    "transport": transport,
                    "tfo": syn_data,
                    "latency_ms": round(latency_ns / 1e6, 3),
                },
                separators=(",", ":"),
            )
        else:
            mark = " TFO" if syn_data else ""
            line = (
                f"{client}#{port} {qname or '-'} {qtype_text} {rcode_text} "
                f"{transport}{mark} {latency_ns / 1e6:.3f}ms"
            )
        self._logger.info("%s", line)
