from __future__ import annotations

import pytest

from dnstfo.kernel import sysctl
from dnstfo.kernel.sysctl import FastOpenCounters, TfoMode, parse_netstat

NETSTAT = """\
TcpExt: SyncookiesSent TCPFastOpenActive TCPFastOpenActiveFail TCPFastOpenPassive TCPSynRetrans
TcpExt: 0 5 1 7 2
IpExt: InNoRoutes TCPFastOpenActive
IpExt: 9 99
"""


def test_parse_netstat_reads_only_tcpext_fast_open_counters() -> None:
    c = parse_netstat(NETSTAT)
    assert c == FastOpenCounters(active=5, active_fail=1, passive=7, syn_retrans=2)


def test_delta_and_nonzero() -> None:
    before = FastOpenCounters(active=5, passive=1)
    after = FastOpenCounters(active=8, passive=1, blackhole=1)
    assert after.delta(before).nonzero() == {"active": 3, "blackhole": 1}


def test_mode_in_words() -> None:
    mode = TfoMode(0x403)
    assert mode.describe() == ["client (0x1)", "server (0x2)", "server_any_listener (0x400)"]
    assert sysctl.server_enabled(mode)
    assert sysctl.client_enabled(mode)
    assert not sysctl.server_enabled(TfoMode.CLIENT)


@pytest.mark.linux
def test_mode_is_the_raw_sysctl_value() -> None:
    with open("/proc/sys/net/ipv4/tcp_fastopen") as f:
        assert int(sysctl.fastopen_mode()) == int(f.read(), 0)


def _counters_around_exchanges() -> tuple[FastOpenCounters, FastOpenCounters]:
    from tests.kernel import tfo_loopback

    before = sysctl.read_counters()
    tfo_loopback.with_keys(["00112233-44556677-8899aabb-ccddeeff"] * 2)
    return before, sysctl.read_counters()


@pytest.mark.netadmin
def test_counters_count_one_fast_open_each_way(tfo_ns) -> None:  # type: ignore[no-untyped-def]
    before, after = tfo_ns.run(_counters_around_exchanges)
    delta = after.delta(before)
    assert delta.active == 1  # the second exchange: our SYN data acked
    assert delta.passive == 1  # and accepted by the listener
    assert delta.cookie_reqd == 1  # the first exchange asked for a cookie
    assert delta.active_fail == 0


@pytest.mark.netadmin
def test_write_inside_a_namespace_only(tfo_ns) -> None:  # type: ignore[no-untyped-def]
    host_before = sysctl.read_sysctl(sysctl.FASTOPEN)
    assert tfo_ns.run(_set_and_read, 0x603) == 0x603
    assert sysctl.read_sysctl(sysctl.FASTOPEN) == host_before


def _set_and_read(value: int) -> int:
    sysctl.write_sysctl(sysctl.FASTOPEN, value)
    return int(sysctl.fastopen_mode())
