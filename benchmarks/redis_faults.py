"""Redis outages under two server processes: what was delivered, lost and logged.

    python benchmarks/redis_faults.py [--outages 1 5 12] [--receivers 3] [--rate 100]

For each outage length, the scenario of tests/test_redis_outage.py
(tests/redis_outage_scenario.py): a real redis-server, two server processes over it, in
one room ``receivers`` WebSocket clients on each and a publisher on the first sending
sequence-numbered messages at ``rate``/s; Redis is killed (SIGKILL), restarted empty on
the same port after the outage, and the publisher goes on for a second.  Prints, per
outage and per process, the publishes sent, what each client received (and missed,
and received twice), and the outage lines each process logged.  Bounded: each outage
takes about its length plus 5 s, and at most ``--deliver-timeout`` waiting for the last
message.  ``--burst 100500`` also publishes that many at once as Redis goes: past the
queue's 100,000, what is dropped must equal what the clients missed.  Needs Debian's
`redis-server` and `pip install -e '.[test,redis]'`; pins no core.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from redis_outage_scenario import OutageReport, run_outage  # noqa: E402

OUTAGE_LINES = ("unreachable", "reachable again", "already wait for Redis", "did not subscribe")


def describe(report: OutageReport) -> list[str]:
    lines = [f"outage {report.outage:g} s: {report.sent} publishes sent"]
    for process in (0, 1):
        clients = [client for client in report.clients if client.process == process]
        role = "publishing" if process == 0 else "subscribing only"
        received = [len(set(client.received)) for client in clients]
        missed = [client.missing(report.sent) for client in clients]
        twice = [client.duplicates() for client in clients]
        ordered = all(client.in_order() for client in clients)
        lines.append(
            f"  process {process + 1} ({role}): received {received}, missed {missed}, "
            f"twice {twice}, in order: {ordered}"
        )
        for text in OUTAGE_LINES:
            for line in report.lines(process, text):
                lines.append(f"    log: {line.split('  ', 1)[-1].strip()}")
    return lines


async def main(args: argparse.Namespace) -> None:
    total_lost = 0
    for outage in args.outages:
        with contextlib.redirect_stdout(io.StringIO()):  # the servers' whole logs
            report = await run_outage(
                outage,
                receivers=args.receivers,
                rate=args.rate,
                deliver_timeout=args.deliver_timeout,
                burst=args.burst,
                server_flags=("--subscriber-queue-size", str(max(1024, args.burst + 10_000))),
            )
        total_lost += report.lost()
        print("\n".join(describe(report)), flush=True)
    print(f"missed in all: {total_lost} deliveries")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outages", type=float, nargs="+", default=[1.0, 5.0, 12.0])
    parser.add_argument("--receivers", type=int, default=3)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--deliver-timeout", type=float, default=20.0)
    parser.add_argument(
        "--burst", type=int, default=0, help="publishes queued at once as Redis goes"
    )
    trio.run(main, parser.parse_args())
