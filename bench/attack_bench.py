"""Reliability under attack: legitimate clients' answers while others stall, hoard or pull.

Starts ``dnstfo serve`` on loopback (a fresh process per phase, so each phase's peak memory
is its own), and in each phase runs legitimate clients (fresh TCP connections from
127.0.0.1, one query each, paced) beside one attack:

- ``baseline``: no attack.
- ``stalled``: connections that pipeline queries for a ~30 kB RRset and never read.
- ``pipeline``: connections that write 64 KiB of queries for the big RRset at a time and
  read slowly.
- ``hoard``: connections from 20 addresses (127.0.0.2-127.0.0.21) taking every slot, each
  sending a query every 8 s (under the 10 s idle timeout).
- ``axfr``: connections that ask for a transfer of a 30,000-record zone and never read.

For each phase it prints the legitimate clients' answer rate and latency (p50, p99, and
p99 against the baseline's) and the server's peak resident memory (VmHWM). Not run by CI.
Loopback only; no root needed (raise ``ulimit -n`` above ``--hoarders`` + 200).

    .venv/bin/python bench/attack_bench.py [--tree PATH] [--duration 8] [--phases ...]

``--tree`` serves from another checkout (e.g. ``git worktree add /tmp/before HEAD``) to
measure before and after a change with the same attacks.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.message

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("baseline", "stalled", "pipeline", "hoard", "axfr")
MAX_CONNECTIONS = 600
"""The server's default connection limit here (``--max-connections``; small, so hoarding
it is cheap)."""


def framed(name: str, rdtype: str, qid: int = 0) -> bytes:
    wire = dns.message.make_query(name, rdtype)
    wire.id = qid
    data = wire.to_wire()
    return len(data).to_bytes(2, "big") + data


def write_zones(directory: Path, axfr_records: int) -> None:
    """bench. (www A, a ~30 kB TXT RRset) and xfr.bench. (many TXT records)."""
    head = "@ 300 IN SOA ns h 1 7200 900 1209600 60\n@ 300 IN NS ns\nns 300 IN A 192.0.2.53\n"
    big = "".join(f'big 300 IN TXT "{i:03d}{"b" * 140}"\n' for i in range(200))
    (directory / "bench").write_text("$ORIGIN bench.\n" + head + "www 300 IN A 192.0.2.1\n" + big)
    rows = "".join(f'h{i} 300 IN TXT "{"x" * 200}"\n' for i in range(axfr_records))
    (directory / "xfr.bench").write_text("$ORIGIN xfr.bench.\n" + head + rows)


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int

    def peak_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(tree: Path, zones: Path, max_connections: int) -> Server:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(tree))
    code = "import sys; sys.argv[0] = 'dnstfo'; from dnstfo.cli import entry; entry()"
    argv = [sys.executable, "-c", code, "serve", "--zone", str(zones)]
    argv += ["--listen", f"127.0.0.1:{port}", "--axfr-allow", "127.0.0.0/8"]
    argv += ["--max-connections", str(max_connections)]
    process = subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL, cwd=tree)
    server = Server(process, port)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"dnstfo serve exited with {process.returncode}")
        if query_once(port, 0.5) is not None:
            return server
        time.sleep(0.1)
    server.stop()
    raise SystemExit("dnstfo serve did not answer within 60 s")


def query_once(port: int, timeout: float, failures: list[str] | None = None) -> float | None:
    """One query on a fresh connection; seconds to the whole answer, or None (the phase
    that failed is added to ``failures``)."""
    start = time.monotonic()
    phase = "connect"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            phase = "answer"
            sock.sendall(framed("www.bench.", "A", 7))
            data = b""
            while len(data) < 2 or len(data) < 2 + int.from_bytes(data[:2], "big"):
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionError("closed")
                data += chunk
    except OSError as exc:
        if failures is not None:
            failures.append(f"{phase}: {type(exc).__name__}")
        return None
    return time.monotonic() - start


def legit(
    port: int, seconds: float, rate: float, failures: list[str], threads: int = 4
) -> list[float | None]:
    """Paced fresh-connection queries; each result is a latency or None (unanswered)."""
    results: list[float | None] = []
    lock = threading.Lock()
    interval = threads / rate
    end = time.monotonic() + seconds

    def run() -> None:
        next_at = time.monotonic()
        while next_at < end:
            result = query_once(port, 2.0, failures)
            with lock:
                results.append(result)
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return results


# ---- attacks: each runs until ``stop`` is set ---------------------------------------------


def _connect(port: int, source: str = "127.0.0.1", rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    return sock


def stalled(port: int, stop: threading.Event, connections: int = 50) -> None:
    batch = framed("big.bench.", "TXT") * 300
    socks = []
    for _ in range(connections):
        with contextlib.suppress(OSError):
            sock = _connect(port, rcvbuf=4096)
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.send(batch)
            socks.append(sock)
    stop.wait()
    for sock in socks:
        sock.close()


def pipeline(port: int, stop: threading.Event, connections: int = 10) -> None:
    query = framed("big.bench.", "TXT")
    batch = query * (65536 // len(query))

    def one() -> None:
        try:
            sock = _connect(port, rcvbuf=65536)
        except OSError:
            return
        with sock:
            while not stop.is_set():
                try:
                    sock.sendall(batch)
                    for _ in range(20):  # read slowly: 20 x 16 kB, then write again
                        if not sock.recv(16384):
                            return
                        time.sleep(0.005)
                except OSError:
                    with contextlib.suppress(OSError):
                        sock.close()
                    try:
                        sock = _connect(port, rcvbuf=65536)
                    except OSError:
                        return

    workers = [threading.Thread(target=one, daemon=True) for _ in range(connections)]
    for w in workers:
        w.start()
    stop.wait()
    for w in workers:
        w.join(10)


def hoard(port: int, stop: threading.Event, connections: int = MAX_CONNECTIONS) -> None:
    """Every slot taken from 20 addresses; each connection asks something every 8 s, and
    a closed one is opened again at once."""
    sources = [f"127.0.0.{2 + i % 20}" for i in range(connections)]
    socks: list[socket.socket | None] = [None] * connections
    query = framed("www.bench.", "A")
    last = [0.0] * connections
    while not stop.is_set():
        now = time.monotonic()
        for i in range(connections):
            sock = socks[i]
            if sock is None or now - last[i] >= 8:
                try:
                    if sock is None:
                        sock = socks[i] = _connect(port, sources[i])
                        sock.settimeout(0.5)
                    sock.sendall(query)
                    sock.recv(4096)
                    last[i] = now
                except OSError:
                    if sock is not None:
                        sock.close()
                    socks[i] = None
        stop.wait(0.05)
    for sock in socks:
        if sock is not None:
            sock.close()


def axfr(port: int, stop: threading.Event, connections: int = 10) -> None:
    query = framed("xfr.bench.", "AXFR")
    socks = []
    for _ in range(connections):
        with contextlib.suppress(OSError):
            sock = _connect(port, rcvbuf=4096)
            sock.sendall(query)
            socks.append(sock)
    stop.wait()
    for sock in socks:
        sock.close()


ATTACKS: dict[str, Callable[..., None]] = {
    "stalled": stalled,
    "pipeline": pipeline,
    "hoard": hoard,
    "axfr": axfr,
}


@contextlib.contextmanager
def attack(name: str, port: int, max_connections: int) -> Iterator[None]:
    if name == "baseline":
        yield
        return
    stop = threading.Event()
    args: tuple[object, ...] = (port, stop)
    if name == "hoard":
        args += (max_connections,)
    thread = threading.Thread(target=ATTACKS[name], args=args, daemon=True)
    thread.start()
    time.sleep(2.0)  # let the attack take hold before measuring
    try:
        yield
    finally:
        stop.set()
        thread.join(30)


@dataclass
class Row:
    phase: str
    sent: int
    answered: int
    p50_ms: float
    p99_ms: float
    peak_mb: float
    failures: list[str]


def run_phase(
    name: str, tree: Path, zones: Path, seconds: float, rate: float, max_connections: int
) -> Row:
    server = start_server(tree, zones, max_connections)
    failures: list[str] = []
    try:
        with attack(name, server.port, max_connections):
            results = legit(server.port, seconds, rate, failures)
        peak = server.peak_mb()
    finally:
        server.stop()
    times = sorted(r * 1000 for r in results if r is not None)
    p50 = statistics.median(times) if times else float("nan")
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))] if times else float("nan")
    return Row(name, len(results), len(times), p50, p99, peak, failures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=ROOT, help="checkout to serve from")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured a phase")
    parser.add_argument("--rate", type=float, default=100.0, help="legitimate queries/s")
    parser.add_argument("--phases", default=",".join(PHASES))
    parser.add_argument("--axfr-records", type=int, default=30_000)
    parser.add_argument(
        "--max-connections", type=int, default=MAX_CONNECTIONS, help="server's and hoarders'"
    )
    args = parser.parse_args()
    phases = [p for p in args.phases.split(",") if p]
    for phase in phases:
        if phase not in PHASES:
            raise SystemExit(f"unknown phase {phase!r} (choose from {', '.join(PHASES)})")
    with tempfile.TemporaryDirectory(prefix="dtfo-attack-") as tmp:
        zones = Path(tmp)
        write_zones(zones, args.axfr_records)
        tree = args.tree.resolve()
        rows = [
            run_phase(p, tree, zones, args.duration, args.rate, args.max_connections)
            for p in phases
        ]
    base = next((r for r in rows if r.phase == "baseline"), None)
    print(f"tree: {args.tree}")
    header = ("answered", 16), ("p50 ms", 8), ("p99 ms", 8), ("p99/base", 9), ("peak MB", 8)
    print(f"{'phase':10} " + " ".join(f"{name:>{width}}" for name, width in header))
    for r in rows:
        share = 100 * r.answered / r.sent if r.sent else float("nan")
        ratio = r.p99_ms / base.p99_ms if base and base.p99_ms else float("nan")
        answered = f"{r.answered}/{r.sent} {share:5.1f}%"
        print(
            f"{r.phase:10} {answered:>16} {r.p50_ms:8.2f} {r.p99_ms:8.2f} {ratio:9.1f} "
            f"{r.peak_mb:8.1f}"
        )
        if r.failures:
            kinds = {k: r.failures.count(k) for k in sorted(set(r.failures))}
            print(f"{'':10} unanswered: " + ", ".join(f"{k} x{n}" for k, n in kinds.items()))


if __name__ == "__main__":
    main()
