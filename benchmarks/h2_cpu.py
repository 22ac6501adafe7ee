"""Server CPU time per request, HTTP/2 (h2c) against our own HTTP/1.1, same hello app.

    python benchmarks/h2_cpu.py [--requests 200000] [--repeat 1] [--app echo]

Pins no core, so it runs on a shared machine: what it measures is the server
process's own CPU (utime + stime from /proc, its workers included) over a fixed
number of requests, which the neighbours' load changes far less than req/s.

* HTTP/2: ``h2load -n N -c10 -m10`` (h2c by prior knowledge, 100 streams in flight);
* HTTP/1.1: ``h2load --h1 -n N -c100 -m1`` (100 keep-alive connections in flight).

The ratio HTTP/1.1 us/request over HTTP/2 us/request is what a CPU-bound server's
throughput ratio would be (issue 15 wants HTTP/2 >= 0.8x HTTP/1.1).  Each cell gets
a fresh server process; the median of ``--repeat`` runs is shown.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchmarks.run as bench_run
from benchmarks.run import HOST, RESULTS, SERVERS, Failure, cpu_seconds, running

CLIENTS = {
    "HTTP/2 (h2c, -c10 -m10)": ["-c10", "-m10"],
    "HTTP/1.1 (--h1, -c100 -m1)": ["--h1", "-c100", "-m1"],
}


def drive(port: int, flags: list[str], requests: int) -> None:
    argv = ["h2load", "-n", str(requests), *flags, f"http://{HOST}:{port}/"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    out = done.stdout
    counts = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    if done.returncode or not counts or counts.group(1) != counts.group(2):
        raise Failure(f"h2load: {(out + done.stderr).strip()[-400:]}")
    if int(counts.group(2)) != requests:
        raise Failure(f"h2load: {counts.group(2)} of {requests} succeeded")


def us_per_request(app: str, flags: list[str], requests: int) -> float:
    log = RESULTS / "h2-cpu-logs" / "hornbeam_trio.log"
    with running(SERVERS["hornbeam_trio"], app, log) as proc:
        drive(proc.port, flags, min(requests, 2000))  # warm up: imports, caches
        before = cpu_seconds(proc.pid)
        drive(proc.port, flags, requests)
        spent = cpu_seconds(proc.pid) - before
        proc.alive()
    return spent / requests * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell (median)")
    parser.add_argument("--app", default="echo", help="an app of benchmarks/apps.py")
    opts = parser.parse_args()
    if shutil.which("h2load") is None:
        print("h2load is not installed (apt-get install nghttp2-client)", file=sys.stderr)
        return 2
    # run.py pins the server through taskset: give it every core (no pinning).
    bench_run.SERVER_CORE = f"0-{(os.cpu_count() or 1) - 1}"
    medians: dict[str, float] = {}
    for label, flags in CLIENTS.items():
        runs = [us_per_request(opts.app, flags, opts.requests) for _ in range(opts.repeat)]
        medians[label] = statistics.median(runs)
        shown = ", ".join(f"{run:.1f}" for run in runs)
        print(f"{label}: {medians[label]:.1f} us/request ({shown})", flush=True)
    h2, h1 = medians.values()
    print(f"HTTP/2 throughput over HTTP/1.1 (CPU-bound): {h1 / h2:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
