"""A bounded soak: WebSocket echo, pub/sub broadcast, HTTP and connection churn at once.

    python benchmarks/soak.py                       # 5 minutes
    python benchmarks/soak.py --duration 60 --output soak.png

The server runs as its own process (``python -m hornbeam_trio benchmarks.soak:app``);
this process drives it from one Trio loop, every loop paced and bounded:

* ``--echo`` WebSockets each send a message ``--echo-rate`` times a second and time
  the echo;
* ``--subscribers`` WebSockets sit in one room; ``--publish-rate`` times a second an
  HTTP request publishes to it, and each delivery is timed from the publish call;
* ``--http`` keep-alive connections each send ``GET /`` ``--http-rate`` times a second;
* ``--churn`` connections a second are opened, subscribed and dropped with a TCP reset.

Each second it samples the server's RSS and its own view of live connections, tasks
and subscribers (``GET /stats``), and the p99 latency of each kind of work in that
second.  At the end the server gets SIGTERM and must exit 0; the samples are written
as JSON and plotted (``pip install -e '.[soak]'`` for matplotlib) to one PNG.
Only loopback addresses are used.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio

from hornbeam_erlang import publish, subscribe
from hornbeam_trio import stats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the raw WebSocket client the churn tests use

from raw_ws import RawWebSocket  # noqa: E402

ROOM = "soak"


# --------------------------------------------------------------------------- the app


async def app(scope: Any, receive: Any, send: Any) -> None:
    """``/echo`` and ``/room`` WebSockets; ``/publish?<t>``, ``/stats`` and ``/`` over HTTP."""
    if scope["type"] == "lifespan":
        return
    if scope["type"] == "websocket":
        await send({"type": "websocket.accept"})
        if scope["path"] == "/room":
            subscribe(ROOM)
            await send({"type": "websocket.send", "text": "ready"})
        while (message := await receive())["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": message.get("text") or ""})
        return
    path = scope["path"]
    if path == "/publish":
        body = str(publish(ROOM, {"t": float(scope["query_string"] or b"0")})).encode()
    elif path == "/stats":
        live = stats()
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        body = json.dumps(
            {
                "rss": rss,
                "connections": live["connections"],
                "tasks": live["tasks"],
                "subscribers": live["subscribers"],
            }
        ).encode()
    else:
        body = b"hello"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------- load


@dataclass
class Second:
    t: float
    rss_mib: float = math.nan
    connections: int = 0
    tasks: int = 0
    subscribers: int = 0
    server_cpu: float = 0.0
    """Percent of one core the server process used in this second."""
    loadgen_cpu: float = 0.0
    """The same for this process: near 100, the latencies measure the load generator."""
    p99_ms: dict[str, float] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)
    errors: int = 0


class Recorder:
    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = {"echo": [], "http": [], "broadcast": []}
        self.churned = 0
        self.errors = 0

    def take(self) -> tuple[dict[str, float], dict[str, int]]:
        p99: dict[str, float] = {}
        counts: dict[str, int] = {}
        for kind, values in self.latencies.items():
            counts[kind] = len(values)
            if values:
                values.sort()
                p99[kind] = values[min(len(values) - 1, int(len(values) * 0.99))] * 1000
            self.latencies[kind] = []
        counts["churn"], self.churned = self.churned, 0
        return p99, counts


async def paced(rate: float, stop: trio.Event) -> Any:
    """Yields ``rate`` times a second (on a fixed schedule, so a slow step is not repeated)."""
    interval = 1 / rate
    # A random phase: clients paced in step would arrive in bursts and measure the queue.
    next_at = trio.current_time() + random.random() * interval
    await trio.sleep_until(next_at)
    while not stop.is_set():
        yield
        next_at = max(next_at + interval, trio.current_time() - interval)
        await trio.sleep_until(next_at)


class HTTPClient:
    """One keep-alive connection sending bodiless GETs and reading content-length answers."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    async def connect(cls, port: int) -> HTTPClient:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def get(self, target: str) -> bytes:
        await self.stream.send_all(f"GET {target} HTTP/1.1\r\nHost: soak\r\n\r\n".encode())
        while b"\r\n\r\n" not in self.buffer:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise EOFError("server closed the connection")
            self.buffer += chunk
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        match = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
        size = int(match.group(1)) if match else 0
        while len(rest) < size:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise EOFError("server closed the connection")
            rest += chunk
        self.buffer = rest[size:]
        if not head.startswith(b"HTTP/1.1 200 "):
            raise RuntimeError(head.split(b"\r\n")[0].decode())
        return rest[:size]


async def echo_client(port: int, rate: float, rec: Recorder, stop: trio.Event) -> None:
    ws = await RawWebSocket.connect("127.0.0.1", port, "/echo")
    try:
        async for _ in paced(rate, stop):
            start = time.monotonic()
            await ws.send_text(f"ping {start:f}")
            await ws.receive_text()
            rec.latencies["echo"].append(time.monotonic() - start)
    finally:
        await ws.aclose()


async def subscriber(port: int, rec: Recorder, stop: trio.Event, ready: trio.Event) -> None:
    ws = await RawWebSocket.connect("127.0.0.1", port, "/room")
    try:
        assert await ws.receive_text() == "ready"
        ready.set()
        while not stop.is_set():
            message = json.loads(await ws.receive_text())
            rec.latencies["broadcast"].append(time.monotonic() - message["t"])
    finally:
        await ws.aclose()


async def publisher(port: int, rate: float, stop: trio.Event) -> None:
    client = await HTTPClient.connect(port)
    async with client.stream:
        async for _ in paced(rate, stop):
            await client.get(f"/publish?{time.monotonic():f}")


async def http_client(port: int, rate: float, rec: Recorder, stop: trio.Event) -> None:
    client = await HTTPClient.connect(port)
    async with client.stream:
        async for _ in paced(rate, stop):
            start = time.monotonic()
            await client.get("/")
            rec.latencies["http"].append(time.monotonic() - start)


async def churner(port: int, rate: float, rec: Recorder, stop: trio.Event) -> None:
    async def one() -> None:
        try:
            ws = await RawWebSocket.connect("127.0.0.1", port, "/room")
            await ws.receive_text()  # "ready": subscribed
            ws.reset()
            rec.churned += 1
        except (OSError, EOFError, ConnectionError, trio.BrokenResourceError):
            rec.errors += 1

    async with trio.open_nursery() as nursery:
        async for _ in paced(rate, stop):
            nursery.start_soon(one)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CPU:
    """CPU percent of a process between two calls."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.last = (time.monotonic(), cpu_seconds(pid))

    def percent(self) -> float:
        now = (time.monotonic(), cpu_seconds(self.pid))
        (t0, c0), self.last = self.last, now
        return 100 * (now[1] - c0) / max(now[0] - t0, 1e-9)


async def sample(port: int, rec: Recorder, start: float, cpus: tuple[CPU, CPU]) -> Second:
    client = await HTTPClient.connect(port)
    async with client.stream:
        stats = json.loads(await client.get("/stats"))
    p99, counts = rec.take()
    return Second(
        t=round(trio.current_time() - start, 2),
        server_cpu=cpus[0].percent(),
        loadgen_cpu=cpus[1].percent(),
        rss_mib=stats["rss"] / 2**20,
        connections=stats["connections"],
        tasks=stats["tasks"],
        subscribers=stats["subscribers"],
        p99_ms=p99,
        count=counts,
        errors=rec.errors,
    )


async def soak(opts: argparse.Namespace) -> tuple[list[Second], int, str]:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "hornbeam_trio", "benchmarks.soak:app", "--bind", "127.0.0.1:0"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    log = b""
    assert process.stderr is not None
    while not (match := re.search(rb"Listening on http://127\.0\.0\.1:(\d+)", log)):
        chunk = await process.stderr.receive_some(65536)
        if not chunk:
            raise SystemExit("the server did not start:\n" + log.decode())
        log += chunk
    port = int(match.group(1))
    print(f"server pid {process.pid} on port {port}; soaking for {opts.duration:g} s", flush=True)

    rec = Recorder()
    stop = trio.Event()
    seconds: list[Second] = []

    async def drain_log() -> None:
        nonlocal log
        assert process.stderr is not None
        while chunk := await process.stderr.receive_some(65536):
            log += chunk

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain_log)
        async with trio.open_nursery() as load:
            for _ in range(opts.subscribers):
                ready = trio.Event()
                load.start_soon(subscriber, port, rec, stop, ready)
                await ready.wait()
            for _ in range(opts.echo):
                load.start_soon(echo_client, port, opts.echo_rate, rec, stop)
            for _ in range(opts.http):
                load.start_soon(http_client, port, opts.http_rate, rec, stop)
            load.start_soon(publisher, port, opts.publish_rate, stop)
            load.start_soon(churner, port, opts.churn, rec, stop)
            start = trio.current_time()
            cpus = (CPU(process.pid), CPU(os.getpid()))
            for n in range(1, int(opts.duration) + 1):
                await trio.sleep_until(start + n)
                second = await sample(port, rec, start, cpus)
                seconds.append(second)
                if n % 10 == 0 or n == 1:
                    p99 = ", ".join(f"{k} {v:.1f}" for k, v in second.p99_ms.items())
                    print(
                        f"{second.t:6.0f} s  RSS {second.rss_mib:6.1f} MiB  "
                        f"conns {second.connections:5d}  CPU server {second.server_cpu:3.0f}% "
                        f"loadgen {second.loadgen_cpu:3.0f}%  p99 ms: {p99}",
                        flush=True,
                    )
            stop.set()
            load.cancel_scope.deadline = trio.current_time() + 5
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            code = await process.wait()
        nursery.cancel_scope.cancel()
    return seconds, code, log.decode()


# --------------------------------------------------------------------------- output


def plot(seconds: list[Second], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.t for s in seconds]
    fig, axes = plt.subplots(5, 1, figsize=(10, 13), sharex=True)
    axes[0].plot(t, [s.rss_mib for s in seconds], color="tab:red")
    axes[0].set_ylabel("server RSS (MiB)")
    axes[0].set_ylim(bottom=0)
    axes[1].plot(t, [s.connections for s in seconds], label="connections")
    axes[1].plot(t, [s.subscribers for s in seconds], label="subscribers")
    axes[1].plot(t, [s.tasks for s in seconds], label="connection tasks", linestyle="--")
    axes[1].set_ylabel("live (server's stats())")
    axes[1].set_ylim(bottom=0)
    axes[1].legend(loc="upper left")
    for kind in ("echo", "http", "broadcast"):
        axes[2].plot(t, [s.p99_ms.get(kind, math.nan) for s in seconds], label=kind)
    axes[2].set_ylabel("p99 latency (ms)")
    axes[2].set_ylim(bottom=0)
    axes[2].legend(loc="upper left")
    for kind in ("echo", "http", "broadcast", "churn"):
        axes[3].plot(t, [s.count.get(kind, 0) for s in seconds], label=kind)
    axes[3].set_ylabel("per second")
    axes[3].set_yscale("log")
    axes[3].legend(loc="upper left")
    axes[4].plot(t, [s.server_cpu for s in seconds], label="server")
    axes[4].plot(t, [s.loadgen_cpu for s in seconds], label="load generator")
    axes[4].set_ylabel("CPU (% of a core)")
    axes[4].set_ylim(0, 110)
    axes[4].legend(loc="upper left")
    axes[4].set_xlabel("seconds")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300, help="seconds (default 300)")
    parser.add_argument("--echo", type=int, default=50, help="echo WebSockets")
    parser.add_argument("--echo-rate", type=float, default=20, help="messages/s per echo client")
    parser.add_argument("--subscribers", type=int, default=500, help="WebSockets in the room")
    parser.add_argument("--publish-rate", type=float, default=10, help="publishes/s")
    parser.add_argument("--http", type=int, default=10, help="keep-alive HTTP connections")
    parser.add_argument("--http-rate", type=float, default=50, help="requests/s per connection")
    parser.add_argument("--churn", type=float, default=50, help="connections churned per second")
    parser.add_argument("--output", type=Path, help="PNG (default benchmarks/results/soak-*.png)")
    opts = parser.parse_args(argv)
    if opts.duration <= 0 or opts.duration > 24 * 3600:
        parser.error("--duration must be within (0, 86400] seconds")
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    output: Path = opts.output or ROOT / "benchmarks" / "results" / f"soak-{stamp}.png"
    output.parent.mkdir(parents=True, exist_ok=True)

    seconds, code, log = trio.run(soak, opts)
    output.with_suffix(".json").write_text(
        json.dumps({"options": {k: str(v) for k, v in vars(opts).items()},
                    "exit_code": code, "seconds": [asdict(s) for s in seconds]}, indent=1)
    )  # fmt: skip
    rss = [s.rss_mib for s in seconds]
    settled = rss[min(len(rss) - 1, 10)]
    worst = {
        k: max((s.p99_ms.get(k, 0) for s in seconds), default=0)
        for k in ("echo", "http", "broadcast")
    }
    title = (
        f"hornbeam_trio soak, {opts.duration:g} s: server RSS {settled:.1f} MiB at 10 s, "
        f"{rss[-1]:.1f} MiB at the end\nworst p99 "
        + ", ".join(f"{k} {v:.0f} ms" for k, v in worst.items())
    )
    print(title)
    print(f"churn errors: {seconds[-1].errors}; server exit code {code}")
    if "Traceback" in log:
        print("the server logged a traceback:\n" + log)
    plot(seconds, output, title)
    print(f"wrote {output} and {output.with_suffix('.json')}")
    return 0 if code == 0 and "Traceback" not in log else 1


if __name__ == "__main__":
    sys.exit(main())
