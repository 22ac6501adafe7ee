"""Fan-out to 1,000 subscribers through Redis vs the in-process backend, in one run.

    python benchmarks/redis_fanout.py [--subscribers 1000] [--duration 4]

Three servers of the same `benchmarks.apps:broadcast` app, each pinned to core 0 (with the
redis-server it uses), the picows load generator on core 1: the embedded memory backend in one
process; `--workers 2 --backend redis://` (the subscribers split over two worker processes by
the kernel, every message crossing Redis); and one process over Redis. Prints deliveries/s and
publish-to-delivery p50/p99, saturated (4 messages in flight) and paced (20 msg/s).
Needs Debian's `redis-server` and `pip install -e '.[bench,redis]'`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def on_core(core: str, args: argparse.Namespace) -> list[str]:
    """The ``taskset`` prefix pinning a process to ``core``; none with ``--no-pin``."""
    return ["taskset", "-c", core] if getattr(args, "pin", True) else []


def measure(label: str, extra: list[str], args: argparse.Namespace) -> dict[str, object]:
    port = free_port()
    server = subprocess.Popen(
        [
            *on_core("0", args),
            PYTHON,
            "-m",
            "hornbeam_trio",
            "benchmarks.apps:broadcast",
            "--bind",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            *extra,
        ],
        cwd=ROOT,
    )
    try:
        wait_port(port)
        out = subprocess.run(
            [
                *on_core("1", args),
                PYTHON,
                "benchmarks/loadgen.py",
                "broadcast",
                "--url",
                f"ws://127.0.0.1:{port}/",
                "--conns",
                str(args.subscribers),
                "--duration",
                str(args.duration),
                "--window",
                "4",
                "--rate",
                "20",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
        result["label"] = label
        return result
    finally:
        server.terminate()
        server.wait(timeout=30)


@contextlib.contextmanager
def redis_url(args: argparse.Namespace) -> Iterator[str]:
    """A redis-server on a free port (on core 0 unless ``--no-pin``), nothing saved."""
    if shutil.which("redis-server") is None:
        sys.exit("redis-server not found: apt-get install -y redis-server")
    redis_port = free_port()
    redis = subprocess.Popen(
        [
            *on_core("0", args),
            "redis-server",
            "--port",
            str(redis_port),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_port(redis_port)
        yield f"redis://127.0.0.1:{redis_port}/0"
    finally:
        redis.terminate()
        redis.wait(timeout=10)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="no taskset (a smoke run on a shared machine; the numbers mean little)",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args()
    with redis_url(args) as url:
        rows = [
            measure("memory backend, 1 process", [], args),
            measure("Redis, --workers 2", ["--workers", "2", "--backend", url], args),
            measure("Redis, 1 process", ["--backend", url], args),
        ]
    where = "server + redis on core 0, load on core 1" if args.pin else "not pinned"
    print(f"\nFan-out to {args.subscribers} subscribers ({where})\n")
    print_table(rows)


def print_table(rows: list[dict[str, object]]) -> None:
    base = rows[0]["max"]["deliveries_per_s"]  # type: ignore[index]
    print(
        "| setup | deliveries/s | ratio | p50 ms | p99 ms | p50 ms @20 msg/s | p99 ms @20 msg/s "
        "| lost | loadgen CPU |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        saturated, paced = row["max"], row["paced"]  # type: ignore[index]
        print(
            f"| {row['label']} | {saturated['deliveries_per_s']:,.0f} "
            f"| {saturated['deliveries_per_s'] / base:.2f} | {saturated['p50_ms']:.1f} "
            f"| {saturated['p99_ms']:.1f} | {paced['p50_ms']:.2f} | {paced['p99_ms']:.2f} "
            f"| {row['lost_deliveries']} | {saturated['loadgen_cpu']:.0%} |"
        )


if __name__ == "__main__":
    main()
