"""The TCP driver on the real kernel: flow control, transfers to slow readers, bursts, stop.

The server's accepted sockets inherit the listener's send buffer size, so a test that sets a
small one on the listener makes the server run out of socket buffer at once: what the
driver then keeps in user space, and when it reads again, is what these tests watch.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from pathlib import Path

import dns.message
import dns.rdatatype
import dns.zone

from dnstfo.server.config import Limits
from dnstfo.server.stats import Limit
from dnstfo.wire.framing import FrameDecoder, frame
from tests.server.conftest import ServerThread, read_messages, tcp_connect

LOCALHOST = (ipaddress.ip_network("127.0.0.0/8"),)


def small_send_buffer(server: ServerThread, size: int = 4096) -> None:
    """Connections accepted from now on get a small, fixed send buffer."""
    server.server.listeners[0].tcp.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def query(name: str, qid: int, rdtype: str = "A") -> bytes:
    q = dns.message.make_query(name, rdtype)
    q.id = qid
    return frame(q.to_wire())


def zone_records(zone_dir: Path) -> int:
    zone = dns.zone.from_file(str(zone_dir / "test.example.zone"), relativize=False)
    return sum(len(rdataset) for _, rdataset in zone.iterate_rdatasets())


def tcp_noerror(server: ServerThread) -> int:
    return int(server.call(lambda: server.server.stats.queries["tcp", 0]))


def test_a_client_that_does_not_read_is_not_read_either(server: ServerThread) -> None:
    small_send_buffer(server, 65536)  # smaller ones make the transfer ACK-clocked and slow
    count = 3000  # ~8 MB of answers (big TXT), ~100 kB of queries
    batch = b"".join(query("big.test.example.", i, "TXT") for i in range(count))
    with tcp_connect(server.address, timeout=20) as sock:
        sender = threading.Thread(target=sock.sendall, args=(batch,), daemon=True)
        sender.start()
        time.sleep(0.5)
        # The server answered what one read brought, could not send it all, and stopped.
        stalled = tcp_noerror(server)
        time.sleep(0.3)
        assert tcp_noerror(server) == stalled
        assert 0 < stalled < count
        answers = read_messages(sock, count)
        sender.join(5)
    ids = sorted(int.from_bytes(m[:2], "big") for m in answers)  # IDs only: parsing is slow
    assert ids == list(range(count))


def _transfer_slowly(address: tuple[str, int], pause: float) -> tuple[int, bool, float]:
    """Reads an AXFR of test.example. in small sips; returns (records, closed after, seconds)."""
    start = time.monotonic()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect(address)
        sock.sendall(frame(dns.message.make_query("test.example.", "AXFR").to_wire()))
        decoder = FrameDecoder()
        records, soa = 0, 0
        while soa < 2:
            data = sock.recv(4096)
            assert data, "the server closed in the middle of the transfer"
            for wire in decoder.feed(data):
                msg = dns.message.from_wire(wire, one_rr_per_rrset=True)
                records += len(msg.answer)
                soa += sum(1 for r in msg.answer if r.rdtype == dns.rdatatype.SOA)
            time.sleep(pause)
        closed = sock.recv(1) == b""
    return records, closed, time.monotonic() - start


def test_transfer_to_a_slow_reader_finishes_past_the_lifetime(make_server, zone_dir) -> None:  # type: ignore[no-untyped-def]
    with (zone_dir / "test.example.zone").open("a") as f:
        f.writelines(f'h{i} IN TXT "{"y" * 200}"\n' for i in range(1500))  # ~350 kB
    server = make_server(
        axfr_allow=LOCALHOST, limits=Limits.from_seconds(lifetime=0.3, idle_timeout=5)
    )
    small_send_buffer(server)
    result: list[tuple[int, bool, float]] = []
    reader = threading.Thread(
        target=lambda: result.append(_transfer_slowly(server.address, 0.002)), daemon=True
    )
    reader.start()
    time.sleep(0.1)
    # Meanwhile another client is answered at once.
    with tcp_connect(server.address) as other:
        started = time.monotonic()
        other.sendall(query("www.test.example.", 1))
        assert len(read_messages(other, 1)) == 1
        assert time.monotonic() - started < 0.2
    reader.join(20)
    ((records, closed, seconds),) = result
    assert seconds > 0.3  # the lifetime passed during the transfer...
    assert records == zone_records(zone_dir) + 1  # ...which still came whole (SOA twice)
    assert closed  # then the connection closed, counted as the lifetime limit
    assert server.call(lambda: server.server.stats.limits[Limit.LIFETIME]) == 1


def test_a_burst_of_connections_is_answered(server: ServerThread) -> None:
    count = 200  # under the per-client limit; several accept batches
    socks = [socket.socket() for _ in range(count)]
    # Hold the server's loop while they all connect, so they wait in the accept queue.
    server.loop.call_soon_threadsafe(time.sleep, 0.5)
    try:
        for i, sock in enumerate(socks):
            sock.settimeout(10)
            sock.connect(server.address)
            sock.sendall(query("www.test.example.", i))
        ids = [dns.message.from_wire(read_messages(s, 1)[0]).id for s in socks]
    finally:
        for sock in socks:
            sock.close()
    assert ids == list(range(count))


def test_stop_closes_idle_connections_and_finishes_answers(make_server, zone_dir) -> None:  # type: ignore[no-untyped-def]
    with (zone_dir / "test.example.zone").open("a") as f:
        f.writelines(f'h{i} IN TXT "{"y" * 200}"\n' for i in range(1500))
    server = make_server(axfr_allow=LOCALHOST)
    small_send_buffer(server)
    result: list[tuple[int, bool, float]] = []
    reader = threading.Thread(
        target=lambda: result.append(_transfer_slowly(server.address, 0.002)), daemon=True
    )
    with tcp_connect(server.address) as idle:
        reader.start()
        time.sleep(0.1)
        started = time.monotonic()
        server.call(server.server.stop, 5.0, timeout=10)
        stopped = time.monotonic() - started
        idle.settimeout(1)
        assert idle.recv(1) == b""  # closed by the server
    reader.join(10)
    ((records, closed, _),) = result
    assert records == zone_records(zone_dir) + 1  # the transfer in progress was finished
    assert closed
    assert stopped < 5.0  # and the server did not wait out its grace period
    assert server.server.connections == 0
