"""Wire evidence for the probe: its own packets captured (``--pcap``), and a crafted SYN
(``--syn-only``).

Capture. A packet socket (``AF_PACKET``, ``SOCK_DGRAM``: every interface, link headers
removed, so each packet is an IP packet whatever the device) with a BPF filter that
libpcap compiles through scapy (``tcp`` and the targets' ports) feeds a thread that keeps
the first packets of each TCP flow, with the kernel's receive timestamp. When the probe
finishes a connection it claims the flow by its (source, target) pair: the packets are
written to the pcap (raw IP link type, which tshark reads) and parsed into PATHspider's
fields (``tfo_synkind``, ``tfo_synclen``, ``tfo_ackkind``, ``tfo_ackclen``, ``tfo_dlen``,
see ``pathspider/chains/tfo.py``). The claim first drains the socket itself: the kernel
queues a packet to packet sockets before TCP processes it, so by the time the probe saw
its answer, the flow's SYN and SYN-ACK are queued or already read, and nothing is waited
for. Flows nobody claims (other programs' connections) are forgotten oldest first, so
memory stays flat.

Crafted SYN (the check of the Wikitech TFO page, without completing a connection): a SYN
with an empty Fast Open option (a cookie request, RFC 7413 §4.1.1) goes out of a raw
socket from a port reserved by a bound socket; the answer is read from a raw socket; the
half-open connection is then reset (our RST; the kernel also resets it, since no socket
owns the connection). It says whether the server answers a cookie request, and with
which option kind.

Both need root (CAP_NET_RAW).
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import logging
import os
import secrets
import select
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dnstfo.errors import DnstfoError, NetworkError, PermissionNeeded
from dnstfo.probe.observe import OptionKind, SynOnlyObservation, WireEvidence
from dnstfo.probe.targets import Target

log = logging.getLogger(__name__)

SNAPLEN = 256
"""Bytes kept of each packet: every IP and TCP header, and the start of the payload."""
MAX_PACKETS_PER_FLOW = 16
"""Packets kept per flow: the handshake, the query, the answer's first segments."""
MAX_FLOWS = 32768
"""Unclaimed flows kept before the oldest are forgotten."""
TFO_MAGIC = b"\xf9\x89"
"""The experimental option's magic (RFC 6994 ExID of TFO)."""

_ETH_P_ALL = 0x0003
_SO_ATTACH_FILTER = 26
_SO_TIMESTAMPNS = 35
_PACKET_OUTGOING = 4
_ARPHRD_LOOPBACK = 772
_DLT_RAW = 101
_SYN, _RST, _ACK = 0x02, 0x04, 0x10


# --- parsing (pure) ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Segment:
    """The TCP facts of one captured packet that the evidence needs."""

    src: tuple[str, int]
    """Sender address and port."""
    flags: int
    """TCP flags."""
    seq: int
    """Sequence number."""
    ack: int
    """Acknowledgment number."""
    kind: OptionKind | None
    """Fast Open option kind (None: no option)."""
    cookie_len: int | None
    """Cookie length in that option (None: no option)."""
    payload_len: int
    """Payload bytes on the wire (from the IP lengths, so a short capture does not matter)."""


def tfo_option(options: Iterable[tuple[Any, Any]]) -> tuple[OptionKind, int] | None:
    """The Fast Open option among scapy's parsed TCP options, as (kind, cookie length).

    Scapy names kind 34 ``TFO`` and unpacks an 8-byte cookie into two integers; the
    experimental kind 254 stays raw, magic first.
    """
    for name, value in options:
        if name == "TFO":
            length = 4 * len(value) if isinstance(value, tuple) else len(value or b"")
            return OptionKind.FASTOPEN, length
        if name == OptionKind.EXPERIMENTAL and bytes(value[:2]) == TFO_MAGIC:
            return OptionKind.EXPERIMENTAL, len(value) - 2
    return None


def parse_segment(packet: bytes) -> _Segment | None:
    """Parses a captured IP packet (no link header) with scapy; None unless it is TCP."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6

    version = packet[0] >> 4 if packet else 0
    if version == 4:
        ip: Any = IP(packet)
        header = (packet[0] & 0x0F) * 4
        ip_payload = struct.unpack_from("!H", packet, 2)[0] - header
    elif version == 6:
        ip = IPv6(packet)
        ip_payload = struct.unpack_from("!H", packet, 4)[0]
    else:
        return None
    tcp = ip.getlayer(TCP)
    if tcp is None:
        return None
    option = tfo_option(tcp.options)
    return _Segment(
        src=(str(ip.src), int(tcp.sport)),
        flags=int(tcp.flags),
        seq=int(tcp.seq),
        ack=int(tcp.ack),
        kind=None if option is None else option[0],
        cookie_len=None if option is None else option[1],
        payload_len=max(ip_payload - int(tcp.dataofs) * 4, 0),
    )


def wire_evidence(packets: Iterable[bytes], client: tuple[str, int]) -> WireEvidence | None:
    """PATHspider's fields for one connection, from its captured packets in order.

    Args:
        packets: the flow's IP packets, as captured.
        client: our (address, port) in the flow: SYNs come from it, SYN-ACKs go to it.

    Returns:
        The evidence, or None when no SYN of ours was captured.
    """
    ours = (ipaddress.ip_address(client[0]), client[1])
    syns: list[_Segment] = []
    synack: _Segment | None = None
    for packet in packets:
        if not _raw_flags(packet) & _SYN:
            continue  # only SYNs and SYN-ACKs are parsed (scapy is slow per packet)
        seg = parse_segment(packet)
        if seg is None:
            continue
        from_us = (ipaddress.ip_address(seg.src[0]), seg.src[1]) == ours
        if from_us and not seg.flags & _ACK:
            syns.append(seg)
        elif not from_us and seg.flags & _ACK and synack is None:
            synack = seg
    if not syns:
        return None
    first, last = syns[0], syns[-1]
    resent = len(syns) > 1
    return WireEvidence(
        syn_kind=first.kind,
        syn_cookie_len=first.cookie_len,
        synack_kind=None if synack is None else synack.kind,
        synack_cookie_len=None if synack is None else synack.cookie_len,
        syn_data_len=first.payload_len,
        syn_data_acked=(
            None
            if synack is None
            else first.payload_len > 0 and synack.ack == (first.seq + 1 + first.payload_len) % 2**32
        ),
        syn_count=len(syns),
        retransmitted_syn_kind=last.kind if resent else None,
        retransmitted_syn_data_len=last.payload_len if resent else 0,
    )


def _raw_flags(packet: bytes) -> int:
    """The TCP flags of an IP packet read from its bytes (0 when it is not TCP)."""
    if not packet:
        return 0
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 20 and packet[9] == socket.IPPROTO_TCP:
        offset = (packet[0] & 0x0F) * 4
    elif version == 6 and len(packet) >= 40 and packet[6] == socket.IPPROTO_TCP:
        offset = 40
    else:
        return 0
    return packet[offset + 13] if len(packet) > offset + 13 else 0


# --- capture -------------------------------------------------------------------------------


_Endpoint = tuple[bytes, int]
_FlowKey = tuple[_Endpoint, _Endpoint]


def _endpoint(address: str, port: int) -> _Endpoint:
    ip = ipaddress.ip_address(address)
    return ip.packed, port


def _flow_key(a: _Endpoint, b: _Endpoint) -> _FlowKey:
    """The same key for both directions of a flow."""
    return (a, b) if a <= b else (b, a)


def _packet_key(packet: bytes) -> _FlowKey | None:
    """The flow of a TCP packet, from its raw bytes (no parsing library: every packet)."""
    if len(packet) < 20:
        return None
    version = packet[0] >> 4
    if version == 4:
        if packet[9] != socket.IPPROTO_TCP:
            return None
        t = (packet[0] & 0x0F) * 4
        src, dst = packet[12:16], packet[16:20]
    elif version == 6 and len(packet) >= 40 and packet[6] == socket.IPPROTO_TCP:
        t, src, dst = 40, packet[8:24], packet[24:40]
    else:
        return None
    if len(packet) < t + 4:
        return None
    sport, dport = struct.unpack_from("!HH", packet, t)
    return _flow_key((src, sport), (dst, dport))


def capture_filter(ports: Iterable[int] | None) -> str:
    """The BPF filter expression: TCP, to or from the targets' ports when known."""
    wanted = sorted(set(ports or ()))
    if not wanted:
        return "tcp"
    return "tcp and (" + " or ".join(f"port {p}" for p in wanted) + ")"


def _attach_filter(sock: socket.socket, expression: str) -> None:
    """Compiles ``expression`` with libpcap (through scapy) for raw IP and attaches it."""
    try:
        from scapy.arch.common import compile_filter, free_filter
        from scapy.libs.structures import sock_fprog
    except ImportError as exc:  # pragma: no cover - scapy is a dependency
        raise DnstfoError(f"--pcap needs scapy: {exc}") from exc
    try:
        program = compile_filter(expression, linktype=_DLT_RAW)
    except (ImportError, OSError) as exc:
        raise DnstfoError(
            f"--pcap needs libpcap to compile its filter ({exc}): apt-get install libpcap0.8"
        ) from exc
    try:
        prog = sock_fprog(program.bf_len, program.bf_insns)
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, bytes(prog))
    finally:
        free_filter(program)


class Capture:
    """The probe's packets, kept per flow until the probe claims them; see the module text.

    Use :func:`capture` to get one.
    """

    def __init__(self, sock: socket.socket, pcap: Path | None) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        self._flows: collections.OrderedDict[_FlowKey, list[tuple[int, bytes, int]]] = (
            collections.OrderedDict()
        )
        self.forgotten = 0
        """Unclaimed flows dropped to keep memory flat."""
        self.packets = 0
        """Packets read so far."""
        self._writer: Any = None
        if pcap is not None:
            from scapy.utils import RawPcapWriter

            self._writer = RawPcapWriter(str(pcap), linktype=_DLT_RAW, snaplen=SNAPLEN)
            self._writer.write_header(None)
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._thread.start()

    def claim(self, source: tuple[str, int], target: tuple[str, int]) -> list[bytes]:
        """Takes a connection's packets: writes them to the pcap and returns them in order.

        Args:
            source: our (address, port).
            target: the server's (address, port).

        Returns:
            The IP packets seen for the connection (empty when none were).
        """
        key = _flow_key(_endpoint(*source), _endpoint(*target))
        with self._lock:
            self._drain()
            kept = self._flows.pop(key, [])
            if self._writer is not None:
                for ts_ns, data, wirelen in kept:
                    sec, nsec = divmod(ts_ns, 1_000_000_000)
                    self._writer.write_packet(
                        data, sec=sec, usec=nsec // 1000, caplen=len(data), wirelen=wirelen
                    )
        return [data for _, data, _ in kept]

    def close(self) -> None:
        """Stops the thread, closes the socket and the pcap (flushed)."""
        os.write(self._stop_w, b"x")
        self._thread.join(timeout=5)
        with self._lock:
            self._sock.close()
            if self._writer is not None:
                self._writer.close()
        os.close(self._stop_r)
        os.close(self._stop_w)

    def _run(self) -> None:
        while True:
            readable, _, _ = select.select([self._sock.fileno(), self._stop_r], [], [])
            if self._stop_r in readable:
                return
            with self._lock:
                if self._sock.fileno() < 0:
                    return
                self._drain()

    def _drain(self) -> None:
        """Reads every queued packet (caller holds the lock)."""
        space = socket.CMSG_SPACE(16)
        while True:
            try:
                data, ancillary, _, address = self._sock.recvmsg(SNAPLEN, space)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("capture read failed: %s", exc)
                return
            # A packet sent over the loopback shows twice (out and in): keep it once.
            if address[2] == _PACKET_OUTGOING and address[3] == _ARPHRD_LOOPBACK:
                continue
            key = _packet_key(data)
            if key is None:
                continue
            self.packets += 1
            ts_ns = _timestamp_ns(ancillary)
            kept = self._flows.get(key)
            if kept is None:
                kept = self._flows[key] = []
                if len(self._flows) > MAX_FLOWS:
                    self._flows.popitem(last=False)
                    self.forgotten += 1
            if len(kept) < MAX_PACKETS_PER_FLOW:
                kept.append((ts_ns, data, _wire_length(data)))


def _timestamp_ns(ancillary: list[tuple[int, int, bytes]]) -> int:
    for level, kind, value in ancillary:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(value) >= 16:
            sec, nsec = struct.unpack_from("qq", value)
            return int(sec * 1_000_000_000 + nsec)
    return time.time_ns()


def _wire_length(packet: bytes) -> int:
    """The packet's length on the wire, from its IP header (the capture may be shorter)."""
    if packet[0] >> 4 == 4:
        return int(struct.unpack_from("!H", packet, 2)[0])
    return 40 + int(struct.unpack_from("!H", packet, 4)[0])


@contextlib.contextmanager
def capture(pcap: Path | None, ports: Iterable[int] | None = None) -> Iterator[Capture]:
    """Captures TCP packets in this network namespace until the block ends.

    Args:
        pcap: where to write the claimed flows (None: parse only).
        ports: the targets' ports, for the kernel filter (None: every TCP packet).

    Raises:
        PermissionNeeded: not root (packet sockets need CAP_NET_RAW).
        DnstfoError: libpcap is missing, or the pcap cannot be written.
    """
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(_ETH_P_ALL))
    except PermissionError as exc:
        raise PermissionNeeded("--pcap needs root (CAP_NET_RAW) to capture") from exc
    try:
        _attach_filter(sock, capture_filter(ports))
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        sock.setblocking(False)
        cap = Capture(sock, pcap)
    except OSError as exc:
        sock.close()
        raise DnstfoError(f"cannot capture to {pcap}: {exc.strerror or exc}") from exc
    except BaseException:
        sock.close()
        raise
    try:
        yield cap
    finally:
        cap.close()


# --- the crafted SYN -----------------------------------------------------------------------


def syn_only_check(address: str, port: int, *, timeout: float = 3.0) -> SynOnlyObservation:
    """Sends a SYN asking for a Fast Open cookie and reads the SYN-ACK's options.

    Args:
        address: the server's address.
        port: its port.
        timeout: seconds to wait for the answer.

    Returns:
        Whether a SYN-ACK came, and the Fast Open option it carried.

    Raises:
        PermissionNeeded: not root (raw sockets need CAP_NET_RAW).
        NetworkError: no route, or the raw socket failed.
    """
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6

    ip = ipaddress.ip_address(address)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with contextlib.ExitStack() as stack:
        try:
            raw = stack.enter_context(socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_TCP))
        except PermissionError as exc:
            raise PermissionNeeded("--syn-only needs root (CAP_NET_RAW) for raw sockets") from exc
        source = _source_for(family, address, port)
        # A bound socket reserves the port, so no connection of ours can collide with it.
        reserve = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
        reserve.bind((source, 0))
        sport = reserve.getsockname()[1]
        isn = secrets.randbits(32)
        layer: Any = IP if family == socket.AF_INET else IPv6
        header = 20 if family == socket.AF_INET else 40

        def segment(flags: str, seq: int, options: Sequence[tuple[str, Any]] = ()) -> bytes:
            built = layer(src=source, dst=address) / TCP(
                sport=sport, dport=port, flags=flags, seq=seq, window=65535, options=list(options)
            )
            return bytes(built)[header:]  # the kernel adds the IP header

        raw.bind((source, 0))
        syn = segment("S", isn, [("MSS", 1460), ("SAckOK", b""), ("TFO", b"")])
        started = time.monotonic()
        try:
            raw.sendto(syn, (address, 0))
        except OSError as exc:
            raise NetworkError.from_oserror(f"sending a crafted SYN to {address}", exc) from exc
        answer = _await_answer(raw, family, address, port, sport, started + timeout)
        if answer is None:
            return SynOnlyObservation(False, None, None, None, f"no answer within {timeout:g} s")
        elapsed_ms = (time.monotonic() - started) * 1000
        if answer.flags & _RST:
            return SynOnlyObservation(False, None, None, elapsed_ms, "reset: nothing listening")
        with contextlib.suppress(OSError):  # end the half-open connection
            raw.sendto(segment("R", (isn + 1) % 2**32), (address, 0))
        return SynOnlyObservation(True, answer.kind, answer.cookie_len, elapsed_ms, None)
    raise AssertionError("unreachable")  # pragma: no cover


def _source_for(family: socket.AddressFamily, address: str, port: int) -> str:
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((address, port))
            return str(probe.getsockname()[0])
    except OSError as exc:
        raise NetworkError.from_oserror(f"no route to {address}", exc) from exc


def _await_answer(
    raw: socket.socket,
    family: socket.AddressFamily,
    address: str,
    port: int,
    sport: int,
    deadline: float,
) -> _Segment | None:
    """The server's SYN-ACK or RST to our port, read from the raw socket, or None."""
    from scapy.layers.inet import TCP

    want = ipaddress.ip_address(address)
    while (remaining := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([raw], [], [], remaining)
        if not readable:
            return None
        data, peer = raw.recvfrom(65535)
        if ipaddress.ip_address(peer[0]) != want:
            continue
        if family == socket.AF_INET:
            seg = parse_segment(data)  # IPv4 raw sockets read the IP header too
        else:
            tcp: Any = TCP(data)  # IPv6 raw sockets read the TCP segment only
            option = tfo_option(tcp.options)
            seg = _Segment(
                src=(address, int(tcp.sport)),
                flags=int(tcp.flags),
                seq=int(tcp.seq),
                ack=int(tcp.ack),
                kind=None if option is None else option[0],
                cookie_len=None if option is None else option[1],
                payload_len=0,
            )
        if seg is None or seg.src[1] != port:
            continue
        if _dport(data, family) != sport:
            continue
        if seg.flags & _RST or (seg.flags & _SYN and seg.flags & _ACK):
            return seg
    return None


def _dport(data: bytes, family: socket.AddressFamily) -> int:
    offset = (data[0] & 0x0F) * 4 if family == socket.AF_INET else 0
    return int(struct.unpack_from("!H", data, offset + 2)[0])


# --- the probe's hooks ---------------------------------------------------------------------


class ProbeEvidence:
    """The probe's ``Evidence``: wire facts per connection and the crafted-SYN check.

    Args:
        cap: the running capture (None without ``--pcap``).
        syn_only: run the crafted-SYN check for each target.
        timeout: seconds the crafted SYN waits for its answer.
    """

    def __init__(self, cap: Capture | None, syn_only: bool, timeout: float = 3.0) -> None:
        self._capture = cap
        self._syn_only = syn_only
        self._timeout = timeout

    def syn_only(self, target: Target) -> SynOnlyObservation | None:
        """The crafted-SYN check for a target (None without ``--syn-only``)."""
        if not self._syn_only:
            return None
        try:
            return syn_only_check(target.address, target.port, timeout=self._timeout)
        except NetworkError as exc:
            return SynOnlyObservation(False, None, None, None, str(exc))

    def wire_for(self, target: Target, source: tuple[str, int]) -> WireEvidence | None:
        """What the capture showed for the connection from ``source`` (None: not seen)."""
        if self._capture is None:
            return None
        packets = self._capture.claim(source, (target.address, target.port))
        return wire_evidence(packets, source)


@contextlib.contextmanager
def open_evidence(
    *,
    pcap: str | os.PathLike[str] | None,
    syn_only: bool,
    ports: Iterable[int] | None = None,
    timeout: float = 3.0,
) -> Iterator[ProbeEvidence]:
    """The evidence hooks the probe's options ask for, valid for the block.

    Args:
        pcap: the pcap file to write (None: no capture).
        syn_only: run the crafted-SYN check per target.
        ports: the targets' ports, to narrow the capture (None: all TCP).
        timeout: seconds the crafted SYN waits for its answer.

    Raises:
        PermissionNeeded: not root.
        DnstfoError: the capture cannot start.
    """
    if pcap is None:
        yield ProbeEvidence(None, syn_only, timeout)
        return
    with capture(Path(pcap), ports) as cap:
        yield ProbeEvidence(cap, syn_only, timeout)
