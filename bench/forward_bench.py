"""Benchmark `dnstfo serve --forward` against dnsdist, both forwarding to Knot DNS.

Method
------
Everything runs in a network namespace made for the run (see ``serve_bench``: loopback,
``tcp_fastopen=3``, deleted at exit). Knot DNS serves ``zones/`` on 127.0.0.1:5302 as the
upstream; each forwarder in turn listens on its own port and forwards every name of
``example.com`` there over TCP with Fast Open:

- ``dnstfo serve --forward 127.0.0.1:5302`` (its own zone is a tiny ``t.example``, so
  every benchmark name is forwarded), one worker;
- ``dnsdist`` with a TFO frontend (``tcpFastOpenQueueSize``, ``maxInFlight=64`` so that
  pipelined queries are answered out of order) and a backend with ``tcpFastOpen=true``.

Each forwarder is pinned to core 0, the load generator (``bench/tfo_load.c``) and knotd to
core 1. Modes: (a) a fresh TFO client connection per query, 64 in flight, and (b) 64
pipelined queries on one connection, both with the cache off; (c) mode (b) with the cache
on (dnstfo's forward cache, dnsdist's packet cache), after a warm-up that fills it, so
every answer is a hit. Printed per forwarder and mode: answers/s, latency p50/p90/p99, the
load generator's CPU, the forwarder's CPU, and the upstream connections open during the
window (sampled with ``ss``; fewer is better), then dnstfo / dnsdist.

Needs root, gcc, iproute2 and taskset; installs Debian's ``knot`` and ``dnsdist`` with
apt-get if missing. Not a test: CI does not run it.

    sudo .venv/bin/python bench/forward_bench.py --duration 10
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import serve_bench as sb

ADDR = sb.ADDR
UPSTREAM = 5302
PORTS = {"dnstfo": 5301, "dnsdist": 5303}
FORWARDER_CPU = sb.SERVER_CPU
LOAD_CPU = sb.CLIENT_CPU
MODES = {"a": ("tfo", False), "b": ("pipe", False), "c": ("pipe", True)}
TITLES = {
    "a": "(a) fresh TFO client connection per query, cache off",
    "b": "(b) pipelined queries on one connection, cache off",
    "c": "(c) pipelined queries on one connection, cache on (all hits)",
}
OWN_ZONE = "$ORIGIN t.example.\n$TTL 60\n@ SOA ns h 1 2 3 4 5\n@ NS ns\nns A 192.0.2.1\n"
DNSDIST_CONF = """\
setSecurityPollSuffix("")
setACL({{"127.0.0.0/8"}})
addLocal("{addr}:{port}", {{reusePort=true, tcpFastOpenQueueSize=1024, maxInFlight=64}})
newServer({{address="{addr}:{upstream}", tcpFastOpen=true, maxInFlight=64,
            healthCheckMode="up"}})
setMaxTCPClientThreads(1)
{cache}
"""
DNSDIST_CACHE = 'pc = newPacketCache(100000, {maxTTL=86400})\ngetPool(""):setCache(pc)'


def ensure_packages() -> None:
    """Installs knot and dnsdist with apt-get if missing."""
    need = [p for p in ("knot", "dnsdist") if shutil.which(p if p != "knot" else "knotd") is None]
    need = [p for p in need if not Path(f"/usr/sbin/{'knotd' if p == 'knot' else p}").exists()]
    if need:
        sb.log(f"installing {' '.join(need)} with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=600, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *need], check=True, timeout=600, env=env)


def start_knot(run: sb.Run, shim: Path) -> subprocess.Popen[Any]:
    for sub in ("knot-run", "knot-db"):
        (run.tmp / sub).mkdir(exist_ok=True)
    conf = run.tmp / "knot.conf"
    conf.write_text(sb.KNOT_CONF.format(tmp=run.tmp, addr=ADDR, port=UPSTREAM, zones=sb.ZONES))
    env = {**os.environ, "LD_PRELOAD": str(shim), "SHIM_BACKLOG": "1024"}
    knotd = shutil.which("knotd") or "/usr/sbin/knotd"
    return sb.spawn(
        run, sb.in_ns(run, [knotd, "-c", str(conf)], LOAD_CPU), run.tmp / "knot.log", env=env
    )


def start_forwarder(run: sb.Run, name: str, cache: bool) -> subprocess.Popen[Any]:
    port = PORTS[name]
    if name == "dnstfo":
        zones = run.tmp / "own-zones"
        zones.mkdir(exist_ok=True)
        (zones / "t.example.zone").write_text(OWN_ZONE)
        argv = [str(sb.DNSTFO), "serve", "--zone", str(zones), "--listen", f"{ADDR}:{port}",
                "--forward", f"{ADDR}:{UPSTREAM}", "--forward-cache-size",
                "100000" if cache else "0", "--tfo-queue", "1024", "--max-queries",
                "1000000000", "--lifetime", "86400"]  # fmt: skip
    else:
        conf = run.tmp / f"dnsdist-{int(cache)}.conf"
        conf.write_text(
            DNSDIST_CONF.format(
                addr=ADDR, port=port, upstream=UPSTREAM, cache=DNSDIST_CACHE if cache else ""
            )
        )
        argv = [shutil.which("dnsdist") or "/usr/bin/dnsdist", "--supervised", "--disable-syslog",
                "-C", str(conf)]  # fmt: skip
    log_path = run.tmp / f"{name}-{int(cache)}.log"
    return sb.spawn(run, sb.in_ns(run, argv, FORWARDER_CPU), log_path)


def upstream_connections(run: sb.Run) -> int:
    out = sb.sh(sb.in_ns(run, ["ss", "-Htn", "state", "established", f"dport = :{UPSTREAM}"]))
    return len(out.splitlines())


def measure(
    run: sb.Run, name: str, letter: str, loadgen: Path, wire: Path, cfg: sb.Config
) -> dict[str, Any]:
    """Starts the forwarder for one mode, loads it, stops it."""
    mode, cache = MODES[letter]
    proc = start_forwarder(run, name, cache)
    sb.PORTS[name] = PORTS[name]
    try:
        sb.wait_ready(run, name, proc, loadgen, wire)
        samples: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            time.sleep(cfg.warmup + cfg.duration / 2)
            if not stop.is_set():
                samples.append(upstream_connections(run))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        result = sb.run_loadgen(run, loadgen, wire, mode, PORTS[name], cfg, proc.pid)
        stop.set()
        sampler.join(5)
        result["upstream_connections"] = samples[0] if samples else None
        return result
    finally:
        sb.stop(proc)


def report(results: dict[str, dict[str, Any]], cfg: sb.Config) -> str:
    lines: list[str] = []
    for letter in cfg.modes:
        lines.append(f"\n{TITLES[letter]}, {cfg.concurrency} in flight, {cfg.duration:g} s")
        lines.append(
            f"  {'forwarder':9} {'q/s':>8} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} "
            f"{'gen CPU':>7} {'fwd CPU':>7} {'upstream conns':>14} {'errors':>6} {'timeouts':>8}"
        )
        for name in cfg.servers:
            r = results.get(name, {}).get(letter)
            if r is None or "error" in r:
                lines.append(f"  {name:9} not measured: {r and r['error']}")
                continue
            lat = r["latency_ms"]
            lines.append(
                f"  {name:9} {r['qps']:8.0f} {lat['p50']:7.3f} {lat['p90']:7.3f} "
                f"{lat['p99']:7.3f} {r['cpu_pct']:6.0f}% {r['server_cpu_pct']:6.0f}% "
                f"{r['upstream_connections']!s:>14} {r['errors']:6d} {r['timeouts']:8d}"
            )
        d = results.get("dnstfo", {}).get(letter)
        s = results.get("dnsdist", {}).get(letter)
        if d and s and "error" not in d and "error" not in s:
            lines.append(f"  ratio dnstfo/dnsdist: q/s {d['qps'] / s['qps']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--modes", default="a,b,c")
    p.add_argument("--forwarders", default="dnstfo,dnsdist")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    modes = tuple(m for m in a.modes.split(",") if m)
    names = tuple(n for n in a.forwarders.split(",") if n)
    if not modes or not names or not set(modes) <= MODES.keys() or not set(names) <= PORTS.keys():
        p.error("--modes takes a,b,c and --forwarders takes dnstfo,dnsdist")
    if a.duration <= 0 or a.warmup < 0 or a.concurrency < 1:
        p.error("--duration and --concurrency take more than 0, --warmup 0 or more")
    if os.geteuid() != 0:
        print("forward_bench: needs root (network namespaces)", file=sys.stderr)
        return 2
    cfg = sb.Config(a.duration, a.warmup, modes, names, 1, a.concurrency, 1024, 1024, False, a.json)
    ensure_packages()
    results: dict[str, dict[str, Any]] = {}
    try:
        with sb.bench_run() as run:
            loadgen, shim = sb.build(run.tmp)
            wire, _ = sb.write_queries(run.tmp)
            knot = start_knot(run, shim)
            sb.PORTS["knot"] = UPSTREAM
            sb.wait_ready(run, "knot", knot, loadgen, wire)
            sb.log(f"namespace {run.ns}; forwarders on core {FORWARDER_CPU}, load and knotd "
                   f"on core {LOAD_CPU}")  # fmt: skip
            for letter in modes:
                for name in names:
                    sb.log(f"{name}: mode {letter}, {cfg.warmup} s warm-up + {cfg.duration} s")
                    try:
                        results.setdefault(name, {})[letter] = measure(
                            run, name, letter, loadgen, wire, cfg
                        )
                    except RuntimeError as exc:
                        sb.log(f"{name}: {exc}")
                        results.setdefault(name, {})[letter] = {"error": str(exc)}
    except KeyboardInterrupt:
        print("forward_bench: interrupted, cleaned up", file=sys.stderr)
        return 130
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        print(f"forward_bench: {exc}", file=sys.stderr)
        return 1
    print(report(results, cfg))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
