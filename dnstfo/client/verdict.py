"""The verdict: one line saying what TCP Fast Open did for a query, and why.

``judge`` is a pure function of the observations in the report (no I/O), so every case is
table-tested. The reasoning follows RFC 7413 and the Linux client (net/ipv4/tcp_fastopen.c,
``tcp_send_syn_data``):

- The query rides in the SYN only when a cookie is cached for the server (or
  TCP_FASTOPEN_NO_COOKIE is set) and the kernel has not disabled active TFO after a
  suspected blackhole. Otherwise the SYN carries a cookie *request* and the query follows
  the handshake: two round trips.
- Data in the SYN counts only if the SYN-ACK acknowledges it (TCP_INFO SYN_DATA). If not,
  the kernel resends it after the handshake: two round trips again. A server that refuses
  a cookie (new key) sends a fresh one in the same SYN-ACK.
- A SYN with data that gets no answer is retransmitted *without* data after the initial
  retransmission timeout (1 s): the answer then takes a timeout plus two round trips.
  The same holds for a SYN that only asks for a cookie: resent without the option, it
  is answered without a cookie, so a dropped cookie request does not read as "no cookie".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from dnstfo.client.report import CookieChange, Fallback, TfoAfter, TfoBefore, Timings
from dnstfo.kernel.tcpinfo import FastOpenClientFail


class Outcome(enum.Enum):
    """What happened to the query with respect to TCP Fast Open."""

    NOT_REQUESTED = "not-requested"
    """TFO was not asked for (``+notfo``): plain TCP."""
    CLIENT_OFF = "client-off"
    """TFO was asked for but the client side is off in this host; plain TCP."""
    FEATURE_MISSING = "feature-missing"
    """The kernel lacks the socket option asked for; plain TCP."""
    IN_SYN = "in-syn"
    """The query rode in the SYN and the server acknowledged it: one round trip."""
    COOKIE_REFUSED = "cookie-refused"
    """The query rode in the SYN, the server did not acknowledge it and sent a new cookie."""
    DATA_NOT_ACKED = "data-not-acked"
    """The query rode in the SYN and the server ignored it; it was resent after the handshake."""
    SYN_RETRANSMITTED = "syn-retransmitted"
    """The SYN with data went unanswered and was retransmitted without data."""
    COOKIE_RECEIVED = "cookie-received"
    """No cookie was cached; the server sent one, so the next query can use TFO."""
    NO_COOKIE = "no-cookie"
    """No cookie was cached and the server sent none."""
    COOKIE_REQUEST_DROPPED = "cookie-request-dropped"
    """No cookie was cached; the SYN asking for one went unanswered and was resent without
    the option, and no cookie came: something may drop SYNs that carry the TFO option."""
    BLACKHOLE = "blackhole"
    """A cookie was cached but the kernel has switched active TFO off (suspected blackhole)."""
    COOKIE_HELD_BACK = "cookie-held-back"
    """A cookie was cached but the kernel did not use it (earlier SYN-data losses)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """The judgement on one exchange."""

    outcome: Outcome
    """What happened."""
    expected_rounds: int | None
    """Round trips this outcome costs on a clean path (None: a timeout was involved)."""
    tfo_worked: bool
    """True only when the query rode in the SYN and was acknowledged."""
    text: str
    """One line for people, e.g. ``answer in 1 round trip: ...``."""


def _rounds_text(n: int) -> str:
    return f"answer in {n} round trip{'s' if n != 1 else ''}"


def _ms(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f} ms" if value >= 10 else f"{value:.2g} ms"


def judge(
    requested: bool,
    no_cookie: bool,
    before: TfoBefore,
    after: TfoAfter,
    timings: Timings,
    *,
    tls: bool = False,
) -> Verdict:
    """Decides what TFO did for one exchange, from the observations alone.

    Args:
        requested: whether the query asked for TFO.
        no_cookie: whether TCP_FASTOPEN_NO_COOKIE was set.
        before: the host's state before the connection.
        after: what the kernel reported after it.
        timings: durations and the path RTT.
        tls: DNS over TLS: the handshake adds a round trip (TLS 1.3), and what rides in
            the SYN is the ClientHello.

    Returns:
        The verdict; ``text`` is ready to print.
    """
    retrans = after.syn_retransmits > 0 or after.client_fail is FastOpenClientFail.SYN_RETRANSMITTED

    def verdict(outcome: Outcome, rounds: int | None, why: str, worked: bool = False) -> Verdict:
        if rounds is not None and tls:
            rounds += 1
        if rounds is None or retrans:
            n = after.syn_retransmits or 1
            head = f"answer after {n} SYN retransmission(s), in {_ms(timings.total_ms)}"
            rounds = None
        else:
            head = _rounds_text(rounds)
        return Verdict(outcome, rounds, worked, f"{head}: {why}")

    if not requested:
        return verdict(Outcome.NOT_REQUESTED, 2, "plain TCP, TFO not requested")
    if after.fallback is Fallback.CLIENT_OFF:
        return verdict(Outcome.CLIENT_OFF, 2, f"plain TCP, {after.fallback_reason}")
    if after.fallback is Fallback.FEATURE_MISSING:
        return verdict(Outcome.FEATURE_MISSING, 2, f"plain TCP, {after.fallback_reason}")

    if after.attempted:
        if after.syn_data_acked and not retrans:
            how = (
                "with a cached cookie"
                if before.cookie is not None
                else "without a cookie (TCP_FASTOPEN_NO_COOKIE)"
            )
            saved = f"saved ≈ 1 RTT = {_ms(timings.rtt_ms)}"
            first = "ClientHello" if tls else "query"
            return verdict(Outcome.IN_SYN, 1, f"{first} sent in the SYN {how} ({saved})", True)
        if retrans:
            return verdict(
                Outcome.SYN_RETRANSMITTED,
                None,
                "the SYN with the query got no answer and was resent without data "
                "(a middlebox may drop SYNs that carry data)",
            )
        if after.cookie_change in (CookieChange.CHANGED, CookieChange.NEW):
            return verdict(
                Outcome.COOKIE_REFUSED,
                2,
                "the server refused our cookie (SYN data not acked) and sent a new one; "
                "the next query can use TFO",
            )
        return verdict(Outcome.DATA_NOT_ACKED, 2, "the server ignored the SYN data (not acked)")

    if before.cookie is None and not no_cookie:
        if after.cookie is not None:
            return verdict(
                Outcome.COOKIE_RECEIVED,
                2,
                "no cookie cached yet; the server sent one, the next query can use TFO",
            )
        if retrans:
            return verdict(
                Outcome.COOKIE_REQUEST_DROPPED,
                None,
                "no cookie cached; the SYN asking for one got no answer, was resent without "
                "the TFO option and no cookie came (a middlebox may drop SYNs with the option)",
            )
        return verdict(
            Outcome.NO_COOKIE,
            2,
            "no cookie cached, and the server sent none (TFO off at the server, "
            "or the option removed on the path)",
        )
    if before.blackhole_count > 0 and before.blackhole_timeout_s:
        return verdict(
            Outcome.BLACKHOLE,
            2,
            f"a cookie is cached but the kernel has switched active TFO off after "
            f"{before.blackhole_count} suspected blackhole(s); it retries after "
            f"{before.blackhole_timeout_s} s",
        )
    return verdict(
        Outcome.COOKIE_HELD_BACK,
        2,
        "a cookie is cached but the kernel did not use it (earlier SYN-data losses to this "
        "server make it back off)",
    )
