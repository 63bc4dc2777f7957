"""Just enough IPv4/IPv6 + TCP parsing for the delay line to see and edit TFO options.

Pure functions on ``bytes``: no sockets, no privileges, so they are tested directly. The TFO
option is kind 34 (RFC 7413 §4.1.1) or, on older stacks, the experimental kind 254 followed by
the magic 0xF989 (RFC 6994); Linux falls back to the experimental form when a cookie request
in kind 34 went unanswered (``try_exp`` in ``net/ipv4/tcp_input.c``).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

IPPROTO_TCP = 6
TCPOPT_EOL = 0
TCPOPT_NOP = 1
TCPOPT_FASTOPEN = 34
TCPOPT_EXP = 254
TCPOPT_FASTOPEN_MAGIC = 0xF989


class TcpFlags(enum.IntFlag):
    """The TCP header flags (byte 13)."""

    FIN = 0x01
    SYN = 0x02
    RST = 0x04
    PSH = 0x08
    ACK = 0x10
    URG = 0x20
    ECE = 0x40
    CWR = 0x80

    def short(self) -> str:
        """Renders the flags as in tcpdump (``S``, ``S.``, ``P.``, ``F.``)."""
        letters = "".join(
            ch
            for flag, ch in ((TcpFlags.SYN, "S"), (TcpFlags.FIN, "F"), (TcpFlags.RST, "R"))
            if flag in self
        )
        if TcpFlags.PSH in self:
            letters += "P"
        if TcpFlags.ACK in self:
            letters += "."
        return letters or "none"


@dataclass(frozen=True, slots=True)
class TfoOption:
    """Where a TFO option sits in a packet and what it carries."""

    offset: int
    """Byte offset of the option's kind byte in the whole IP packet."""
    length: int
    """The option's length byte (kind and length bytes included)."""
    experimental: bool
    """True for kind 254 with magic 0xF989, False for kind 34."""

    @property
    def cookie_len(self) -> int:
        """Length of the cookie; 0 in a cookie request."""
        return self.length - (4 if self.experimental else 2)


@dataclass(frozen=True, slots=True)
class TcpSegment:
    """A parsed TCP segment inside an IP packet."""

    version: int
    """4 or 6."""
    sport: int
    """Source port."""
    dport: int
    """Destination port."""
    flags: TcpFlags
    """The TCP flags."""
    tfo: TfoOption | None
    """The TFO option, when there is one."""
    tcp_offset: int
    """Byte offset of the TCP header in the packet."""
    payload_len: int
    """Bytes of TCP payload."""

    @property
    def is_syn(self) -> bool:
        """A connection-opening SYN (not a SYN-ACK)."""
        return TcpFlags.SYN in self.flags and TcpFlags.ACK not in self.flags

    @property
    def is_synack(self) -> bool:
        """A SYN-ACK."""
        return TcpFlags.SYN in self.flags and TcpFlags.ACK in self.flags


def parse(packet: bytes) -> TcpSegment | None:
    """Parses an IP packet as read from a TUN device (no packet-info header).

    Returns:
        The TCP segment, or None for anything else (other protocols, IPv6 extension
        headers, fragments, truncated packets): the delay line forwards those untouched.
    """
    if len(packet) < 20:
        return None
    version = packet[0] >> 4
    if version == 4:
        ihl = (packet[0] & 0x0F) * 4
        total = struct.unpack_from("!H", packet, 2)[0]
        frag = struct.unpack_from("!H", packet, 6)[0] & 0x3FFF
        if packet[9] != IPPROTO_TCP or frag or ihl < 20 or total > len(packet):
            return None
        tcp_offset, end = ihl, total
    elif version == 6:
        if len(packet) < 40 or packet[6] != IPPROTO_TCP:
            return None
        end = 40 + struct.unpack_from("!H", packet, 4)[0]
        if end > len(packet):
            return None
        tcp_offset = 40
    else:
        return None
    if end - tcp_offset < 20:
        return None
    sport, dport = struct.unpack_from("!HH", packet, tcp_offset)
    doff = (packet[tcp_offset + 12] >> 4) * 4
    if doff < 20 or tcp_offset + doff > end:
        return None
    return TcpSegment(
        version=version,
        sport=sport,
        dport=dport,
        flags=TcpFlags(packet[tcp_offset + 13]),
        tfo=_find_tfo(packet, tcp_offset + 20, tcp_offset + doff),
        tcp_offset=tcp_offset,
        payload_len=end - tcp_offset - doff,
    )


def _find_tfo(packet: bytes, start: int, end: int) -> TfoOption | None:
    i = start
    while i < end:
        kind = packet[i]
        if kind == TCPOPT_EOL:
            return None
        if kind == TCPOPT_NOP:
            i += 1
            continue
        if i + 1 >= end:
            return None
        length = packet[i + 1]
        if length < 2 or i + length > end:
            return None  # malformed options: leave the packet alone
        if kind == TCPOPT_FASTOPEN:
            return TfoOption(offset=i, length=length, experimental=False)
        if (
            kind == TCPOPT_EXP
            and length >= 4
            and struct.unpack_from("!H", packet, i + 2)[0] == TCPOPT_FASTOPEN_MAGIC
        ):
            return TfoOption(offset=i, length=length, experimental=True)
        i += length
    return None


def strip_tfo(packet: bytes, segment: TcpSegment) -> bytes:
    """Overwrites the segment's TFO option with NOPs and fixes the TCP checksum.

    This is what a middlebox that removes unknown options does: the header keeps its size,
    so nothing else in the packet moves.

    Args:
        packet: the whole IP packet.
        segment: its parse result, with a TFO option.

    Returns:
        The edited packet.
    """
    if segment.tfo is None:
        return packet
    out = bytearray(packet)
    start = segment.tfo.offset
    out[start : start + segment.tfo.length] = bytes([TCPOPT_NOP]) * segment.tfo.length
    set_tcp_checksum(out, segment)
    return bytes(out)


def set_tcp_checksum(packet: bytearray, segment: TcpSegment) -> None:
    """Recomputes the TCP checksum of ``packet`` in place (RFC 793 / RFC 8200 §8.1)."""
    t = segment.tcp_offset
    tcp_len = segment.payload_len + (packet[t + 12] >> 4) * 4
    if segment.version == 4:
        pseudo = packet[12:20] + struct.pack("!BBH", 0, IPPROTO_TCP, tcp_len)
    else:
        pseudo = packet[8:40] + struct.pack("!I3xB", tcp_len, IPPROTO_TCP)
    packet[t + 16 : t + 18] = b"\0\0"
    checksum = internet_checksum(bytes(pseudo) + bytes(packet[t : t + tcp_len]))
    struct.pack_into("!H", packet, t + 16, checksum)


def internet_checksum(data: bytes) -> int:
    """The 16-bit one's complement checksum of RFC 1071."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
