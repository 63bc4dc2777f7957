"""The delay line's packet parsing and TFO stripping, on hand-built packets (no privileges)."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from dnstfo.lab import packet
from dnstfo.lab.packet import TcpFlags


def tcp_packet(
    *,
    version: int = 4,
    flags: TcpFlags = TcpFlags.SYN,
    options: bytes = b"",
    payload: bytes = b"",
) -> bytes:
    """An IP packet with a TCP segment and a correct checksum."""
    options += b"\x01" * (-len(options) % 4)
    doff = (20 + len(options)) // 4
    tcp = struct.pack("!HHIIBBHHH", 40000, 53, 1, 0, doff << 4, flags, 65535, 0, 0)
    segment = tcp + options + payload
    if version == 4:
        src, dst = ipaddress.IPv4Address("198.18.0.1"), ipaddress.IPv4Address("198.18.0.2")
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(segment), 0, 0, 64, 6, 0,
                         src.packed, dst.packed)  # fmt: skip
    else:
        src6, dst6 = ipaddress.IPv6Address("fd00:d7f0::1"), ipaddress.IPv6Address("fd00:d7f0::2")
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(segment), 6, 64, src6.packed, dst6.packed)
    data = bytearray(ip + segment)
    parsed = packet.parse(bytes(data))
    assert parsed is not None
    packet.set_tcp_checksum(data, parsed)
    return bytes(data)


def checksum_ok(data: bytes) -> bool:
    seg = packet.parse(data)
    assert seg is not None
    t = seg.tcp_offset
    tcp = data[t:]
    if seg.version == 4:
        pseudo = data[12:20] + struct.pack("!BBH", 0, 6, len(tcp))
    else:
        pseudo = data[8:40] + struct.pack("!I3xB", len(tcp), 6)
    return packet.internet_checksum(pseudo + tcp) == 0


MSS = b"\x02\x04\x05\xb4"
COOKIE = bytes(range(8))


@pytest.mark.parametrize("version", [4, 6])
def test_syn_with_cookie_and_data_is_parsed(version: int) -> None:
    data = tcp_packet(version=version, options=MSS + b"\x22\x0a" + COOKIE, payload=b"PING\n")
    seg = packet.parse(data)
    assert seg is not None
    assert seg.is_syn
    assert not seg.is_synack
    assert seg.payload_len == 5
    assert seg.tfo is not None
    assert not seg.tfo.experimental
    assert seg.tfo.cookie_len == 8
    assert (seg.sport, seg.dport) == (40000, 53)
    assert checksum_ok(data)


def test_cookie_request_has_cookie_length_zero() -> None:
    seg = packet.parse(tcp_packet(options=b"\x22\x02"))
    assert seg is not None
    assert seg.tfo is not None
    assert seg.tfo.cookie_len == 0


def test_experimental_option_needs_the_magic() -> None:
    exp = packet.parse(tcp_packet(options=b"\xfe\x0c\xf9\x89" + COOKIE))
    other = packet.parse(tcp_packet(options=b"\xfe\x06\x12\x34\x00\x00"))
    assert exp is not None
    assert exp.tfo is not None
    assert exp.tfo.experimental
    assert exp.tfo.cookie_len == 8
    assert other is not None
    assert other.tfo is None


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("option", [b"\x22\x0a" + COOKIE, b"\xfe\x0c\xf9\x89" + COOKIE])
def test_strip_overwrites_the_option_with_nops_and_fixes_the_checksum(
    version: int, option: bytes
) -> None:
    original = tcp_packet(version=version, flags=TcpFlags.SYN | TcpFlags.ACK,
                          options=MSS + option, payload=b"x")  # fmt: skip
    seg = packet.parse(original)
    assert seg is not None
    assert seg.tfo is not None
    stripped = packet.strip_tfo(original, seg)
    after = packet.parse(stripped)
    assert after is not None
    assert after.tfo is None
    assert len(stripped) == len(original)
    assert stripped[seg.tfo.offset : seg.tfo.offset + len(option)] == b"\x01" * len(option)
    assert MSS in stripped  # other options untouched
    assert checksum_ok(stripped)
    assert stripped != original


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x45" + b"\0" * 10,
        bytes.fromhex("4500001c0000000040110000c6120001c6120002") + b"\0" * 8,  # UDP
        bytes.fromhex("4500001c0000000040060000c6120001c6120002") + b"\0" * 8,  # short TCP
    ],
)
def test_non_tcp_or_truncated_packets_are_not_parsed(data: bytes) -> None:
    assert packet.parse(data) is None


def test_malformed_option_length_is_left_alone() -> None:
    seg = packet.parse(tcp_packet(options=b"\x02\x00\x22\x02"))
    assert seg is not None
    assert seg.tfo is None


def test_flags_render_like_tcpdump() -> None:
    assert (TcpFlags.SYN | TcpFlags.ACK).short() == "S."
    assert (TcpFlags.PSH | TcpFlags.ACK).short() == "P."
    assert TcpFlags.SYN.short() == "S"
