from __future__ import annotations

import pytest

from dnstfo.errors import UsageError
from dnstfo.kernel import sockets
from dnstfo.kernel.sockets import TfoKey
from dnstfo.kernel.tcpinfo import FastOpenClientFail
from tests.kernel import tfo_loopback

K1 = "00112233-44556677-8899aabb-ccddeeff"
K2 = "a0a1a2a3-b0b1b2b3-c0c1c2c3-d0d1d2d3"
K3 = "deadbeef-deadbeef-deadbeef-deadbeef"


def test_key_text_round_trip_and_rotation() -> None:
    key = TfoKey.parse(f"{K2},{K1}")
    assert key.text() == f"{K2},{K1}"
    assert len(key.raw()) == 32
    assert TfoKey.parse(K2).with_backup(TfoKey.parse(K1)) == key


@pytest.mark.parametrize(
    "bad", ["", "0011-2233", f"{K1},{K2},{K3}", "zz112233-44556677-8899aabb-ccddeeff"]
)
def test_bad_key_text_is_a_usage_error(bad: str) -> None:
    with pytest.raises(UsageError):
        TfoKey.parse(bad)


def test_family_of_refuses_names() -> None:
    with pytest.raises(UsageError, match="not an IP address"):
        sockets.family_of("example.com")


@pytest.mark.linux
def test_all_fast_open_options_exist_on_this_kernel() -> None:
    for option in (
        sockets.TCP_FASTOPEN,
        sockets.TCP_FASTOPEN_CONNECT,
        sockets.TCP_FASTOPEN_KEY,
        sockets.TCP_FASTOPEN_NO_COOKIE,
    ):
        assert sockets.supports(option)
    assert not sockets.supports(4242)


@pytest.mark.netadmin
def test_first_exchange_gets_a_cookie_then_data_rides_in_the_syn(tfo_ns) -> None:  # type: ignore[no-untyped-def]
    first, second = tfo_ns.run(tfo_loopback.with_keys, [K1, K1])
    assert first.payload == second.payload == b"ping"
    assert not first.client_syn_data
    assert not first.server_syn_data
    assert first.client_fail is FastOpenClientFail.COOKIE_UNAVAILABLE
    assert first.cookie_after is not None
    assert len(first.cookie_after) == 8
    assert second.client_syn_data
    assert second.server_syn_data
    assert second.server_tfo_child
    assert second.cookie_after == first.cookie_after


@pytest.mark.netadmin
def test_listener_key_survives_restart_and_rotates_through_a_backup(tfo_ns) -> None:  # type: ignore[no-untyped-def]
    keys = [K1, K1, f"{K2},{K1}", K2, K3]
    prime, restart, rotated, new_only, foreign = tfo_ns.run(tfo_loopback.with_keys, keys)
    assert prime.cookie_after is not None
    assert restart.client_syn_data, "same key after a restart: the cookie must still work"
    assert rotated.client_syn_data, "old key as backup: cookies in flight are accepted"
    assert rotated.cookie_after != prime.cookie_after, "the server hands out a primary-key cookie"
    assert new_only.client_syn_data, "the refreshed cookie works with the new key alone"
    assert not foreign.client_syn_data
    assert not foreign.server_syn_data
    assert foreign.client_fail is FastOpenClientFail.DATA_NOT_ACKED
    assert foreign.payload == b"ping", "the data still arrives after the handshake"
