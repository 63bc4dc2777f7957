"""Response rate limiting (RRL) for UDP, in the manner of Knot DNS's mod-rrl and BIND.

Why: a UDP query's source address can be forged, so a server that answers every datagram
lends its answers (up to 27 times the query's size here) to reflection attacks. RRL caps
the responses per second sent to one client prefix; the victim of a reflection then gets
few answers, while a real client behind that prefix still gets some through "slip".

Theory of operation:

- Clients are grouped by prefix: /24 for IPv4 and /56 for IPv6 (Knot's and BIND's
  defaults), since an attacker forging addresses can pick any host of a prefix.
- Each prefix has a token bucket of ``rate`` responses per second holding at most one
  second of them, kept as one integer (GCRA, the "virtual scheduling" form of a token
  bucket): the theoretical arrival time ``tat`` of the next response. A response at
  ``now`` fits when ``tat - now`` is within the burst tolerance; then ``tat`` moves on by
  one interval.
- A response that does not fit is dropped, except every ``slip``-th, which is sent
  truncated (TC=1, no records) so that a legitimate client retries over TCP, which a
  forged source cannot complete (RFC 7766; with TFO the retry costs one round trip).
  ``slip`` 0 never slips, 1 slips every one (Knot's default), 2 every other (BIND's).
- The table is bounded: past ``max_prefixes`` entries, idle ones (bucket full again) go;
  if that is not enough, the table starts afresh (answering too much for a moment beats
  unbounded memory).

Time is an input (``now`` in monotonic nanoseconds), so tests need no clock.
"""

from __future__ import annotations

import enum
import socket
from dataclasses import dataclass

from dnstfo.errors import UsageError

NS_PER_S = 1_000_000_000
IPV4_PREFIX = 24
"""Bits of an IPv4 client address that name its bucket."""
IPV6_PREFIX = 56
"""Bits of an IPv6 client address that name its bucket."""
_IPV6_PREFIX_BYTES = IPV6_PREFIX // 8


class RrlAction(enum.Enum):
    """What to do with one response."""

    SEND = "send"
    """Within the rate: answer."""
    DROP = "drop"
    """Over the rate: send nothing."""
    SLIP = "slip"
    """Over the rate, but this one goes out truncated (TC=1) so the client can use TCP."""


_SEND, _DROP, _SLIP = RrlAction.SEND, RrlAction.DROP, RrlAction.SLIP


@dataclass(frozen=True, slots=True)
class RrlConfig:
    """Response rate limiting settings (off when ``rate`` is 0)."""

    rate: int = 0
    """Responses per second per client prefix; 0 turns RRL off."""
    slip: int = 1
    """Every slip-th response over the rate is sent truncated; 0 never (Knot's default 1)."""
    max_prefixes: int = 100_000
    """Client prefixes tracked at once (the table's memory bound)."""

    def __post_init__(self) -> None:
        if self.rate < 0:
            raise UsageError("the RRL rate must be 0 (off) or more responses per second")
        if self.rate > NS_PER_S:
            raise UsageError("the RRL rate must be at most 1000000000 responses per second")
        if self.slip < 0:
            raise UsageError("the RRL slip must be 0 (never) or more")
        if self.max_prefixes < 1:
            raise UsageError("the RRL table needs room for at least 1 prefix")

    @property
    def enabled(self) -> bool:
        """Whether responses are limited at all."""
        return self.rate > 0


def prefix_key(client: str) -> str | bytes:
    """The bucket of a client address: its /24 (IPv4) or /56 (IPv6).

    Args:
        client: a literal address as the socket reports it (IPv6 maybe with ``%scope``).

    Returns:
        A hashable key; equal for addresses of one prefix.
    """
    if "." in client:  # IPv4, or IPv4-mapped IPv6 (::ffff:192.0.2.1): its IPv4 /24
        return client[client.rfind(":") + 1 : client.rfind(".")]
    return socket.inet_pton(socket.AF_INET6, client.partition("%")[0])[:_IPV6_PREFIX_BYTES]


class RateLimiter:
    """Token buckets per client prefix; one per UDP driver (not thread-safe).

    Args:
        config: the rate and slip; must be enabled.
    """

    __slots__ = ("_buckets", "_interval", "_max", "_slip", "_tolerance")

    def __init__(self, config: RrlConfig) -> None:
        if not config.enabled:
            raise ValueError("RateLimiter needs a rate above 0")
        self._interval = NS_PER_S // config.rate
        # A full bucket holds one second of responses: `rate` may go out at once.
        self._tolerance = NS_PER_S - self._interval
        self._slip = config.slip
        self._max = config.max_prefixes
        self._buckets: dict[str | bytes, list[int]] = {}
        """Prefix -> [tat, responses over the rate so far]."""

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, client: str, now: int) -> RrlAction:
        """Decides about one response to ``client`` and charges its bucket.

        Args:
            client: the client's address.
            now: monotonic nanoseconds.

        Returns:
            SEND, DROP or SLIP.
        """
        key = prefix_key(client)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max:
                self._make_room(now)
            self._buckets[key] = [now + self._interval, 0]
            return _SEND
        tat = bucket[0] if bucket[0] > now else now
        if tat - now <= self._tolerance:
            bucket[0] = tat + self._interval
            return _SEND
        bucket[1] += 1
        slip = self._slip
        return _SLIP if slip and bucket[1] % slip == 0 else _DROP

    def _make_room(self, now: int) -> None:
        """Forgets idle prefixes (full buckets); all of them if that frees too little."""
        buckets = self._buckets
        for key in [k for k, (tat, _) in buckets.items() if tat <= now]:
            del buckets[key]
        if len(buckets) >= self._max // 2:
            buckets.clear()
