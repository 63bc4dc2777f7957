"""Start-up cost of ``dnstfo query``, against the floor of importing dnspython's query path.

Runs, many times each, the whole process ``dnstfo query example.com @127.0.0.1 -p PORT
+short +notfo`` against a tiny DNS server this script starts on loopback, and the floor
``python -c 'import dns.message, dns.query'`` in the same interpreter; prints the median
of each and their ratio (goal: at most 1.3). ``--importtime`` prints the slowest imports
of the query process (``python -X importtime``).

    .venv/bin/python bench/startup.py [--runs 30] [--importtime]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

log = logging.getLogger("bench.startup")


def _time(argv: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.monotonic_ns()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        out.append((time.monotonic_ns() - start) / 1e6)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--importtime", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from tests.client import tinyserver

    with tinyserver.running(tinyserver.make_listener(tfo=False)) as (host, port):
        script = str(Path(sys.executable).parent / "dnstfo")
        query = [sys.executable, script, "query", "example.com", f"@{host}",
                 "-p", str(port), "+short", "+notfo"]  # fmt: skip
        if args.importtime:
            r = subprocess.run([sys.executable, "-X", "importtime", *query[1:]],
                               capture_output=True, text=True, check=True)  # fmt: skip
            rows = [line.split("|") for line in r.stderr.splitlines() if "|" in line][1:]
            rows.sort(key=lambda row: -int(row[1]))
            for row in rows[:15]:
                log.info("%8s us cumulative  %s", row[1].strip(), row[2].rstrip())
        floor = [sys.executable, "-c", "import dns.message, dns.query"]
        _time(query, 3)  # warm the page cache
        _time(floor, 3)
        q = _time(query, args.runs)
        f = _time(floor, args.runs)
    mq, mf = statistics.median(q), statistics.median(f)
    log.info("dnstfo query (whole process, %d runs): median %.1f ms", args.runs, mq)
    log.info("floor import dns.message, dns.query:   median %.1f ms", mf)
    log.info("ratio %.2f (goal <= 1.3)", mq / mf)


if __name__ == "__main__":
    main()
