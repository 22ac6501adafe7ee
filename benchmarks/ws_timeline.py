"""Where a lone WebSocket echo's round trip goes: a kernel trace of server and client.

run.py's ``ws1`` row (one connection, 16 B ping-pong) is latency, not throughput:
neither core is busy.  Instruction counts and ``strace -c`` (``ws_syscalls.py``) say
what each side does per message, not how long the round trip waits on the kernel.
This tool runs each server as run.py does (server on core 0, picows load generator on
core 1), switches on the kernel's own tracepoints (syscalls and scheduler wakeups, of
the two processes only) for ``--seconds`` in the middle of a ``ws-echo`` run, and
splits every round trip at the two ``send`` calls:

- *server leg*: from the client's ``send`` to the server's ``send`` of the echo;
  of it, the *wakeup* (the kernel marking the sleeping server runnable until it runs:
  on a VM, an idle vCPU's exit and re-entry), when the server had gone to sleep;
- *client leg*: from the server's ``send`` to the client's next ``send``.

    sudo .venv/bin/python benchmarks/ws_timeline.py       # uvicorn, ours, ours without polling
    sudo .venv/bin/python benchmarks/ws_timeline.py --servers uvicorn,hornbeam_trio --seconds 2

Needs root and tracefs (mounted at /sys/kernel/tracing if it is not).  Timestamps are
the kernel's, in microseconds (the trace's resolution); tracing adds ~1 us per event
to both sides alike, so compare servers within one run, not with run.py's figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.run import (
    HOST,
    RESULTS,
    SERVERS,
    LoadgenRun,
    Server,
    ServerProcess,
    ws_url,
)

TRACEFS = Path("/sys/kernel/tracing")
EVENTS = (
    "raw_syscalls:sys_enter",
    "raw_syscalls:sys_exit",
    "sched:sched_switch",
    "sched:sched_waking",
)
SEND = {1: "write", 20: "writev", 44: "sendto", 46: "sendmsg"}
SYSCALL_NAMES = {
    0: "read",
    1: "write",
    20: "writev",
    39: "getpid",
    44: "sendto",
    45: "recvfrom",
    46: "sendmsg",
    47: "recvmsg",
    232: "epoll_wait",
    233: "epoll_ctl",
    281: "epoll_pwait",
    426: "io_uring_enter",
}

_OURS = SERVERS["hornbeam_trio"]
VARIANTS: dict[str, Server] = {
    **SERVERS,
    "hornbeam_trio_nopoll": Server(
        "hornbeam_trio_nopoll",
        lambda app, port: [*_OURS.command(app, port), "--busy-poll-us", "0"],
    ),
}
DEFAULT_SERVERS = "uvicorn,hornbeam_trio,hornbeam_trio_nopoll"

LINE = re.compile(r"^\s*.+?-(\d+)\s+\[\d+\]\s+\S+\s+([\d.]+): (\w+): (.*)$")
PID = re.compile(r"\bpid=(\d+)")
NEXT_PID = re.compile(r"next_pid=(\d+)")
PREV = re.compile(r"prev_pid=(\d+) prev_prio=\d+ prev_state=(\S+)")


@dataclasses.dataclass
class Timeline:
    round_trips: int = 0
    rt: list[float] = dataclasses.field(default_factory=list)
    server_leg: list[float] = dataclasses.field(default_factory=list)
    client_leg: list[float] = dataclasses.field(default_factory=list)
    wakeups: list[float] = dataclasses.field(default_factory=list)
    """Server wakeup latencies, one per round trip on which the server had slept."""
    server_syscalls: Counter[str] = dataclasses.field(default_factory=Counter)


def _write(name: str, *lines: str) -> None:
    # tracefs refuses Python's append mode (it seeks), and set_event takes one event
    # per write(2): plain writes, one per line, on one truncating open.
    fd = os.open(TRACEFS / name, os.O_WRONLY | os.O_TRUNC)
    try:
        for line in lines:
            os.write(fd, line.encode())
    finally:
        os.close(fd)


def ensure_tracefs() -> None:
    if not (TRACEFS / "trace").exists():
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], check=True)


def trace(pids: list[int], seconds: float) -> str:
    _write("tracing_on", "0")
    _write("trace", "")
    _write("trace_clock", "mono")  # one clock for both cores
    _write("buffer_size_kb", "65536")
    _write("set_event_pid", " ".join(map(str, pids)))
    _write("set_event", *EVENTS)
    try:
        _write("tracing_on", "1")
        time.sleep(seconds)
        _write("tracing_on", "0")
        return (TRACEFS / "trace").read_text()
    finally:
        _write("set_event", "")
        _write("set_event_pid", "")


def events(text: str) -> Iterator[tuple[int, float, str, str]]:
    for line in text.splitlines():
        m = LINE.match(line)
        if m is not None:
            yield int(m[1]), float(m[2]) * 1e6, m[3], m[4]


def timeline(text: str, server: int, client: int) -> Timeline:
    """Round trips split at the two sends (see the module docstring)."""
    out = Timeline()
    client_sent: float | None = None
    server_sent: float | None = None
    asleep = False  # the server went to sleep since its last send
    waking: float | None = None
    woke: float | None = None
    for pid, ts, kind, rest in events(text):
        if kind == "sys_enter":
            nr = int(rest.split()[1])
            if pid == server:
                out.server_syscalls[SYSCALL_NAMES.get(nr, f"#{nr}")] += 1
            if nr not in SEND:
                continue
            if pid == client:
                if server_sent is not None and client_sent is not None:
                    out.client_leg.append(ts - server_sent)
                    out.rt.append(ts - client_sent)
                client_sent, server_sent = ts, None
            elif pid == server and client_sent is not None and server_sent is None:
                out.server_leg.append(ts - client_sent)
                if asleep and waking is not None and woke is not None:
                    out.wakeups.append(woke - waking)
                server_sent, asleep, waking, woke = ts, False, None, None
                out.round_trips += 1
        elif kind == "sched_waking":
            m = PID.search(rest)
            if m is not None and int(m[1]) == server and asleep:
                waking = ts
        elif kind == "sched_switch":
            prev = PREV.search(rest)
            if prev is not None and int(prev[1]) == server and prev[2].startswith(("S", "D")):
                asleep = True
            nxt = NEXT_PID.search(rest)
            if nxt is not None and int(nxt[1]) == server and waking is not None:
                woke = ts
    return out


def measure(name: str, seconds: float) -> tuple[Timeline, float]:
    server = ServerProcess(VARIANTS[name], "echo", RESULTS / "timeline" / f"{name}.log")
    try:
        server.wait_accepting()
        run = LoadgenRun(
            [
                *("ws-echo", "--url", ws_url(server), "--conns", "1", "--size", "16"),
                *("--kind", "text", "--duration", str(seconds + 3)),
            ],
            seconds + 60,
        )
        time.sleep(1.5)  # handshake and warm-up
        # taskset execs the server, so its pid is the Popen's (the same for the loadgen)
        text = trace([server.pid, run.proc.pid], seconds)
        result = {}
        for msg in run.lines():
            result = msg
        run.finish()
    finally:
        server.stop()
    return timeline(text, server.pid, run.proc.pid), float(result.get("round_trips_per_s", 0))


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.0f}" if values else "-"


def report(results: dict[str, tuple[Timeline, float]], seconds: float) -> None:
    names = list(results)
    print(f"\nA lone WebSocket echo (16 B), {seconds:g} s traced per server; us, medians\n")
    print("| per round trip | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")

    def row(label: str, cells: list[str]) -> None:
        print(f"| {label} | " + " | ".join(cells) + " |")

    tls = [results[n][0] for n in names]
    row("round trips/s (the run, traced)", [f"{results[n][1]:,.0f}" for n in names])
    row("round trip", [_median(t.rt) for t in tls])
    row("server leg: client's send to the echo's send", [_median(t.server_leg) for t in tls])
    row("client leg: echo's send to the next send", [_median(t.client_leg) for t in tls])
    row(
        "round trips on which the server slept",
        [f"{100 * len(t.wakeups) / t.round_trips:.0f} %" if t.round_trips else "-" for t in tls],
    )
    row("server wakeup, when it slept", [_median(t.wakeups) for t in tls])
    kinds = sorted({k for t in tls for k in t.server_syscalls})
    for kind in kinds:
        row(
            f"server `{kind}` per round trip",
            [
                f"{t.server_syscalls[kind] / t.round_trips:.2f}" if t.round_trips else "-"
                for t in tls
            ],
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default=DEFAULT_SERVERS, help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--seconds", type=float, default=1.0, help="traced seconds per server")
    opts = parser.parse_args()
    names = [n.strip() for n in opts.servers.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"--servers: unknown {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    if os.geteuid() != 0:
        sys.exit("needs root: the kernel's tracepoints (tracefs)")
    ensure_tracefs()
    print(f"ws_timeline: server on core 0, load on core 1, {HOST}")
    results = {name: measure(name, opts.seconds) for name in names}
    report(results, opts.seconds)


if __name__ == "__main__":
    main()
