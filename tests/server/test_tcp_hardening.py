"""Clients that stall, hoard or ask for big work, on real sockets.

Each test makes the server's socket buffers small (accepted sockets inherit the listener's
send buffer; the client sets its receive buffer before connecting), so that a client that
does not read stops the server's writes at once. Waits poll the real condition with a
bounded deadline.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import dns.message
import dns.rdatatype
import pytest

from dnstfo.server.config import Limits
from dnstfo.server.session import MAX_BUFFERED
from dnstfo.server.stats import Limit
from dnstfo.wire.framing import FrameDecoder, frame
from tests.server.conftest import ServerThread, read_messages, tcp_connect

LOCALHOST = (ipaddress.ip_network("127.0.0.0/8"),)


def query(name: str, qid: int, rdtype: str = "A") -> bytes:
    q = dns.message.make_query(name, rdtype)
    q.id = qid
    return frame(q.to_wire())


def stalled_client(address: tuple[str, int], rcvbuf: int = 4096) -> socket.socket:
    """A connected client with a small receive buffer (it will not read)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(address)
    return sock


def small_send_buffer(server: ServerThread, size: int = 4096) -> None:
    server.server.listeners[0].tcp.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def wait_for(condition: Callable[[], bool], within: float) -> float:
    """Polls ``condition`` until true; returns the seconds it took (fails past ``within``)."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < within, "condition not reached in time"
        time.sleep(0.01)
    return time.monotonic() - start


def established(sock: socket.socket) -> bool:
    """The client's side of the connection is still ESTABLISHED (TCP_INFO's state)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] == 1


def connections(server: ServerThread) -> int:
    return int(server.call(lambda: server.server.connections))


def limit_hits(server: ServerThread, limit: Limit) -> int:
    return int(server.call(lambda: server.server.stats.limits[limit]))


def add_records(zone_dir: Path, lines: list[str]) -> None:
    with (zone_dir / "test.example.zone").open("a") as f:
        f.writelines(line + "\n" for line in lines)


# ---- B: a client that does not read is closed, whatever the reason it was closing -------


def test_a_stalled_reader_is_closed_at_the_write_stall_timeout(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(limits=Limits.from_seconds(idle_timeout=30, write_stall=0.5))
    small_send_buffer(server)
    with stalled_client(server.address) as sock:
        sock.sendall(b"".join(query("big.test.example.", i, "TXT") for i in range(300)))
        wait_for(lambda: connections(server) == 1, 5)
        took = wait_for(lambda: connections(server) == 0, 5)
        # Reset, not FIN: a FIN would wait in the kernel behind the unsent answers.
        wait_for(lambda: not established(sock), 2)
    assert took < 3  # the idle timeout (30 s) is not what closed it
    assert limit_hits(server, Limit.WRITE_STALL) == 1


@pytest.mark.parametrize(
    ("limits", "limit"),
    [
        ({"lifetime": 0.3}, Limit.LIFETIME),
        ({"max_queries": 10}, Limit.QUERIES),
    ],
)
def test_a_limit_close_of_a_non_reader_ends_in_a_close(  # type: ignore[no-untyped-def]
    make_server, limits: dict[str, float], limit: Limit
) -> None:
    server = make_server(limits=Limits.from_seconds(idle_timeout=30, write_stall=0.5, **limits))
    small_send_buffer(server)
    with stalled_client(server.address) as sock:
        sock.sendall(b"".join(query("big.test.example.", i, "TXT") for i in range(300)))
        wait_for(lambda: connections(server) == 0, 5)
        wait_for(lambda: not established(sock), 2)
    assert limit_hits(server, limit) == 1
    assert limit_hits(server, Limit.WRITE_STALL) == 1


def test_a_stalled_zone_transfer_is_closed(make_server, zone_dir) -> None:  # type: ignore[no-untyped-def]
    add_records(zone_dir, [f'h{i} IN TXT "{"y" * 200}"' for i in range(1500)])  # ~350 kB
    server = make_server(
        axfr_allow=LOCALHOST, limits=Limits.from_seconds(idle_timeout=30, write_stall=0.5)
    )
    small_send_buffer(server)
    with stalled_client(server.address) as sock:
        sock.sendall(query("test.example.", 1, "AXFR"))
        wait_for(lambda: connections(server) == 1, 5)
        wait_for(lambda: connections(server) == 0, 5)
        wait_for(lambda: not established(sock), 2)
    assert limit_hits(server, Limit.WRITE_STALL) == 1


def test_a_slow_reader_that_keeps_reading_is_not_closed(make_server, zone_dir) -> None:  # type: ignore[no-untyped-def]
    """The write-stall timer restarts with every byte the socket takes."""
    add_records(zone_dir, [f'h{i} IN TXT "{"y" * 200}"' for i in range(800)])
    server = make_server(axfr_allow=LOCALHOST, limits=Limits.from_seconds(write_stall=1))
    small_send_buffer(server)
    with stalled_client(server.address) as sock:
        sock.sendall(query("test.example.", 1, "AXFR"))
        decoder, soa, start = FrameDecoder(), 0, time.monotonic()
        while soa < 2:
            data = sock.recv(2048)
            assert data, "closed in the middle of a transfer the client was reading"
            for wire in decoder.feed(data):
                msg = dns.message.from_wire(wire, one_rr_per_rrset=True)
                soa += sum(1 for r in msg.answer if r.rdtype == dns.rdatatype.SOA)
            time.sleep(0.02)  # a slow reader: the whole transfer takes longer than 1 s
    assert time.monotonic() - start > 1
    assert limit_hits(server, Limit.WRITE_STALL) == 0


# ---- C: what one connection holds is bounded ----------------------------------------------


def huge_rrset(zone_dir: Path) -> int:
    """Adds huge.test.example. TXT of about 30 kB; returns its answer size."""
    add_records(zone_dir, [f'huge IN TXT "{i:03d}{"h" * 140}"' for i in range(200)])
    return 200 * 150


def test_pipelining_against_a_big_rrset_is_bounded(make_server, zone_dir) -> None:  # type: ignore[no-untyped-def]
    answer = huge_rrset(zone_dir)
    server = make_server()
    small_send_buffer(server)
    count = 400  # 12 MB of answers from 14 kB of queries
    with stalled_client(server.address) as sock:
        sock.sendall(b"".join(query("huge.test.example.", i, "TXT") for i in range(count)))

        def stalled() -> bool:
            sessions = server.call(server.server._tcp.sessions)
            return bool(sessions) and not sessions[0].wants_read() and sessions[0].buffered

        wait_for(stalled, 5)
        (session,) = server.call(server.server._tcp.sessions)
        assert server.call(lambda: session.buffered) <= MAX_BUFFERED
        answered = server.call(lambda: server.server.stats.queries["tcp", 0])
        assert answered < 2 * MAX_BUFFERED // answer  # made lazily, not all 400 at once
        sock.settimeout(20)
        answers = read_messages(sock, count)  # reading lets the rest be made and sent
    assert sorted(int.from_bytes(m[:2], "big") for m in answers) == list(range(count))


# ---- D: a zone transfer is made message by message, beside other work ----------------------


def test_a_zone_transfer_is_streamed_not_rendered_whole(make_server, zone_dir) -> None:  # type: ignore[no-untyped-def]
    add_records(zone_dir, [f'h{i} IN TXT "{"y" * 200}"' for i in range(20_000)])  # ~4.6 MB
    server = make_server(axfr_allow=LOCALHOST)
    small_send_buffer(server)
    with stalled_client(server.address) as sock:
        sock.sendall(query("test.example.", 1, "AXFR"))

        def stalled() -> bool:
            sessions = server.call(server.server._tcp.sessions)
            return bool(sessions) and bool(sessions[0].buffered)

        wait_for(stalled, 10)
        (session,) = server.call(server.server._tcp.sessions)
        assert server.call(lambda: session.buffered) <= MAX_BUFFERED
        # Meanwhile another client is answered at once.
        with tcp_connect(server.address) as other:
            other.sendall(query("www.test.example.", 7))
            assert len(read_messages(other, 1)) == 1


def test_transfers_interleave_with_other_clients(make_server, zone_dir) -> None:  # type: ignore[no-untyped-def]
    add_records(zone_dir, [f'h{i} IN TXT "{"y" * 200}"' for i in range(20_000)])
    server = make_server(axfr_allow=LOCALHOST)
    done = threading.Event()

    def pull() -> None:
        with tcp_connect(server.address, timeout=60) as sock:
            sock.sendall(query("test.example.", 1, "AXFR"))
            decoder, soa = FrameDecoder(), 0
            while soa < 2 and not done.is_set():
                data = sock.recv(65536)
                if not data:
                    return
                for wire in decoder.feed(data):
                    soa += wire.count(b"\x00\x06\x00\x01")  # SOA records (type 6, class IN)

    pullers = [threading.Thread(target=pull, daemon=True) for _ in range(3)]
    for thread in pullers:
        thread.start()
    try:
        worst = 0.0
        for i in range(20):
            with tcp_connect(server.address) as sock:
                started = time.monotonic()
                sock.sendall(query("www.test.example.", i))
                assert len(read_messages(sock, 1)) == 1
                worst = max(worst, time.monotonic() - started)
    finally:
        done.set()
        for thread in pullers:
            thread.join(60)
    # Rendering the whole zone at once takes seconds here; message by message, a query
    # waits for a few messages of each transfer at most.
    assert worst < 1.0
