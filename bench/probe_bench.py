"""Scale of ``dnstfo probe`` in the lab (not run by CI; needs root and /dev/net/tun).

Builds a lab whose server namespace holds N extra addresses (198.19.0.1 onwards) served
by one ``dnstfo serve`` on 0.0.0.0:53 (per-client limits raised: every probe connection
comes from one client address), then runs ``dnstfo probe`` over all of them from the
client namespace and prints:

- the campaign time against its floor (targets / concurrency x plan round trips x RTT);
- the probe's CPU time per target and its peak memory (rusage of the probe process);
- the verdicts (every target should be ``works`` on a clean path);
- the CPU the delay line and the server used meanwhile (which part limits);
- the delay line's and the kernel's side: TCPFastOpen counters in the client namespace,
  and how many cookies the client's cache holds at the end (evictions show as targets
  whose TFO connections found no cookie).

Usage: sudo .venv/bin/python bench/probe_bench.py [--targets 4000] [--concurrency 400]
       [--rtt 100] [--attempts 2] [--realtime]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DNSTFO = str(Path(sys.executable).parent / "dnstfo")


def wait_listening(lab: object, port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(
                f"dnstfo serve exited: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        out = lab.server.exec(["ss", "-Hltn", f"sport = :{port}"]).stdout  # type: ignore[attr-defined]
        if out.strip():
            return
        time.sleep(0.05)
    raise SystemExit("dnstfo serve did not listen within 30 s")


def counters(lab: object, side: str = "client") -> dict[str, int]:
    ns = getattr(lab, side)
    text = ns.exec(["cat", "/proc/net/netstat"]).stdout
    lines = text.splitlines()
    out: dict[str, int] = {}
    for head, vals in zip(lines[::2], lines[1::2], strict=False):
        for k, v in zip(head.split()[1:], vals.split()[1:], strict=False):
            if k.startswith("TCPFastOpen"):
                out[k] = int(v)
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (its own, not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=400)
    ap.add_argument("--rtt", type=float, default=100.0, help="milliseconds")
    ap.add_argument("--attempts", type=int, default=2)
    ap.add_argument(
        "--realtime",
        action="store_true",
        help="run the probe and the server at SCHED_FIFO priority (as the lab's delay line "
        "and tests do), so other busy processes on a small machine do not add lateness",
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces and the delay line)")
    sys.path.insert(0, str(ROOT))
    from dnstfo.lab.netns import realtime_priority
    from dnstfo.lab.topology import LabSpec, server_address_block, start_lab
    from dnstfo.probe.plan import Plan

    addresses = server_address_block(args.targets)
    floor = -(-args.targets // args.concurrency) * Plan(args.attempts).round_trips * args.rtt / 1000
    spec = LabSpec(rtt_ms=args.rtt, ipv6=False, server_addresses=args.targets)
    print(f"building the lab: {args.targets} server addresses, RTT {args.rtt:g} ms", flush=True)
    with start_lab(spec) as lab, tempfile.TemporaryDirectory() as tmp:
        lst = Path(tmp, "targets.txt")
        lst.write_text("".join(f"{a}\n" for a in addresses))
        serve = subprocess.Popen(
            ["ip", "netns", "exec", lab.server.name, DNSTFO, "serve", "--zone", str(ROOT / "zones"),
             "--listen", "0.0.0.0:53", "--max-connections", "65536",
             "--max-per-client", "65536"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            wait_listening(lab, 53, serve)
            if args.realtime:
                realtime_priority(pid=serve.pid)
            before = counters(lab)
            server_before = counters(lab, "server")
            relay_cpu, serve_cpu = cpu_seconds(lab.delay.pid), cpu_seconds(serve.pid)
            out = Path(tmp, "records.ndjson")
            argv = ["ip", "netns", "exec", lab.client.name, DNSTFO, "probe", "--targets", str(lst),
                    "--name", "example.com", "--concurrency", str(args.concurrency),
                    "--attempts", str(args.attempts), "-o", str(out)]  # fmt: skip
            started = time.monotonic()
            proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            if args.realtime:
                realtime_priority(pid=proc.pid)
            _, status, usage = os.wait4(proc.pid, 0)
            elapsed = time.monotonic() - started
            proc.returncode = os.waitstatus_to_exitcode(status)
            report = proc.stdout.read().decode() if proc.stdout else ""
            err = proc.stderr.read().decode() if proc.stderr else ""
            after = counters(lab)
            server_after = counters(lab, "server")
            relay_cpu = cpu_seconds(lab.delay.pid) - relay_cpu
            serve_cpu = cpu_seconds(serve.pid) - serve_cpu
            cached = lab.client.exec(["ip", "tcp_metrics", "show"]).stdout.count("fo_cookie")
        finally:
            serve.terminate()
            serve.wait(10)
        records = [json.loads(x) for x in out.read_text().splitlines()]
    verdicts = collections.Counter(r["verdict"] for r in records)
    cpu = usage.ru_utime + usage.ru_stime
    print(f"probe exit status {proc.returncode}; {err.strip()[-400:]}" if proc.returncode else "")
    print(
        f"targets {args.targets}, concurrency {args.concurrency}, attempts {args.attempts}, "
        f"realtime {args.realtime}, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"campaign {elapsed:.2f} s, floor {floor:.2f} s, ratio {elapsed / floor:.2f}")
    print(f"CPU {cpu:.2f} s = {1000 * cpu / max(len(records), 1):.2f} ms per target")
    print(f"peak memory (maxrss) {usage.ru_maxrss / 1024:.1f} MiB")
    print(
        f"CPU during the campaign: delay line {relay_cpu:.2f} s "
        f"({100 * relay_cpu / elapsed:.0f}% of a core), dnstfo serve {serve_cpu:.2f} s "
        f"({100 * serve_cpu / elapsed:.0f}%), probe {100 * cpu / elapsed:.0f}%"
    )
    print(f"records {len(records)}; verdicts {dict(verdicts)}")
    reasons = collections.Counter(r["reason"][:90] for r in records if r["verdict"] != "works")
    for reason, n in reasons.most_common(3):
        print(f"  {n} x {reason}")
    for r in [r for r in records if r["verdict"] != "works"][:3]:
        steps = [
            (c["step"], c["client_fail"], c["syn_retransmits"], c["cookie_after"], c["rcode"])
            for c in r["connections"]
        ]
        print(f"  e.g. {r['dip']}: {steps}")
    print(f"cookies cached at the end {cached}")
    delta = {
        k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)
    }
    print(f"client TCPFastOpen counters: {delta}")
    served = {
        k: server_after[k] - server_before.get(k, 0)
        for k in server_after
        if server_after[k] != server_before.get(k, 0)
    }
    print(f"server TCPFastOpen counters (ListenOverflow: no cookie for want of queue): {served}")
    print(report.strip().splitlines()[-1] if report.strip() else "")
    for step in ("baseline", "priming", "tfo"):
        conns = [c for r in records for c in r["connections"] if c["step"] == step]
        hs = sorted(c["handshake_ms"] for c in conns if c["handshake_ms"] is not None)
        tot = sorted(c["total_ms"] for c in conns if c["total_ms"] is not None)
        if hs and tot:
            print(
                f"{step:<9} handshake ms p50 {hs[len(hs) // 2]:.1f} p90 {hs[len(hs) * 9 // 10]:.1f}"
                f"  answer ms p50 {tot[len(tot) // 2]:.1f} p90 {tot[len(tot) * 9 // 10]:.1f}"
            )


if __name__ == "__main__":
    main()
