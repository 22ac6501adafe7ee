"""Instructions per HTTP/1.1 keep-alive request (or WebSocket echo), counted by callgrind.

A dev tool.  ``--ws`` drives WebSocket echo instead: each connection does the
handshake, then every round sends one 16-byte masked text frame on every
connection and reads every echo back.

Wall-clock req/s on a shared, noisy machine moves by 10-20 % between runs; the
instruction count of the server process does not.  This runs
``python -m hornbeam_trio benchmarks.apps:echo`` under
``valgrind --tool=callgrind`` (pinned to one core), opens ``--connections``
keep-alive connections from a plain-socket client in this process, and drives
``--requests`` GET / on each, one request in flight per connection: every round
sends one request on every connection, then reads every response.  Then the
connections close and the server gets SIGINT.

A baseline run does the same with zero requests (start, connect, close, stop), so
``(total - baseline) / requests`` is what a request costs, without start-up,
accept and shutdown::

    .venv/bin/python benchmarks/http_instructions.py            # 20 x 300, twice
    .venv/bin/python benchmarks/http_instructions.py --runs 1 --connections 10 --requests 100
    .venv/bin/python benchmarks/http_instructions.py --keep out/  # keep callgrind.out files
    .venv/bin/python benchmarks/http_instructions.py --ws --connections 100 --requests 100

``callgrind_annotate out/callgrind.hornbeam_trio.hello.run1.out`` then shows where
they went.

Every count is taken for hornbeam_trio and for uvicorn (``--loop uvloop --http
httptools --ws websockets-sansio``, as in run.py) with the same app, load and
baseline subtraction, and the table shows ours, uvicorn's and the ratio
(``--servers`` picks one).  ``--shape`` picks the HTTP app shapes (default: all but stream1m):

    hello      GET /, an app that never calls receive() (benchmarks.apps:echo)
    read       GET /, the app reads its (empty) body first (benchmarks.apps:hello_read)
    post1k     POST / with a 1 KiB body that the app reads (benchmarks.apps:hello_read)
    starlette  the hello GET / in Starlette (benchmarks.apps:hello_starlette)
    fastapi    the hello GET / in FastAPI (benchmarks.apps:hello_fastapi)
    stream1m   GET / of a 1 MiB body sent in 64 KiB chunks (benchmarks.apps:stream_1m):
               instructions per response (use fewer --requests: ~1 s each under valgrind)
    varied     the hello, but each request's query string differs from the one before
               (GET /?n=1, /?n=2, ...): no request repeats its connection's last one, so
               hornbeam_trio parses every head (``hello`` is served from the repeat)

``--ws`` has one shape, the echo of benchmarks.apps:echo.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script

from benchmarks.run import UVICORN_FLAGS  # noqa: E402

HOST = "127.0.0.1"
REQUEST = (
    b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: http-instructions\r\nAccept: */*\r\n\r\n"
)
POST_1K = (
    b"POST / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: http-instructions\r\nAccept: */*\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n\r\n" + b"x" * 1024
)
VARIED = (
    b"GET /?n=%d HTTP/1.1\r\nHost: localhost\r\nUser-Agent: http-instructions\r\n"
    b"Accept: */*\r\n\r\n"
)
"""A request with ``%d``: the round's number is put in, so every round's bytes differ."""
EXPECTED_BODY = b"hello"
STREAM_REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
STREAM_BODY = b"x" * (1024 * 1024)

SHAPES: dict[str, tuple[str, bytes]] = {
    "hello": ("benchmarks.apps:echo", REQUEST),
    "read": ("benchmarks.apps:hello_read", REQUEST),
    "post1k": ("benchmarks.apps:hello_read", POST_1K),
    "starlette": ("benchmarks.apps:hello_starlette", REQUEST),
    "fastapi": ("benchmarks.apps:hello_fastapi", REQUEST),
    "varied": ("benchmarks.apps:echo", VARIED),
    "stream1m": ("benchmarks.apps:stream_1m", STREAM_REQUEST),
}
"""Shape -> (app, the request sent)."""
WS_SHAPE = "ws echo"


HORNBEAM_FLAGS: list[str] = []
"""Extra flags for hornbeam_trio (``--flags``), e.g. ``--metrics-bind 127.0.0.1:0``."""


def server_command(server: str, app: str, port: int) -> list[str]:
    """The server's argv, as benchmarks/run.py starts it."""
    if server == "uvicorn":
        return [
            sys.executable, "-m", "uvicorn", app, "--host", HOST, "--port", str(port),
            *UVICORN_FLAGS,
        ]  # fmt: skip
    return [
        sys.executable,
        "-m",
        "hornbeam_trio",
        app,
        "--bind",
        f"{HOST}:{port}",
        "--log-level",
        "warning",
        *HORNBEAM_FLAGS,
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_accepting(port: int, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        # An answered request, not just a connect: the kernel accepts connections as soon
        # as the socket listens, before lifespan startup ends (under valgrind a framework
        # app takes a while), and a SIGINT sent during startup is not what is measured.
        try:
            with socket.create_connection((HOST, port), timeout=1.0) as sock:
                sock.settimeout(max(1.0, deadline - time.monotonic()))
                sock.sendall(REQUEST)
                if sock.recv(65536).startswith(b"HTTP/1.1 "):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server did not answer within {timeout:g}s")


def read_response(sock: socket.socket, buf: bytearray) -> None:
    """Read one response (content-length framed) from ``sock``; leftovers stay in buf.

    Its body must be ``hello``, or 1 MiB of ``x`` (the stream1m shape)."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(buf[:end]).lower()
            match = re.search(rb"\r\ncontent-length: *(\d+)", head)
            if not head.startswith(b"http/1.1 200") or match is None:
                raise RuntimeError(f"unexpected response head {head!r}")
            total = end + 4 + int(match.group(1))
            if len(buf) >= total:
                body = bytes(buf[end + 4 : total])
                if body != EXPECTED_BODY and body != STREAM_BODY:
                    raise RuntimeError("unexpected body")
                del buf[:total]
                return
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("server closed the connection")
        buf += chunk


WS_HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
WS_PAYLOAD = b"0123456789abcdef"
WS_FRAME = bytes((0x81, 0x80 | len(WS_PAYLOAD))) + b"\x00\x00\x00\x00" + WS_PAYLOAD  # zero mask
WS_ECHO = bytes((0x81, len(WS_PAYLOAD))) + WS_PAYLOAD


def read_exactly(sock: socket.socket, buf: bytearray, expected: bytes) -> None:
    while len(buf) < len(expected):
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("server closed the connection")
        buf += chunk
    if bytes(buf[: len(expected)]) != expected:
        raise RuntimeError(f"unexpected bytes {bytes(buf[:40])!r}")
    del buf[: len(expected)]


def connect_all(port: int, connections: int, handshake: bytes | None) -> list[socket.socket]:
    socks = []
    for _ in range(connections):
        sock = socket.create_connection((HOST, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if handshake is not None:
            sock.sendall(handshake)
            head = bytearray()
            while b"\r\n\r\n" not in head:
                head += sock.recv(4096)
            if not head.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(f"handshake refused: {bytes(head)!r}")
        socks.append(sock)
    return socks


def drive(port: int, connections: int, requests: int, message: bytes, *, ws: bool) -> None:
    """``requests`` rounds: one message out on every connection, then every answer read."""
    socks = connect_all(port, connections, WS_HANDSHAKE if ws else None)
    buffers = [bytearray() for _ in socks]
    varies = b"%d" in message
    for round_number in range(requests):
        out = message % round_number if varies else message
        for sock in socks:
            sock.sendall(out)
        for sock, buf in zip(socks, buffers, strict=True):
            if ws:
                read_exactly(sock, buf, WS_ECHO)
            else:
                read_response(sock, buf)
    for sock in socks:
        sock.close()


def count_instructions(out_file: Path) -> int:
    for line in out_file.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no summary line in {out_file}")


def run_once(
    out_file: Path,
    server: str,
    app: str,
    message: bytes,
    connections: int,
    requests: int,
    *,
    ws: bool,
) -> int:
    port = free_port()
    cmd = [
        "taskset",
        "-c",
        "0",
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out_file}",
        *server_command(server, app, port),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_accepting(port, proc)
        drive(port, connections, requests, message, ws=ws)
        time.sleep(0.5)  # let the server notice the closed connections
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if proc.returncode not in (0, 130, -signal.SIGINT):
        sys.stderr.write(err.decode(errors="replace")[-3000:])
        raise RuntimeError(f"server exited with code {proc.returncode}")
    return count_instructions(out_file)


def measure(
    server: str,
    shape: str,
    app: str,
    message: bytes,
    args: argparse.Namespace,
    out_dir: Path,
) -> float:
    """Mean instructions per request (or echo) of ``server`` on ``shape``, baseline subtracted."""
    tag = f"{server}.{shape.replace(' ', '-')}"
    ws = args.ws
    baseline = run_once(
        out_dir / f"callgrind.{tag}.baseline.out", server, app, message, args.connections, 0, ws=ws
    )
    print(f"{server} {shape}: baseline (0 requests) {baseline:,} instructions", flush=True)
    total_requests = args.connections * args.requests
    results = []
    for i in range(1, args.runs + 1):
        total = run_once(
            out_dir / f"callgrind.{tag}.run{i}.out",
            server,
            app,
            message,
            args.connections,
            args.requests,
            ws=ws,
        )
        per_request = (total - baseline) / total_requests
        results.append(per_request)
        print(
            f"{server} {shape}: run {i}: {total:,} instructions, {total_requests} requests "
            f"({args.connections} x {args.requests}): {per_request:,.0f} instructions/request",
            flush=True,
        )
    mean = sum(results) / len(results)
    if len(results) > 1:
        spread = (max(results) - min(results)) / min(results) * 100
        print(f"{server} {shape}: mean {mean:,.0f} instructions/request, spread {spread:.1f} %")
    return mean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--requests", type=int, default=300, help="per connection")
    parser.add_argument("--runs", type=int, default=2, help="measured runs (one baseline)")
    parser.add_argument(
        "--shape",
        default=",".join(s for s in SHAPES if s != "stream1m"),
        help=f"comma-separated HTTP app shapes out of {', '.join(SHAPES)} "
        "(default: all but stream1m)",
    )
    parser.add_argument("--app", help="another app for every shape (an ASGI app path)")
    parser.add_argument(
        "--servers",
        default="hornbeam_trio,uvicorn",
        help="comma-separated, out of hornbeam_trio and uvicorn (default: both)",
    )
    parser.add_argument("--keep", type=Path, help="directory to keep callgrind.out files in")
    parser.add_argument("--ws", action="store_true", help="WebSocket echo round trips")
    parser.add_argument(
        "--flags", default="", help="extra hornbeam_trio flags, e.g. '--metrics-bind 127.0.0.1:0'"
    )
    args = parser.parse_args()
    HORNBEAM_FLAGS.extend(shlex.split(args.flags))
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    for server in servers:
        if server not in ("hornbeam_trio", "uvicorn"):
            parser.error(f"unknown server {server!r}")
    if args.ws:
        shapes = {WS_SHAPE: ("benchmarks.apps:echo", WS_FRAME)}
    else:
        names = [s.strip() for s in args.shape.split(",") if s.strip()]
        unknown = [n for n in names if n not in SHAPES]
        if unknown:
            parser.error(f"unknown shape(s) {', '.join(unknown)}")
        shapes = {n: SHAPES[n] for n in names}
    if args.app:
        shapes = {n: (args.app, message) for n, (_, message) in shapes.items()}
    try:  # the client on the other core, away from the server
        os.sched_setaffinity(0, {1})
    except (AttributeError, OSError):
        pass
    out_dir = args.keep or Path(tempfile.mkdtemp(prefix="http-instructions-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    table: dict[str, dict[str, float]] = {}
    for shape, (app, message) in shapes.items():
        for server in servers:
            table.setdefault(shape, {})[server] = measure(
                server, shape, app, message, args, out_dir
            )
    unit = "echo" if args.ws else "request"
    print(f"\n| shape | hornbeam_trio instr/{unit} | uvicorn instr/{unit} | ratio |")
    print("|---|---|---|---|")
    for shape, cells in table.items():
        ours, theirs = cells.get("hornbeam_trio"), cells.get("uvicorn")
        ratio = f"{ours / theirs:.2f}x" if ours and theirs else "-"
        print(
            f"| {shape} | {f'{ours:,.0f}' if ours else '-'} | "
            f"{f'{theirs:,.0f}' if theirs else '-'} | {ratio} |"
        )
    if args.keep is None:
        for path in out_dir.iterdir():
            path.unlink()
        out_dir.rmdir()


if __name__ == "__main__":
    main()
