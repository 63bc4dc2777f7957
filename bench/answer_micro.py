"""Micro-benchmark of the answer path: µs per query on a cache hit and on a miss.

Run: ``.venv/bin/python bench/answer_micro.py [zone directory]``. Prints one line per case:
the cache hit, the miss as served, and the miss with every answer rendered by dnspython
(``negative_index=False``: what NXDOMAIN and NODATA cost before the negative index).
"""

from __future__ import annotations

import logging
import sys
import timeit
from pathlib import Path

import dns.message

from dnstfo.answer.authority import Authority
from dnstfo.answer.responder import Responder, ResponderConfig, Transport

log = logging.getLogger("bench.answer_micro")

_CASES = (
    ("A, no EDNS", "www.example.com", "A", False),
    ("A, EDNS + DO", "server1.example.com", "A", True),
    ("MX + additional", "example.com", "MX", True),
    ("NXDOMAIN", "nope.example.com", "A", True),
    ("NXDOMAIN, deep", "a.b.c.nope.example.com", "AAAA", False),
    ("NODATA", "mail.example.com", "TXT", True),
)


def _per_query_us(func: object, number: int) -> float:
    """Best of five runs of ``number`` calls, in µs per call."""
    runs = timeit.repeat(func, number=number, repeat=5)  # type: ignore[arg-type]
    return min(runs) / number * 1e6


def main() -> None:
    """Measures each case with the cache (hits) and without it (every query a miss)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    zones = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent.parent / "zones"
    authority, errors = Authority.load(zones)
    for error in errors:
        log.warning("%s", error)
    cached = Responder(authority)
    uncached = Responder(authority, ResponderConfig(cache_size=0))
    rendered = Responder(authority, ResponderConfig(cache_size=0, negative_index=False))
    for label, name, rdtype, edns in _CASES:
        wire = dns.message.make_query(name, rdtype, use_edns=0 if edns else False).to_wire()
        cached.respond(wire, transport=Transport.UDP)

        def hit(wire: bytes = wire) -> None:
            cached.respond(wire, transport=Transport.UDP)

        def miss(wire: bytes = wire) -> None:
            uncached.respond(wire, transport=Transport.UDP)

        def render(wire: bytes = wire) -> None:
            rendered.respond(wire, transport=Transport.UDP)

        log.info(
            "%-16s hit %6.2f µs   miss %7.1f µs   miss rendered %7.1f µs",
            label,
            _per_query_us(hit, 200_000),
            _per_query_us(miss, 2_000),
            _per_query_us(render, 2_000),
        )
    batch = [dns.message.make_query("www.example.com", "A").to_wire()] * 64
    many = _per_query_us(lambda: cached.respond_many(batch, transport=Transport.TCP), 5_000)
    log.info("%-16s hit %6.2f µs per query (batches of 64)", "respond_many", many / 64)


if __name__ == "__main__":
    main()
