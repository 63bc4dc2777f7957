"""The asyncio driver of DNS over UDP: one datagram in, at most one datagram out.

The responder fits each answer to the client's EDNS payload size (at most ours) and sets
TC when it does not fit (RFC 1035 §4.2.1, RFC 6891 §6.2.5), so the client retries over TCP.
"""

from __future__ import annotations

import asyncio
import logging
import time

from dnstfo.answer.responder import Responder, Transport
from dnstfo.server.querylog import QueryLogger
from dnstfo.server.stats import ServerStats

log = logging.getLogger(__name__)

_UDP = Transport.UDP


class UdpServer(asyncio.DatagramProtocol):
    """Answers datagrams on one UDP socket.

    Args:
        responder: the answer engine.
        stats: counters.
        query_log: per-query lines.
    """

    def __init__(self, responder: Responder, stats: ServerStats, query_log: QueryLogger) -> None:
        self.responder = responder
        self.stats = stats
        self.query_log = query_log
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        started = time.monotonic_ns() if self.query_log.enabled else 0
        client = addr[0]
        assert isinstance(client, str)
        reply = self.responder.respond(data, transport=_UDP, client=client)
        stats = self.stats
        if reply.wire is None:
            stats.dropped += 1
            return
        self.transport.sendto(reply.wire, addr)  # type: ignore[union-attr]
        stats.queries["udp", reply.rcode] += 1  # type: ignore[index]
        if started:
            self.query_log.record(
                client=client,
                port=int(addr[1]),  # type: ignore[arg-type]
                qname=reply.qname,
                qtype=reply.qtype,
                rcode=reply.rcode,
                transport="udp",
                syn_data=False,
                latency_ns=time.monotonic_ns() - started,
            )

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP error: %s", exc)  # ICMP errors for earlier sends; nothing to do
