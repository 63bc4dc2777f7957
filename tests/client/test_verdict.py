"""The verdict is a pure function of the observations: every outcome, table-tested."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dnstfo.client.report import CookieChange, Fallback, TfoAfter, TfoBefore, Timings
from dnstfo.client.verdict import Outcome, judge
from dnstfo.kernel.tcpinfo import FastOpenClientFail as Fail

COOKIE = bytes.fromhex("0011223344556677")
OTHER = bytes.fromhex("8899aabbccddeeff")

NO_COOKIE = TfoBefore(None, True, 3, 0, 0)
CACHED = replace(NO_COOKIE, cookie=COOKIE)
BLACKHOLED = replace(CACHED, blackhole_timeout_s=3600, blackhole_count=2)
CLEAN = Timings.measure(50.2, 100.5, 100.6, 50_100, 50_000)


def after(**kw: object) -> TfoAfter:
    base = TfoAfter(
        attempted=False,
        syn_data_acked=False,
        client_fail=Fail.UNSPEC,
        syn_retransmits=0,
        cookie=None,
        cookie_change=CookieChange.NONE,
        fallback=Fallback.NONE,
        fallback_reason=None,
        blackhole_delta=0,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


CASES = [
    # (requested, no_cookie, before, after, outcome, rounds, worked)
    (False, False, CACHED, after(cookie=COOKIE, cookie_change=CookieChange.SAME),
     Outcome.NOT_REQUESTED, 2, False),
    (True, False, NO_COOKIE, after(fallback=Fallback.CLIENT_OFF, fallback_reason="off"),
     Outcome.CLIENT_OFF, 2, False),
    (True, False, NO_COOKIE, after(fallback=Fallback.FEATURE_MISSING, fallback_reason="old"),
     Outcome.FEATURE_MISSING, 2, False),
    (True, False, CACHED, after(attempted=True, syn_data_acked=True, cookie=COOKIE,
     cookie_change=CookieChange.SAME), Outcome.IN_SYN, 1, True),
    (True, True, NO_COOKIE, after(attempted=True, syn_data_acked=True),
     Outcome.IN_SYN, 1, True),
    (True, False, CACHED, after(attempted=True, client_fail=Fail.DATA_NOT_ACKED, cookie=OTHER,
     cookie_change=CookieChange.CHANGED), Outcome.COOKIE_REFUSED, 2, False),
    (True, False, CACHED, after(attempted=True, client_fail=Fail.DATA_NOT_ACKED, cookie=COOKIE,
     cookie_change=CookieChange.SAME), Outcome.DATA_NOT_ACKED, 2, False),
    (True, False, CACHED, after(attempted=True, client_fail=Fail.DATA_NOT_ACKED,
     cookie_change=CookieChange.NONE), Outcome.DATA_NOT_ACKED, 2, False),
    (True, False, CACHED, after(attempted=True, syn_retransmits=1,
     client_fail=Fail.SYN_RETRANSMITTED, cookie=COOKIE, cookie_change=CookieChange.SAME),
     Outcome.SYN_RETRANSMITTED, None, False),
    (True, False, CACHED, after(attempted=True, syn_data_acked=True, syn_retransmits=1),
     Outcome.SYN_RETRANSMITTED, None, False),
    (True, False, NO_COOKIE, after(client_fail=Fail.COOKIE_UNAVAILABLE, cookie=COOKIE,
     cookie_change=CookieChange.NEW), Outcome.COOKIE_RECEIVED, 2, False),
    (True, False, NO_COOKIE, after(client_fail=Fail.COOKIE_UNAVAILABLE),
     Outcome.NO_COOKIE, 2, False),
    (True, False, NO_COOKIE, after(client_fail=Fail.COOKIE_UNAVAILABLE, syn_retransmits=1),
     Outcome.COOKIE_REQUEST_DROPPED, None, False),
    (True, False, NO_COOKIE, after(client_fail=Fail.COOKIE_UNAVAILABLE, syn_retransmits=1,
     cookie=COOKIE, cookie_change=CookieChange.NEW), Outcome.COOKIE_RECEIVED, None, False),
    (True, False, BLACKHOLED, after(cookie=COOKIE, cookie_change=CookieChange.SAME),
     Outcome.BLACKHOLE, 2, False),
    (True, False, CACHED, after(cookie=COOKIE, cookie_change=CookieChange.SAME),
     Outcome.COOKIE_HELD_BACK, 2, False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("requested", "no_cookie", "before", "obs", "outcome", "rounds", "worked"), CASES
)
def test_judge_table(requested, no_cookie, before, obs, outcome, rounds, worked):
    v = judge(requested, no_cookie, before, obs, CLEAN)
    assert v.outcome is outcome
    assert v.expected_rounds == rounds
    assert v.tfo_worked is worked
    if rounds is not None:
        assert v.text.startswith(f"answer in {rounds} round trip")
    else:
        assert v.text.startswith("answer after 1 SYN retransmission(s)")


def test_every_outcome_is_covered():
    assert {c[4] for c in CASES} == set(Outcome)


def test_in_syn_text_names_the_saving():
    v = judge(True, False, CACHED, CASES[3][3], CLEAN)
    assert v.text == (
        "answer in 1 round trip: query sent in the SYN with a cached cookie (saved ≈ 1 RTT = 50 ms)"
    )


def test_cookie_received_text():
    v = judge(True, False, NO_COOKIE, CASES[10][3], CLEAN)
    assert v.text == (
        "answer in 2 round trips: no cookie cached yet; the server sent one, "
        "the next query can use TFO"
    )


def test_timings_use_min_rtt_and_round_to_one_decimal():
    t = Timings.measure(50.2, 100.5, 100.6, 50_100, 50_000)
    assert t.rtt_ms == 50.0
    assert t.rounds == 2.0


def test_timings_fall_back_to_handshake_without_min_rtt():
    t = Timings.measure(100.0, 100.4, 100.5, 100_000, None)
    assert t.rtt_ms == 100.0
    assert t.rounds == 1.0


def test_timings_without_any_rtt_have_no_rounds():
    t = Timings.measure(None, None, None, None, None)
    assert t.rounds is None


@pytest.mark.parametrize(
    ("before", "after_", "change"),
    [
        (None, None, CookieChange.NONE),
        (None, COOKIE, CookieChange.NEW),
        (COOKIE, COOKIE, CookieChange.SAME),
        (COOKIE, OTHER, CookieChange.CHANGED),
        (COOKIE, None, CookieChange.NONE),
    ],
)
def test_cookie_change(before, after_, change):
    assert CookieChange.between(before, after_) is change
