"""Glue between the transports and the forwarder: who is forwarded, and how answers return.

Theory of operation. A query the authority refused only because its name is outside our
zones (``Reply.forwardable``) goes two ways:

- A cache hit is answered at once, on the path of a local answer: the responder asks
  :meth:`Forwarding.cached` (its ``forwarded`` hook) and, for a client inside
  ``--forward-allow``, gets the forward cache's copy (ID and question case patched in,
  TTLs counted down; see ``forwardcache``) as a plain reply noted ``forward=cache`` in
  the query log, cut to the client's UDP size. No deferral, no loop callback: on TCP it
  goes out in the same write as the answers to the queries read with it.
- Anything else stays forwardable: the TCP session offers it to
  :meth:`Forwarding.defer_tcp` (the session's ``Deferrer``), the UDP driver to
  :meth:`Forwarding.forward_udp`. A client outside ``--forward-allow`` keeps its
  REFUSED. The forwarder does not look a query up again that just missed; its answer
  comes back later, in any order, through ``TcpSession.deliver`` (which writes nothing
  if the client closed meanwhile) or a datagram, and is put into the cache.

UDP answers are cut to the client's size (TC set when they do not fit, RFC 1035 §4.2.1).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from dns.rcode import Rcode

from dnstfo.answer.forward import ForwardConfig, add_opt, opt_rdata
from dnstfo.answer.responder import CachedForward, Reply, Transport, truncated_reply
from dnstfo.server.forwardmetrics import ForwardStats
from dnstfo.server.upstream import Forwarder, ForwardTrace

if TYPE_CHECKING:
    from dnstfo.server.session import TcpSession

log = logging.getLogger(__name__)

_UDP = Transport.UDP
_RCODES = tuple(map(Rcode, range(16)))
CACHE_NOTE = "forward=cache"
"""The query log's note on an answer from the forward cache."""


def describe(trace: ForwardTrace) -> str:
    """The query log's note on a forwarded answer: ``upstream=ADDR fresh|reused|udp ...``."""
    if trace.cached:
        return CACHE_NOTE
    if trace.upstream is None:
        tried = f" tried={','.join(trace.tried)}" if trace.tried else ""
        return f"forward=failed reason={trace.failure or 'unknown'}{tried}"
    parts = [f"upstream={trace.upstream}"]
    parts.append("udp" if trace.udp else "fresh" if trace.fresh else "reused")
    if trace.fresh:
        syn = "acked" if trace.syn_acked else "sent" if trace.in_syn else "no"
        parts.append(f"syn-data={syn}")
    parts.append(f"upstream-ms={trace.upstream_ns / 1e6:.3f}")
    return " ".join(parts)


def udp_limit(query: bytes, ours: int) -> int:
    """The largest UDP response the client takes: its EDNS payload size (at least 512,
    at most ``ours``), or 512 without EDNS."""
    size = len(query)
    if size < 12 or not (query[10] or query[11]):
        return 512
    # The OPT record is the last of the additional section in every real query: a root
    # name (one zero byte), TYPE 41, CLASS = payload size, TTL, then RDLENGTH bytes that
    # end the message. Found from the end; bytes in an option that only look like it
    # (a cookie may hold them) do not end the message there: then the records are walked.
    pos = query.rfind(b"\x00\x00\x29")
    if pos < 0 or pos + 11 > size or pos + 11 + (query[pos + 9] << 8 | query[pos + 10]) != size:
        span = opt_rdata(query)
        if span is None:
            return 512
        pos = span[0] - 11
    payload = query[pos + 3] << 8 | query[pos + 4]
    return max(512, min(payload, ours))


class Forwarding:
    """Forwards the queries of allowed clients through one :class:`Forwarder`.

    Args:
        config: what to forward where, and to whom.
        clock: monotonic ns.
        udp_payload: our largest UDP response.
    """

    def __init__(self, config: ForwardConfig, clock: Callable[[], int], udp_payload: int) -> None:
        self.config = config
        self.clock = clock
        self.udp_payload = udp_payload
        self.forwarder = Forwarder(config, clock)
        self.refused = 0
        """Queries not forwarded: the client is outside ``--forward-allow``."""
        self._waking: list[TcpSession] = []
        """Sessions given answers since the loop last ran :meth:`_wake_all`."""
        log.info(
            "forwarding names outside our zones to %s%s over %s, cache %d, for %s",
            ", ".join(u.label for u in self.forwarder.upstreams.values()),
            f" ({len(config.zones)} zone routes)" if config.zones else "",
            "TCP (Fast Open, kept open)" if config.transport.value == "tcp" else "UDP",
            config.cache_size,
            ", ".join(map(str, config.allow)),
        )

    def cached(
        self, query: bytes, transport: Transport, client: str | None
    ) -> CachedForward | None:
        """The responder's ``forwarded`` hook: the forward cache's answer to a forwardable
        query, now (cut to the client's size over UDP); None: a miss, or a client outside
        ``--forward-allow`` (the query then goes to :meth:`defer_tcp` or
        :meth:`forward_udp`, which refuse or forward it)."""
        if not self.config.allows(client):
            return None
        wire = self.forwarder.cached(query)
        if wire is None:
            return None
        if transport is _UDP:
            wire = self._fit_udp(wire, query, udp_limit(query, self.udp_payload))
        return CachedForward(wire, _RCODES[wire[3] & 0xF], CACHE_NOTE)

    def _fit_udp(self, wire: bytes, query: bytes, limit: int) -> bytes:
        """``wire``, or header and question with TC set when it is over ``limit``."""
        if len(wire) > limit:
            return add_opt(truncated_reply(query) or wire[:12], query, self.udp_payload)
        return wire

    def defer_tcp(self, session: TcpSession, slot: int, query: bytes, reply: Reply) -> bool:
        """The TCP session's ``Deferrer``: True when the query went upstream. The
        responder asked :meth:`cached` first (a miss; with the cache on), so the forwarder
        does not again."""
        if not self.config.allows(session.client):
            self.refused += 1
            return False
        qname, qtype = reply.qname, reply.qtype

        def done(wire: bytes, trace: ForwardTrace) -> None:
            note = describe(trace) if session.query_log.enabled else None
            session.deliver(slot, wire, self.clock(), qname, qtype, note, False)
            if not self._waking:
                asyncio.get_running_loop().call_soon(self._wake_all)
            self._waking.append(session)

        self.forwarder.forward(query, qname or ".", done)
        return True

    def _wake_all(self) -> None:
        """Wakes each session that got answers since the last call, once: the answers
        of one upstream read go to each client in one write."""
        sessions, self._waking = self._waking, []
        for session in dict.fromkeys(sessions):  # (each once, in order)
            if session.wake is not None:
                session.wake()

    def forward_udp(
        self, query: bytes, reply: Reply, client: str, send: Callable[[bytes, str], None]
    ) -> bool:
        """Forwards a UDP query; ``send(wire, note)`` is called later with the answer cut
        to the client's size. False: the client may not forward (send ``reply``). As in
        :meth:`defer_tcp`, the responder's lookup in the cache missed."""
        if not self.config.allows(client):
            self.refused += 1
            return False
        limit = udp_limit(query, self.udp_payload)

        def done(wire: bytes, trace: ForwardTrace) -> None:
            send(self._fit_udp(wire, query, limit), describe(trace))

        self.forwarder.forward(query, reply.qname or ".", done)
        return True

    def stats(self) -> ForwardStats:
        """A copy of the forwarding counters (also read by the metrics thread)."""
        return ForwardStats.of(self.forwarder, self.refused)

    def close(self) -> None:
        """Closes the upstream connections."""
        self.forwarder.close()
