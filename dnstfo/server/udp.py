"""The asyncio driver of DNS over UDP: one datagram in, at most one datagram out.

The responder fits each answer to the client's EDNS payload size (at most ours) and sets
TC when it does not fit (RFC 1035 §4.2.1, RFC 6891 §6.2.5), so the client retries over TCP.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

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
        # A datagram transport, though on Python 3.11 the selector loop's class does not
        # inherit asyncio.DatagramTransport (so no isinstance check).
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        started = time.monotonic_ns() if self.query_log.enabled else 0
        client = addr[0]
        assert isinstance(client, str)
        reply = self.responder.respond(data, transport=_UDP, client=client)
        stats = self.stats
        if reply.wire is None:
            stats.dropped += 1
            return
        assert self.transport is not None  # datagrams only arrive once connected
        assert reply.rcode is not None  # a reply with a message has an RCODE
        self.transport.sendto(reply.wire, addr)
        stats.queries["udp", reply.rcode] += 1
        if started:
            self.query_log.record(
                client=client,
                port=int(addr[1]),
                qname=reply.qname,
                qtype=reply.qtype,
                rcode=reply.rcode,
                transport="udp",
                syn_data=False,
                latency_ns=time.monotonic_ns() - started,
            )

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP error: %s", exc)  # ICMP errors for earlier sends; nothing to do
