"""Answers over TCP and UDP equal the zone (dnspython queries; dnslib as a second opinion)."""

from __future__ import annotations

import ipaddress
import socket

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.zone
import dnslib
import pytest

from dnstfo.errors import NetworkError
from dnstfo.wire.framing import FrameDecoder
from tests.server.conftest import ServerThread, tcp_connect

CASES = [
    ("www.test.example.", "A"),
    ("www.test.example.", "AAAA"),
    ("test.example.", "NS"),
    ("test.example.", "SOA"),
    ("big.test.example.", "TXT"),
]


def zone_rrset(server: ServerThread, name: str, rdtype: str) -> dns.rrset.RRset:
    zone = dns.zone.from_file(str(server.config.zone_dir / "test.example.zone"), relativize=False)
    rdataset = zone.find_rdataset(name, rdtype)
    rrset = dns.rrset.RRset(dns.name.from_text(name), rdataset.rdclass, rdataset.rdtype)
    rrset.update(rdataset)
    return rrset


@pytest.mark.parametrize(("name", "rdtype"), CASES)
def test_tcp_answer_equals_zone(server: ServerThread, name: str, rdtype: str) -> None:
    host, port = server.address
    response = dns.query.tcp(dns.message.make_query(name, rdtype), host, port=port, timeout=5)
    assert response.rcode() == dns.rcode.NOERROR
    assert response.flags & dns.flags.AA
    assert response.answer == [zone_rrset(server, name, rdtype)]
    # Second opinion: dnslib decodes the same bytes to the same records.
    record = dnslib.DNSRecord.parse(response.to_wire())
    expected = {rdata.to_text() for rdata in zone_rrset(server, name, rdtype)}
    got = {str(rr.rdata) for rr in record.rr}
    if rdtype in ("A", "AAAA"):
        assert {ipaddress.ip_address(a) for a in got} == {ipaddress.ip_address(a) for a in expected}
    else:
        assert len(got) == len(expected)


@pytest.mark.parametrize(("name", "rdtype"), CASES[:4])
def test_udp_answer_equals_zone(server: ServerThread, name: str, rdtype: str) -> None:
    host, port = server.address
    response = dns.query.udp(dns.message.make_query(name, rdtype), host, port=port, timeout=5)
    assert response.answer == [zone_rrset(server, name, rdtype)]


def test_nxdomain_has_soa(server: ServerThread) -> None:
    host, port = server.address
    q = dns.message.make_query("nope.test.example.", "A")
    response = dns.query.udp(q, host, port=port, timeout=5)
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.authority[0].rdtype == dns.rdatatype.SOA


def test_udp_big_answer_truncated_then_whole_over_tcp(server: ServerThread) -> None:
    host, port = server.address
    q = dns.message.make_query("big.test.example.", "TXT", use_edns=False)
    udp = dns.query.udp(q, host, port=port, timeout=5, ignore_trailing=True)
    assert udp.flags & dns.flags.TC
    assert not udp.answer
    assert len(udp.to_wire()) <= 512
    tcp = dns.query.tcp(q, host, port=port, timeout=5)
    assert not tcp.flags & dns.flags.TC
    assert len(tcp.answer[0]) == 40


def axfr(address: tuple[str, int]) -> list[dns.message.Message]:
    """Transfers test.example.: reads until the closing SOA or an error (bounded)."""
    q = dns.message.make_query("test.example.", "AXFR")
    decoder = FrameDecoder()
    messages: list[dns.message.Message] = []
    soa_seen = 0
    with tcp_connect(address) as sock:
        dns.query.send_tcp(sock, q)
        for _ in range(1000):
            data = sock.recv(65536)
            if not data:
                break
            for wire in decoder.feed(data):
                msg = dns.message.from_wire(wire, one_rr_per_rrset=True)
                messages.append(msg)
                soa_seen += sum(1 for r in msg.answer if r.rdtype == dns.rdatatype.SOA)
            if soa_seen >= 2 or (messages and messages[-1].rcode() != dns.rcode.NOERROR):
                break
    return messages


def test_axfr_refused_by_default(server: ServerThread) -> None:
    (msg,) = axfr(server.address)
    assert msg.rcode() == dns.rcode.REFUSED


def test_axfr_allowed_gives_the_whole_zone(make_server, zone_dir) -> None:  # type: ignore[no-untyped-def]
    with (zone_dir / "test.example.zone").open("a") as f:  # big enough for several messages
        f.writelines(
            f'h{i} IN A 198.51.100.{i % 250}\nh{i} IN TXT "{"y" * 100}"\n' for i in range(300)
        )
    server = make_server(axfr_allow=(ipaddress.ip_network("127.0.0.0/8"),))
    messages = axfr(server.address)
    records = [rr for m in messages for rrset in m.answer for rr in rrset]
    zone = dns.zone.from_file(str(server.config.zone_dir / "test.example.zone"), relativize=False)
    assert len(records) == sum(len(rds) for _, rds in zone.iterate_rdatasets()) + 1  # SOA twice
    assert messages[0].answer[0].rdtype == dns.rdatatype.SOA
    assert len(messages) > 1
    assert server.server.stats.axfr == 1


def test_ipv6_listener(make_server, zone_dir) -> None:  # type: ignore[no-untyped-def]
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    from dnstfo.server.config import Endpoint

    try:
        server = make_server(listen=(Endpoint("::1", 0),))
    except NetworkError as exc:  # no ::1 on this host
        pytest.skip(f"cannot bind ::1: {exc}")
    host, port = server.address
    q = dns.message.make_query("www.test.example.", "AAAA")
    assert dns.query.tcp(q, host, port=port, timeout=5).answer
    assert dns.query.udp(q, host, port=port, timeout=5).answer
