"""Benchmark hornbeam_trio against its peers, measured in one run, as ratios to uvicorn.

    python benchmarks/run.py [--duration 5] [--only ws1,http,...] [--servers ...] [--idle 1000]

Every (workload, server) pair gets a fresh server process pinned to core 0 on a free
loopback port; the load generator (benchmarks/loadgen.py, or wrk for HTTP) runs
pinned to core 1. Workloads are the outer loop, so the servers of one row are
measured minutes apart, not a whole run apart. A server that fails a workload
gets "fail" in its cell and the reason below the table; the run goes on.
Results go to benchmarks/results/run-<time>.json, server logs next to it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"
LOADGEN = BENCH / "loadgen.py"
SERVER_CORE = "0"
CLIENT_CORE = "1"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Failure(Exception):
    """A server failed a workload; the message goes into the report."""


# ----------------------------------------------------------------------------- servers


@dataclasses.dataclass(frozen=True)
class Server:
    name: str
    command: Callable[[str, int], list[str]]  # (app or handler name, port) -> argv
    http: bool = True  # False: WebSocket rows only


UVICORN_FLAGS = (
    "--loop",
    "uvloop",
    "--http",
    "httptools",
    "--ws",
    "websockets-sansio",
    "--log-level",
    "warning",
    "--no-access-log",
)
"""uvicorn at its fastest, as every benchmark here runs it: the baseline of the ratios."""


def _py(*args: str) -> list[str]:
    return [sys.executable, *args]


SERVERS: dict[str, Server] = {
    s.name: s
    for s in (
        Server(
            "uvicorn",
            lambda app, port: _py(
                "-m", "uvicorn", f"benchmarks.apps:{app}", "--host", HOST, "--port", str(port)
            )
            + list(UVICORN_FLAGS),
        ),
        Server(
            "hornbeam_trio",
            lambda app, port: _py(
                "-m",
                "hornbeam_trio",
                f"benchmarks.apps:{app}",
                "--bind",
                f"{HOST}:{port}",
                "--log-level",
                "warning",
            ),
        ),
        Server(
            "hypercorn",
            lambda app, port: _py(
                "-m",
                "hypercorn",
                "-k",
                "trio",
                "--bind",
                f"{HOST}:{port}",
                "--log-level",
                "warning",
                f"benchmarks.apps:{app}",
            ),
        ),
        Server(
            "websockets",
            lambda handler, port: _py(
                str(BENCH / "ws_trio_server.py"),
                "--host",
                HOST,
                "--port",
                str(port),
                "--handler",
                handler,
            ),
            http=False,
        ),
    )
}
BASELINE = "uvicorn"

# The broadcast table: (label, server, app). websockets uses its native broadcast().
BROADCAST_ENTRIES = (
    ("uvicorn", "uvicorn", "broadcast_loop"),
    ("hornbeam_trio", "hornbeam_trio", "broadcast"),
    ("hornbeam_trio (app loop)", "hornbeam_trio", "broadcast_loop"),
    ("hypercorn", "hypercorn", "broadcast_loop"),
    ("websockets", "websockets", "broadcast"),
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def machine_cpu() -> float:
    """CPU seconds all cores spent in user, system and steal time. Interrupt time is left out:
    on loopback it is mostly our own packets."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = map(int, fields)
    return (user + nice + system + steal) / CLK_TCK


def own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (hypercorn serves from a child process)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, ()))
    return tree


def rss_kib(pid: int) -> int:
    total = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def cpu_seconds(pid: int) -> float:
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


class ServerProcess:
    def __init__(self, server: Server, app: str, log_path: Path) -> None:
        self.server = server
        self.port = free_port()
        self.log_path = log_path
        argv = ["taskset", "-c", SERVER_CORE, *server.command(app, self.port)]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = log_path.open("wb")
        self.log.write((" ".join(argv) + "\n").encode())
        self.log.flush()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 3) -> str:
        self.log.flush()
        text = self.log_path.read_text(errors="replace").strip().splitlines()[1:]
        return " | ".join(line.strip() for line in text[-lines:])

    def wait_accepting(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Failure(f"exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise Failure(f"not accepting on port {self.port} after {timeout:.0f}s")

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise Failure(f"server died with {self.proc.returncode}: {self.log_tail()}")

    def stop(self) -> None:
        for sig, wait in ((signal.SIGINT, 5.0), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)  # its own session: the server and its workers
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        self.log.close()


@contextmanager
def running(server: Server, app: str, log_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(server, app, log_path)
    try:
        proc.wait_accepting()
        yield proc
    finally:
        proc.stop()


# ----------------------------------------------------------------------------- clients


class LoadgenRun:
    """loadgen.py pinned to core 1; its JSON lines are handed to `on_line` as they come."""

    def __init__(self, args: list[str], timeout: float) -> None:
        argv = ["taskset", "-c", CLIENT_CORE, sys.executable, str(LOADGEN), *args]
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.timed_out = False
        self.timer = threading.Timer(timeout, self._kill)
        self.timer.start()

    def _kill(self) -> None:
        self.timed_out = True
        self.proc.kill()

    def lines(self) -> Iterator[dict[str, Any]]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if line.startswith("{"):
                yield json.loads(line)

    def tell(self, text: str = "go") -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def finish(self) -> str:
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        self.timer.cancel()
        return err.strip().splitlines()[-1] if err.strip() else ""


@dataclasses.dataclass(frozen=True)
class Interval:
    """CPU use over a measured interval, in cores: the server, everything not ours."""

    server: float = math.nan
    foreign: float = math.nan


class IntervalClock:
    """CPU use between two mark()s: the server's, and everything that is not ours ("others":
    other engineers' tests on this 2-core machine, short-lived or not, and steal time)."""

    def __init__(self, server: ServerProcess, client_cpu: Callable[[], float]) -> None:
        self.server = server
        self.client_cpu = client_cpu
        self.start: tuple[float, float, float, float] | None = None
        self.result = Interval()

    def mark(self) -> None:
        server = cpu_seconds(self.server.pid)
        ours = server + self.client_cpu() + own_cpu()
        now = (time.monotonic(), server, ours, machine_cpu())
        if self.start is None:
            self.start = now
            return
        (w0, s0, o0, m0), (w1, s1, o1, m1) = self.start, now
        others = max(0.0, (m1 - m0) - (o1 - o0))
        self.result = Interval((s1 - s0) / (w1 - w0), others / (w1 - w0))


def loadgen(
    server: ServerProcess, args: list[str], timeout: float
) -> tuple[dict[str, Any], Interval]:
    """Run one loadgen measurement; returns its result and the CPU use over t0..t1."""
    run = LoadgenRun(args, timeout)
    clock = IntervalClock(server, lambda: cpu_seconds(run.proc.pid))
    result: dict[str, Any] | None = None
    try:
        for msg in run.lines():
            phase = msg.get("phase")
            if phase in ("t0", "t1"):
                clock.mark()
            elif phase == "result":
                result = msg
    finally:
        err = run.finish()
    if run.timed_out:
        raise Failure(f"load generator timed out after {timeout:.0f}s")
    if result is None:
        server.alive()
        raise Failure(f"load generator crashed: {err}")
    if not result.get("ok"):
        server.alive()
        raise Failure(result.get("error", "failed"))
    return result, clock.result


# ----------------------------------------------------------------------------- workloads


@dataclasses.dataclass(frozen=True)
class Measurement:
    value: float
    server_cpu: float = math.nan
    client_cpu: float = math.nan
    foreign_cpu: float = math.nan
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def ws_url(server: ServerProcess, path: str = "/") -> str:
    return f"ws://{HOST}:{server.port}{path}"


def measure_echo(conns: int, size: int, kind: str, key: str) -> Callable[..., Measurement]:
    def measure(server: ServerProcess, opts: argparse.Namespace) -> Measurement:
        result, cpu = loadgen(
            server,
            [
                "ws-echo",
                "--url",
                ws_url(server),
                "--conns",
                str(conns),
                "--size",
                str(size),
                "--kind",
                kind,
                "--duration",
                str(opts.duration),
            ],
            timeout=opts.duration + 60,
        )
        return Measurement(result[key], cpu.server, result["loadgen_cpu"], cpu.foreign, result)

    return measure


MIB = 1024 * 1024
STREAM_BYTES = MIB
"""The streaming rows' body size (benchmarks.apps:stream_1m: 64 KiB chunks down, any size up)."""


def _wrk_script(name: str, lua: str) -> Path:
    """A wrk Lua script, written under results/ (gitignored) for wrk's ``-s``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(lua)
    return path


def _wrk_post_script(size: int) -> Path:
    """A wrk Lua script that POSTs ``size`` bytes."""
    return _wrk_script(
        f"wrk-post-{size}.lua",
        'wrk.method = "POST"\n'
        f'wrk.body = string.rep("x", {size})\n'
        'wrk.headers["Content-Type"] = "application/octet-stream"\n',
    )


def _wrk_varied_script() -> Path:
    """A wrk Lua script whose every request differs from the one before (``GET /?n=1``,
    ``/?n=2``, ...): a server that remembers a connection's last request gains nothing."""
    return _wrk_script(
        "wrk-varied.lua",
        "local n = 0\n"
        "request = function()\n"
        "  n = n + 1\n"
        '  return wrk.format(nil, "/?n=" .. n)\n'
        "end\n",
    )


def _check_answer(
    url: str, body: bytes | None, expected: Callable[[bytes], bool], what: str
) -> None:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            status, answer = response.status, response.read()
    except OSError as exc:
        raise Failure(f"{what} failed: {exc}") from exc
    if status != 200 or not expected(answer):
        raise Failure(f"{what} answered {status} {answer[:40]!r}")


def run_wrk(
    server: ServerProcess,
    opts: argparse.Namespace,
    *,
    connections: int = 100,
    post: int | None = None,
    script: Path | None = None,
) -> Measurement:
    """``wrk -t1 -c<connections>`` on ``GET /`` (or a POST of ``post`` bytes, or what
    ``script`` sends): requests/s."""
    url = f"http://{HOST}:{server.port}/"
    seconds = max(1, round(opts.duration))
    argv = ["taskset", "-c", CLIENT_CORE, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
    if post is not None:
        argv += ["-s", str(_wrk_post_script(post))]
    elif script is not None:
        argv += ["-s", str(script)]
    wrk = subprocess.Popen(
        [*argv, url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    clock = IntervalClock(server, children_cpu)  # wrk is reaped before the second mark
    clock.mark()
    try:
        out, _ = wrk.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired as exc:
        wrk.kill()
        wrk.communicate()
        raise Failure("wrk timed out") from exc
    clock.mark()
    server.alive()
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if not rps or not total or int(total.group(1)) == 0:
        raise Failure(f"wrk: no requests completed: {out.strip()[-200:]}")
    requests = int(total.group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    bad = int(non2xx.group(1)) if non2xx else 0
    socket_errors = sum(int(g) for g in errors.groups()) if errors else 0
    if bad or socket_errors > requests // 100:
        raise Failure(f"wrk: {bad} non-2xx, {socket_errors} socket errors of {requests}")
    details = {"requests": requests, "non2xx": bad, "socket_errors": socket_errors, "wrk": out}
    cpu = clock.result
    return Measurement(float(rps.group(1)), cpu.server, math.nan, cpu.foreign, details)


def measure_http(server: ServerProcess, opts: argparse.Namespace) -> Measurement:
    _check_answer(f"http://{HOST}:{server.port}/", None, lambda b: b == b"hello", "GET /")
    return run_wrk(server, opts)


def measure_http_varied(server: ServerProcess, opts: argparse.Namespace) -> Measurement:
    _check_answer(f"http://{HOST}:{server.port}/?n=0", None, lambda b: b == b"hello", "GET /?n=0")
    return run_wrk(server, opts, script=_wrk_varied_script())


def measure_http_post(size: int) -> Callable[[ServerProcess, argparse.Namespace], Measurement]:
    def measure(server: ServerProcess, opts: argparse.Namespace) -> Measurement:
        url = f"http://{HOST}:{server.port}/"
        _check_answer(url, b"x" * size, lambda b: b == b"hello", f"POST / ({size} B)")
        return run_wrk(server, opts, post=size)

    return measure


def measure_stream_down(server: ServerProcess, opts: argparse.Namespace) -> Measurement:
    """GET / of benchmarks.apps:stream_1m: 1 MiB in 64 KiB chunks; MB/s of body."""
    url = f"http://{HOST}:{server.port}/"
    _check_answer(url, None, lambda b: len(b) == STREAM_BYTES, "GET / (1 MiB)")
    sample = run_wrk(server, opts, connections=4)
    return dataclasses.replace(sample, value=sample.value * STREAM_BYTES / 1e6)


def measure_stream_up(server: ServerProcess, opts: argparse.Namespace) -> Measurement:
    """POST / of 1 MiB to benchmarks.apps:stream_1m, which reads it all; MB/s of body."""
    url = f"http://{HOST}:{server.port}/"
    expected = str(STREAM_BYTES).encode()
    _check_answer(url, b"x" * STREAM_BYTES, lambda b: b == expected, "POST / (1 MiB)")
    sample = run_wrk(server, opts, connections=4, post=STREAM_BYTES)
    return dataclasses.replace(sample, value=sample.value * STREAM_BYTES / 1e6)


def measure_idle(server: ServerProcess, opts: argparse.Namespace) -> Measurement:
    n = opts.idle
    run = LoadgenRun(["idle", "--url", ws_url(server), "--conns", str(n)], timeout=120 + n / 100)
    before = after = None
    opened: dict[str, Any] = {}
    result: dict[str, Any] | None = None
    try:
        for msg in run.lines():
            phase = msg.get("phase")
            if phase == "warm":
                time.sleep(0.2)
                before = rss_kib(server.pid)
                run.tell()
            elif phase == "open":
                opened = msg
                after = rss_kib(server.pid)
                run.tell()
            elif phase == "result":
                result = msg
    finally:
        err = run.finish()
    if run.timed_out:
        raise Failure("idle: load generator timed out")
    if result is None:
        server.alive()
        raise Failure(f"load generator crashed: {err}")
    if not result.get("ok") or before is None or after is None:
        server.alive()
        raise Failure(result.get("error", "idle connections failed"))
    details = {**result, "rss_before_kib": before, "rss_after_kib": after, **opened}
    return Measurement((after - before) / n, details=details)


@dataclasses.dataclass(frozen=True)
class Workload:
    key: str
    title: str
    unit: str
    measure: Callable[[ServerProcess, argparse.Namespace], Measurement]
    http: bool = False
    lower_is_better: bool = False
    app: str = "echo"
    """The benchmarks.apps app every server runs for this row."""


def workloads(opts: argparse.Namespace) -> list[Workload]:
    return [
        Workload(
            "ws1",
            "WS echo, 1 conn, 16 B text",
            "round trips/s",
            measure_echo(1, 16, "text", "round_trips_per_s"),
        ),
        Workload(
            "ws100",
            "WS echo, 100 conns, 16 B text",
            "round trips/s",
            measure_echo(100, 16, "text", "round_trips_per_s"),
        ),
        Workload(
            "ws64k",
            "WS echo, 1 conn, 64 KiB binary",
            "MB/s echoed",
            measure_echo(1, 65536, "binary", "mb_per_s"),
        ),
        Workload(
            "http", "HTTP GET / hello, wrk -t1 -c100 keep-alive", "req/s", measure_http, http=True
        ),
        Workload(
            "http_varied",
            "HTTP GET /?n=<counter> hello: no request repeats the one before",
            "req/s",
            measure_http_varied,
            http=True,
        ),
        Workload(
            "http_read",
            "HTTP GET / hello, the app reads its (empty) body first",
            "req/s",
            measure_http,
            http=True,
            app="hello_read",
        ),
        Workload(
            "http_post1k",
            "HTTP POST / 1 KiB body the app reads, hello",
            "req/s",
            measure_http_post(1024),
            http=True,
            app="hello_read",
        ),
        Workload(
            "http_starlette",
            "HTTP GET / hello in Starlette",
            "req/s",
            measure_http,
            http=True,
            app="hello_starlette",
        ),
        Workload(
            "http_fastapi",
            "HTTP GET / hello in FastAPI",
            "req/s",
            measure_http,
            http=True,
            app="hello_fastapi",
        ),
        Workload(
            "stream_down",
            "HTTP GET / 1 MiB body in 64 KiB chunks, wrk -c4",
            "MB/s of body",
            measure_stream_down,
            http=True,
            app="stream_1m",
        ),
        Workload(
            "stream_up",
            "HTTP POST / 1 MiB upload the app reads, wrk -c4",
            "MB/s of body",
            measure_stream_up,
            http=True,
            app="stream_1m",
        ),
        Workload(
            "idle",
            f"Server RSS per idle WS conn, N={opts.idle:,}",
            "KiB/conn (lower is better)",
            measure_idle,
            lower_is_better=True,
        ),
    ]


def measure_broadcast(server: ServerProcess, opts: argparse.Namespace) -> Measurement:
    result, cpu = loadgen(
        server,
        [
            "broadcast",
            "--url",
            ws_url(server),
            "--conns",
            str(opts.subscribers),
            "--duration",
            str(opts.duration),
            "--window",
            str(opts.window),
            "--rate",
            str(opts.rate),
        ],
        timeout=2 * opts.duration + 120,
    )
    peak = result["max"]
    return Measurement(
        peak["deliveries_per_s"], cpu.server, peak["loadgen_cpu"], cpu.foreign, result
    )


# ----------------------------------------------------------------------------- report


def fmt(value: float) -> str:
    if math.isnan(value):
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) >= 1 else f"{value:.2f}"


def ratio_text(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}"


def median_measurement(samples: list[Measurement]) -> Measurement:
    if len(samples) == 1:
        return samples[0]
    ordered = sorted(samples, key=lambda m: m.value)
    middle = ordered[len(ordered) // 2]
    details = {**middle.details, "samples": [m.value for m in samples]}
    return dataclasses.replace(
        middle, value=statistics.median(m.value for m in samples), details=details
    )


Cell = Measurement | Failure | None  # None: not applicable


@dataclasses.dataclass(frozen=True)
class Entry:
    """One column (or broadcast row): a label, the server, the app it runs."""

    label: str
    server: Server
    app: str


def measure_once(
    entry: Entry,
    workload_key: str,
    measure: Callable[..., Measurement],
    opts: argparse.Namespace,
    log_dir: Path,
    repeat: int,
) -> Measurement:
    """One sample on a fresh server. A sample taken while other processes used more than
    `opts.max_foreign` cores is taken again (up to `opts.retries` times); the least
    disturbed attempt is kept. Raises Failure."""
    attempts: list[Measurement] = []
    for attempt in range(1 + opts.retries):
        name = f"{workload_key}-{entry.server.name}-{entry.app}-{repeat}.{attempt}.log"
        wait_for_quiet(opts)
        with running(entry.server, entry.app, log_dir / name) as proc:
            attempts.append(measure(proc, opts))
        if not attempts[-1].foreign_cpu > opts.max_foreign:  # NaN: not measured
            break
        print("(busy machine, again)", end=" ", flush=True)
    return min(attempts, key=lambda m: _or(m.foreign_cpu, 0.0))


def measure_row(
    entries: list[Entry],
    workload_key: str,
    measure: Callable[..., Measurement],
    opts: argparse.Namespace,
    log_dir: Path,
) -> tuple[dict[str, Cell], dict[str, float | None]]:
    """Measure every entry `opts.repeat` times, repeats outermost: the samples of one
    repeat are taken minutes apart at most, so each repeat gives a ratio to the baseline
    that the machine's drift hardly touches. Returns the median value of each entry and
    the median of its per-repeat ratios."""
    samples: dict[str, list[Measurement]] = {e.label: [] for e in entries}
    failed: dict[str, Failure] = {}
    for repeat in range(opts.repeat):
        for entry in entries:
            if entry.label in failed:
                continue
            tag = f"#{repeat + 1}" if opts.repeat > 1 else ""
            print(f"  {workload_key:<9} {entry.label:<26} {tag}", end=" ", flush=True)
            try:
                sample = measure_once(entry, workload_key, measure, opts, log_dir, repeat)
            except Failure as failure:
                failed[entry.label] = failure
                print("fail", flush=True)
                continue
            samples[entry.label].append(sample)
            print(fmt(sample.value), flush=True)
    cells: dict[str, Cell] = {
        e.label: failed.get(e.label) or median_measurement(samples[e.label]) for e in entries
    }
    base = samples.get(BASELINE) if BASELINE not in failed else None
    ratios: dict[str, float | None] = {}
    for entry in entries:
        mine = samples[entry.label]
        if entry.label in failed or not base or len(base) != len(mine):
            ratios[entry.label] = None
            continue
        ratios[entry.label] = statistics.median(
            m.value / b.value for m, b in zip(mine, base, strict=True)
        )
    return cells, ratios


def wait_for_quiet(opts: argparse.Namespace) -> None:
    """Wait (up to --quiet-wait s) until other processes use at most --max-foreign cores."""
    deadline = time.monotonic() + opts.quiet_wait
    announced = False
    while True:
        m0, o0, w0 = machine_cpu(), own_cpu() + children_cpu(), time.monotonic()
        time.sleep(1.0)
        used = (machine_cpu() - m0) - (own_cpu() + children_cpu() - o0)
        load = used / (time.monotonic() - w0)
        if load <= opts.max_foreign or time.monotonic() >= deadline:
            return
        if not announced:
            print(f"(waiting for a quiet machine: others use {load:.0%})", end=" ", flush=True)
            announced = True


def _or(value: float, default: float) -> float:
    return default if math.isnan(value) else value


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def describe(cell: Cell) -> dict[str, Any]:
    if cell is None:
        return {"status": "n/a"}
    if isinstance(cell, Failure):
        return {"status": "fail", "error": str(cell)}
    return {
        "status": "ok",
        "value": cell.value,
        "server_cpu": cell.server_cpu,
        "loadgen_cpu": cell.client_cpu,
        "foreign_cpu": cell.foreign_cpu,
        "details": cell.details,
    }


def main_table(
    opts: argparse.Namespace, names: list[str], log_dir: Path, report: dict[str, Any]
) -> str | None:
    chosen = [w for w in workloads(opts) if w.key in opts.only]
    if not chosen:
        return None
    rows, notes, cpu_rows = [], [], []
    for workload in chosen:
        entries = [
            Entry(n, SERVERS[n], workload.app)
            for n in names
            if SERVERS[n].http or not workload.http
        ]
        measured, ratios = measure_row(entries, workload.key, workload.measure, opts, log_dir)
        cells: dict[str, Cell] = {n: measured.get(n) for n in names}  # None: not applicable
        row = [workload.title, workload.unit]
        cpu_row = [workload.key]
        for name in names:
            cell = cells[name]
            if cell is None:
                row.append("—")
                cpu_row.append("—")
            elif isinstance(cell, Failure):
                row.append("fail")
                cpu_row.append("—")
                notes.append(f"- {workload.key} / {name}: {cell}")
            else:
                ratio = ratio_text(ratios.get(name))
                row.append(f"{fmt(cell.value)} ({ratio}){_disturbed(cell, opts)}")
                cpu_row.append(_cpu_pair(cell))
        rows.append(row)
        if workload.key != "idle":  # no CPU interval there: memory only
            cpu_rows.append(cpu_row)
        report["workloads"][workload.key] = {
            "title": workload.title,
            "unit": workload.unit,
            "lower_is_better": workload.lower_is_better,
            "servers": {
                n: describe(c) | {"ratio_to_uvicorn": ratios.get(n)} for n, c in cells.items()
            },
        }
    table = markdown_table(["workload", "unit", *names], rows)
    text = (
        f"{table}\n\nCells: absolute, median of {opts.repeat} (ratio to {BASELINE}: median of the "
        f"per-repeat ratios); ⚠: other processes used > {opts.max_foreign:.0%} of a core "
        "meanwhile."
    )
    if cpu_rows:
        text += "\n\n" + markdown_table(["CPU, cores: server / loadgen / others", *names], cpu_rows)
    if notes:
        text += "\n\nFailures:\n" + "\n".join(notes)
    return text


def _cpu_pair(cell: Measurement) -> str:
    def pct(value: float) -> str:
        return "—" if math.isnan(value) else f"{value:.0%}"

    return f"{pct(cell.server_cpu)} / {pct(cell.client_cpu)} / {pct(cell.foreign_cpu)}"


def _disturbed(cell: Measurement, opts: argparse.Namespace) -> str:
    return " ⚠" if cell.foreign_cpu > opts.max_foreign else ""


def broadcast_table(
    opts: argparse.Namespace, names: list[str], log_dir: Path, report: dict[str, Any]
) -> str | None:
    if "broadcast" not in opts.only:
        return None
    entries = [Entry(label, SERVERS[n], app) for label, n, app in BROADCAST_ENTRIES if n in names]
    cells, ratios = measure_row(entries, "broadcast", measure_broadcast, opts, log_dir)
    rows, notes = [], []
    for entry in entries:
        cell = cells[entry.label]
        if isinstance(cell, Measurement):
            peak, paced = cell.details["max"], cell.details.get("paced", {})
            rows.append(
                [
                    entry.label,
                    f"`{entry.app}`",
                    fmt(cell.value),
                    ratio_text(ratios[entry.label]),
                    fmt(peak["p50_ms"]),
                    fmt(peak["p99_ms"]),
                    fmt(paced.get("p50_ms", math.nan)),
                    fmt(paced.get("p99_ms", math.nan)),
                    _cpu_pair(cell) + _disturbed(cell, opts),
                ]
            )
        else:
            rows.append([entry.label, f"`{entry.app}`", "fail", "", "", "", "", "", ""])
            notes.append(f"- broadcast / {entry.label}: {cell}")
    report["broadcast"] = {
        "subscribers": opts.subscribers,
        "window": opts.window,
        "rate": opts.rate,
        "servers": {
            label: describe(c) | {"ratio_to_uvicorn": ratios[label]} for label, c in cells.items()
        },
    }
    header = [
        "server",
        "app",
        "deliveries/s",
        "ratio",
        "p50 ms",
        "p99 ms",
        f"p50 ms @{fmt(opts.rate)} msg/s",
        f"p99 ms @{fmt(opts.rate)} msg/s",
        "CPU: server / loadgen / others",
    ]
    text = (
        f"Broadcast: {opts.subscribers:,} subscribers + 1 publisher, 64 B JSON text messages; "
        f"saturated with {opts.window} messages in flight, then paced at {fmt(opts.rate)} msg/s "
        f"({fmt(opts.rate * opts.subscribers)} deliveries/s).\n\n" + markdown_table(header, rows)
    )
    if notes:
        text += "\n\nFailures:\n" + "\n".join(notes)
    return text


def _finite(value: Any) -> Any:
    """NaN is not JSON: write null instead."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def versions() -> dict[str, str]:
    found = {}
    for dist in (
        "uvicorn",
        "uvloop",
        "httptools",
        "hypercorn",
        "websockets",
        "picows",
        "trio",
        "hornbeam_trio",
    ):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    wrk = shutil.which("wrk")
    found["wrk"] = wrk or "missing"
    return found


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    every = [w.key for w in workloads(argparse.Namespace(idle=0))] + ["broadcast"]
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument(
        "--only",
        default=",".join(every),
        help=f"comma-separated workloads out of: {','.join(every)}",
    )
    parser.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help=f"comma-separated servers out of: {','.join(SERVERS)}",
    )
    parser.add_argument("--idle", type=int, default=1000, help="idle WebSocket connections")
    parser.add_argument("--subscribers", type=int, default=1000, help="broadcast subscribers")
    parser.add_argument(
        "--window", type=int, default=4, help="broadcast: messages in flight when saturating"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=20.0,
        help="broadcast: messages/s in the paced phase (0: skip it)",
    )
    parser.add_argument(
        "--max-foreign",
        type=float,
        default=0.10,
        help="cores other processes may use during a measurement before it is taken again",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="seconds to wait before each cell for other processes to calm down",
    )
    parser.add_argument(
        "--retries", type=int, default=2, help="re-measurements of a disturbed cell"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure each cell this many times (fresh server each), keep the median",
    )
    opts = parser.parse_args(argv)
    opts.only = [k.strip() for k in opts.only.split(",") if k.strip()]
    opts.servers = [s.strip() for s in opts.servers.split(",") if s.strip()]
    unknown = [k for k in opts.only if k not in every] + [
        s for s in opts.servers if s not in SERVERS
    ]
    if unknown:
        parser.error(f"unknown workload or server: {', '.join(unknown)}")
    return opts


def check_tools(opts: argparse.Namespace) -> None:
    missing = [tool for tool in ("taskset",) if shutil.which(tool) is None]
    uses_wrk = any(w.http and w.key in opts.only for w in workloads(opts))
    if uses_wrk and shutil.which("wrk") is None:
        sys.exit(
            "wrk is missing: install it with `apt-get install -y wrk` "
            "(or run without http: --only ws1,ws100,ws64k,idle,broadcast)"
        )
    if missing:
        sys.exit(f"missing: {', '.join(missing)} (util-linux)")
    if (os.cpu_count() or 1) < 2:
        sys.exit("needs 2 cores: the server runs on core 0, the load generator on core 1")


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    check_tools(opts)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by servers and clients
    needed = max(opts.idle + 100, opts.subscribers + 100)
    if hard < needed:
        sys.exit(f"fd hard limit {hard} < {needed} needed; lower --idle / --subscribers")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = RESULTS / f"logs-{stamp}"
    report: dict[str, Any] = {
        "started": stamp,
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "versions": versions(),
        "fd_limit": hard,
        "options": {k: v for k, v in vars(opts).items()},
        "workloads": {},
    }
    print(
        f"benchmarks: {', '.join(opts.only)} on {', '.join(opts.servers)}; "
        f"server on core {SERVER_CORE}, load on core {CLIENT_CORE}; logs in {log_dir}"
    )
    names = [n for n in SERVERS if n in opts.servers]
    sections = [
        main_table(opts, names, log_dir, report),
        broadcast_table(opts, names, log_dir, report),
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"run-{stamp}.json"
    out.write_text(json.dumps(_finite(report), indent=2, default=str))
    print()
    print(f"{cpu_model()}, Python {platform.python_version()}, {opts.duration:g} s per cell\n")
    print("\n\n".join(s for s in sections if s))
    print(f"\nJSON: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
