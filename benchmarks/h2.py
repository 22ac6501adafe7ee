"""HTTP/2 throughput: ``h2load -c10 -m10`` against hornbeam_trio and Hypercorn, and
hornbeam_trio's own HTTP/1.1 at the same 100 requests in flight (wrk -c100).

    python benchmarks/h2.py [--duration 10] [--repeat 3] [--no-pin]

The same hello app (``benchmarks.apps:echo``, ``GET /`` answers "hello") on each
server, h2c by prior knowledge for HTTP/2.  Each cell gets a fresh server process
pinned to core 0 with the client on core 1 (as ``run.py``); ``--no-pin`` pins nothing
(a smoke run on a shared machine, its figures meaningless).  The issue's targets:
hornbeam_trio HTTP/2 >= 3x Hypercorn's trio worker, and >= 0.8x its own HTTP/1.1.
Needs ``h2load`` (``apt-get install nghttp2-client``), ``wrk`` and the ``bench`` extra.
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
from benchmarks.run import (
    HOST,
    RESULTS,
    SERVERS,
    Failure,
    Server,
    _py,
    running,
)

APP = "echo"
IN_FLIGHT = 100
"""Requests in flight: 10 connections x 10 streams (h2load), 100 connections (wrk)."""
HYPERCORN_ASYNCIO = Server(
    "hypercorn-asyncio",
    lambda app, port: _py(
        "-m",
        "hypercorn",
        "-k",
        "asyncio",
        "--bind",
        f"{HOST}:{port}",
        "--log-level",
        "warning",
        f"benchmarks.apps:{app}",
    ),
)
CELLS = (
    # (label, server, client)
    ("hornbeam_trio HTTP/2 (h2c)", SERVERS["hornbeam_trio"], "h2load"),
    ("hypercorn trio HTTP/2 (h2c)", SERVERS["hypercorn"], "h2load"),
    ("hypercorn asyncio HTTP/2 (h2c)", HYPERCORN_ASYNCIO, "h2load"),
    ("hornbeam_trio HTTP/1.1", SERVERS["hornbeam_trio"], "wrk"),
)


def _pinned(argv: list[str]) -> list[str]:
    return ["taskset", "-c", bench_run.CLIENT_CORE, *argv]


def run_h2load(port: int, seconds: int) -> float:
    argv = ["h2load", "-c10", "-m10", "-D", str(seconds), "--warm-up-time", "1"]
    done = subprocess.run(
        _pinned([*argv, f"http://{HOST}:{port}/"]),
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
    out = done.stdout
    rps = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", out)
    requests = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    if done.returncode or not rps or not requests:
        raise Failure(f"h2load: {(out + done.stderr).strip()[-300:]}")
    failed = int(requests.group(1)) - int(requests.group(2))
    # Up to the 100 requests in flight when -D ends may count as failed (Hypercorn's
    # asyncio worker shows this); more is a server that fails under load.
    if failed > IN_FLIGHT or "Application protocol: h2c" not in out:
        raise Failure(f"h2load: {failed} requests failed, or not h2c: {out.strip()[-300:]}")
    return float(rps.group(1))


def run_wrk(port: int, seconds: int) -> float:
    argv = ["wrk", "-t1", "-c100", f"-d{seconds}s", f"http://{HOST}:{port}/"]
    done = subprocess.run(
        _pinned(argv), capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    rps = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    if done.returncode or not rps or "Non-2xx" in done.stdout:
        raise Failure(f"wrk: {(done.stdout + done.stderr).strip()[-300:]}")
    return float(rps.group(1))


def measure(server: Server, client: str, opts: argparse.Namespace) -> float:
    log = RESULTS / "h2-logs" / f"{server.name}-{client}.log"
    with running(server, APP, log) as proc:
        if client == "h2load":
            return run_h2load(proc.port, opts.duration)
        return run_wrk(proc.port, opts.duration)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per cell")
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell (median)")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="pin no core")
    opts = parser.parse_args()
    if not opts.pin:  # run.py's helpers pin through taskset: give both sides every core
        bench_run.SERVER_CORE = bench_run.CLIENT_CORE = f"0-{(os.cpu_count() or 1) - 1}"
    for tool in ("h2load", "wrk", "taskset"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 2
    results: dict[str, list[float]] = {label: [] for label, _, _ in CELLS}
    failures: dict[str, str] = {}
    for _ in range(opts.repeat):
        for label, server, client in CELLS:  # the cells of one round minutes apart at most
            if label in failures:
                continue
            try:
                results[label].append(measure(server, client, opts))
            except Failure as exc:
                failures[label] = str(exc)
    medians = {label: statistics.median(v) for label, v in results.items() if v}
    ours = medians.get(CELLS[0][0])
    print("| server | req/s | hornbeam_trio HTTP/2 over it |")
    print("|---|---|---|")
    for label, _, client in CELLS:
        if label not in medians:
            print(f"| {label} ({client}) | fail | |")
            continue
        ratio = f"{ours / medians[label]:.2f}x" if ours else ""
        print(f"| {label} ({client}) | {medians[label]:,.0f} | {ratio} |")
    for label, reason in failures.items():
        print(f"{label}: {reason}")
    if not opts.pin:
        print("(--no-pin: server and client share the cores; figures are not comparable)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
