"""DoT handshake cost: full TLS handshakes (plus one query each) against ``dnstfo serve
--tls-listen`` and, when installed, dnsdist's TLS frontend, on loopback.

The figure is handshakes per second of the server's own CPU time (utime + stime from
/proc/PID/stat), i.e. what one core of the server sustains, whatever the clients cost;
the wall-clock rate is printed too. Clients are plain ``ssl`` sockets in worker
processes, each connection a fresh full handshake (no resumption), TLS 1.3.

    .venv/bin/python bench/tls_bench.py --seconds 5 --clients 2
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.message

from dnstfo.lab.testca import TestCa, make_test_ca

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    sys.exit(f"nothing listens on port {port}")


def _client(port: int, ca: str, seconds: float, out: multiprocessing.Queue[int]) -> None:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(["dot"])
    wire = dns.message.make_query("example.com.", "A").to_wire()
    query = struct.pack("!H", len(wire)) + wire
    done, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        with socket.create_connection((HOST, port), timeout=5) as raw:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with ctx.wrap_socket(raw, server_hostname=HOST) as tls:
                tls.sendall(query)
                (n,) = struct.unpack("!H", tls.recv(2))
                got = b""
                while len(got) < n:
                    got += tls.recv(n - len(got))
        done += 1
    out.put(done)


def measure(name: str, pid: int, port: int, ca: TestCa, seconds: float, clients: int) -> None:
    """Runs the clients against ``port`` and prints the server's handshakes per CPU second."""
    queue: multiprocessing.Queue[int] = multiprocessing.Queue()
    workers = [
        multiprocessing.Process(target=_client, args=(port, str(ca.ca_cert), seconds, queue))
        for _ in range(clients)
    ]
    cpu0, t0 = _cpu_s(pid), time.monotonic()
    for w in workers:
        w.start()
    total = sum(queue.get(timeout=seconds + 30) for _ in workers)
    for w in workers:
        w.join()
    cpu, wall = _cpu_s(pid) - cpu0, time.monotonic() - t0
    print(
        f"{name:<14} {total:6d} handshakes+queries in {wall:.1f} s ({total / wall:6.0f}/s wall); "
        f"server CPU {cpu:.2f} s: {total / cpu if cpu else float('inf'):6.0f} per CPU second"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--port", type=int, default=18853, help="dnstfo's TLS port")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dtfo-tls-bench-") as tmp:
        ca = make_test_ca(Path(tmp), ("dns.test",), (HOST,))
        plain_port, dist_port = args.port + 1, args.port + 2
        serve = subprocess.Popen(
            [sys.executable, "-c", "from dnstfo.cli import main; main(prog_name='dnstfo')",
             "serve", "--zone", str(ROOT / "zones"), "--listen", f"{HOST}:{plain_port}",
             "--tls-listen", f"{HOST}:{args.port}", "--tls-cert", str(ca.cert),
             "--tls-key", str(ca.key)],
            stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            _wait_port(args.port, serve)
            measure("dnstfo serve", serve.pid, args.port, ca, args.seconds, args.clients)
            exe = shutil.which("dnsdist")
            if exe is None:
                print("dnsdist        not installed: skipped")
                return
            conf = Path(tmp) / "dnsdist.conf"
            conf.write_text(
                'setSecurityPollSuffix("")\nsetLocal("127.0.0.1:' + str(args.port + 3) + '")\n'
                f'addTLSLocal("{HOST}:{dist_port}", "{ca.cert}", "{ca.key}", '
                '{provider="openssl", tcpFastOpenQueueSize=64})\n'
                f'newServer({{address="{HOST}:{plain_port}"}})\n'
            )
            dist = subprocess.Popen(
                [exe, "--supervised", "--disable-syslog", "-C", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            try:
                _wait_port(dist_port, dist)
                measure("dnsdist 1.7", dist.pid, dist_port, ca, args.seconds, args.clients)
            finally:
                dist.terminate()
                dist.wait(10)
        finally:
            serve.terminate()
            serve.wait(10)


if __name__ == "__main__":
    main()
