"""Benchmark `dnstfo serve` against Knot DNS over TCP, with and without TCP Fast Open.

Method
------
Everything runs inside a network namespace made for the run (``dtfo-bench-<hex>``) on its
loopback 127.0.0.1, so the host's sysctls are never touched. Inside it TFO is enabled for
both sides (``net.ipv4.tcp_fastopen=3``), the TFO blackhole back-off is off, and the
client side may reuse TIME_WAIT ports quickly over a wide port range (tens of thousands
of connections per second from one source address). The namespace is deleted at exit.

Each server (``dnstfo serve`` and ``knotd``) serves the same zone (``zones/``), pinned to
core 0 (``taskset -c 0``) with one worker; the load generators run on core 1. Per server
and mode there is a warm-up, then a fixed measured window:

(a) ``tfo``: a fresh TCP connection per query, 64 in flight. Each connection sends its
    framed query in the SYN (``sendto(MSG_FASTOPEN)`` with the cookie cached by a priming
    exchange), reads the answer and closes. No public tool does this, so a small C load
    generator (``bench/tfo_load.c``, built here with gcc) is used. The kernel's
    TcpExt counters TCPFastOpenActive/Passive are read from ``/proc/net/netstat`` inside
    the namespace before and after; they must grow by about the number of connections.
(b) ``pipe``: 64 pipelined queries on one persistent TCP connection, measured by the same
    C generator (it records every latency, so it gives percentiles) and cross-checked
    with ``dnsperf -m tcp -c 1 -q 64`` (q/s and mean latency only). The number of
    established connections is sampled during the dnsperf run to confirm it uses one.

Printed per server and mode: answers/s, latency p50/p90/p99, the generator's CPU use
(getrusage over the window for tfo_load, wait4 for dnsperf; near 100 % means the
generator, not the server, may be the bottleneck), the server's CPU use, Little's-law
queries in flight (q/s x mean latency, should be ~64), and the ratio dnstfo/Knot.

Knot 3.2 listens with a compiled-in backlog (and TFO queue) of 10, which overflows at 64
connections opening at once (SYN drops, 1 s retransmit stalls); it has no option for it
and ``net.core.somaxconn`` only caps the value. So knotd runs with ``bench/listen_shim.c``
preloaded, which raises both to ``--knot-backlog`` (0 = Knot's own value).

Needs root (namespaces), gcc, iproute2, util-linux (taskset); installs Debian's ``knot``
and ``dnsperf`` with apt-get if missing. Not a test: CI does not run it.

    sudo .venv/bin/python bench/serve_bench.py --duration 10 --json bench/out/run.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dns.message
import dns.rdatatype

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
ZONES = REPO / "zones"
DNSTFO = REPO / ".venv" / "bin" / "dnstfo"

ADDR = "127.0.0.1"
PORTS = {"dnstfo": 5301, "knot": 5302}
SERVER_CPU = "0"
CLIENT_CPU = "1"
MODES = {"a": "tfo", "b": "pipe"}

# (name, type): a few names of example.com, with a CNAME chain and an NXDOMAIN.
QUERY_MIX = [
    ("example.com.", "A"),
    ("example.com.", "AAAA"),
    ("example.com.", "MX"),
    ("mail.example.com.", "A"),
    ("server1.example.com.", "AAAA"),
    ("www.example.com.", "A"),
    ("nosuchname.example.com.", "A"),
    ("missing.example.com.", "AAAA"),
]

NS_SYSCTLS = {
    "net.ipv4.tcp_fastopen": "3",  # client and server TFO, inside the namespace only
    "net.ipv4.tcp_fastopen_blackhole_timeout_sec": "0",
    "net.ipv4.tcp_tw_reuse": "1",  # the client closes first: reuse its TIME_WAIT ports
    "net.ipv4.tcp_tw_reuse_delay": "10",  # ms (kernel >= 6.13; skipped if absent)
    # Wide, but above the servers' ports: a client socket on a server port blocks its bind.
    "net.ipv4.ip_local_port_range": "10000 65535",
    "net.core.somaxconn": "4096",
    "net.ipv4.tcp_max_syn_backlog": "4096",
}

COUNTERS = [
    "TCPFastOpenActive",
    "TCPFastOpenActiveFail",
    "TCPFastOpenPassive",
    "TCPFastOpenPassiveFail",
    "TCPFastOpenListenOverflow",
    "TCPFastOpenCookieReqd",
    "ListenOverflows",
    "ListenDrops",
]

READY_TIMEOUT_S = 20.0
GEN_BUSY_PCT = 80.0  # load generator CPU above which its core may be the bottleneck
STOP_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Config:
    """What to run, from the command line."""

    duration: float
    """Measured seconds per server and mode."""
    warmup: float
    """Warm-up seconds before each measured window."""
    modes: tuple[str, ...]
    """Mode letters: 'a' (TFO, fresh connection per query) and/or 'b' (pipelined)."""
    servers: tuple[str, ...]
    """'dnstfo' and/or 'knot'."""
    rounds: int
    """Rounds of every server and mode; the best round per server and mode is reported."""
    concurrency: int
    """Queries (a: connections) in flight."""
    knot_backlog: int
    """Listen backlog and TFO queue forced on knotd (0: Knot's own)."""
    dnstfo_tfo_queue: int
    """--tfo-queue passed to dnstfo serve, if it has the option."""
    dnsperf: bool
    """Cross-check mode b with dnsperf."""
    json_path: Path | None
    """Where to write all results as JSON."""


@dataclass(slots=True)
class Run:
    """Everything owned by one benchmark run, released by :func:`cleanup`."""

    ns: str
    tmp: Path
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)


# ---- processes and the namespace -------------------------------------------------------


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def in_ns(run: Run, argv: list[str], cpu: str | None = None) -> list[str]:
    """The command line that runs ``argv`` in the namespace, optionally pinned to a core."""
    pin = ["taskset", "-c", cpu] if cpu is not None else []
    return ["ip", "netns", "exec", run.ns, *pin, *argv]


def sh(argv: list[str], timeout: float = 30.0, check: bool = True) -> str:
    """Runs a short command to completion and returns its stdout."""
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def make_namespace() -> str:
    """Creates the namespace with its loopback up and the sysctls of NS_SYSCTLS."""
    ns = f"dtfo-bench-{secrets.token_hex(3)}"
    sh(["ip", "netns", "add", ns])
    try:
        sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        for key, value in NS_SYSCTLS.items():
            path = Path("/proc/sys") / key.replace(".", "/")
            if not path.exists():
                log(f"sysctl {key} not in this kernel: skipped")
                continue
            sh(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"{key}={value}"])
    except BaseException:
        sh(["ip", "netns", "delete", ns], check=False)
        raise
    return ns


def stop(proc: subprocess.Popen[Any]) -> None:
    """Ends a process (group) we started: SIGTERM, then SIGKILL after STOP_TIMEOUT_S."""
    if proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            try:
                os.killpg(proc.pid, sig)  # its own group (start_new_session)
            except ProcessLookupError:
                proc.send_signal(sig)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
            return
        except subprocess.TimeoutExpired:
            continue


def spawn(run: Run, argv: list[str], log_path: Path, **kw: Any) -> subprocess.Popen[Any]:
    """Starts a long-lived process in its own process group, remembered for cleanup."""
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kw
        )
    run.procs.append(proc)
    return proc


def cleanup(run: Run) -> None:
    """Stops every process started and deletes the namespace and temp dir."""
    for proc in reversed(run.procs):
        stop(proc)
    sh(["ip", "netns", "delete", run.ns], check=False)
    shutil.rmtree(run.tmp, ignore_errors=True)


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) of a process and its descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return total


def netstat(run: Run) -> dict[str, int]:
    """The TcpExt counters of COUNTERS, as seen inside the namespace."""
    text = sh(in_ns(run, ["cat", "/proc/net/netstat"]))
    lines = text.splitlines()
    values: dict[str, int] = {}
    for head, vals in zip(lines[::2], lines[1::2], strict=False):
        names, nums = head.split()[1:], vals.split()[1:]
        values.update(zip(names, map(int, nums), strict=False))
    return {k: values.get(k, 0) for k in COUNTERS}


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after}


# ---- tools, build and inputs -----------------------------------------------------------


def ensure_packages() -> None:
    """Installs Debian's knot and dnsperf if their programs are missing."""
    need = [
        pkg
        for pkg, prog in (("knot", "knotd"), ("dnsperf", "dnsperf"))
        if shutil.which(prog) is None and not Path(f"/usr/sbin/{prog}").exists()
    ]
    if not need:
        return
    log(f"installing {' '.join(need)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=600, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *need],
        check=True,
        timeout=600,
        env=env,
    )


def build(tmp: Path) -> tuple[Path, Path]:
    """Compiles the load generator and the listen shim; returns their paths."""
    loadgen, shim = tmp / "tfo_load", tmp / "listen_shim.so"
    flags = ["-Wall", "-Wextra", "-O2"]
    sh(["gcc", *flags, "-o", str(loadgen), str(BENCH / "tfo_load.c")], timeout=120)
    sh(
        ["gcc", *flags, "-shared", "-fPIC", "-o", str(shim), str(BENCH / "listen_shim.c"), "-ldl"],
        timeout=120,
    )
    return loadgen, shim


def write_queries(tmp: Path) -> tuple[Path, Path]:
    """Writes the query mix as framed wire messages (tfo_load) and as text (dnsperf)."""
    wire, text = tmp / "queries.bin", tmp / "queries.txt"
    with open(wire, "wb") as f:
        for name, rtype in QUERY_MIX:
            msg = dns.message.make_query(name, dns.rdatatype.from_text(rtype)).to_wire()
            f.write(len(msg).to_bytes(2, "big") + msg)
    text.write_text("".join(f"{name} {rtype}\n" for name, rtype in QUERY_MIX))
    return wire, text


# ---- servers ---------------------------------------------------------------------------

KNOT_CONF = """\
server:
    rundir: "{tmp}/knot-run"
    listen: {addr}@{port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
    tcp-max-clients: 8192
    tcp-fastopen: on
database:
    storage: "{tmp}/knot-db"
log:
  - target: stderr
    any: warning
template:
  - id: default
    storage: "{zones}"
    file: "%s.zone"
    zonefile-sync: -1
    journal-content: none
zone:
  - domain: example.com
"""


def start_knot(run: Run, shim: Path, backlog: int) -> subprocess.Popen[Any]:
    conf = run.tmp / "knot.conf"
    for sub in ("knot-run", "knot-db"):
        (run.tmp / sub).mkdir(exist_ok=True)
    conf.write_text(KNOT_CONF.format(tmp=run.tmp, addr=ADDR, port=PORTS["knot"], zones=ZONES))
    env = dict(os.environ)
    if backlog > 0:
        env |= {"LD_PRELOAD": str(shim), "SHIM_BACKLOG": str(backlog)}
    knotd = shutil.which("knotd") or "/usr/sbin/knotd"
    argv = in_ns(run, [knotd, "-c", str(conf)], cpu=SERVER_CPU)
    return spawn(run, argv, run.tmp / "knot.log", env=env)


def start_dnstfo(run: Run, tfo_queue: int) -> subprocess.Popen[Any]:
    if not DNSTFO.exists():
        raise RuntimeError(f"{DNSTFO} not found: install the package (make test) first")
    help_text = subprocess.run(
        [str(DNSTFO), "serve", "--help"], capture_output=True, text=True, timeout=30
    )
    if help_text.returncode != 0:
        raise RuntimeError("`dnstfo serve` is not available yet: run with --servers knot")
    argv = [str(DNSTFO), "serve", "--zone", str(ZONES), "--listen", f"{ADDR}:{PORTS['dnstfo']}"]
    # Added only if this version has them: one worker (one core), the TFO queue, no query
    # log, and no per-connection query or lifetime cap (Knot has none; mode b keeps one
    # connection for the whole run).
    options = {
        "--workers": "1",
        "--tfo-queue": str(tfo_queue),
        "--query-log": "off",
        "--max-queries": "1000000000",
        "--lifetime": "86400",
    }
    for opt, value in options.items():
        if opt in help_text.stdout:
            argv += [opt, value]
    return spawn(run, in_ns(run, argv, cpu=SERVER_CPU), run.tmp / "dnstfo.log")


def wait_ready(run: Run, name: str, proc: subprocess.Popen[Any], loadgen: Path, wire: Path) -> None:
    """Waits until the server answers a query over TCP (bounded by READY_TIMEOUT_S)."""
    port = str(PORTS[name])
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        probe = subprocess.run(
            in_ns(run, [str(loadgen), "probe", ADDR, port, str(wire)]),
            capture_output=True,
            timeout=10,
        )
        if probe.returncode == 0:
            return
        time.sleep(0.1)
    out = (run.tmp / f"{name}.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"{name} did not answer on {ADDR}:{port} within {READY_TIMEOUT_S} s:\n{out}")


def listen_backlog(run: Run, port: int) -> int | None:
    """The listener's backlog (ss Send-Q column of the listening socket)."""
    out = sh(in_ns(run, ["ss", "-Hltn", f"sport = :{port}"]), check=False).split()
    return int(out[2]) if len(out) >= 3 else None


# ---- load ------------------------------------------------------------------------------


def run_loadgen(
    run: Run, loadgen: Path, wire: Path, mode: str, port: int, cfg: Config, server_pid: int
) -> dict[str, Any]:
    """Runs tfo_load on the client core; returns its JSON with TFO counter deltas and the
    server's CPU use over the measured window (sampled after the warm-up)."""
    argv = [str(loadgen), mode, ADDR, str(port), str(wire)]
    argv += [str(cfg.concurrency), str(cfg.duration), str(cfg.warmup)]
    before = netstat(run)
    proc = subprocess.Popen(
        in_ns(run, argv, cpu=CLIENT_CPU),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    run.procs.append(proc)
    time.sleep(cfg.warmup)
    cpu0, t0 = tree_cpu_s(server_pid), time.monotonic()
    try:
        stdout, stderr = proc.communicate(timeout=cfg.duration + 30)
    except subprocess.TimeoutExpired:
        stop(proc)
        raise RuntimeError(f"tfo_load {mode} did not finish in time") from None
    srv_cpu = (tree_cpu_s(server_pid) - cpu0) / (time.monotonic() - t0)
    counters = delta(netstat(run), before)
    if proc.returncode != 0:
        raise RuntimeError(f"tfo_load {mode} failed ({proc.returncode}): {stderr.strip()}")
    if stderr.strip():
        log(stderr.strip())
    out: dict[str, Any] = json.loads(stdout)
    out["tfo_counters"] = counters
    out["server_cpu_pct"] = 100 * srv_cpu
    # Answers per second of server CPU: less sensitive to other load on the server's core.
    out["qps_per_server_core"] = out["qps"] / srv_cpu if srv_cpu > 0 else None
    return out


DNSPERF_FIELDS = {
    "completed": r"Queries completed:\s+(\d+)",
    "lost": r"Queries lost:\s+(\d+)",
    "qps": r"Queries per second:\s+([\d.]+)",
    "avg_latency_s": r"Average Latency \(s\):\s+([\d.]+)",
}


def run_dnsperf(run: Run, text: Path, port: int, cfg: Config) -> dict[str, Any]:
    """dnsperf over one TCP connection with `concurrency` queries outstanding."""
    argv = ["dnsperf", "-m", "tcp", "-s", ADDR, "-p", str(port), "-d", str(text)]
    argv += ["-c", "1", "-T", "1", "-q", str(cfg.concurrency), "-l", str(cfg.duration)]
    out_path = run.tmp / "dnsperf.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            in_ns(run, argv, cpu=CLIENT_CPU),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    run.procs.append(proc)
    time.sleep(min(1.0, cfg.duration / 2))
    conns = sh(in_ns(run, ["ss", "-Htn", "state", "established", f"dport = :{port}"]))
    deadline = time.monotonic() + cfg.duration + 30
    while (pid_status := os.wait4(proc.pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError("dnsperf did not finish in time")
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(pid_status[1])
    rusage = pid_status[2]
    text_out = out_path.read_text(errors="replace")
    result: dict[str, Any] = {
        k: float(m.group(1)) if (m := re.search(rx, text_out)) else None
        for k, rx in DNSPERF_FIELDS.items()
    }
    result["connections_seen"] = len(conns.splitlines())
    result["cpu_s"] = rusage.ru_utime + rusage.ru_stime
    result["cpu_pct"] = 100.0 * result["cpu_s"] / cfg.duration
    if proc.returncode != 0 or result["qps"] is None:
        raise RuntimeError(f"dnsperf failed ({proc.returncode}):\n{text_out[-1500:]}")
    return result


def bench_server(
    run: Run, name: str, cfg: Config, loadgen: Path, shim: Path, wire: Path, text: Path
) -> dict[str, Any]:
    """Starts one server, measures every mode against it, stops it."""
    if name == "knot":
        proc = start_knot(run, shim, cfg.knot_backlog)
    else:
        proc = start_dnstfo(run, cfg.dnstfo_tfo_queue)
    try:
        wait_ready(run, name, proc, loadgen, wire)
        port = PORTS[name]
        result: dict[str, Any] = {"listen_backlog": listen_backlog(run, port)}
        for letter in cfg.modes:
            mode = MODES[letter]
            log(f"{name}: mode {letter} ({mode}), {cfg.warmup} s warm-up + {cfg.duration} s")
            res = run_loadgen(run, loadgen, wire, mode, port, cfg, proc.pid)
            if letter == "b" and cfg.dnsperf:
                log(f"{name}: mode b cross-check with dnsperf, {cfg.duration} s")
                res["dnsperf"] = run_dnsperf(run, text, port, cfg)
            result[letter] = res
        return result
    finally:
        stop(proc)


def bench_round(
    run: Run, cfg: Config, index: int, loadgen: Path, shim: Path, wire: Path, text: Path
) -> dict[str, Any]:
    """One round: every server, in alternating order from round to round."""
    order = cfg.servers if index % 2 == 0 else tuple(reversed(cfg.servers))
    if cfg.rounds > 1:
        log(f"round {index + 1}/{cfg.rounds}")
    servers: dict[str, Any] = {}
    for name in order:
        try:
            servers[name] = bench_server(run, name, cfg, loadgen, shim, wire, text)
        except RuntimeError as exc:  # one server failing leaves the others' figures
            log(f"{name}: {exc}")
            servers[name] = {"error": str(exc)}
    return servers


def best_of(rounds: list[dict[str, Any]], cfg: Config) -> dict[str, Any]:
    """Per server and mode, the round with the most answers/s (the least disturbed one)."""
    best: dict[str, Any] = {}
    for name in cfg.servers:
        ok = [r[name] for r in rounds if "error" not in r[name]]
        if not ok:
            best[name] = rounds[-1][name]
            continue
        best[name] = {"listen_backlog": ok[0]["listen_backlog"]}
        for letter in cfg.modes:
            best[name][letter] = max((r[letter] for r in ok), key=lambda m: m["qps"])
    return best


# ---- report ----------------------------------------------------------------------------


def in_flight(qps: float, mean_latency_s: float | None) -> float | None:
    """Little's law: mean number of queries outstanding."""
    return None if mean_latency_s is None else qps * mean_latency_s


TITLES = {
    "a": "(a) fresh TFO connection per query (query in the SYN)",
    "b": "(b) pipelined queries on one TCP connection",
}


def report_mode(results: dict[str, Any], letter: str, cfg: Config) -> list[str]:
    lines = [
        f"\n{TITLES[letter]}, {cfg.concurrency} in flight, {cfg.duration:g} s"
        + (f", best of {cfg.rounds} rounds" if cfg.rounds > 1 else ""),
        f"  {'server':8} {'q/s':>8} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'gen CPU':>7} "
        f"{'srv CPU':>7} {'q/s/core':>8} {'errors':>6} {'timeouts':>8}",
    ]
    ok = {n: r for n, r in results["servers"].items() if "error" not in r}
    for name, res in ok.items():
        r, lat = res[letter], res[letter]["latency_ms"]
        per_core = r["qps_per_server_core"] or 0.0
        lines.append(
            f"  {name:8} {r['qps']:8.0f} {lat['p50']:7.3f} {lat['p90']:7.3f} {lat['p99']:7.3f} "
            f"{r['cpu_pct']:6.0f}% {r['server_cpu_pct']:6.0f}% {per_core:8.0f} "
            f"{r['errors']:6d} {r['timeouts']:8d}"
        )
    for name, res in ok.items():
        r, c = res[letter], res[letter]["tfo_counters"]
        lines.append(
            f"  {name:8} rcodes {r['rcodes']}; listen backlog {res['listen_backlog']}; "
            f"TCPFastOpenActive +{c['TCPFastOpenActive']} Passive +{c['TCPFastOpenPassive']} "
            f"for {r['opened']} connections opened (ActiveFail +{c['TCPFastOpenActiveFail']}, "
            f"ListenOverflow +{c['TCPFastOpenListenOverflow']}, "
            f"ListenOverflows +{c['ListenOverflows']})"
        )
        if dp := r.get("dnsperf"):
            lines.append(
                f"  {name:8} dnsperf: {dp['qps']:.0f} q/s, mean {1000 * dp['avg_latency_s']:.3f} "
                f"ms, lost {dp['lost']:.0f}, {dp['connections_seen']} connection(s) seen, "
                f"in flight ~{in_flight(dp['qps'], dp['avg_latency_s']):.1f}, "
                f"gen CPU {dp['cpu_pct']:.0f}%"
            )
    for name, res in ok.items():
        if res[letter]["cpu_pct"] > GEN_BUSY_PCT:
            lines.append(f"  {name:8} note: the load generator was busy, it may limit q/s")
    if ratio := results["ratios"].get(letter):
        parts = [f"{k} {v:.2f}" for k, v in ratio.items()]
        lines.append(f"  ratio dnstfo/knot: {', '.join(parts)}")
    return lines


def report(results: dict[str, Any], cfg: Config) -> str:
    lines: list[str] = []
    for name, res in results["servers"].items():
        if "error" in res:
            lines.append(f"{name}: not measured: {res['error']}")
    for letter in cfg.modes:
        lines += report_mode(results, letter, cfg)
    return "\n".join(lines)


def ratios(servers: dict[str, Any], modes: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """dnstfo/Knot per mode: q/s (tfo_load), q/s per server core, and dnsperf q/s."""
    out: dict[str, dict[str, float]] = {}
    d_all, k_all = servers.get("dnstfo", {}), servers.get("knot", {})
    if "error" in d_all or "error" in k_all or not d_all or not k_all:
        return out
    for letter in modes:
        d, k = d_all[letter], k_all[letter]
        out[letter] = {"q/s": d["qps"] / k["qps"]}
        if d["qps_per_server_core"] and k["qps_per_server_core"]:
            out[letter]["q/s per core"] = d["qps_per_server_core"] / k["qps_per_server_core"]
        if "dnsperf" in d and "dnsperf" in k:
            out[letter]["dnsperf q/s"] = d["dnsperf"]["qps"] / k["dnsperf"]["qps"]
    return out


# ---- main ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per mode")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per mode")
    p.add_argument("--modes", default="a,b", help="a (TFO per query), b (pipelined)")
    p.add_argument("--servers", default="dnstfo,knot", help="dnstfo and/or knot")
    p.add_argument("--rounds", type=int, default=1, help="repeat, keep the best round")
    p.add_argument("--concurrency", type=int, default=64, help="queries in flight")
    p.add_argument("--knot-backlog", type=int, default=1024, help="0: Knot's own (10)")
    p.add_argument("--dnstfo-tfo-queue", type=int, default=1024)
    p.add_argument("--dnsperf", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    a = p.parse_args(argv)
    modes = tuple(m.strip() for m in a.modes.split(",") if m.strip())
    servers = tuple(s.strip() for s in a.servers.split(",") if s.strip())
    if not set(modes) <= MODES.keys() or not set(servers) <= PORTS.keys() or not modes:
        p.error("--modes takes a,b and --servers takes dnstfo,knot")
    return Config(
        duration=a.duration,
        warmup=a.warmup,
        modes=modes,
        servers=servers,
        rounds=max(1, a.rounds),
        concurrency=a.concurrency,
        knot_backlog=a.knot_backlog,
        dnstfo_tfo_queue=a.dnstfo_tfo_queue,
        dnsperf=a.dnsperf,
        json_path=a.json,
    )


def raise_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def bench_run() -> Iterator[Run]:
    """A namespace and temp dir, released on exit, exception, Ctrl-C or SIGTERM."""
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    tmp = Path(tempfile.mkdtemp(prefix="dtfo-bench-"))
    tmp.chmod(0o755)
    run = Run(ns="", tmp=tmp)
    try:
        run.ns = make_namespace()
        yield run
    finally:
        if run.ns:
            cleanup(run)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    if os.geteuid() != 0:
        print("serve_bench: needs root (network namespaces)", file=sys.stderr)
        return 2
    ensure_packages()
    results: dict[str, Any] = {"config": {k: str(v) for k, v in asdict(cfg).items()}}
    try:
        with bench_run() as run:
            loadgen, shim = build(run.tmp)
            wire, text = write_queries(run.tmp)
            log(f"namespace {run.ns}; servers on core {SERVER_CPU}, load on core {CLIENT_CPU}")
            rounds = [
                bench_round(run, cfg, i, loadgen, shim, wire, text) for i in range(cfg.rounds)
            ]
            results["rounds"] = rounds
            results["servers"] = best_of(rounds, cfg)
            results["ratios"] = ratios(results["servers"], cfg.modes)
    except KeyboardInterrupt:
        print("serve_bench: interrupted, cleaned up", file=sys.stderr)
        return 130
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        print(f"serve_bench: {exc}", file=sys.stderr)
        return 1
    print(report(results, cfg))
    if cfg.json_path:
        cfg.json_path.parent.mkdir(parents=True, exist_ok=True)
        cfg.json_path.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
