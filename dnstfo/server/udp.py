"""The driver of DNS over UDP: one datagram in, at most one datagram out.

The responder fits each answer to the client's EDNS payload size (at most ours) and sets
TC when it does not fit (RFC 1035 §4.2.1, RFC 6891 §6.2.5), so the client retries over TCP.

Theory of operation:

- The socket is read from the event loop's reader callback with ``recvmsg``, up to
  ``_BATCH`` datagrams per wake-up (asyncio's datagram transport reads one per wake-up and
  cannot pass ancillary data).
- Fairness: a batch is answered fewest-datagrams-first by client address (a stable sort,
  so each client's own order is kept). A client that floods (cache-busting random names,
  say) fills the socket's queue, but a client with one query in the batch is answered
  before the flood's, not behind it.
- On a wildcard address (``0.0.0.0``, ``::``) each datagram carries its destination
  address (IP_PKTINFO / IPV6_PKTINFO) and the reply goes out from that address, as
  RFC 1123 §6.1.3.5 asks of a multihomed host and clients check (a reply from another
  address is dropped as "unexpected source"). On a specific address the kernel does this.
- With response rate limiting on (see ``rrl``), the decision comes before the answer is
  built, so a flood over the rate costs no answering; a "slip" sends the query back as a
  header and question with TC set.
- A reply the socket cannot take now (buffer full) is counted as dropped: UDP clients
  retry, and queueing would only add latency.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import time
from collections import Counter
from typing import TYPE_CHECKING

from dnstfo.answer.responder import Reply, Responder, Transport, truncated_reply
from dnstfo.kernel.sockets import (
    PKTINFO_SPACE,
    enable_pktinfo,
    is_wildcard,
    pktinfo_address,
    reply_pktinfo,
)
from dnstfo.server.querylog import QueryLogger
from dnstfo.server.rrl import RateLimiter, RrlAction, RrlConfig
from dnstfo.server.stats import ServerStats

if TYPE_CHECKING:
    from dnstfo.server.forwarding import Forwarding

log = logging.getLogger(__name__)

_UDP = Transport.UDP
_MAX_DATAGRAM = 65535
_BATCH = 256
"""Datagrams read per wake-up before the loop gets control back (and ordered for fairness)."""
_SEND, _SLIP = RrlAction.SEND, RrlAction.SLIP


class UdpServer:
    """Answers datagrams on one bound UDP socket.

    Args:
        sock: the bound socket (the caller keeps ownership and closes it).
        responder: the answer engine.
        stats: counters.
        query_log: per-query lines.
        rrl: response rate limiting; None or a rate of 0: off.
        forwarding: sends names outside our zones upstream (None: they are REFUSED).
    """

    def __init__(
        self,
        sock: socket.socket,
        responder: Responder,
        stats: ServerStats,
        query_log: QueryLogger,
        rrl: RrlConfig | None = None,
        forwarding: Forwarding | None = None,
    ) -> None:
        self.sock = sock
        self.forwarding = forwarding
        self.responder = responder
        self.stats = stats
        self.query_log = query_log
        self.limiter = RateLimiter(rrl) if rrl is not None and rrl.enabled else None
        host, self.port = sock.getsockname()[:2]
        self.wildcard = is_wildcard(host)
        self.local: str | None = None if self.wildcard else host
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Starts answering from ``loop`` (call on the loop's thread).

        Raises:
            NetworkError: the destination-address option could not be set.
        """
        self.sock.setblocking(False)
        if self.wildcard:
            enable_pktinfo(self.sock)
        loop.add_reader(self.sock.fileno(), self._readable)
        self._loop = loop

    def close(self) -> None:
        """Stops answering (the socket stays open)."""
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._loop = None

    def _readable(self) -> None:
        sock = self.sock
        wildcard = self.wildcard
        ancdata: list[tuple[int, int, bytes]] = []
        batch: list[tuple[bytes, tuple[str, int], list[tuple[int, int, bytes]]]] = []
        for _ in range(_BATCH):
            try:
                if wildcard:
                    data, ancdata, _flags, addr = sock.recvmsg(_MAX_DATAGRAM, PKTINFO_SPACE)
                else:
                    data, addr = sock.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. an ICMP error for an earlier send
                log.debug("UDP receive error: %s", exc)
                break
            batch.append((data, addr, ancdata))
        if len(batch) > 1:
            per_client = Counter(addr[0] for _, addr, _ in batch)
            if len(per_client) > 1:
                batch.sort(key=lambda item: per_client[item[1][0]])
        for data, addr, ancdata in batch:
            self._datagram(data, addr, ancdata)

    def _datagram(
        self, data: bytes, addr: tuple[str, int], ancdata: list[tuple[int, int, bytes]]
    ) -> None:
        started = time.monotonic_ns()
        client = addr[0]
        stats = self.stats
        limiter = self.limiter
        if limiter is not None:
            action = limiter.check(client, started)
            if action is not _SEND:
                wire = truncated_reply(data) if action is _SLIP else None
                if wire is None:
                    stats.rrl_dropped += 1
                    return
                stats.rrl_slipped += 1
                self._send(wire, addr, ancdata)
                return
        reply = self.responder.respond(data, transport=_UDP, client=client)
        if reply.wire is None:
            stats.dropped += 1
            return
        assert reply.rcode is not None  # a reply with a message has an RCODE
        forwarding = self.forwarding
        if reply.forwardable and forwarding is not None:
            later = functools.partial(self._forwarded, addr, ancdata, reply, started)
            if forwarding.forward_udp(data, reply, client, later):
                return
        if not self._send(reply.wire, addr, ancdata):
            stats.dropped += 1
            return
        stats.queries["udp", reply.rcode] += 1
        if self.query_log.enabled:
            self.query_log.record(
                client=client,
                port=int(addr[1]),
                qname=reply.qname,
                qtype=reply.qtype,
                rcode=reply.rcode,
                transport="udp",
                syn_data=False,
                latency_ns=time.monotonic_ns() - started,
                local=pktinfo_address(ancdata) if self.wildcard else self.local,
                local_port=self.port,
                note=reply.note,
            )

    def _forwarded(
        self,
        addr: tuple[str, int],
        ancdata: list[tuple[int, int, bytes]],
        reply: Reply,
        started: int,
        wire: bytes,
        note: str,
    ) -> None:
        """Sends a forwarded query's answer when it comes (any order)."""
        if not self._send(wire, addr, ancdata):
            self.stats.dropped += 1
            return
        rcode = wire[3] & 0xF
        self.stats.queries["udp", rcode] += 1
        if self.query_log.enabled:
            self.query_log.record(
                client=addr[0],
                port=int(addr[1]),
                qname=reply.qname,
                qtype=reply.qtype,
                rcode=rcode,
                transport="udp",
                syn_data=False,
                latency_ns=time.monotonic_ns() - started,
                local=pktinfo_address(ancdata) if self.wildcard else self.local,
                local_port=self.port,
                note=note,
            )

    def _send(
        self, wire: bytes, addr: tuple[str, int], ancdata: list[tuple[int, int, bytes]]
    ) -> bool:
        """Sends one reply from the query's destination address; False if it could not go."""
        try:
            if self.wildcard:
                self.sock.sendmsg([wire], reply_pktinfo(ancdata), 0, addr)
            else:
                self.sock.sendto(wire, addr)
        except OSError as exc:  # buffer full (EAGAIN), or no route back
            log.debug("UDP reply to %s not sent: %s", addr[0], exc)
            return False
        return True
