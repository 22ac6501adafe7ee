"""Syscalls, event-loop wakeups and task steps per WebSocket echo on ONE connection.

A dev tool for the latency of a lone connection (run.py's ``ws1`` row), which
instruction counts miss: a wakeup costs a syscall and a context switch, not just
instructions.  The server runs as run.py starts it; the client (this process)
does the handshake, ``--warmup`` echoes, then ``strace -c -f`` is attached to the
server for ``--messages`` ping-pong echoes of a 16-byte text frame, and detached.

For hornbeam_trio the server also counts Trio task steps (an Instrument's
``before_task_step``, read before and after the measured echoes through SIGUSR1);
asyncio/uvloop has no such hook, so uvicorn's column shows ``-`` there.

    .venv/bin/python benchmarks/ws_syscalls.py                 # both servers, 5000 echoes
    .venv/bin/python benchmarks/ws_syscalls.py --servers hornbeam_trio --messages 2000

Needs ``strace`` (``apt-get install -y strace``) and ptrace rights over a child.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.http_instructions import (
    WS_ECHO,
    WS_FRAME,
    WS_HANDSHAKE,
    connect_all,
    free_port,
    read_exactly,
    server_command,
    wait_accepting,
)

ROOT = Path(__file__).resolve().parent.parent

# Run inside the hornbeam_trio server: trio.run gets an Instrument counting task steps;
# SIGUSR1 writes the count so far to $TASK_STEPS_FILE.
_COUNTING_SERVER = """
import os, runpy, signal, sys, trio
class Steps(trio.abc.Instrument):
    n = 0
    def before_task_step(self, task):
        Steps.n += 1
def dump(*_):
    with open(os.environ["TASK_STEPS_FILE"], "w") as f:
        f.write(str(Steps.n))
signal.signal(signal.SIGUSR1, dump)
_run = trio.run
def run(*args, **kwargs):
    kwargs["instruments"] = [*kwargs.get("instruments", ()), Steps()]
    return _run(*args, **kwargs)
trio.run = run
sys.argv = ["hornbeam_trio", *sys.argv[1:]]
runpy.run_module("hornbeam_trio", run_name="__main__", alter_sys=True)
"""


def read_steps(pid: int, path: Path) -> int:
    path.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            text = path.read_text()
        except FileNotFoundError:
            text = ""
        if text:
            return int(text)
        time.sleep(0.01)
    raise RuntimeError("the server did not report its task steps")


def parse_strace(text: str) -> dict[str, int]:
    """strace -c's table: syscall -> calls."""
    calls: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 5 and re.fullmatch(r"[\d.]+", fields[0]) and fields[-1] != "total":
            calls[fields[-1]] = int(fields[3])
    return calls


def measure(server: str, messages: int, warmup: int) -> tuple[dict[str, int], float | None]:
    port = free_port()
    argv = server_command(server, "benchmarks.apps:echo", port)
    steps_file = Path(tempfile.mkstemp(prefix="task-steps-")[1])
    if server == "hornbeam_trio":
        argv = [argv[0], "-c", _COUNTING_SERVER, *argv[3:]]
    env = {**os.environ, "TASK_STEPS_FILE": str(steps_file)}
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    out = Path(tempfile.mkstemp(prefix="strace-")[1])
    try:
        wait_accepting(port, proc)
        (sock,) = connect_all(port, 1, WS_HANDSHAKE)
        buf = bytearray()
        for _ in range(warmup):
            sock.sendall(WS_FRAME)
            read_exactly(sock, buf, WS_ECHO)
        tracer = subprocess.Popen(
            ["strace", "-c", "-f", "-p", str(proc.pid), "-o", str(out)],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert tracer.stderr is not None
        for line in tracer.stderr:  # one "attached" line per thread of the server
            if "attached" in line:
                break
        time.sleep(0.5)
        before = read_steps(proc.pid, steps_file) if server == "hornbeam_trio" else None
        for _ in range(messages):
            sock.sendall(WS_FRAME)
            read_exactly(sock, buf, WS_ECHO)
        after = read_steps(proc.pid, steps_file) if server == "hornbeam_trio" else None
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=30)
        sock.close()
        calls = parse_strace(out.read_text())
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.unlink(missing_ok=True)
        steps_file.unlink(missing_ok=True)
    steps = None if before is None or after is None else (after - before) / messages
    # The SIGUSR1 reads are the server's too: 2 x (rt_sigreturn + the write of the file...).
    return calls, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="hornbeam_trio,uvicorn")
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=500)
    args = parser.parse_args()
    if shutil.which("strace") is None:
        sys.exit("strace is missing: apt-get install -y strace")
    try:
        os.sched_setaffinity(0, {1})
    except (AttributeError, OSError):
        pass
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    results = {s: measure(s, args.messages, args.warmup) for s in servers}
    names = sorted({name for calls, _ in results.values() for name in calls})
    print(f"\nper echo ({args.messages} echoes of 16 B on one connection)\n")
    print("| | " + " | ".join(servers) + " |")
    print("|---|" + "---|" * len(servers))
    for name in names:
        cells = [f"{results[s][0].get(name, 0) / args.messages:.2f}" for s in servers]
        if any(c != "0.00" for c in cells):
            print(f"| {name} | " + " | ".join(cells) + " |")
    totals = [f"{sum(results[s][0].values()) / args.messages:.2f}" for s in servers]
    print("| **all syscalls** | " + " | ".join(totals) + " |")
    steps = [f"{results[s][1]:.2f}" if results[s][1] is not None else "-" for s in servers]
    print("| Trio task steps | " + " | ".join(steps) + " |")


if __name__ == "__main__":
    socket.setdefaulttimeout(60)
    main()
