"""What the lab grows for the probe: many server addresses, and an anycast pool.

Many addresses: the client reaches each through the delay line and one server listening on
0.0.0.0 answers them all. Anycast: flows split by hash over instances that each have their
own namespace and TFO key; the kernel's own counters (TCPFastOpenPassiveFail in the instance
that got the cookie-carrying SYN) and TCP_INFO say which cookies were accepted.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest

from dnstfo.errors import UsageError
from dnstfo.kernel.sysctl import FastOpenCounters, read_counters
from dnstfo.kernel.tcpinfo import FastOpenClientFail
from dnstfo.lab.delay import CLIENT_V4, SERVER_V4, Direction, flow_instance
from dnstfo.lab.ping import PingExchange, ping_exchange, ping_server
from dnstfo.lab.topology import TUN_QUEUE, Lab, LabSpec, server_address_block, start_lab
from tests.lab.conftest import lab_missing, requires_lab

RTT_MS = 20.0  # the properties here do not depend on the path's length
PORT = 7000


def test_the_address_block_skips_network_and_broadcast_looking_addresses() -> None:
    block = server_address_block(600)
    assert block[:2] == ("198.19.0.1", "198.19.0.2")
    assert block[253:255] == ("198.19.0.254", "198.19.1.1")
    assert len(set(block)) == 600
    assert not [a for a in block if a.endswith((".0", ".255"))]


@pytest.mark.parametrize(
    "spec",
    [
        {"server_addresses": -1},
        {"server_addresses": 70_000},
        {"anycast": 0},
        {"anycast": 2, "shared_key": False, "name": "bad name"},
        {"anycast": 1, "shared_key": True},
    ],
)
def test_bad_topologies_are_usage_errors(spec: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        LabSpec(**spec)  # type: ignore[arg-type]


def _counters() -> FastOpenCounters:
    return read_counters()


def _exchange(lab: Lab, address: tuple[str, int], source_port: int = 0) -> PingExchange:
    return lab.client.run(ping_exchange, address, source_port=source_port, realtime=True)


@pytest.fixture(scope="module")
def many() -> Iterator[Lab]:
    if reason := lab_missing():
        pytest.skip(reason)
    with start_lab(LabSpec(rtt_ms=RTT_MS, server_addresses=600, ipv6=False)) as lab:
        yield lab


@pytest.mark.lab
@pytest.mark.netadmin
@pytest.mark.linux
@requires_lab
def test_every_server_address_answers_through_the_delay_line(many: Lab) -> None:
    assert len(many.server_addresses) == 600
    shown = many.server.exec(["ip", "-4", "-o", "addr", "show", "dev", many.device]).stdout
    assert sum(f" {a}/32 " in shown for a in many.server_addresses) == 600
    # Bursts of a thousand SYNs queue for the relay instead of being dropped (the default
    # queue of 500 dropped 311 packets when a probe opened 1,000 connections at once).
    for ns in (many.client, many.server):
        assert f"qlen {TUN_QUEUE}" in ns.exec(["ip", "link", "show", many.device]).stdout
    with ping_server(many.server, "0.0.0.0", PORT):
        for address in (many.server_addresses[0], "198.19.1.1", many.server_addresses[-1]):
            first = _exchange(many, (address, PORT))
            second = _exchange(many, (address, PORT))
            assert first.cookie_after is not None  # a cookie per address
            assert second.syn_data_acked
            assert second.server_syn_data
            assert second.ms >= RTT_MS * 0.99  # the answer crossed the delay line
    ports = {r.dport for r in many.delay.packets() if r.direction is Direction.C2S and r.tcp}
    assert PORT in ports


@pytest.mark.lab
@pytest.mark.netadmin
@pytest.mark.linux
@requires_lab
def test_an_address_beyond_the_count_does_not_answer(many: Lab) -> None:
    beyond = server_address_block(601)[-1]
    with ping_server(many.server, "0.0.0.0", PORT), many.client.in_thread(socket.socket) as sock:
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.connect((beyond, PORT))


def _ports_for(instance: int, count: int, how_many: int) -> list[int]:
    """Client ports whose flows to the server hash to ``instance``."""
    addresses = socket.inet_aton(CLIENT_V4) + socket.inet_aton(SERVER_V4)
    found = [
        p for p in range(20000, 30000) if flow_instance(addresses, (p, PORT), count) == instance
    ]
    return found[:how_many]


@contextlib.contextmanager
def _pool(lab: Lab) -> Iterator[None]:
    """A ping server on every instance, on the same address and port."""
    with contextlib.ExitStack() as stack:
        for server in lab.servers:
            stack.enter_context(ping_server(server, SERVER_V4, PORT))
        yield


def _instances(lab: Lab, x: PingExchange) -> set[int]:
    """The instances the exchange's packets went to, from the delay line's log."""
    return {
        r.instance
        for r in lab.delay.packets()
        if r.tcp and r.direction is Direction.C2S and r.sport == x.local_port
    }


@pytest.mark.lab
@pytest.mark.netadmin
@pytest.mark.linux
@requires_lab
@pytest.mark.parametrize("shared", [False, True], ids=["own-keys", "shared-key"])
def test_anycast_instances_reject_each_others_cookies_unless_the_key_is_shared(
    shared: bool,
) -> None:
    if reason := lab_missing():
        pytest.skip(reason)
    spec = LabSpec(rtt_ms=RTT_MS, anycast=2, shared_key=shared, ipv6=False)
    with start_lab(spec) as lab:
        a, b = lab.servers
        assert (
            a.read_sysctl("net.ipv4.tcp_fastopen_key") == b.read_sysctl("net.ipv4.tcp_fastopen_key")
        ) is shared
        on_a, on_b = _ports_for(0, 2, 3), _ports_for(1, 2, 2)
        with _pool(lab):
            before = [s.run(_counters) for s in lab.servers]
            primed = _exchange(lab, (SERVER_V4, PORT), on_a[0])  # cookie from instance a
            again_a = _exchange(lab, (SERVER_V4, PORT), on_a[1])
            to_b = _exchange(lab, (SERVER_V4, PORT), on_b[0])
            after = [
                s.run(_counters).delta(old) for s, old in zip(lab.servers, before, strict=True)
            ]
        assert [_instances(lab, x) for x in (primed, again_a, to_b)] == [{0}, {0}, {1}]
        assert primed.cookie_after is not None
        assert again_a.syn_data_acked  # the cookie works where it was made
        assert to_b.cookie_before == primed.cookie_after  # one cookie per address, client side
        if shared:
            assert to_b.syn_data_acked
            assert to_b.server_syn_data
            assert to_b.cookie_after == primed.cookie_after
            assert (after[0].passive, after[1].passive) == (1, 1)
            assert after[1].passive_fail == 0
        else:
            assert not to_b.syn_data_acked  # instance b's key does not accept a's cookie
            assert not to_b.server_syn_data
            assert to_b.client_fail is FastOpenClientFail.DATA_NOT_ACKED
            assert to_b.cookie_after not in (None, primed.cookie_after)  # b sent its own
            assert (after[0].passive, after[1].passive) == (1, 0)
            assert after[1].passive_fail == 1
