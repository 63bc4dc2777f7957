"""Response rate limiting: the token buckets with a fake clock, then a flood on loopback."""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Callable

import dns.flags
import dns.message
import dns.rcode
import pytest

from dnstfo.answer.responder import truncated_reply
from dnstfo.errors import UsageError
from dnstfo.server.rrl import NS_PER_S, RateLimiter, RrlAction, RrlConfig, prefix_key
from tests.server.conftest import ServerThread

SEND, DROP, SLIP = RrlAction.SEND, RrlAction.DROP, RrlAction.SLIP
MS = NS_PER_S // 1000


def test_a_burst_of_rate_then_one_per_interval() -> None:
    limiter = RateLimiter(RrlConfig(rate=10, slip=0))
    assert [limiter.check("192.0.2.1", 0) for _ in range(12)] == [SEND] * 10 + [DROP] * 2
    assert limiter.check("192.0.2.1", 50 * MS) is DROP  # half an interval: nothing back
    assert limiter.check("192.0.2.1", 100 * MS) is SEND  # one interval: one token
    assert limiter.check("192.0.2.1", 100 * MS) is DROP
    # A second idle fills the bucket again, but never beyond one second's worth.
    later = [limiter.check("192.0.2.1", 5 * NS_PER_S) for _ in range(11)]
    assert later == [SEND] * 10 + [DROP]


@pytest.mark.parametrize(
    ("slip", "pattern"),
    [
        (0, [DROP] * 6),
        (1, [SLIP] * 6),
        (2, [DROP, SLIP] * 3),
        (3, [DROP, DROP, SLIP] * 2),
    ],
)
def test_slip_sends_every_nth_response_over_the_rate(slip: int, pattern: list[RrlAction]) -> None:
    limiter = RateLimiter(RrlConfig(rate=1, slip=slip))
    assert limiter.check("192.0.2.1", 0) is SEND
    assert [limiter.check("192.0.2.1", 0) for _ in range(6)] == pattern


def test_buckets_are_per_prefix() -> None:
    limiter = RateLimiter(RrlConfig(rate=1, slip=0))
    assert limiter.check("192.0.2.1", 0) is SEND
    assert limiter.check("192.0.2.200", 0) is DROP  # same /24
    assert limiter.check("192.0.3.1", 0) is SEND  # another /24
    assert limiter.check("2001:db8:0:ff::1", 0) is SEND
    assert limiter.check("2001:db8:0:ee::2", 0) is DROP  # same /56
    assert limiter.check("2001:db8:0:100::1", 0) is SEND  # another /56
    assert prefix_key("fe80::1%eth0") == prefix_key("fe80::2")
    assert prefix_key("::ffff:192.0.2.7") == prefix_key("192.0.2.200")
    assert prefix_key("::ffff:192.0.3.7") != prefix_key("192.0.2.200")


def test_the_table_stays_bounded() -> None:
    limiter = RateLimiter(RrlConfig(rate=1, max_prefixes=100))
    for i in range(1000):
        limiter.check(f"10.{i // 256}.{i % 256}.1", i * MS)
        assert len(limiter) <= 100


@pytest.mark.parametrize(
    "config", [{"rate": -1}, {"rate": 10, "slip": -1}, {"rate": 10, "max_prefixes": 0}]
)
def test_bad_settings_are_usage_errors(config: dict[str, int]) -> None:
    with pytest.raises(UsageError):
        RrlConfig(**config)


def test_truncated_reply_is_header_and_question_with_tc() -> None:
    query = dns.message.make_query("Www.Test.Example.", "TXT", use_edns=0)
    reply = truncated_reply(query.to_wire())
    assert reply is not None
    response = dns.message.from_wire(reply)
    assert response.id == query.id
    assert response.flags & dns.flags.QR
    assert response.flags & dns.flags.TC
    assert response.flags & dns.flags.RD
    assert response.rcode() == dns.rcode.NOERROR
    assert response.question == query.question
    assert str(response.question[0].name) == "Www.Test.Example."  # case kept
    assert not response.answer
    assert truncated_reply(reply) is None  # never answer a response
    assert truncated_reply(b"\x00" * 11) is None


def flood(
    address: tuple[str, int], source: str, count: int, make_id: Callable[[int], int]
) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    for i in range(count):
        query = dns.message.make_query("www.test.example.", "A")
        query.id = make_id(i)
        sock.sendto(query.to_wire(), address)
    return sock


def drain(sock: socket.socket) -> Counter[str]:
    """Counts the replies already queued on ``sock``: full answers and truncated ones."""
    kinds: Counter[str] = Counter()
    sock.setblocking(False)
    while True:
        try:
            data = sock.recv(65535)
        except BlockingIOError:
            return kinds
        response = dns.message.from_wire(data)
        kinds["truncated" if response.flags & dns.flags.TC else "answered"] += 1


def test_flood_from_one_prefix_is_limited_and_another_is_not(
    make_server: Callable[..., ServerThread],
) -> None:
    rate, count = 10, 120
    server = make_server(rrl=RrlConfig(rate=rate, slip=2))
    address = server.address
    started = time.monotonic()
    with flood(address, "127.0.0.1", count, lambda i: i) as attacker:
        # Another /24; its query is queued behind the whole flood, so its answer also
        # says the server has decided about every query of the flood.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
            other.bind(("127.0.1.1", 0))
            other.settimeout(10)
            other.sendto(dns.message.make_query("www.test.example.", "A").to_wire(), address)
            answer = dns.message.from_wire(other.recv(65535))
            elapsed = time.monotonic() - started
        server.call(lambda: None)  # the loop has sent every reply it decided on
        kinds = drain(attacker)
    stats = server.server.stats
    assert answer.rcode() == dns.rcode.NOERROR
    assert answer.answer
    assert not answer.flags & dns.flags.TC
    # One second's burst, plus what the bucket refilled while the flood was read.
    assert rate <= kinds["answered"] <= rate + int(rate * elapsed) + 1
    assert kinds["truncated"] == stats.rrl_slipped
    assert stats.rrl_dropped + stats.rrl_slipped + kinds["answered"] == count
    assert abs(stats.rrl_dropped - stats.rrl_slipped) <= 1  # slip 2: every other one


def test_rrl_off_by_default_answers_everything(server: ServerThread) -> None:
    with flood(server.address, "127.0.0.1", 50, lambda i: i) as sock:
        server.call(lambda: None)
        deadline = time.monotonic() + 10
        kinds: Counter[str] = Counter()
        while kinds["answered"] < 50 and time.monotonic() < deadline:
            sock.settimeout(max(0.0, deadline - time.monotonic()))
            sock.recv(65535)
            kinds["answered"] += 1
    assert kinds["answered"] == 50
    assert server.server.stats.rrl_dropped == 0
