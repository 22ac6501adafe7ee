"""Fan-out to 1,000 subscribers with topic history on vs off, memory and Redis.

    python benchmarks/history_fanout.py [--subscribers 1000] [--duration 4] [--no-pin]

The `benchmarks.apps:broadcast` app, measured as `redis_fanout.py` does (server and
redis-server pinned to core 0, the picows load generator on core 1, saturated with 4
messages in flight, then paced at 20 msg/s), four times: the memory backend and one
process over Redis, each without `--history` and with `--history 'bench=100,300s'`
(the benchmark's topic keeps its last 100 messages: memory, a ring buffer per topic;
Redis, one Lua script per publish taking the offset and `XADD`ing to a stream).  The
subscribers are plain `subscribe()`s, so the rows differ only in what keeping history
costs the publish path.  `--no-pin` runs without taskset, for a smoke run on a shared
machine.  Needs Debian's `redis-server` and `pip install -e '.[bench,redis]'`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script

from benchmarks.redis_fanout import add_arguments, measure, redis_url

HISTORY = ["--history", "bench=100,300s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args()
    with redis_url(args) as url:
        pairs: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
            (
                "memory backend",
                measure("memory, history off", [], args),
                measure("memory, history on", HISTORY, args),
            ),
            (
                "Redis, 1 process",
                measure("Redis, history off", ["--backend", url], args),
                measure("Redis, history on", ["--backend", url, *HISTORY], args),
            ),
        ]
    where = "server + redis on core 0, load on core 1" if args.pin else "not pinned"
    print(f"\nFan-out to {args.subscribers} subscribers, topic history off / on ({where})\n")
    print(
        "| setup | history | deliveries/s | on / off | p50 ms | p99 ms | p50 ms @20 msg/s "
        "| p99 ms @20 msg/s | lost |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for setup, off, on in pairs:
        base = off["max"]["deliveries_per_s"]
        for state, row in (("off", off), ("on", on)):
            saturated, paced = row["max"], row["paced"]
            print(
                f"| {setup} | {state} | {saturated['deliveries_per_s']:,.0f} "
                f"| {saturated['deliveries_per_s'] / base:.2f} | {saturated['p50_ms']:.1f} "
                f"| {saturated['p99_ms']:.1f} | {paced['p50_ms']:.2f} | {paced['p99_ms']:.2f} "
                f"| {row['lost_deliveries']} |"
            )


if __name__ == "__main__":
    main()
